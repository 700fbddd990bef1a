"""The step executor: runs a schedule of a step graph literally, with an activation store.

A "compute" of a forward node runs ``op.train_forward`` on the resident activations of its inputs;
a "compute" of a backward node sums the input gradients its consumers' backward nodes left in the
store (in reverse op order, as :func:`sparseft.models.graph.run_step` does, so the sums are
bit-identical) and runs ``op.backward`` on the activations ``op.backward_reads()`` flags (``None``
for the others, which need not be resident); a "free" drops the buffer. The store counts the bytes
of every resident output; its peak is what a memory budget bounds (kernel temporaries inside one
op and the batch itself are not counted). With a :class:`~sparseft.train.pool.BufferPool` on the
store, freed buffers nothing else references are kept and handed back to ops that take ``alloc=``
(``Op.takes_alloc``) for their outputs, within the schedule's peak. See ``docs/training.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from sparseft.models.graph import BATCH_NAMES, act_nbytes, primary
from sparseft.train.pool import BufferPool
from sparseft.train.stepgraph import StepGraph

__all__ = ["ActivationStore", "execute"]


def _nbytes(value: Any) -> int:
    """Bytes of an activation or of a backward's gradient tuple (``None`` entries count 0; an array
    returned twice, e.g. a residual add passing its gradient to both inputs, counts once)."""
    if isinstance(value, tuple):
        seen = {id(x): act_nbytes(x) for x in value if x is not None}
        return sum(seen.values())
    return act_nbytes(value)


class ActivationStore:
    """Resident outputs of a step's nodes, with a live-byte count and its peak.

    Attributes
    ----------
    live : int
        Bytes resident now.
    peak : int
        Largest ``live`` seen since construction (or :meth:`reset_peak`).
    largest : int
        Largest single output stored since construction.
    pool : BufferPool or None
        Where freed buffers go for reuse (None: they are dropped). Its bytes are not ``live``:
        the pool keeps live + pooled within its ``limit``.
    """

    def __init__(self, pool: BufferPool | None = None) -> None:
        if pool is not None and not isinstance(pool, BufferPool):
            raise TypeError(f"pool: expected a BufferPool or None, got {type(pool).__name__}")
        self._bufs: dict[int, Any] = {}
        self._bytes: dict[int, int] = {}
        self.live = 0
        self.peak = 0
        self.largest = 0
        self.pool = pool

    def put(self, node: int, value: Any, declared: int | None = None, what: str = "") -> None:
        """Make ``value`` the resident output of ``node`` (which must not be resident).

        With ``declared``, a value larger than the declared bytes is a RuntimeError naming
        ``what``: the plan's memory (and so the budget) would not hold.
        """
        if node in self._bufs:
            raise RuntimeError(f"node {node} is already resident")
        nb = _nbytes(value)
        if declared is not None and nb > declared:
            raise RuntimeError(
                f"{what}: {nb} bytes, more than the {declared} bytes its op declares; "
                "the step's memory plan would not hold"
            )
        self._bufs[node] = value
        self._bytes[node] = nb
        self.largest = max(self.largest, nb)
        self.live += nb
        self.peak = max(self.peak, self.live)

    def get(self, node: int) -> Any:
        """The resident output of ``node``."""
        try:
            return self._bufs[node]
        except KeyError:
            raise RuntimeError(f"node {node} is not resident") from None

    def free(self, node: int) -> None:
        """Release ``node``'s output."""
        if node not in self._bufs:
            raise RuntimeError(f"node {node} is not resident")
        self.live -= self._bytes.pop(node)
        if self.pool is None:
            del self._bufs[node]
        else:  # the store's reference goes first: the pool takes only what nothing else holds
            self.pool.recycle([self._bufs.pop(node)], self.live)

    def clear(self) -> None:
        """Release everything (into the pool, if any, within its limit)."""
        values = list(self._bufs.values())
        self._bufs.clear()
        self._bytes.clear()
        self.live = 0
        if self.pool is None:
            values.clear()
        else:
            self.pool.recycle(values, 0)

    def reset_peak(self) -> None:
        """Restart the peak from the bytes resident now."""
        self.peak = self.live

    def __contains__(self, node: int) -> bool:
        return node in self._bufs


def _add(a: np.ndarray | None, b: np.ndarray, alloc: Callable[..., np.ndarray] | None = None) -> np.ndarray:
    # out of place, exactly as run_step: a backward may hand the same array to two inputs. With
    # a pool the sum goes into a pooled buffer (the same ufunc loop: the same bits)
    if a is None:
        return b
    if alloc is None or a.shape != b.shape or a.dtype != np.float32 or b.dtype != np.float32:
        return a + b
    out = alloc(a.shape)
    if np.may_share_memory(out, a) or np.may_share_memory(out, b):
        raise RuntimeError("buffer pool: handed out a buffer that is still in use")
    return np.add(a, b, out=out)


def execute(
    sg: StepGraph,
    codes: np.ndarray,
    batch: np.ndarray,
    target: np.ndarray,
    store: ActivationStore | None = None,
    durations: dict[int, int] | None = None,
    on_backward: Callable[[int], None] | None = None,
) -> float:
    """Run one training step by the schedule ``codes`` (node index, or ``-1 - index`` to free).

    Parameter gradients are accumulated into the ops' ``grads()`` (exactly-once backward nodes
    run once per schedule; see :func:`sparseft.train.stepgraph.check_once`).

    Parameters
    ----------
    sg : StepGraph
    codes : numpy.ndarray
        int64 schedule codes (e.g. ``Schedule.codes``).
    batch, target : numpy.ndarray
        The step's ``"input"`` and ``"target"``.
    store : ActivationStore, optional
        Where activations live (its ``peak`` is the measured peak); a fresh one by default.
        It is empty again when the step ends.
    durations : dict, optional
        If given, filled with the wall time (microseconds, >= 1) of each node's first compute.
    on_backward : callable, optional
        ``on_backward(i)`` after op ``i``'s backward node ran (its parameter gradients are then
        complete for this step): data-parallel training starts gradient all-reduces from it.

    With a pool on ``store`` (:class:`~sparseft.train.pool.BufferPool`), ops whose
    ``takes_alloc`` is true get ``alloc=pool.empty`` and draw their outputs from the buffers of
    freed nodes; before each compute the pool releases what would not fit with the node's
    declared output under its limit. Results are bit-identical to the run without a pool.

    Returns
    -------
    float
        The loss of the step (the loss op's output).
    """
    ops = sg.ops
    n = len(ops)
    pos = {op.name: i for i, op in enumerate(ops)}
    data = {"input": batch, "target": target}
    st = ActivationStore() if store is None else store
    pool = st.pool
    alloc = None if pool is None else pool.empty
    loss: float | None = None
    mem = sg.graph.memory

    # per op: where each input comes from (a batch name, or the op index), fixed for the step
    srcs = [[s if s in BATCH_NAMES else pos[s] for s in op.inputs] for op in ops]
    reads = sg.reads or [(True,) * (len(op.inputs) + 1) for op in ops]
    keep = [[isinstance(s, int) and sg.need_bwd[s] for s in src] for src in srcs]

    def arg(s: Any) -> Any:
        return data[s] if isinstance(s, str) else st.get(s)

    def forward(c: int, op: Any) -> float | None:
        # a function of its own: its locals (inputs, output) are gone when the next "free" runs,
        # so a freed buffer is referenced by nothing and may go to the pool
        xs = [arg(s) for s in srcs[c]]
        y = (
            op.train_forward(*xs, alloc=alloc)
            if alloc is not None and op.takes_alloc
            else op.train_forward(*xs)
        )
        value = float(primary(y)) if c == n - 1 else None
        st.put(c, y, int(mem[c]), f"op {op.name!r}: forward returned")
        return value

    def backward(c: int, i: int, op: Any) -> None:
        gy: np.ndarray | None = None
        for ci, k in reversed(sg.consumers[i]):
            g = st.get(sg.bwd_node[ci])[k]  # type: ignore[index, arg-type]
            if g is not None:
                gy = _add(gy, g, alloc)
        if i < n - 1 and gy is None:
            st.put(c, (None,) * len(op.inputs))  # no gradient reaches this op
            return
        r = reads[i]
        xs = [arg(s) if f else None for s, f in zip(srcs[i], r, strict=False)]
        y = st.get(i) if r[-1] else None
        if alloc is not None and op.takes_alloc:
            gxs = op.backward(gy, *xs, y=y, alloc=alloc)
        else:
            gxs = op.backward(gy, *xs, y=y)
        if len(gxs) != len(op.inputs):
            raise ValueError(
                f"op {op.name!r}: backward returned {len(gxs)} gradients for {len(op.inputs)} inputs"
            )
        # keep only the gradients some backward node will read
        kept = tuple(g if k else None for k, g in zip(keep[i], gxs, strict=True))
        st.put(c, kept, int(mem[c]), f"op {op.name!r}: backward returned")

    try:
        for c in codes.tolist():
            if c < 0:
                st.free(-1 - c)
                continue
            t0 = time.perf_counter_ns()
            i = sg.node_op[c]
            op = ops[i]
            if pool is not None:  # room for this node's output within the plan's peak
                pool.reserve(st.live + int(mem[c]))
                if not op.takes_alloc:  # it allocates its output itself: hand the allocator a buffer
                    pool.release(int(mem[c]))
            if c < n:
                value = forward(c, op)
                if value is not None and loss is None:
                    loss = value
            else:
                backward(c, i, op)
                if on_backward is not None:
                    on_backward(i)
            if durations is not None and c not in durations:
                durations[c] = max(1, (time.perf_counter_ns() - t0) // 1000)
    finally:
        st.clear()
    if loss is None:
        raise RuntimeError("schedule never computed the loss op")
    return loss
