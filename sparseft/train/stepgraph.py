"""The graph of one training step, built from a model's ops, and the schedules the Trainer runs.

Nodes: one forward node per op (its output is the op's activation, ``op.train_out_nbytes`` bytes: a step
runs ``op.train_forward``) and one backward node per op that lies on a gradient path (its output
is the tuple of input gradients, ``op.grad_nbytes`` bytes). Edges are data dependencies in the
model-op protocol (:mod:`sparseft.models.graph`): a forward reads its inputs' activations; a
backward reads the inputs' activations and its own output that ``op.backward_reads()`` flags, and
the backward outputs of every consumer of its output (whose input gradients it sums). An
activation no backward reads (a residual add's inputs, a linear's output) is therefore freed
right after its last forward use. The batch (``"input"``/``"target"``) is not a node: it stays
resident for the whole step and is not counted against the budget.

A backward node of an op with parameters accumulates their gradients: it must be computed exactly
once per step (``once``). See ``docs/training.md``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

from sparseft.models.graph import BATCH_NAMES, Op, check_ops
from sparseft.remat import Graph, Schedule, simulate

__all__ = [
    "StepGraph",
    "block_checkpoint_steps",
    "build_step_graph",
    "check_once",
    "liveness_steps",
    "schedule_of",
    "typical_durations",
]


@dataclasses.dataclass
class StepGraph:
    """One training step of a model as a :class:`~sparseft.remat.Graph` plus the executor's wiring.

    Attributes
    ----------
    ops : list of Op
        The model's ops (topological order, loss last).
    graph : Graph
        Node ``i`` is op ``i``'s forward; backward nodes follow (``bwd_node``). A node's id is its
        index in the graph.
    need_bwd : list of bool
        Whether op ``i``'s output needs a gradient (the op has parameters or an ancestor has).
    consumers : list of list of (int, int)
        For op ``i``: every (consumer op, input position) that reads its output, in op order.
    once : list of node ids
        Backward nodes that accumulate parameter gradients (computed exactly once per step).
    batch, seq : int
        The batch shape the memory sizes are for.
    bwd_node : list of (int or None)
        Op ``i``'s backward node (``None`` when no gradient reaches it).
    node_op : list of int
        The op of each graph node.
    reads : list of tuple of bool
        ``op.backward_reads()`` of each op: which inputs (then its own output) its backward reads;
        the executor passes ``None`` for the others.
    """

    ops: list[Op]
    graph: Graph
    need_bwd: list[bool]
    consumers: list[list[tuple[int, int]]]
    once: list[int]
    batch: int
    seq: int
    bwd_node: list[int | None]
    node_op: list[int]
    reads: list[tuple[bool, ...]] = dataclasses.field(default_factory=list)

    @property
    def n_ops(self) -> int:
        """Number of ops (forward nodes)."""
        return len(self.ops)

    def is_forward(self, node: int) -> bool:
        """Whether graph node ``node`` is a forward node."""
        return node < len(self.ops)

    def backward_nodes(self) -> list[int]:
        """The backward nodes in execution order (reverse op order)."""
        return [v for v in reversed(self.bwd_node) if v is not None]


def _graph_attrs() -> set[str]:
    """Keyword attributes this version of :class:`Graph` accepts beyond the basic ones."""
    return set(inspect.signature(Graph.__init__).parameters)


def _count(op: Op, what: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"op {op.name!r}: {what} must return an int >= 0, got {value!r}")
    return int(value)


def _reads(op: Op) -> tuple[bool, ...]:
    r = op.backward_reads()
    if (
        not isinstance(r, tuple)
        or len(r) != len(op.inputs) + 1
        or not all(isinstance(f, (bool, np.bool_)) for f in r)
    ):
        raise ValueError(
            f"op {op.name!r}: backward_reads must return a tuple of {len(op.inputs) + 1} bools "
            f"(one per input, then the output), got {r!r}"
        )
    return tuple(bool(f) for f in r)


def build_step_graph(
    ops: Sequence[Op], batch: int, seq: int, durations: dict[int, int] | None = None
) -> StepGraph:
    """Build the step graph of ``ops`` at batch shape (``batch``, ``seq``).

    Parameters
    ----------
    ops : sequence of Op
        A model's ops (checked by :func:`sparseft.models.graph.check_ops`).
    batch, seq : int
        Batch shape for ``out_nbytes``/``grad_nbytes``.
    durations : dict, optional
        Measured duration of each node (any positive integer unit, e.g. microseconds); nodes
        missing get 1 (plan by the number of recomputations).

    Raises
    ------
    ValueError
        If no op has trainable parameters (there is nothing to train), or an op reports a
        negative size.
    """
    ops = list(ops)
    check_ops(ops)
    n = len(ops)
    pos = {op.name: i for i, op in enumerate(ops)}
    need = [False] * n
    consumers: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for i, op in enumerate(ops):
        srcs = [pos[s] for s in op.inputs if s not in BATCH_NAMES]
        need[i] = op.accumulates or any(need[j] for j in srcs)
        for k, s in enumerate(op.inputs):
            if s not in BATCH_NAMES:
                consumers[pos[s]].append((i, k))
    if not need[-1]:
        raise ValueError("model: no op has trainable parameters, so a step has nothing to train")
    nodes: list[int] = []
    edges: list[tuple[int, int]] = []
    memory: list[int] = []
    labels: list[str] = []
    backward: list[bool] = []
    block: list[int | None] = []
    once: list[int] = []
    bwd_node: list[int | None] = [None] * n
    node_op = list(range(n))
    reads = [_reads(op) for op in ops]
    for i, op in enumerate(ops):
        nodes.append(i)
        memory.append(_count(op, "train_out_nbytes", op.train_out_nbytes(batch, seq)))
        labels.append(f"{op.name}")
        backward.append(False)
        block.append(op.block)
        edges.extend((pos[s], i) for s in op.inputs if s not in BATCH_NAMES)
    for i in reversed(range(n)):
        if not need[i]:
            continue
        op = ops[i]
        v = len(nodes)
        bwd_node[i] = v
        node_op.append(i)
        nodes.append(v)
        memory.append(_count(op, "grad_nbytes", op.grad_nbytes(batch, seq)))
        labels.append(f"{op.name}.backward")
        backward.append(True)
        block.append(op.block)
        if op.accumulates:
            once.append(v)
        edges.extend(
            (pos[s], v) for s, r in zip(op.inputs, reads[i], strict=False) if r and s not in BATCH_NAMES
        )
        if reads[i][-1]:
            edges.append((i, v))
        # every consumer needs a gradient too (need_bwd propagates to descendants)
        edges.extend((_bwd(bwd_node, c), v) for c, _ in consumers[i])
    dur = [max(1, int((durations or {}).get(v, 1))) for v in nodes]
    kwargs: dict[str, Any] = {}
    attrs = _graph_attrs()
    # the Planner's exactly-once and per-block attributes, where this version of Graph has them
    if "once" in attrs:
        kwargs["once"] = {v: v in set(once) for v in nodes}
    if "block" in attrs:
        kwargs["block"] = dict(zip(nodes, block, strict=True))
    graph = Graph(
        nodes,
        edges,
        memory,
        dur,
        order=nodes,
        labels=labels,
        backward=backward,
        name="training step",
        **kwargs,
    )
    return StepGraph(ops, graph, need, consumers, once, batch, seq, bwd_node, node_op, reads)


def _bwd(bwd_node: list[int | None], i: int) -> int:
    v = bwd_node[i]
    assert v is not None
    return v


def liveness_steps(graph: Graph, computes: Sequence[int]) -> list[tuple[str, int]]:
    """A schedule from a sequence of computes: each copy is freed right after its last read.

    A copy of ``v`` lives from its compute to the last compute that reads ``v`` before ``v`` is
    computed again (a node that is never read again is freed at once; the loss value is read by
    the executor when computed). Everything is freed by the end.
    """
    last_read: dict[int, int] = {}  # position of a compute -> position of its copy's last read
    current: dict[int, int] = {}  # node -> position of its live copy's compute
    for p, v in enumerate(computes):
        for u in graph.predecessors(v):
            if u in current:
                last_read[current[u]] = p
        current[v] = p
    free_after: dict[int, list[int]] = {}
    for p, v in enumerate(computes):
        free_after.setdefault(last_read.get(p, p), []).append(v)
    steps: list[tuple[str, int]] = []
    for p, v in enumerate(computes):
        steps.append(("compute", v))
        steps.extend(("free", u) for u in free_after.get(p, []))
    return steps


def block_checkpoint_steps(sg: StepGraph) -> list[tuple[str, int]]:
    """Per-block checkpointing: keep each block's boundary outputs, recompute its inside in the backward.

    The forward runs in order; before the first backward node of block ``k``, the forward of every
    op of block ``k`` whose output no op outside block ``k`` reads is computed again. Ops with
    ``block=None`` (embeddings, head, loss) keep their outputs.
    """
    n = sg.n_ops
    computes = list(range(n))
    blocks = [op.block for op in sg.ops]
    boundary = [
        blocks[i] is None or any(blocks[c] != blocks[i] for c, _ in sg.consumers[i]) for i in range(n)
    ]
    done: set[Any] = set()
    for i in reversed(range(n)):
        if not sg.need_bwd[i]:
            continue
        b = blocks[i]
        if b is not None and b not in done:
            done.add(b)
            computes.extend(j for j in range(n) if blocks[j] == b and not boundary[j])
        computes.append(_bwd(sg.bwd_node, i))
    return liveness_steps(sg.graph, computes)


def check_once(sg: StepGraph, steps: Sequence[tuple[str, Any]]) -> None:
    """ValueError if a schedule computes an exactly-once node twice (or never)."""
    counts: dict[int, int] = {}
    for op, v in steps:
        if op == "compute":
            counts[v] = counts.get(v, 0) + 1
    for v in sg.once:
        if counts.get(v, 0) != 1:
            raise ValueError(
                f"schedule computes {sg.graph.label(v)!r} {counts.get(v, 0)} times; it accumulates parameter "
                "gradients and must run exactly once per step"
            )


def schedule_of(
    sg: StepGraph, steps: list[tuple[str, int]], budget: int, solver: str, status: str
) -> Schedule:
    """A checked :class:`Schedule` for steps built here (simulated; exactly-once nodes checked)."""
    check_once(sg, steps)
    codes = np.array([v if op == "compute" else -1 - v for op, v in steps], dtype=np.int64)
    simulate(sg.graph, codes)
    return Schedule(sg.graph, codes, status=status, solver=solver, budget=budget)


def typical_durations(sg: StepGraph, durations: dict[int, int]) -> dict[int, int]:
    """Measured node durations made typical: each node gets the median over the nodes of its kind.

    A node's kind is its op's class, forward or backward, its output's bytes and its inputs'
    bytes: the same layer of every block is one kind, so one noisy measurement (another process
    took the core for a moment) does not make the Planner recompute around it, and plans from
    different runs agree. Nodes without a measurement keep none.

    Parameters
    ----------
    sg : StepGraph
    durations : dict
        node -> measured duration (e.g. the executor's microseconds).

    Returns
    -------
    dict
        node -> typical duration (int >= 1).
    """
    pos = {op.name: i for i, op in enumerate(sg.ops)}
    mem = sg.graph.memory

    def kind(v: int) -> tuple[Any, ...]:
        i = sg.node_op[v]
        op = sg.ops[i]
        ins = tuple(int(mem[pos[s]]) if s in pos else s for s in op.inputs)
        return (type(op).__qualname__, v < sg.n_ops, int(mem[i]), ins)

    groups: dict[tuple[Any, ...], list[int]] = {}
    for v, d in durations.items():
        groups.setdefault(kind(v), []).append(int(d))
    med = {k: max(1, int(np.median(ds))) for k, ds in groups.items()}
    return {v: med[kind(v)] for v in durations}
