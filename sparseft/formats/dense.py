"""The dense-masked base format of a LoRS layer: W stored dense with zeros, the mask as uint8.

Every base format (this one, and the compressed ``CSRBase`` / ``NMBase`` of :mod:`sparseft.formats`)
has the same interface, which :class:`sparseft.LoRSLinear` codes against:

``format``, ``shape``, ``nnz``, ``nbytes``, ``from_dense(W, mask)``, ``to_dense()``, ``mask_dense()``,
``forward(x, A, B, scale)``, ``backward_input(gy, A, B, scale)``, ``masked_grad(gy, x, A, B, scale)``,
``merged(A, B, scale)`` and ``unmerged(A, B, scale)``.

With W' = W + scale·(B A) ⊙ M, ``forward`` returns x W'ᵀ and ``backward_input`` returns gy W';
both rebuild W' tile by tile inside the GEMM (nothing of size out×in is allocated).
``masked_grad`` returns the exact adapter gradients dA = scale·Bᵀ((gyᵀx) ⊙ M) and
dB = scale·((gyᵀx) ⊙ M) Aᵀ, reduced tile by tile.
"""

from __future__ import annotations

import numbers
from typing import Protocol

import numpy as np

from sparseft import _core

__all__ = ["F32_MAX", "BaseFormat", "DenseBase", "check_array", "check_mask", "check_scale", "readonly", "validate_base"]


class BaseFormat(Protocol):
    """The interface every base format implements (see the module docstring)."""

    format: str

    @property
    def shape(self) -> tuple[int, int]: ...
    @property
    def nnz(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def to_dense(self) -> np.ndarray: ...
    def mask_dense(self) -> np.ndarray: ...
    def forward(self, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray: ...
    def backward_input(self, gy: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray: ...
    def masked_grad(
        self, gy: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray]: ...
    def merged(self, A: np.ndarray, B: np.ndarray, scale: float) -> BaseFormat: ...
    def unmerged(self, A: np.ndarray, B: np.ndarray, scale: float) -> BaseFormat: ...


def check_array(a: object, name: str, dtype: type, ndim: int, dims: str = "") -> np.ndarray:
    """An ``ndim``-D ndarray of ``dtype`` (returned as is), else a TypeError/ValueError naming
    ``name``; ``dims`` names the axes in the message (e.g. " (out, in)")."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype).name}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array{dims}, got shape {a.shape}")
    return a


def _check_2d(a: object, name: str, dtype: type) -> np.ndarray:
    """A 2-D (out, in) ndarray of ``dtype`` (returned as is), else a TypeError/ValueError naming ``name``."""
    return check_array(a, name, dtype, 2, " (out, in)")


def readonly(a: np.ndarray) -> np.ndarray:
    """``a`` itself, made read-only (for arrays a base owns)."""
    a.flags.writeable = False
    return a


def check_mask(mask: object, name: str = "mask") -> np.ndarray:
    """A bool 2-D ndarray (returned as is), else a TypeError/ValueError naming ``name``."""
    return _check_2d(mask, name, np.bool_)


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
    W = _check_2d(W, w_name, np.float32)
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


#: Largest finite float32, as a Python float (scales and the like must not exceed it).
F32_MAX = float(np.finfo(np.float32).max)


def check_scale(scale: object) -> float:
    """``scale`` as a float: a real number (not bool) that is finite in float32, else a
    TypeError/ValueError naming ``scale`` (1e39 would become inf in the float32 kernels)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale: expected a real number, got {type(scale).__name__}")
    s = float(scale)
    if not np.isfinite(s):
        raise ValueError(f"scale: expected a finite number, got {scale}")
    if abs(s) > F32_MAX:
        raise ValueError(f"scale: expected a finite float32 number (|scale| <= {F32_MAX:.6g}), got {scale}")
    return s


class DenseBase:
    """Dense-masked base: W (out, in) float32 with zeros off the mask, plus the mask as uint8.

    Build it with :meth:`from_dense` (or ``DenseBase(W, mask_u8)`` with a uint8 0/1 mask; both copy
    and validate). The arrays are private, read-only copies; the object is immutable
    (``merged``/``unmerged`` return new objects).
    """

    format = "dense"

    def __init__(self, W: np.ndarray, mask_u8: np.ndarray) -> None:
        W = _check_2d(W, "W", np.float32)
        M = _check_2d(mask_u8, "mask_u8", np.uint8)
        if M.shape != W.shape:
            raise ValueError(f"mask_u8: expected shape {W.shape} (the shape of W), got {M.shape}")
        if M.size and int(M.max()) > 1:
            raise ValueError("mask_u8: expected 0/1 entries")
        W, mask = validate_base(W, M.astype(np.bool_))
        self._W, self._M = readonly(np.array(W, order="C")), readonly(mask.astype(np.uint8))

    @classmethod
    def _wrap(cls, W: np.ndarray, mask_u8: np.ndarray) -> DenseBase:
        """Trusted constructor: W and mask_u8 are fresh, validated, C-contiguous arrays owned by the
        new base (made read-only, not copied)."""
        self = cls.__new__(cls)
        self._W, self._M = readonly(W), readonly(mask_u8)
        return self

    @classmethod
    def from_dense(cls, W: np.ndarray, mask: np.ndarray) -> DenseBase:
        """Build from a dense float32 weight (zeros off the mask) and a bool mask (copies both).

        Raises
        ------
        TypeError, ValueError
            As :func:`validate_base`.
        """
        W, mask = validate_base(W, mask)
        return cls._wrap(np.array(W, dtype=np.float32, order="C"), mask.astype(np.uint8))

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in)."""
        return (int(self._W.shape[0]), int(self._W.shape[1]))

    @property
    def nnz(self) -> int:
        """Number of kept (mask True) positions."""
        return int(np.count_nonzero(self._M))

    @property
    def nbytes(self) -> int:
        """Bytes stored: the dense float32 values plus the one-byte mask."""
        return int(self._W.nbytes + self._M.nbytes)

    def to_dense(self) -> np.ndarray:
        """The base weight as a new float32 (out, in) array."""
        return self._W.copy()

    def mask_dense(self) -> np.ndarray:
        """The mask as a new bool (out, in) array."""
        return self._M.astype(np.bool_)

    def forward(self, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        """y (N, out) = x W'ᵀ for x float32 (N, in) C-contiguous (finite-checked in C)."""
        return _core.lors_forward(x, self._W, self._M, A, B, check_scale(scale), check_weights=False)

    def backward_input(self, gy: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        """gx (N, in) = gy W' for gy float32 (N, out) C-contiguous."""
        return _core.lors_backward_input(gy, self._W, self._M, A, B, check_scale(scale), check_weights=False)

    def masked_grad(
        self, gy: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact adapter gradients (dA (r, in), dB (out, r)) from (gyᵀx) ⊙ M, tile by tile.

        gy and x are not re-checked for NaN/inf here: ``forward``/``backward_input`` checked them."""
        return _core.lors_backward_exact(gy, x, self._M, A, B, check_scale(scale), check_finite=False)

    def merged(self, A: np.ndarray, B: np.ndarray, scale: float) -> DenseBase:
        """A new base holding W' = W + scale·(B A) at the mask positions (zeros kept exactly)."""
        return DenseBase._wrap(_core.lors_merge(self._W, self._M, A, B, check_scale(scale)), self._M)

    def unmerged(self, A: np.ndarray, B: np.ndarray, scale: float) -> DenseBase:
        """The inverse of :meth:`merged`: W' − scale·(B A) at the mask positions."""
        return DenseBase._wrap(_core.lors_merge(self._W, self._M, A, B, -check_scale(scale)), self._M)

    def __repr__(self) -> str:
        out, in_ = self.shape
        return f"DenseBase(shape=({out}, {in_}), nnz={self.nnz}, nbytes={self.nbytes})"
