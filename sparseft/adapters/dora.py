"""Weight-normalized sparse adapters ("sparse DoRA"): the math on top of a LoRS base format.

With W' = W + s·(B A) ⊙ M (the LoRS merged weight, zero off the mask M) the layer's weight is

    W'' = m ⊙ W' / ‖W'‖_row,   i.e.  W''_i = (m_i / n_i) · W'_i,   n_i = ‖W'_i‖,

with a trainable magnitude m (out,) (PEFT's ``lora_magnitude_vector``). Nothing of size out×in is
formed: with z = x W'ᵀ from the base format's recomputing GEMM and c = m / n,

    y  = z ⊙ c                                     (per output column)
    gz = gy ⊙ c,   gx = gz W'                      (the base's backward_input with gz)
    grad m_i = Σ_t gy_ti z_ti / n_i
    grad n_i = −m_i Σ_t gy_ti z_ti / n_i²          (only with norm_grad)

and the adapters get the LoRS gradients with gy replaced by gz plus, with ``norm_grad``, the
gradient through the row norms, −s·diag(k)(W' ⊙ M)Aᵀ for B and −s·Bᵀdiag(k)(W' ⊙ M) for A with
k_i = m_i Σ_t gy_ti z_ti / n_i³ (C kernels ``dora_rownorm_forward/backward``: O(out·in·r), row by
row). ``norm_grad=False`` is DoRA's detached norm (PEFT's default): the norm is treated as a
constant and that second term is dropped.

Zero rows: where n_i = 0 (a row of W' entirely zero, e.g. a fully pruned output unit) the layer
defines c_i = 0, so y's column i is 0 and every gradient through row i (gz, grad m_i, grad n_i) is 0,
where the formula would give 0/0 = NaN.

These functions take a LoRS base format object (``forward``, ``backward_input``, ``merged``,
``to_dense``, ``mask_dense``); :class:`sparseft.LoRSLinear` uses them for ``magnitude=True``.
For the dense-masked base the C kernels above read its stored W and mask directly. For the
compressed bases of :mod:`sparseft.formats` (CSR, N:M) the row norms come from the values of
``base.merged(A, B, s)`` (O(nnz·r) in C, an nnz-sized array), and the norm term of the backward
from two SpMMs of that merged base with r rows (``forward(A)`` and ``backward_input((α·B)ᵀ)``),
O(nnz·r); nothing of size out×in either. Any other base falls back to ``to_dense()`` (an out×in
temporary).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from sparseft import _core

__all__ = [
    "backward_scales",
    "forward_scales",
    "magnitude_init",
    "merged_dense",
    "norm_grad_adapters",
    "row_norms",
]

F32 = npt.NDArray[np.float32]


def _is_dense(base: Any) -> bool:
    return (
        getattr(base, "format", None) == "dense"
        and isinstance(getattr(base, "_W", None), np.ndarray)
        and isinstance(getattr(base, "_M", None), np.ndarray)
    )


def _compressed_row_norms(merged: Any) -> npt.NDArray[np.float64] | None:
    """Row norms (float64) from the stored values of a CSR or N:M base, None for other layouts."""
    values = getattr(merged, "values", None)
    if not isinstance(values, np.ndarray):
        return None
    out = int(merged.shape[0])
    v64 = values.astype(np.float64)
    if getattr(merged, "format", None) == "csr":
        rows = np.repeat(np.arange(out), np.diff(merged.indptr))
        return np.sqrt(np.bincount(rows, weights=v64 * v64, minlength=out))
    if getattr(merged, "format", None) == "nm" and values.ndim == 2 and values.shape[0] == out:
        return np.sqrt(np.einsum("ij,ij->i", v64, v64))
    return None


def _operands(base: Any) -> tuple[F32, npt.NDArray[Any]]:
    """(W, mask) of a base format for the row-norm kernels: the stored arrays of the dense-masked
    base (no copy), else dense copies."""
    if _is_dense(base):
        return base._W, base._M
    return base.to_dense(), base.mask_dense()


def row_norms(base: Any, A: F32, B: F32, scale: float) -> F32:
    """n (out,) float32: the row norms of W' = W + scale·(B A) ⊙ M, accumulated in double."""
    if not _is_dense(base):
        n = _compressed_row_norms(base.merged(A, B, float(scale)))
        if n is not None:
            return n.astype(np.float32)
    W, M = _operands(base)
    return _core.dora_rownorm_forward(W, M, A, B, float(scale))


def magnitude_init(base: Any) -> F32:
    """The row norms of the base W (float32 (out,)): m = ‖W‖_row leaves the layer's output
    unchanged while B = 0 (W' = W, so W'' = W)."""
    out, inn = base.shape
    return row_norms(base, np.zeros((1, inn), np.float32), np.zeros((out, 1), np.float32), 0.0)


def forward_scales(m: F32, n: F32) -> F32:
    """c = m / n per output (float32 (out,)), 0 where n == 0."""
    n64 = n.astype(np.float64)
    c = np.divide(m.astype(np.float64), n64, out=np.zeros_like(n64), where=n64 > 0)
    return c.astype(np.float32)


def backward_scales(gy: F32, z: F32, m: F32, n: F32, norm_grad: bool) -> tuple[F32, F32 | None]:
    """(grad_m, grad_n) from gy, z = x W'ᵀ (both (N, out)), m and n; 0 where n == 0.

    grad_m_i = Σ_t gy_ti z_ti / n_i and, when ``norm_grad``, grad_n_i = −m_i Σ_t gy_ti z_ti / n_i²
    (else None).
    """
    dot = np.einsum("ti,ti->i", gy, z, dtype=np.float64)
    n64 = n.astype(np.float64)
    live = n64 > 0
    grad_m = np.divide(dot, n64, out=np.zeros_like(n64), where=live)
    if not norm_grad:
        return grad_m.astype(np.float32), None
    grad_n = np.divide(-m.astype(np.float64) * grad_m, n64, out=np.zeros_like(n64), where=live)
    return grad_m.astype(np.float32), grad_n.astype(np.float32)


def norm_grad_adapters(base: Any, grad_n: F32, n: F32, A: F32, B: F32, scale: float) -> tuple[F32, F32]:
    """(dA, dB): the gradient of Σ_i grad_n_i·n_i with respect to A and B through W' (0 for rows
    with n == 0): row by row in C, O(out·in·r), for the dense base; two SpMMs of the merged base
    with r rows, O(nnz·r), for CSR and N:M. No out×in buffer either way."""
    if not _is_dense(base) and _compressed_row_norms(base) is not None:
        merged = base.merged(A, B, float(scale))
        n64 = n.astype(np.float64)
        alpha = np.divide(grad_n.astype(np.float64), n64, out=np.zeros_like(n64), where=n64 > 0)
        A0 = np.zeros((1, A.shape[1]), np.float32)
        B0 = np.zeros((B.shape[0], 1), np.float32)
        awt = merged.forward(A, A0, B0, 0.0)  # (r, out) = A W'^T
        dB = (float(scale) * alpha[:, None] * awt.T).astype(np.float32)
        gb = np.ascontiguousarray((alpha[:, None] * B).T, dtype=np.float32)  # (r, out)
        dA = merged.backward_input(gb, A0, B0, 0.0)  # (r, in) = (alpha B)^T W'
        dA *= np.float32(scale)
        return dA, dB
    W, M = _operands(base)
    return _core.dora_rownorm_backward(grad_n, n, W, M, A, B, float(scale))


def merged_dense(base: Any, A: F32, B: F32, scale: float, m: F32) -> F32:
    """W'' = (m / n) ⊙ W' as a new float32 (out, in) array, exactly 0 wherever the mask is False."""
    c = forward_scales(m, row_norms(base, A, B, scale))  # the forward's norms, bit for bit
    W2 = base.merged(A, B, float(scale)).to_dense()
    W2 *= c[:, None]
    W2[~base.mask_dense()] = 0.0  # also turns -0.0 (a negative m_i times a zero) into +0.0
    return W2
