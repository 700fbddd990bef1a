"""The step executor: runs a schedule of a step graph literally, with an activation store.

A "compute" of a forward node runs ``op.train_forward`` on the resident activations of its inputs;
a "compute" of a backward node sums the input gradients its consumers' backward nodes left in the
store (in reverse op order, as :func:`sparseft.models.graph.run_step` does, so the sums are
bit-identical) and runs ``op.backward`` on the activations ``op.backward_reads()`` flags (``None``
for the others, which need not be resident); a "free" drops the buffer. The store counts the bytes
of every resident output; its peak is what a memory budget bounds (kernel temporaries inside one
op and the batch itself are not counted). See ``docs/training.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from sparseft.models.graph import BATCH_NAMES, act_nbytes, primary
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
    """

    def __init__(self) -> None:
        self._bufs: dict[int, Any] = {}
        self._bytes: dict[int, int] = {}
        self.live = 0
        self.peak = 0
        self.largest = 0

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
        del self._bufs[node]
        self.live -= self._bytes.pop(node)

    def clear(self) -> None:
        """Release everything."""
        self._bufs.clear()
        self._bytes.clear()
        self.live = 0

    def reset_peak(self) -> None:
        """Restart the peak from the bytes resident now."""
        self.peak = self.live

    def __contains__(self, node: int) -> bool:
        return node in self._bufs


def _add(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    # out of place, exactly as run_step: a backward may hand the same array to two inputs
    return b if a is None else a + b


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
    loss: float | None = None
    mem = sg.graph.memory

    # per op: where each input comes from (a batch name, or the op index), fixed for the step
    srcs = [[s if s in BATCH_NAMES else pos[s] for s in op.inputs] for op in ops]
    reads = sg.reads or [(True,) * (len(op.inputs) + 1) for op in ops]
    keep = [[isinstance(s, int) and sg.need_bwd[s] for s in src] for src in srcs]

    def arg(s: Any) -> Any:
        return data[s] if isinstance(s, str) else st.get(s)

    try:
        for c in codes.tolist():
            if c < 0:
                st.free(-1 - c)
                continue
            t0 = time.perf_counter_ns()
            i = sg.node_op[c]
            op = ops[i]
            if c < n:
                y = op.train_forward(*[arg(s) for s in srcs[i]])
                if i == n - 1 and loss is None:
                    loss = float(primary(y))
                st.put(c, y, int(mem[c]), f"op {op.name!r}: forward returned")
            else:
                gy: np.ndarray | None = None
                for ci, k in reversed(sg.consumers[i]):
                    g = st.get(sg.bwd_node[ci])[k]  # type: ignore[index]
                    if g is not None:
                        gy = _add(gy, g)
                if i < n - 1 and gy is None:
                    st.put(c, (None,) * len(op.inputs))  # no gradient reaches this op
                else:
                    r = reads[i]
                    xs = [arg(s) if f else None for s, f in zip(srcs[i], r, strict=False)]
                    gxs = op.backward(gy, *xs, y=st.get(i) if r[-1] else None)
                    if len(gxs) != len(op.inputs):
                        raise ValueError(
                            f"op {op.name!r}: backward returned {len(gxs)} gradients for {len(op.inputs)} inputs"
                        )
                    # keep only the gradients some backward node will read
                    kept = tuple(g if k else None for k, g in zip(keep[i], gxs, strict=True))
                    st.put(c, kept, int(mem[c]), f"op {op.name!r}: backward returned")
                if on_backward is not None:
                    on_backward(i)
            if durations is not None and c not in durations:
                durations[c] = max(1, (time.perf_counter_ns() - t0) // 1000)
    finally:
        st.clear()
    if loss is None:
        raise RuntimeError("schedule never computed the loss op")
    return loss
