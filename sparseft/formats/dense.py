"""The dense-masked base format: W stored dense with zeros, the mask as uint8.

Its kernels rebuild W' = W + s·(B A) ⊙ M tile by tile inside the GEMM (nothing of size out×in is
allocated): ``forward`` returns x W'ᵀ, ``backward_input`` gy W', ``masked_grad`` the exact adapter
gradients dA = s·Bᵀ((gyᵀx) ⊙ M) and dB = s·((gyᵀx) ⊙ M) Aᵀ reduced tile by tile, and
``row_norms``/``norm_grad`` the row norms of W' and their gradient, row by row.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from sparseft import _core
from sparseft._validation import check_array, check_scale
from sparseft.formats.base import readonly, validate_base

__all__ = ["DenseBase"]


class DenseBase:
    """Dense-masked base: W (out, in) float32 with zeros off the mask, plus the mask as uint8.

    Build it with :meth:`from_dense` (or ``DenseBase(W, mask_u8)`` with a uint8 0/1 mask; both copy
    and validate). The arrays are private, read-only copies; the object is immutable
    (``merged``/``unmerged`` return new objects).
    """

    format: ClassVar[str] = "dense"

    def __init__(self, W: np.ndarray, mask_u8: np.ndarray) -> None:
        W = check_array(W, "W", np.float32, 2, " (out, in)")
        M = check_array(mask_u8, "mask_u8", np.uint8, 2, " (out, in)")
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

    def backward(
        self, gy: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(gx, dA, dB): :meth:`backward_input` (which checks gy for NaN/inf) then :meth:`masked_grad`."""
        gx = self.backward_input(gy, A, B, scale)
        dA, dB = self.masked_grad(gy, x, A, B, scale)
        return gx, dA, dB

    # ---- plain-W kernels of dense full fine-tuning (no adapter term; see docs/dense_training.md) ----

    def dense_forward(
        self, x: np.ndarray, bias: np.ndarray | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """y (N, out) = x Wᵀ (+ bias) by the GEMM core alone, for x float32 (N, in) C-contiguous.

        W is read live: in sparse full fine-tuning the optimizer updates it in place. The bias (if
        any) is written into y first and the product accumulated onto it (no second pass). ``out``:
        a writeable float32 C-contiguous (N, out) array sharing no memory with x to write y into
        (returned; e.g. a reused buffer).
        """
        n_out, in_ = self.shape
        x = check_array(x, "x", np.float32, 2, " (N, in)")
        if x.shape[1] != in_:
            raise ValueError(f"x: expected {in_} columns (in), got shape {x.shape}")
        y = (
            np.empty((x.shape[0], n_out), np.float32)
            if out is None
            else self._out(out, (x.shape[0], n_out), x)
        )
        if bias is None:
            _core.gemm_into(y, x, self._W, trans_b=True)
        else:
            y[...] = bias
            _core.gemm_into(y, x, self._W, trans_b=True, beta=1.0)
        return y

    def dense_backward_input(self, gy: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """gx (N, in) = gy W for gy float32 (N, out) C-contiguous, by the GEMM core alone (into
        ``out`` when given, as in :meth:`dense_forward`)."""
        gy = check_array(gy, "gy", np.float32, 2, " (N, out)")
        if gy.shape[1] != self.shape[0]:
            raise ValueError(f"gy: expected {self.shape[0]} columns (out), got shape {gy.shape}")
        if out is None:
            return _core.matmul(gy, self._W)
        gx = self._out(out, (gy.shape[0], self.shape[1]), gy)
        _core.gemm_into(gx, gy, self._W)
        return gx

    @staticmethod
    def _out(out: object, shape: tuple[int, int], x: np.ndarray) -> np.ndarray:
        if not isinstance(out, np.ndarray) or out.dtype != np.float32:
            raise TypeError(
                f"out: expected a float32 numpy.ndarray, got {getattr(out, 'dtype', type(out).__name__)}"
            )
        if out.shape != shape or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(
                f"out: expected a writeable C-contiguous array of shape {shape}, got {out.shape}"
            )
        if np.may_share_memory(out, x):
            raise ValueError("out: shares memory with the input")
        return out

    def weight_grad_into(self, gw: np.ndarray, gy: np.ndarray, x: np.ndarray, full: bool = False) -> None:
        """gw (out, in) += (gyᵀ x) ⊙ M in place, for gy (N, out) and x (N, in) float32 C-contiguous.

        The product is accumulated straight into ``gw`` by the GEMM core (beta = 1: no (out, in)
        temporary); then, unless ``full`` (the caller knows the mask is all ones), ``gw`` is
        multiplied by the mask in place. That equals adding the masked product only when ``gw``
        is already zero off the mask, which holds for a gradient that only ever receives masked
        updates (and after zeroing).
        """
        out, in_ = self.shape
        gw = check_array(gw, "gw", np.float32, 2, " (out, in)")
        if gw.shape != (out, in_) or not gw.flags.c_contiguous or not gw.flags.writeable:
            raise ValueError(f"gw: expected a writeable C-contiguous ({out}, {in_}) array, got {gw.shape}")
        gy = check_array(gy, "gy", np.float32, 2, " (N, out)")
        x = check_array(x, "x", np.float32, 2, " (N, in)")
        if gy.shape[1] != out or x.shape != (gy.shape[0], in_):
            raise ValueError(
                f"gy, x: expected shapes (N, {out}) and (N, {in_}), got {gy.shape} and {x.shape}"
            )
        _core.gemm_into(gw, gy, x, trans_a=True, beta=1.0)
        if not full:
            np.multiply(gw, self._M, out=gw)

    def row_norms(self, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        """n (out,) float32: ‖W'_i‖ row by row in C, accumulated in double."""
        return _core.dora_rownorm_forward(self._W, self._M, A, B, check_scale(scale))

    def norm_grad(
        self, grad_n: np.ndarray, n: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(dA, dB) of Σ_i grad_n_i·n_i through W', row by row in C (O(out·in·r), no out×in buffer)."""
        return _core.dora_rownorm_backward(grad_n, n, self._W, self._M, A, B, check_scale(scale))

    def merged(self, A: np.ndarray, B: np.ndarray, scale: float) -> DenseBase:
        """A new base holding W' = W + scale·(B A) at the mask positions (zeros kept exactly)."""
        return DenseBase._wrap(_core.lors_merge(self._W, self._M, A, B, check_scale(scale)), self._M)

    def unmerged(self, A: np.ndarray, B: np.ndarray, scale: float) -> DenseBase:
        """The inverse of :meth:`merged`: W' − scale·(B A) at the mask positions."""
        return DenseBase._wrap(_core.lors_merge(self._W, self._M, A, B, -check_scale(scale)), self._M)

    def __repr__(self) -> str:
        out, in_ = self.shape
        return f"DenseBase(shape=({out}, {in_}), nnz={self.nnz}, nbytes={self.nbytes})"
