"""The model-op protocol: a model is a list of pure ops in topological order.

A training step is one forward per op followed by one backward per op in reverse order. The Trainer
turns those into graph nodes, plans a schedule under a memory budget and executes it: a forward
node runs :meth:`Op.forward` on resident inputs, a "free" drops a buffer, a backward node runs
:meth:`Op.backward`. Ops therefore keep no reference to their inputs or outputs between calls.

Conventions
-----------
* An activation (:data:`Act`) is one array or a tuple of arrays. The first array of a tuple is the
  op's *primary* output; the rest are what its backward needs besides inputs and output (e.g.
  LayerNorm's mean and rstd, attention's log-sum-exp), so an activation store counts their bytes.
* An op reading another op's output receives that op's whole :data:`Act`; :func:`primary` picks the
  array. The names ``"input"`` (token ids int64 (B, T), or features float32 (B, F)) and
  ``"target"`` (labels) denote the batch.
* ``backward(gy, *xs, y=y)`` gets the gradient of the primary output (``None`` for the loss op,
  which seeds 1.0) and returns one gradient per input, w.r.t. that input's primary output (``None``
  where not differentiable). It *accumulates* parameter gradients into :meth:`Op.grads`, so it runs
  exactly once per step; each parameter gradient is accumulated by exactly one op. The returned
  gradients may alias each other or ``gy`` (a residual add passes ``gy`` on to both inputs), so an
  executor sums gradients out of place; the loss op's primary output is its 0-d loss (it may return
  more, e.g. the per-token log-sum-exp its backward reuses).
* The last op of :meth:`Model.ops` is the loss: its forward returns a float32 0-d array (mean loss
  over the batch) and its inputs include ``"target"``.
* An op whose ``takes_alloc`` is true also accepts ``alloc=`` in :meth:`Op.train_forward` and
  :meth:`Op.backward`: a callable ``alloc(shape, dtype=float32)`` returning an uninitialized
  C-contiguous writeable array that shares memory with nothing live (the Trainer's executor passes
  its buffer pool's, :class:`sparseft.train.pool.BufferPool`), for the op's large outputs. An op
  uses it only for arrays it returns or drops (never keeps them), and gets identical results either way.

See ``docs/models.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["BATCH_NAMES", "Act", "Alloc", "Model", "Op", "act_nbytes", "check_ops", "primary", "run_step"]

Act = np.ndarray | tuple[np.ndarray, ...]
"""An activation: one array, or a tuple whose first array is the primary output."""

Alloc = Callable[..., np.ndarray]
"""``alloc(shape, dtype=numpy.float32)``: an uninitialized output buffer (see ``Op.takes_alloc``)."""

BATCH_NAMES = ("input", "target")
"""Input names that denote the batch rather than another op's output."""


def primary(a: Act) -> np.ndarray:
    """The primary array of an activation (the array itself, or a tuple's first element)."""
    return a[0] if isinstance(a, tuple) else a


def act_nbytes(a: Act | None) -> int:
    """Bytes held by an activation (all arrays of a tuple; 0 for ``None``)."""
    if a is None:
        return 0
    if isinstance(a, tuple):
        return sum(int(x.nbytes) for x in a)
    return int(a.nbytes)


class Op:
    """One node of a model's step: a pure forward and a backward that accumulates parameter grads.

    Attributes
    ----------
    name : str
        Unique in the model, e.g. ``"h.3.attn.c_proj"``.
    inputs : tuple of str
        Names of the ops whose outputs it reads; ``"input"``/``"target"`` denote the batch.
    block : int or None
        Index of the transformer block / MLP layer it belongs to (``None``: embeddings, head).
    """

    name: str
    inputs: tuple[str, ...]
    block: int | None
    takes_alloc: bool = False
    """Whether :meth:`train_forward` and :meth:`backward` accept ``alloc=`` (an :data:`Alloc` an
    executor passes to hand out reused output buffers; see the module docstring)."""

    def __init__(self, name: str, inputs: Sequence[str], block: int | None = None) -> None:
        if not isinstance(name, str) or not name or name in BATCH_NAMES:
            raise ValueError(f"name: expected a non-empty str other than {BATCH_NAMES}, got {name!r}")
        if isinstance(inputs, str) or not all(isinstance(i, str) for i in inputs):
            raise TypeError(f"inputs: expected a sequence of str, got {inputs!r}")
        self.name = name
        self.inputs = tuple(inputs)
        self.block = block

    def params(self) -> dict[str, np.ndarray]:
        """Trainable arrays (name -> array, updated in place by the optimizer); none by default."""
        return {}

    def grads(self) -> dict[str, np.ndarray]:
        """Accumulated gradients of :meth:`params` (same keys and shapes)."""
        return {}

    @property
    def accumulates(self) -> bool:
        """Whether :meth:`backward` adds to some parameter gradient, so it must run exactly once
        per step. By default: the op has parameters. An op that adds to another op's gradient
        (a head tied to the token embedding) says True without parameters of its own."""
        return bool(self.params())

    def forward(self, *xs: Act) -> Act:
        """Compute the output from the inputs' activations; must not keep ``xs`` or the result."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, gy: Act | None, *xs: Act, y: Act) -> tuple[np.ndarray | None, ...]:
        """Gradients w.r.t. each input's primary output; accumulates parameter gradients.

        Parameters
        ----------
        gy : numpy.ndarray or None
            Gradient of the primary output; ``None`` for the loss op (seeds 1.0).
        *xs : Act
            The inputs' activations, as given to :meth:`forward`.
        y : Act
            This op's forward output.
        """
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def out_nbytes(self, batch: int, seq: int) -> int:
        """Bytes of :meth:`forward`'s output (all arrays of the tuple) at this batch shape."""
        raise NotImplementedError(f"{type(self).__name__}.out_nbytes")

    def backward_reads(self) -> tuple[bool, ...]:
        """Which activations :meth:`backward` really reads: one flag per input, then one for its
        own output ``y``. All by default. An executor passes ``None`` for an unread one, so an
        activation no backward reads is freed right after its last forward use."""
        return (True,) * (len(self.inputs) + 1)

    def train_forward(self, *xs: Act) -> Act:
        """The forward a training step runs (:meth:`forward` by default). An op may return more
        here for its backward, e.g. the loss op's input gradient computed in the same pass; its
        size is :meth:`train_out_nbytes`."""
        return self.forward(*xs)

    def train_out_nbytes(self, batch: int, seq: int) -> int:
        """Bytes of :meth:`train_forward`'s output (:meth:`out_nbytes` by default)."""
        return self.out_nbytes(batch, seq)

    def grad_nbytes(self, batch: int, seq: int) -> int:
        """Bytes of the gradients :meth:`backward` returns at this batch shape."""
        raise NotImplementedError(f"{type(self).__name__}.grad_nbytes")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, inputs={self.inputs!r}, block={self.block!r})"


def check_ops(ops: Sequence[Op]) -> None:
    """Validate a model's op list: unique names, topological order, a loss op last.

    Raises
    ------
    ValueError
        Naming the offending op.
    """
    if len(ops) == 0:
        raise ValueError("ops: expected at least one op (the loss), got none")
    seen: set[str] = set(BATCH_NAMES)
    for op in ops:
        if not isinstance(op, Op):
            raise TypeError(f"ops: expected Op instances, got {type(op).__name__}")
        if op.name in seen:
            raise ValueError(f"ops: duplicate op name {op.name!r}")
        for i in op.inputs:
            if i not in seen:
                raise ValueError(f"ops: {op.name!r} reads {i!r}, which is not an earlier op or the batch")
        seen.add(op.name)
    if "target" not in ops[-1].inputs:
        raise ValueError(f"ops: the last op must be the loss reading 'target', got {ops[-1].name!r}")


class Model:
    """A model as a list of ops (see :mod:`sparseft.models.graph`).

    Subclasses implement :meth:`ops`, :meth:`state_dict` and :meth:`load_state_dict`; parameters,
    gradients and :meth:`zero_grad` are collected from the ops under ``"<op name>.<param>"`` keys.
    """

    def ops(self) -> list[Op]:
        """The ops in topological order; the last one is the loss."""
        raise NotImplementedError(f"{type(self).__name__}.ops")

    def parameters(self) -> dict[str, np.ndarray]:
        """All trainable arrays, keyed ``"<op name>.<param>"``."""
        return {f"{op.name}.{k}": v for op in self.ops() for k, v in op.params().items()}

    def gradients(self) -> dict[str, np.ndarray]:
        """The accumulated gradients of :meth:`parameters` (same keys)."""
        return {f"{op.name}.{k}": v for op in self.ops() for k, v in op.grads().items()}

    def zero_grad(self) -> None:
        """Set every accumulated gradient to zero (in place)."""
        for g in self.gradients().values():
            g.fill(0)

    def state_dict(self) -> dict[str, np.ndarray]:
        """All weights under the checkpoint key names (Hugging Face names for GPT-2/Llama)."""
        raise NotImplementedError(f"{type(self).__name__}.state_dict")

    def load_state_dict(self, sd: dict[str, np.ndarray], strict: bool = True) -> None:
        """Load weights saved by :meth:`state_dict`."""
        raise NotImplementedError(f"{type(self).__name__}.load_state_dict")


def _add(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    # Out of place: an op may return the same array for two inputs (a residual add passes gy on).
    return b if a is None else a + b


def run_step(model: Model, batch: np.ndarray, target: np.ndarray) -> float:
    """Reference executor: one forward and backward of every op, keeping every activation.

    Forwards run in order, then backwards in reverse; gradients of outputs read by several ops are
    summed. Parameter gradients are *accumulated* into the ops' grads (call ``model.zero_grad()``
    first for a fresh step). An op whose output receives no gradient is skipped in the backward.

    Parameters
    ----------
    model : Model
    batch : numpy.ndarray
        The ``"input"`` of the step.
    target : numpy.ndarray
        The ``"target"`` of the step.

    Returns
    -------
    float
        The loss (the last op's output).
    """
    ops = model.ops()
    check_ops(ops)
    acts: dict[str, Any] = {"input": batch, "target": target}
    for op in ops:
        acts[op.name] = op.forward(*(acts[i] for i in op.inputs))
    loss = primary(acts[ops[-1].name])
    if not (isinstance(loss, np.ndarray) and loss.ndim == 0):
        raise ValueError(f"loss op {ops[-1].name!r}: expected a 0-d array, got {type(loss).__name__}")
    grads: dict[str, np.ndarray | None] = {}
    for k, op in enumerate(reversed(ops)):
        gy = grads.pop(op.name, None)
        if k > 0 and gy is None:
            continue
        xs = [acts[i] for i in op.inputs]
        gxs = op.backward(gy, *xs, y=acts[op.name])
        if len(gxs) != len(op.inputs):
            raise ValueError(
                f"op {op.name!r}: backward returned {len(gxs)} gradients for {len(op.inputs)} inputs"
            )
        for name, g in zip(op.inputs, gxs, strict=True):
            if g is not None and name not in BATCH_NAMES:
                grads[name] = _add(grads.get(name), g)
    return float(loss)
