"""The base-format protocol, and the checks every format applies to a dense (W, mask) pair.

A base format stores a frozen, masked weight W (out, in), zero off its mask M, and computes with
W' = W + s·(B A) ⊙ M for the adapter A (r, in), B (out, r) and scale s without storing W': the
kernels recompute W' tile by tile (dense) or at the stored positions only (CSR, N:M).
:class:`sparseft.LoRSLinear` and its DoRA variant code against :class:`BaseFormat` only.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import numpy as np

from sparseft._validation import check_array

__all__ = ["BaseFormat", "check_mask", "readonly", "validate_base"]


class BaseFormat(Protocol):
    """The interface every base format implements.

    Every method that takes ``A``, ``B`` and ``scale`` works on W' = W + scale·(B A) ⊙ M; ``x`` is
    float32 (N, in) and ``gy`` float32 (N, out), both C-contiguous. Bases are immutable:
    ``merged``/``unmerged`` return new objects.
    """

    format: ClassVar[str]

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in)."""

    @property
    def nnz(self) -> int:
        """Number of kept (mask True) positions."""

    @property
    def nbytes(self) -> int:
        """Bytes stored."""

    @classmethod
    def from_dense(cls, W: np.ndarray, mask: np.ndarray) -> BaseFormat:
        """Build from float32 W (out, in), zero off the bool ``mask`` (copies both)."""

    def to_dense(self) -> np.ndarray:
        """W as a new float32 (out, in) array."""

    def mask_dense(self) -> np.ndarray:
        """The mask as a new bool (out, in) array."""

    def forward(self, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        """y (N, out) = x W'ᵀ."""

    def backward_input(self, gy: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        """gx (N, in) = gy W'."""

    def masked_grad(
        self, gy: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact adapter gradients (dA (r, in), dB (out, r)) from G = gyᵀx sampled at the mask:
        dA = scale·Bᵀ(G ⊙ M), dB = scale·(G ⊙ M)Aᵀ."""

    def backward(
        self, gy: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(gx, dA, dB): ``backward_input`` and ``masked_grad`` at one scale, fused where the
        format has a fused kernel."""

    def merged(self, A: np.ndarray, B: np.ndarray, scale: float) -> BaseFormat:
        """A new base holding W' (same mask, zeros kept)."""

    def unmerged(self, A: np.ndarray, B: np.ndarray, scale: float) -> BaseFormat:
        """The inverse of ``merged``: W' − scale·(B A) ⊙ M."""

    def row_norms(self, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        """n (out,) float32: the row norms ‖W'_i‖, accumulated in float64."""

    def norm_grad(
        self, grad_n: np.ndarray, n: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(dA, dB): the gradient of Σ_i grad_n_i·n_i through W' (0 for rows with n_i = 0), with
        ``n`` the row norms from :meth:`row_norms` at the same A, B, scale."""


def readonly(a: np.ndarray) -> np.ndarray:
    """``a`` itself, made read-only (for arrays a base owns)."""
    a.flags.writeable = False
    return a


def check_mask(mask: object, name: str = "mask") -> np.ndarray:
    """A bool 2-D ndarray (returned as is), else a TypeError/ValueError naming ``name``."""
    return check_array(mask, name, np.bool_, 2, " (out, in)")


def validate_base(
    W: object, mask: object, w_name: str = "W", mask_name: str = "mask"
) -> tuple[np.ndarray, np.ndarray]:
    """Check a base weight and its mask, the way every ``from_dense`` does (errors name them
    ``w_name`` and ``mask_name``).

    Parameters
    ----------
    W : numpy.ndarray
        float32 (out, in), finite, exactly zero wherever ``mask`` is False.
    mask : numpy.ndarray
        bool (out, in); True marks a kept weight.

    Returns
    -------
    (W, mask) : tuple of numpy.ndarray
        ``W`` as a C-contiguous float32 array and ``mask`` as C-contiguous bool (may be the inputs).

    Raises
    ------
    TypeError
        If ``W`` is not a float32 ndarray or ``mask`` not a bool ndarray.
    ValueError
        If the shapes are not 2-D and equal, ``W`` holds NaN/inf, or ``W`` is nonzero off the mask.
    """
    W = check_array(W, w_name, np.float32, 2, " (out, in)")
    mask = check_mask(mask, mask_name)
    if mask.shape != W.shape:
        raise ValueError(f"{mask_name}: expected shape {W.shape} (the shape of {w_name}), got {mask.shape}")
    if not np.isfinite(W).all():
        raise ValueError(f"{w_name}: contains NaN or infinity")
    off = np.count_nonzero(W[~mask])
    if off:
        raise ValueError(
            f"{w_name}: expected exact zeros wherever {mask_name} is False, got {off} nonzero entries there "
            f"(prune first, e.g. {w_name} * {mask_name})"
        )
    return np.ascontiguousarray(W), np.ascontiguousarray(mask)
