"""Compressed storage of a masked base weight, with the LoRS adapter applied on the fly.

A base holds W (out, in), zero off its mask M, and computes with W' = W + s·(B A) ⊙ M without ever
storing W': the C kernels recompute W'_ij = W_ij + s·B[i,:]·A[:,j] at the stored positions only.

``CSRBase``
    Low-density masks: CSR values (nnz,) float32, int32 column indices, int64 row pointers.
    8 bytes per stored entry (+ 8 per row), i.e. smaller than dense float32 below density 0.5.
    CSR rather than a bitmask because the kernels walk the nonzeros of a row in order and need
    their columns directly (a bitmask needs a popcount/decode step per 64 columns in the inner
    loop); a bitmask (4 bytes per entry + out·in/8) is smaller only above density 1/32, where the
    dense path is the faster choice anyway (see :func:`sparseft.formats.density_crossover`).
``NMBase``
    N:M masks (n kept in every group of m consecutive inputs): values (out, in·n/m) float32 and
    the kept positions inside each group as uint8 (out, in·n/m). 2:4 stores 2.5 bytes per weight.

Both implement :class:`sparseft.formats.BaseFormat`. Their index structure is checked once, when
the base is built; every kernel call goes through one method, ``_kernel``, which hands ``_core``
the base's arrays as the tuple it takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from sparseft import _core
from sparseft._validation import NM_MAX_M, check_array, check_nm, check_scale, check_size2
from sparseft.formats.base import check_mask, readonly, validate_base

__all__ = ["CSRBase", "NMBase", "SparseArrays", "detect_nm"]

_NM_CANDIDATES = (4, 8, 16, 32, 2)


def detect_nm(mask: np.ndarray) -> tuple[int, int] | None:
    """Return ``(n, m)`` when every group of ``m`` consecutive inputs keeps exactly ``n`` (0 < n < m).

    The group sizes tried are 4, 8, 16, 32, then 2 (so a 2:4 mask is reported as ``(2, 4)``).
    Returns None for any other mask.
    """
    mask = check_mask(mask)
    out, inn = mask.shape
    if out == 0 or inn == 0:
        return None
    for m in _NM_CANDIDATES:
        if inn % m:
            continue
        counts = mask.reshape(out, inn // m, m).sum(axis=2)
        n = int(counts.flat[0])
        if 0 < n < m and bool((counts == n).all()):
            return n, m
    return None


@dataclasses.dataclass(frozen=True)
class SparseArrays:
    """The arrays of a compressed base, by name (read-only; shared between a base and the bases
    ``merged``/``unmerged`` derive from it).

    Attributes
    ----------
    kind : {"csr", "nm"}
    shape : (out, in)
    values : numpy.ndarray
        float32: (nnz,) for CSR, (out, in·n/m) for N:M.
    indices : numpy.ndarray
        int32 columns (nnz,) for CSR; uint8 positions inside each group (out, in·n/m) for N:M.
    indptr : numpy.ndarray or None
        int64 row pointers (out + 1,) for CSR; None for N:M.
    n, m : int
        The N:M pattern (0 for CSR).
    """

    kind: str
    shape: tuple[int, int]
    values: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray | None = None
    n: int = 0
    m: int = 0

    def core(self) -> tuple[Any, ...]:
        """The base as the tuple the ``_core.sparse_*`` functions take."""
        return (
            self.kind,
            self.shape[0],
            self.shape[1],
            self.n,
            self.m,
            self.values,
            self.indices,
            self.indptr,
        )

    def with_values(self, values: np.ndarray) -> SparseArrays:
        """The same structure holding other (fresh, owned) values."""
        return dataclasses.replace(self, values=readonly(values))


def _f32(a: object, name: str, ndim: int = 2) -> np.ndarray:
    return check_array(a, name, np.float32, ndim)


def _check_adapter(A: object, B: object, shape: tuple[int, int]) -> None:
    A = _f32(A, "A")
    B = _f32(B, "B")
    if A.shape[0] < 1:
        raise ValueError(f"A: expected at least one row (r >= 1), got shape {A.shape}")
    if A.shape[1] != shape[1]:
        raise ValueError(f"A: expected shape (r, {shape[1]}), got {A.shape}")
    if B.shape != (shape[0], A.shape[0]):
        raise ValueError(f"B: expected shape ({shape[0]}, {A.shape[0]}) (out, r), got {B.shape}")


def _owned_copy(a: object, name: str, dtype: type, ndim: int) -> np.ndarray:
    """A read-only copy of a caller's array (the caller's own array keeps its flags and may change
    without changing the base), after checking its type, dtype and number of dimensions."""
    return readonly(np.array(check_array(a, name, dtype, ndim), order="C"))


def _check_increasing(
    idx: np.ndarray, first: np.ndarray, name: str, what: str, where: Callable[[int], str]
) -> None:
    """Entries of ``idx`` strictly increasing except where ``first`` marks the start of a run
    (a row or a group): a repeat or a decrease is a ValueError naming ``name`` and the run."""
    if idx.size < 2:
        return
    step = np.diff(idx.astype(np.int64))
    inner = ~first[1:]
    for bad, word in ((step == 0, "repeated"), (step < 0, "not increasing")):
        hit = np.flatnonzero(bad & inner)
        if hit.size:
            k = int(hit[0]) + 1
            raise ValueError(f"{name}: {what} {int(idx[k])} {word} within {where(k)}, at entry {k}")


class _SparseBase:
    """What CSR and N:M share: the adapter math on top of ``_core``'s sparse kernels."""

    format: ClassVar[str] = ""
    _arrays: SparseArrays

    @property
    def arrays(self) -> SparseArrays:
        """The base's arrays (read-only), as a :class:`SparseArrays`."""
        return self._arrays

    @arrays.setter
    def arrays(self, value: SparseArrays) -> None:
        # The full O(nnz) structure and finiteness check runs here, once per base (the arrays are
        # read-only copies the base owns), so every kernel call can skip it (trusted=True).
        _core.sparse_check(value.core())
        self._arrays = value

    def _kernel(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the ``_core`` sparse function ``fn`` on this base (every kernel call goes here),
        trusting the structure checked when the arrays were set."""
        return fn(self._arrays.core(), *args, trusted=True, **kwargs)

    def _derived(self, values: np.ndarray) -> Any:
        """A base of the same type and structure holding ``values`` (fresh, owned)."""
        new = type(self).__new__(type(self))
        new.arrays = self.arrays.with_values(values)
        return new

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in)."""
        return self.arrays.shape

    @property
    def values(self) -> np.ndarray:
        """The stored float32 values (read-only)."""
        return self.arrays.values

    @property
    def indices(self) -> np.ndarray:
        """The stored positions (read-only): CSR columns or N:M positions inside a group."""
        return self.arrays.indices

    @property
    def nnz(self) -> int:
        """Number of stored entries (the mask's True count)."""
        return int(self.values.size)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (values and indices)."""
        a = self.arrays
        return int(a.values.nbytes + a.indices.nbytes + (0 if a.indptr is None else a.indptr.nbytes))

    def _x(self, x: object, name: str, cols: int) -> np.ndarray:
        x = _f32(x, name)
        if x.shape[1] != cols:
            raise ValueError(f"{name}: expected shape (N, {cols}), got {x.shape}")
        return x

    def _row_sq_sums(self) -> np.ndarray:  # pragma: no cover - overridden
        """Σ_j W_ij² per row (float64 (out,)) from the stored values."""
        raise NotImplementedError

    def forward(self, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        """``y (N, out) = x @ W'^T`` with ``W' = W + scale·(B A) ⊙ M`` recomputed on the fly.

        Parameters
        ----------
        x : float32 (N, in), C-contiguous
        A : float32 (r, in);  B : float32 (out, r);  scale : float
        """
        s = check_scale(scale)
        x = self._x(x, "x", self.shape[1])
        _check_adapter(A, B, self.shape)
        return self._kernel(_core.sparse_forward, x, A, B, s)

    def backward_input(self, gy: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        """``gx (N, in) = gy @ W'`` (SpMM with recomputed values)."""
        s = check_scale(scale)
        gy = self._x(gy, "gy", self.shape[0])
        _check_adapter(A, B, self.shape)
        gx, _, _ = self._kernel(_core.sparse_backward, gy, None, A, B, s, input_grad=True, weight_grad=False)
        assert gx is not None
        return gx

    def masked_grad(
        self, gy: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact adapter gradients ``(dA (r, in), dB (out, r))`` through the mask.

        ``G = gy^T x`` is sampled only at the stored positions (SDDMM) and reduced on the fly:
        ``dB = scale·(G ⊙ M) A^T``, ``dA = scale·B^T (G ⊙ M)``; no (out, in) buffer.
        """
        gy, x, s = self._grad_args(gy, x, A, B, scale)
        _, dA, dB = self._kernel(_core.sparse_backward, gy, x, A, B, s, input_grad=False, weight_grad=True)
        assert dA is not None and dB is not None
        return dA, dB

    def backward(
        self, gy: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(gx, dA, dB)`` in one fused pass over the nonzeros (faster than the two calls)."""
        gy, x, s = self._grad_args(gy, x, A, B, scale)
        gx, dA, dB = self._kernel(_core.sparse_backward, gy, x, A, B, s)
        assert gx is not None and dA is not None and dB is not None
        return gx, dA, dB

    def _grad_args(
        self, gy: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Validated ``(gy (N, out), x (N, in), scale)`` of a backward call, adapter checked too."""
        s = check_scale(scale)
        gy = self._x(gy, "gy", self.shape[0])
        x = self._x(x, "x", self.shape[1])
        if x.shape[0] != gy.shape[0]:
            raise ValueError(
                f"x: expected shape ({gy.shape[0]}, {self.shape[1]}) (rows of gy), got {x.shape}"
            )
        _check_adapter(A, B, self.shape)
        return gy, x, s

    def merged(self, A: np.ndarray, B: np.ndarray, scale: float) -> Any:
        """A new base holding W' = W + scale·(B A) ⊙ M (same positions, zeros kept)."""
        s = check_scale(scale)
        _check_adapter(A, B, self.shape)
        return self._derived(self._kernel(_core.sparse_merge, A, B, s))

    def unmerged(self, A: np.ndarray, B: np.ndarray, scale: float) -> Any:
        """The inverse of ``merged``: W = W' - scale·(B A) ⊙ M."""
        return self.merged(A, B, -check_scale(scale))

    def row_norms(self, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        """n (out,) float32: ‖W'_i‖ from the values of ``merged(A, B, scale)`` (O(nnz·r) in C,
        an nnz-sized temporary), summed in float64."""
        return np.sqrt(self.merged(A, B, scale)._row_sq_sums()).astype(np.float32)

    def norm_grad(
        self, grad_n: np.ndarray, n: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(dA, dB) of Σ_i grad_n_i·n_i through W': with α_i = grad_n_i / n_i (0 where n_i = 0),
        dB = scale·diag(α) W' Aᵀ and dA = scale·(diag(α) B)ᵀ W', two SpMMs of the merged base with
        r rows (O(nnz·r), no out×in buffer)."""
        s = check_scale(scale)
        merged = self.merged(A, B, s)
        n64 = n.astype(np.float64)
        alpha = np.divide(grad_n.astype(np.float64), n64, out=np.zeros_like(n64), where=n64 > 0)
        A0 = np.zeros((1, A.shape[1]), np.float32)
        B0 = np.zeros((B.shape[0], 1), np.float32)
        awt = merged.forward(A, A0, B0, 0.0)  # (r, out) = A W'^T
        dB = (s * alpha[:, None] * awt.T).astype(np.float32)
        gb = np.ascontiguousarray((alpha[:, None] * B).T, dtype=np.float32)  # (r, out)
        dA = merged.backward_input(gb, A0, B0, 0.0)  # (r, in) = (alpha B)^T W'
        dA *= np.float32(s)
        return dA, dB

    def __repr__(self) -> str:
        out, inn = self.shape
        return f"{type(self).__name__}(shape=({out}, {inn}), nnz={self.nnz}, nbytes={self.nbytes})"


class CSRBase(_SparseBase):
    """CSR storage of a masked base: ``values`` (nnz,) float32, ``indices`` (nnz,) int32 columns
    (increasing within a row), ``indptr`` (out+1,) int64 row pointers. Build with ``from_dense``."""

    format: ClassVar[str] = "csr"

    def __init__(self, values: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int]):
        """Copy the three arrays and check them and their structure (once: the kernels trust it).

        Raises
        ------
        TypeError
            Naming the argument with the wrong type or dtype.
        ValueError
            Naming the argument with the wrong dimensions or length, row pointers that do not
            run non-decreasing from 0 to nnz, or column indices outside [0, in), repeated or
            not increasing within a row.
        """
        out, inn = check_size2(shape)
        values = _owned_copy(values, "values", np.float32, 1)
        indices = _owned_copy(indices, "indices", np.int32, 1)
        indptr = _owned_copy(indptr, "indptr", np.int64, 1)
        if indices.shape != values.shape:
            raise ValueError(f"indices: expected shape {values.shape} (one per value), got {indices.shape}")
        if indptr.shape != (out + 1,):
            raise ValueError(f"indptr: expected shape ({out + 1},) (out + 1), got {indptr.shape}")
        nnz = values.size
        if indptr[0] != 0 or indptr[-1] != nnz:
            raise ValueError(
                f"indptr: expected to run from 0 to nnz = {nnz}, got {indptr[0]} to {indptr[-1]}"
            )
        drop = np.flatnonzero(np.diff(indptr) < 0)
        if drop.size:
            i = int(drop[0])
            raise ValueError(
                f"indptr: expected non-decreasing row pointers, got {indptr[i]} then {indptr[i + 1]} at row {i}"
            )
        bad = np.flatnonzero((indices < 0) | (indices >= inn))
        if bad.size:
            k = int(bad[0])
            raise ValueError(f"indices: expected columns in [0, {inn}), got {indices[k]} at entry {k}")
        rows = np.repeat(np.arange(out), np.diff(indptr))
        first = np.zeros(nnz, bool)
        first[indptr[:-1][indptr[:-1] < nnz]] = True
        _check_increasing(indices, first, "indices", "column", lambda k: f"row {rows[k]}")
        self.arrays = SparseArrays("csr", (out, inn), values, indices, indptr)

    @property
    def indptr(self) -> np.ndarray:
        """int64 (out + 1,) row pointers (read-only)."""
        assert self.arrays.indptr is not None
        return self.arrays.indptr

    @classmethod
    def from_dense(cls, W: np.ndarray, mask: np.ndarray) -> CSRBase:
        """Store ``W`` (float32 (out, in), zero off the mask) at the True positions of ``mask``."""
        W, mask = validate_base(W, mask)
        rows, cols = np.nonzero(mask)
        indptr = np.zeros(W.shape[0] + 1, np.int64)
        np.cumsum(np.count_nonzero(mask, axis=1), out=indptr[1:])
        values = np.ascontiguousarray(W[rows, cols], dtype=np.float32)
        self = cls.__new__(cls)
        self.arrays = SparseArrays(
            "csr",
            (int(W.shape[0]), int(W.shape[1])),
            readonly(values),
            readonly(cols.astype(np.int32)),
            readonly(indptr),
        )
        return self

    def _rows(self) -> np.ndarray:
        return np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))

    def _row_sq_sums(self) -> np.ndarray:
        v64 = self.values.astype(np.float64)
        return np.bincount(self._rows(), weights=v64 * v64, minlength=self.shape[0])

    def to_dense(self) -> np.ndarray:
        """W as float32 (out, in), exact zeros off the mask."""
        W = np.zeros(self.shape, np.float32)
        W[self._rows(), self.indices] = self.values
        return W

    def mask_dense(self) -> np.ndarray:
        """The mask as bool (out, in)."""
        M = np.zeros(self.shape, bool)
        M[self._rows(), self.indices] = True
        return M


class NMBase(_SparseBase):
    """N:M storage: ``values`` (out, in·n/m) float32 and ``indices`` (out, in·n/m) uint8, the kept
    positions (increasing) inside each group of ``m`` consecutive inputs. Build with ``from_dense``."""

    format: ClassVar[str] = "nm"

    def __init__(self, values: np.ndarray, indices: np.ndarray, n: int, m: int, shape: tuple[int, int]):
        """Copy the arrays and check them and the positions (once: the kernels trust them).

        Raises
        ------
        TypeError
            Naming the argument with the wrong type or dtype.
        ValueError
            Naming the argument with the wrong shape or value: ``n``/``m`` outside the limits,
            positions outside [0, m), repeated or not increasing within a group.
        """
        out, inn = check_size2(shape)
        n, m = check_nm(n, m, inn, where="shape", max_m=NM_MAX_M)
        values = _owned_copy(values, "values", np.float32, 2)
        indices = _owned_copy(indices, "indices", np.uint8, 2)
        want = (out, inn // m * n)
        if values.shape != want:
            raise ValueError(f"values: expected shape {want} (out, in/m*n), got {values.shape}")
        if indices.shape != want:
            raise ValueError(f"indices: expected shape {want} (out, in/m*n), got {indices.shape}")
        flat = indices.reshape(-1)
        bad = np.flatnonzero(flat >= m)
        if bad.size:
            k = int(bad[0])
            raise ValueError(
                f"indices: expected positions in [0, m = {m}), got {flat[k]} at row {k // max(want[1], 1)}"
            )
        if n:
            first = np.arange(flat.size) % n == 0
            per_row = max(want[1], 1)
            _check_increasing(
                flat,
                first,
                "indices",
                "position",
                lambda k: f"group {(k % per_row) // n} of row {k // per_row}",
            )
        self.arrays = SparseArrays("nm", (out, inn), values, indices, None, n, m)

    @property
    def n(self) -> int:
        """Kept entries per group."""
        return self.arrays.n

    @property
    def m(self) -> int:
        """Group size."""
        return self.arrays.m

    @classmethod
    def from_dense(
        cls, W: np.ndarray, mask: np.ndarray, n: int | None = None, m: int | None = None
    ) -> NMBase:
        """Store ``W`` (float32 (out, in), zero off the mask) for an N:M ``mask``.

        ``n, m`` default to the ones detected from the mask (:func:`detect_nm`); when given, the
        mask must keep exactly ``n`` of every ``m`` consecutive inputs (``in`` a multiple of ``m``,
        ``m <= 256``).
        """
        W, mask = validate_base(W, mask)
        out, inn = W.shape
        if n is None and m is None:
            found = detect_nm(mask)
            if found is None:
                raise ValueError(
                    "mask: expected an N:M mask (exactly n of every m consecutive inputs kept, "
                    f"m in {_NM_CANDIDATES}), got one that is not"
                )
            n, m = found
        if n is None or m is None:
            raise ValueError("n, m: give both or neither")
        n, m = check_nm(n, m, inn, max_m=NM_MAX_M)
        groups = mask.reshape(out, inn // m, m)
        counts = groups.sum(axis=2)
        if not bool((counts == n).all()):
            bad = int(np.count_nonzero(counts != n))
            raise ValueError(f"mask: expected exactly {n} of every {m} inputs kept, {bad} groups differ")
        # positions of the kept entries, increasing within each group (stable sort of ~mask)
        pos = np.sort(np.argsort(~groups, axis=2, kind="stable")[:, :, :n], axis=2)
        vals = np.take_along_axis(W.reshape(out, inn // m, m), pos, axis=2)
        kpr = inn // m * n  # kept entries per row (an explicit width: out may be 0)
        self = cls.__new__(cls)
        self.arrays = SparseArrays(
            "nm",
            (int(out), int(inn)),
            readonly(np.ascontiguousarray(vals.reshape(out, kpr), dtype=np.float32)),
            readonly(np.ascontiguousarray(pos.reshape(out, kpr), dtype=np.uint8)),
            None,
            n,
            m,
        )
        return self

    def _cols(self) -> np.ndarray:
        out, inn = self.shape
        g = inn // self.m
        base = (np.arange(g) * self.m)[None, :, None]
        return (base + self.indices.reshape(out, g, self.n).astype(np.int64)).reshape(out, -1)

    def _row_sq_sums(self) -> np.ndarray:
        v64 = self.values.astype(np.float64)
        return np.einsum("ij,ij->i", v64, v64)

    def to_dense(self) -> np.ndarray:
        """W as float32 (out, in), exact zeros off the mask."""
        W = np.zeros(self.shape, np.float32)
        np.put_along_axis(W, self._cols(), self.values, axis=1)
        return W

    def mask_dense(self) -> np.ndarray:
        """The mask as bool (out, in)."""
        M = np.zeros(self.shape, bool)
        np.put_along_axis(M, self._cols(), True, axis=1)
        return M
