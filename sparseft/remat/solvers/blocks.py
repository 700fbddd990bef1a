"""Per-block checkpointing: keep each block's inputs, recompute a block's internals for its backward.

The policy of ``torch.utils.checkpoint`` around every transformer block (or MLP layer), for graphs
whose nodes carry a ``block`` index (:class:`sparseft.Graph`). A forward node of block ``b`` is a
*checkpoint* when a forward node outside ``b`` reads it (the block's output, which is the next
block's input) or when it belongs to no block; every other forward node of ``b`` is *internal*: its
first copy is dropped once the forward pass leaves ``b`` (after the last forward node of ``b`` in the
planning order), and it is recomputed from the checkpoints when a backward node needs it, kept for
the rest of the block's backward. Backward nodes and nodes marked ``once`` are never dropped, so
they are computed exactly once.

The schedule is built by the stage planner of the C core (``_core.remat_plan_stages`` with a
``seg_end`` per node): with an unlimited budget it is the plain checkpointing schedule; with the
planner's budget it also evicts (cheapest recomputation first) where checkpointing alone does not fit.
"""

from __future__ import annotations

import numpy as np

from sparseft import _core
from sparseft.remat.graph import Graph


def block_seg_end(g: Graph) -> np.ndarray:
    """Per node, the stage (order position) after which its first copy is dropped (``n``: kept).

    Internal forward nodes of a block end with the block's last forward node; checkpoints,
    backward nodes, ``once`` nodes and nodes outside blocks are kept (``n``).
    """
    n = g.n
    pos = np.empty(n, dtype=np.int64)
    pos[g.order_idx] = np.arange(n)
    forward = ~g._backward if g._has_backward else np.ones(n, dtype=bool)
    blocks = g._block
    last_fwd: dict[int, int] = {}
    for v in range(n):
        b = blocks[v]
        if b is not None and forward[v]:
            last_fwd[b] = max(last_fwd.get(b, -1), int(pos[v]))
    seg_end = np.full(n, n, dtype=np.int64)
    for v in range(n):
        b = blocks[v]
        if b is None or not forward[v] or g._once[v]:
            continue
        # read by a forward node outside the block: the block's output, kept as a checkpoint
        if any(forward[s] and blocks[s] != b for s in g._succs[v]):
            continue
        seg_end[v] = last_fwd[b]
    return seg_end


def block_schedules(g: Graph, budget: int) -> list[np.ndarray]:
    """Per-block checkpointing schedules of ``g`` (node codes, frees as ``-1 - v``).

    Two variants: the plain policy (no eviction; it may exceed ``budget``) and the policy with
    budget-driven eviction on top. Callers check each against the budget and ``once``.
    """
    if not g.has_blocks:
        return []
    seg_end = block_seg_end(g)
    big = int(g.memory.sum()) + 1
    found = (plan_stages(g, seg_end, b) for b in dict.fromkeys((big, int(budget))))
    return [steps for steps in found if steps is not None]


def plan_stages(g: Graph, seg_end: np.ndarray, budget: int) -> np.ndarray | None:
    """The C stage planner over ``g.order`` with first copies dropped at ``seg_end`` (see
    ``_core.remat_plan_stages``); None when it cannot keep to ``budget``."""
    rc, steps, _, _ = _core.remat_plan_stages(
        g.memory,
        g.duration,
        g.pred_ptr,
        g.pred_idx,
        g.succ_ptr,
        g.succ_idx,
        g.order_idx,
        seg_end,
        budget,
        1.0,
        1.0,
    )
    return steps if rc == 0 else None
