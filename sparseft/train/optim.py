"""AdamW state over a model's parameters, learning-rate schedules and gradient clipping."""

from __future__ import annotations

import math

import numpy as np

from sparseft.models.ops import adamw_step

__all__ = ["SCHEDULES", "AdamW", "clip_grad_norm", "lr_at"]

SCHEDULES = ("cosine", "linear", "constant")
_CHUNK = 1 << 16


def lr_at(step: int, lr: float, total: int, warmup: int, schedule: str) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``total``.

    Linear warmup from ``lr / warmup`` to ``lr`` over the first ``warmup`` steps, then ``"cosine"``
    decay to 0 at ``total`` (Loshchilov & Hutter), ``"linear"`` decay to 0, or ``"constant"``.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return lr
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return lr * (1.0 - frac)
    return lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float | None) -> float:
    """Scale every gradient in place so that their global L2 norm is at most ``max_norm``.

    The squares are summed by float32 dot products over chunks of 2**16 entries, added in float64
    in key order (deterministic for a fixed thread count). Returns the norm before clipping;
    ``max_norm=None`` only measures it.
    """
    total = 0.0
    for g in grads.values():
        flat = g.reshape(-1)
        for k in range(0, flat.size, _CHUNK):
            c = flat[k : k + _CHUNK]
            total += float(np.dot(c, c))
    norm = math.sqrt(total)
    if max_norm is not None and norm > max_norm:
        scale = np.float32(max_norm / (norm + 1e-6))
        for g in grads.values():
            g *= scale
    return norm


class AdamW:
    """Decoupled-weight-decay Adam (``torch.optim.AdamW`` semantics) over named float32 arrays.

    Weight decay applies to matrices (ndim >= 2: the adapters' A and B, or the weights of sparse
    full fine-tuning) and not to vectors (biases, norm gains, DoRA magnitudes), as is usual for
    transformers. A weight that is exactly 0 with a gradient exactly 0 stays exactly 0, so masks
    are kept through sparse full fine-tuning.

    Parameters
    ----------
    params : dict of str to numpy.ndarray
        The live arrays (updated in place).
    betas : (float, float)
    eps : float
    weight_decay : float
    """

    def __init__(
        self,
        params: dict[str, np.ndarray],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = params
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}
        self.t = 0

    def step(self, grads: dict[str, np.ndarray], lr: float) -> None:
        """One update with the gradients ``grads`` (same keys as the parameters)."""
        self.t += 1
        b1, b2 = self.betas
        for k, p in self.params.items():
            wd = self.weight_decay if p.ndim >= 2 else 0.0
            adamw_step(p, grads[k], self.m[k], self.v[k], lr, b1, b2, self.eps, wd, self.t)

    def state(self) -> dict[str, np.ndarray]:
        """The moment buffers as ``m.<key>`` / ``v.<key>`` arrays (live)."""
        out = {f"m.{k}": a for k, a in self.m.items()}
        out.update({f"v.{k}": a for k, a in self.v.items()})
        return out
