"""The LoRS paper's gradient-SVD adapter init through the Trainer.

``LoRSConfig(init="lors")`` needs, for every adapted linear, the masked full-weight gradient
G ⊙ M (out, in) of the loss: A is then the top-r right singular vectors of G ⊙ M (see
:func:`sparseft.adapters.inits.lors_init`) and B = 0. :func:`init_lors` estimates G ⊙ M over a few
calibration batches by running the Trainer's own step (its step graph and schedule, so a memory
budget holds here as in training) with every adapted layer's backward observed: each sees its
input x and output gradient gy, and G += gyᵀ x is summed per layer. With B = 0 the adapted model
computes the base model, so G is the pruned model's weight gradient.

The G ⊙ M buffers are the one out×in float32 array per adapted layer this makes; they are freed
when the init returns. The calibration batches are drawn from their own generator (seeded by the
Trainer's ``seed``), so the training batches that follow are the same as with ``init="lora"``.
See docs/training.md ("LoRS gradient-SVD init through the Trainer").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from sparseft.adapters import LoRSLinear
from sparseft.data.corpus import TokenData
from sparseft.train.executor import ActivationStore, execute

if TYPE_CHECKING:
    from sparseft.train.trainer import Trainer

__all__ = ["CALIBRATION_BATCHES", "adapted_layers", "estimate_masked_grads", "init_lors"]

#: Calibration batches :meth:`Trainer.fit` uses when it runs the init itself.
CALIBRATION_BATCHES = 4
_CALIB_STREAM = 0x4C6F5253  # "LoRS": the calibration generator is default_rng([seed, this])


def adapted_layers(model: Any) -> dict[str, LoRSLinear]:
    """The model's block linears in adapter mode, by op name (op order)."""
    out: dict[str, LoRSLinear] = {}
    for op in model.ops():
        layer = getattr(op, "layer", None)
        if getattr(op, "mode", None) == "adapter" and isinstance(layer, LoRSLinear):
            out[op.name] = layer
    return out


@contextlib.contextmanager
def _observed(layers: dict[str, LoRSLinear], sums: dict[str, np.ndarray]) -> Iterator[None]:
    """While active, each layer's backward(gy, x) also adds gyᵀ x into ``sums[name]`` (the
    layer's own backward, or a wrapper already set on the instance, still runs; it is restored)."""
    saved: dict[str, Any] = {}
    try:
        for name, layer in layers.items():
            saved[name] = layer.__dict__.get("backward")
            inner = layer.backward

            def backward(
                gy: np.ndarray,
                x: np.ndarray | None = None,
                _l: Any = layer,
                _n: str = name,
                _inner: Any = inner,
            ) -> Any:
                assert x is not None
                sums[_n] += _l.estimate_full_grad([(x, gy)])
                return _inner(gy, x=x)

            layer.backward = backward  # type: ignore[method-assign]
        yield
    finally:
        for name, prev in saved.items():
            if prev is None:
                layers[name].__dict__.pop("backward", None)
            else:
                layers[name].backward = prev  # type: ignore[method-assign]


def _check_fresh(trainer: Trainer, layers: dict[str, LoRSLinear]) -> None:
    if trainer.step > 0:
        raise RuntimeError(
            f"init_lors: the trainer has already taken {trainer.step} steps; the gradient-SVD init "
            "re-initializes A and sets B = 0, so it runs before training only"
        )
    for name, layer in layers.items():
        if layer.merged:
            raise RuntimeError(f"init_lors: {name} is merged; unmerge it first")
        if np.any(layer.B):
            raise RuntimeError(
                f"init_lors: {name} has B != 0 (trained or loaded adapters); the init would change the model"
            )


def estimate_masked_grads(
    trainer: Trainer, data: Any, batches: int = CALIBRATION_BATCHES, batch_size: int = 8, seq_len: int = 64
) -> dict[str, np.ndarray]:
    """G ⊙ M (out, in) float32 of every adapted linear, summed over ``batches`` calibration batches.

    Each batch runs the Trainer's executed step (forward and backward by its schedule); the
    adapter gradients it accumulates are zeroed afterwards and the optimizer is not touched.
    With ``comm``, every rank runs every shard of each global batch, so all ranks get the same G.

    Parameters
    ----------
    trainer : Trainer
        With LoRS adapters attached (``adapter=LoRSConfig(...)``).
    data : token ids, bytes, str, path
        As for :meth:`Trainer.fit`.
    batches, batch_size, seq_len : int
        Calibration batches (>= 1), rows per batch, tokens per row.

    Returns
    -------
    dict of str to numpy.ndarray
        Op name -> G ⊙ M, exactly 0 off the layer's mask.

    Raises
    ------
    TypeError, ValueError
        Wrong types or sizes (naming the argument), data too short, a model without adapters.
    """
    from sparseft.train.trainer import _check_seq_len, _int

    batches = _int("batches", batches, 1)
    batch_size = _int("batch_size", batch_size, 1)
    seq_len = _int("seq_len", seq_len, 1)
    layers = adapted_layers(trainer.model)
    if not layers:
        raise ValueError(
            "trainer: its model has no linears in adapter mode (construct it with adapter=LoRSConfig(...))"
        )
    ds = trainer._dataset(data, "data")
    if not isinstance(ds, TokenData):
        raise TypeError("data: the LoRS init estimates a language model's gradient; expected token data")
    _check_seq_len(trainer.model, seq_len)
    ds.check(batch_size, seq_len, "data")
    per = batch_size if trainer.dp is None else batch_size // trainer.world_size
    if per < 1 or per * (1 if trainer.dp is None else trainer.world_size) != batch_size:
        raise ValueError(
            f"batch_size: expected a multiple of the {trainer.world_size} ranks, got {batch_size}"
        )
    sg, sched = trainer.plan_for(per, seq_len)
    rng = np.random.default_rng([trainer.seed, _CALIB_STREAM])
    sums = {n: np.zeros((L.out_features, L.in_features), np.float32) for n, L in layers.items()}
    trainer.model.zero_grad()
    try:
        with _observed(layers, sums):
            for _ in range(batches):
                x, y = ds.sample(rng, batch_size, seq_len)
                for lo in range(0, batch_size, per):
                    execute(sg, sched.codes, x[lo : lo + per], y[lo : lo + per], ActivationStore())
    finally:
        trainer.model.zero_grad()
    return sums


def init_lors(
    trainer: Trainer,
    data: Any,
    batches: int = CALIBRATION_BATCHES,
    batch_size: int = 8,
    seq_len: int = 64,
    lors_scale: str | float = "lora",
) -> dict[str, float]:
    """Initialize every adapted linear's A from the SVD of its estimated G ⊙ M (B stays 0).

    A is written in place (the optimizer keeps its arrays). See :func:`estimate_masked_grads`
    for the estimate and :meth:`sparseft.LoRSLinear.init_adapters` for the init.

    Parameters
    ----------
    trainer, data, batches, batch_size, seq_len
        See :func:`estimate_masked_grads`.
    lors_scale : str or float
        Row norm of A (see :class:`sparseft.LoRSLinear`).

    Returns
    -------
    dict of str to float
        Op name -> ‖G ⊙ M‖_F of the estimate (for logging).

    Raises
    ------
    RuntimeError
        After training has started (``trainer.step > 0``), or on a layer with B != 0 or merged.
    ValueError
        A layer whose G ⊙ M is all zero (no direction to pick), and as :func:`estimate_masked_grads`.
    """
    layers = adapted_layers(trainer.model)
    _check_fresh(trainer, layers)
    grads = estimate_masked_grads(trainer, data, batches, batch_size, seq_len)
    norms = {name: float(np.linalg.norm(G)) for name, G in grads.items()}
    for name, n in norms.items():  # every check before the first layer changes
        if n == 0.0:
            raise ValueError(
                f"data: G ⊙ M of {name} is all zero over the calibration batches, so the 'lors' init has "
                "no direction to pick (use init='lora' for this model)"
            )
    for name, layer in layers.items():
        A, B = layer.A, layer.B
        layer.init_adapters("lors", init_grad=grads.pop(name), lors_scale=lors_scale)
        A[...] = layer.A  # keep the optimizer's (and any data-parallel hook's) arrays
        B[...] = 0.0
        layer.A, layer.B = A, B
    return norms
