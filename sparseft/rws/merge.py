"""Merging signatures: task arithmetic ("sum"), TIES and DARE.

* "sum": Σ wᵢ·τᵢ.
* "ties" (Yadav et al. 2023): per tensor, keep each τᵢ's top ``density`` fraction of magnitudes
  (ties broken by position), elect per entry the sign of the sum of the kept values, and average the
  kept values that agree with it (0 where none does).
* "dare" (Yu et al. 2024): per tensor, drop each entry of τᵢ with probability p = 1 − ``density``
  and rescale the rest by 1/(1 − p), then sum; seeded.

A tensor missing from some signatures counts as zeros there.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from sparseft.rws.signature import Signature

__all__ = ["METHODS", "merge"]

METHODS = ("sum", "ties", "dare")
DEFAULT_DENSITY = {"sum": 1.0, "ties": 0.2, "dare": 0.5}


def _topk_mask(v: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the k largest |v| (stable: the earlier position wins a tie)."""
    keep = np.zeros(v.size, dtype=bool)
    if k > 0:
        keep[np.argsort(-np.abs(v), kind="stable")[:k]] = True
    return keep


def merge(
    sigs: Sequence[Signature],
    method: str = "sum",
    density: float | None = None,
    seed: int = 0,
    weights: Sequence[float] | None = None,
) -> Signature:
    """Merge several signatures into one.

    Parameters
    ----------
    sigs : sequence of Signature
        At least one; tensors of the same name must have the same shape.
    method : {"sum", "ties", "dare"}
        See the module docstring.
    density : float or None
        Fraction kept, in (0, 1]: TIES' top-magnitude fraction (default 0.2), DARE's keep
        probability 1 − p (default 0.5); must be 1 (the default) for "sum".
    seed : int
        DARE's random seed (ignored otherwise).
    weights : sequence of float or None
        Scale of each signature before merging (default 1 each).

    Returns
    -------
    Signature
    """
    if isinstance(sigs, Signature) or not isinstance(sigs, Sequence):
        raise TypeError(f"sigs: expected a list of Signature, got {type(sigs).__name__}")
    if not sigs:
        raise ValueError("sigs: expected at least one signature, got none")
    for i, s in enumerate(sigs):
        if not isinstance(s, Signature):
            raise TypeError(f"sigs[{i}]: expected a Signature, got {type(s).__name__} (dequantize() first)")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if density is None:
        density = DEFAULT_DENSITY[method]
    if isinstance(density, (bool, np.bool_)) or not isinstance(density, numbers.Real):
        raise TypeError(f"density: expected a float in (0, 1], got {type(density).__name__}")
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density: expected a float in (0, 1], got {density!r}")
    if method == "sum" and density != 1.0:
        raise ValueError(f"density: 'sum' keeps everything (density 1), got {density!r}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    if weights is None:
        weights = [1.0] * len(sigs)
    if len(weights) != len(sigs):
        raise ValueError(f"weights: expected {len(sigs)} values (one per signature), got {len(weights)}")
    scaled = [s * w for s, w in zip(sigs, weights, strict=True)]  # checks each weight

    names: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    for i, s in enumerate(scaled):
        for k, shape in s.shapes.items():
            if k not in shapes:
                names.append(k)
                shapes[k] = shape
            elif shapes[k] != shape:
                raise ValueError(f"sigs[{i}][{k!r}]: expected shape {shapes[k]}, got {shape}")
    rng = np.random.default_rng(int(seed))
    out: dict[str, np.ndarray] = {}
    for k in names:
        n = math.prod(shapes[k])
        stack = np.stack([s[k].ravel() if k in s else np.zeros(n, np.float32) for s in scaled]).astype(
            np.float64
        )
        if method == "sum":
            merged = stack.sum(axis=0)
        elif method == "dare":
            keep = rng.random(stack.shape) < density
            merged = (np.where(keep, stack, 0.0) / density).sum(axis=0)
        else:
            kk = math.ceil(density * n)
            trimmed = np.stack([np.where(_topk_mask(row, kk), row, 0.0) for row in stack])
            elected = np.sign(trimmed.sum(axis=0))
            agree = (np.sign(trimmed) == elected) & (trimmed != 0)
            count = agree.sum(axis=0)
            merged = np.where(
                count > 0, np.where(agree, trimmed, 0.0).sum(axis=0) / np.maximum(count, 1), 0.0
            )
        m32 = merged.astype(np.float32).reshape(shapes[k])
        if not np.isfinite(m32).all():
            raise ValueError(f"sigs: the merge overflows float32 at {k!r}")
        out[k] = m32
    return Signature._own(out)
