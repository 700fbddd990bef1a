"""Compressed storage of a masked base weight, with the LoRS adapter applied on the fly.

A base holds W (out, in), zero off its mask M, and computes with W' = W + s·(B A) ⊙ M without ever
storing W': the C kernels recompute W'_ij = W_ij + s·B[i,:]·A[:,j] at the stored positions only.

``CSRBase``
    Low-density masks: CSR values (nnz,) float32, int32 column indices, int64 row pointers.
    8 bytes per stored entry (+ 8 per row), i.e. smaller than dense float32 below density 0.5.
    CSR was chosen over a bitmask because the kernels walk the nonzeros of a row in order and need
    their columns directly (a bitmask needs a popcount/decode step per 64 columns in the inner
    loop); a bitmask (4 bytes per entry + out·in/8) is smaller only above density 1/32, where the
    dense path is the faster choice anyway (see ``density_crossover``).
``NMBase``
    N:M masks (n kept in every group of m consecutive inputs): values (out, in·n/m) float32 and
    the kept positions inside each group as uint8 (out, in·n/m). 2:4 stores 2.5 bytes per weight.

Every base implements the same contract as ``sparseft.formats.DenseBase``: ``format``, ``shape``,
``nnz``, ``nbytes``, ``from_dense``, ``to_dense``, ``mask_dense``, ``forward``,
``backward_input``, ``masked_grad``, ``merged``, ``unmerged`` (and the fused ``backward``).
``choose_format`` picks the format from a mask.
"""

from __future__ import annotations

import itertools
import numbers
from typing import Any, ClassVar

import numpy as np

from sparseft import _core
from sparseft.formats.dense import check_array, check_mask, check_scale, readonly, validate_base

__all__ = [
    "CROSSOVER_WIDTH_SCALE",
    "DENSITY_CROSSOVERS",
    "NM_MAX_DENSITIES",
    "CSRBase",
    "NMBase",
    "choose_format",
    "density_crossover",
    "detect_nm",
    "nm_max_density",
]

#: Per SIMD path, the density at or below which CSR is faster than the dense-masked path
#: (``DenseBase``), fwd + exact bwd. The dense path rides on the GEMM core and the sparse kernels on
#: their own blocking, so the crossover moves with both. Measured side by side by
#: ``benchmarks/bench_sparse.py`` (N=2048, W 2048x2048, r=16, 2 threads, min of 3 interleaved
#: repetitions, CSR time / DenseBase time) after the sparse kernels' column slabs:
#:
#: * ``"avx512"``: 0.38 at 0.05, 0.37 at 0.1, 0.46 at 0.15, 0.60 at 0.2, 1.12 at 0.3 (the script's
#:   interpolated crossover: 0.28). Later runs, with DenseBase re-timed inside each row's
#:   repetitions: 0.43 / 0.44 at 0.1, 0.71 / 0.65 at 0.2, 0.93 / 0.90 at 0.3, crossover 0.32 /
#:   0.35 (the second of these on the final kernels, 5 repetitions). So 0.25;
#: * ``"avx2"``: 0.26 at 0.05, 0.42 at 0.1, 0.55 at 0.15, 0.85 at 0.2, 1.20 at 0.3 (0.24) on the
#:   first slab kernels (fcdd669). On the kernels of 112f150 (``bench_sparse.py --isa avx2``, two
#:   runs): 0.23 / 0.22 at 0.05, 0.37 / 0.31 at 0.1, 0.49 / 0.50 at 0.2, 0.73 / 0.67 at 0.3,
#:   1.10 / 1.33 at 0.5, crossover 0.45 / 0.40. So 0.35, which keeps a margin (about 0.8) at the
#:   boundary;
#: * ``"portable"``: 0.25, the AVX2 value before 112f150 (not re-measured: a portable DenseBase
#:   step takes seconds at this size).
#:
#: (Before the column slabs the sparse kernels' token blocks were short and the AVX-512 value was
#: 0.12: CSR / DenseBase 0.75 at 0.1, 1.10 at 0.2.)
DENSITY_CROSSOVERS: dict[str, float] = {"portable": 0.25, "avx2": 0.35, "avx512": 0.25}

#: Per SIMD path, N:M masks with n/m at most this use the N:M format under ``format="auto"``.
#: Same side-by-side runs, N:M time / DenseBase time: ``"avx512"`` 0.42 at 1:8, 0.82 at 1:4, 1.06
#: at 4:8, 1.24 at 2:4 (later runs: 0.29 / 0.58, 0.81 / 0.78, 1.42 / 1.32, 1.61 / 1.28);
#: ``"avx2"`` 0.42 at 1:8, 0.69 at 1:4, 0.93 at 4:8, 1.03 at 2:4 (on 112f150, two runs: 0.36 / 0.42,
#: 0.71 / 0.64, 1.18 / 1.34, 1.11 / 1.07). So 1:4 and sparser use N:M
#: everywhere, and 2:4 stays dense (force ``format="nm"`` to halve the base's memory at 2:4
#: instead: 2.5 bytes per weight instead of 5); 4:8 on AVX2 is within the noise of even and stays
#: dense too.
NM_MAX_DENSITIES: dict[str, float] = {"portable": 0.25, "avx2": 0.25, "avx512": 0.25}


#: How the crossovers change with the input width. The sparse kernels cut a wide input into
#: column slabs instead of shrinking their token blocks, so W' is not recomputed more often; what
#: grows is the re-reading of partial outputs (forward) and of gy (backward) per slab, and the
#: dense path's GEMMs get more efficient on the larger shape. Measured (``bench_sparse.py``,
#: AVX-512, N=2048, out=2048, 2 threads): the CSR crossover is 0.19 at in=8192 against 0.28 at
#: in=2048 (CSR / DenseBase 0.50 at 0.1, 0.72 at 0.15, 1.03 at 0.3; N:M 0.53 at 1:8, 0.87 at 1:4),
#: so a factor 0.7 at 8192. Pairs (in, factor); the crossover at ``in`` is the path's value times
#: the factor, interpolated in log2(in); past the last point the factor is held (an
#: extrapolation, not a measurement). (Before the slabs it was 0.14 at 8192.) On the AVX2 path the
#: crossover does not fall with the width (112f150, ``--isa avx2``: CSR / DenseBase 0.70 at 0.3 and
#: 1.24 at 0.5 at in=8192, crossover ~0.41, against 0.40 at in=2048), so the factor is
#: conservative there; it is kept one table for all paths.
CROSSOVER_WIDTH_SCALE: tuple[tuple[int, float], ...] = ((2048, 1.0), (8192, 0.7))


def _width_scale(in_features: int | None) -> float:
    if in_features is None:
        return 1.0
    if isinstance(in_features, bool) or not isinstance(in_features, numbers.Integral):
        raise TypeError(f"in_features: expected an int or None, got {type(in_features).__name__}")
    n = int(in_features)
    if n < 1:
        raise ValueError(f"in_features: expected a positive int, got {n}")
    pts = CROSSOVER_WIDTH_SCALE
    if n <= pts[0][0]:
        return pts[0][1]
    for (n0, f0), (n1, f1) in itertools.pairwise(pts):
        if n <= n1:
            t = (np.log2(n) - np.log2(n0)) / (np.log2(n1) - np.log2(n0))
            return float(f0 + t * (f1 - f0))
    return float(pts[-1][1])


def _simd(simd: str | None) -> str:
    if simd is None:
        return str(_core.build_info()["simd"])
    if not isinstance(simd, str):
        raise TypeError(f"simd: expected a str or None, got {type(simd).__name__}")
    if simd not in DENSITY_CROSSOVERS:
        raise ValueError(f"simd: expected one of {sorted(DENSITY_CROSSOVERS)}, got {simd!r}")
    return simd


def density_crossover(simd: str | None = None, in_features: int | None = None) -> float:
    """Density at or below which ``choose_format`` picks CSR over the dense-masked path.

    Parameters
    ----------
    simd : {"portable", "avx2", "avx512"}, optional
        SIMD path; default: the one the kernels use now (``sft.build_info()["simd"]``).
    in_features : int, optional
        Input width of the layer; wider inputs lower the crossover (``CROSSOVER_WIDTH_SCALE``).
        Default: a layer of at most 2048 inputs.

    Returns
    -------
    float
        The measured crossover for that path (``DENSITY_CROSSOVERS``) times the width factor.
    """
    return DENSITY_CROSSOVERS[_simd(simd)] * _width_scale(in_features)


def nm_max_density(simd: str | None = None, in_features: int | None = None) -> float:
    """Largest n/m for which ``choose_format`` picks the N:M format over the dense-masked path.

    Parameters
    ----------
    simd : {"portable", "avx2", "avx512"}, optional
        SIMD path; default: the one the kernels use now.
    in_features : int, optional
        Input width of the layer (the N:M kernels share the CSR kernels' blocking, so the same
        width factor applies). Default: a layer of at most 2048 inputs.

    Returns
    -------
    float
        The measured limit for that path (``NM_MAX_DENSITIES``) times the width factor.
    """
    return NM_MAX_DENSITIES[_simd(simd)] * _width_scale(in_features)


_NM_CANDIDATES = (4, 8, 16, 32, 2)


# ---- validation ---------------------------------------------------------------------------------


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


def choose_format(mask: np.ndarray, format: str = "auto") -> str:
    """Pick the base format for a mask: ``"dense"``, ``"csr"`` or ``"nm"``.

    Parameters
    ----------
    mask : ndarray of bool, shape (out, in)
    format : {"auto", "dense", "csr", "nm"}
        ``"auto"``: ``"nm"`` for an N:M mask with n/m <= ``nm_max_density(None, in)``, else
        ``"csr"`` when the density is at most ``density_crossover(None, in)``, else ``"dense"``
        (both measured per SIMD path and scaled down for wide inputs: the choice follows the
        kernels in use now and the mask's width ``in``). Any other value forces that format if
        it fits the mask (every mask fits "dense" and "csr"; "nm" needs an N:M mask).

    Raises
    ------
    TypeError
        ``mask`` not a bool ndarray, ``format`` not a str.
    ValueError
        Unknown ``format``, or ``"nm"`` forced on a mask that is not N:M.
    """
    mask = check_mask(mask)
    if not isinstance(format, str):
        raise TypeError(f"format: expected a str, got {type(format).__name__}")
    if format in ("dense", "csr"):
        return format
    if format == "nm":
        if detect_nm(mask) is None:
            raise ValueError(
                "format: 'nm' needs an N:M mask (exactly n of every m consecutive inputs kept), "
                "and this mask is not one"
            )
        return "nm"
    if format != "auto":
        raise ValueError(f"format: expected 'auto', 'dense', 'csr' or 'nm', got {format!r}")
    nm = detect_nm(mask)
    simd, in_features = _simd(None), max(int(mask.shape[1]), 1)
    if nm is not None and nm[0] / nm[1] <= nm_max_density(simd, in_features):
        return "nm"
    density = np.count_nonzero(mask) / max(mask.size, 1)
    return "csr" if density <= density_crossover(simd, in_features) else "dense"


# ---- bases --------------------------------------------------------------------------------------


class _SparseBase:
    """Shared methods: the kernels take the base as a tuple of its arrays."""

    format: ClassVar[str] = ""
    shape: tuple[int, int]
    values: np.ndarray
    indices: np.ndarray

    def _tuple(self) -> tuple[Any, ...]:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def nnz(self) -> int:
        """Number of stored entries (the mask's True count)."""
        return int(self.values.size)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored base (values and index arrays)."""
        raise NotImplementedError  # pragma: no cover

    def _x(self, x: object, name: str, cols: int) -> np.ndarray:
        x = _f32(x, name)
        if x.shape[1] != cols:
            raise ValueError(f"{name}: expected shape (N, {cols}), got {x.shape}")
        return x

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
        return _core.sparse_forward(self._tuple(), x, A, B, s)

    def backward_input(self, gy: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        """``gx (N, in) = gy @ W'`` (SpMM with recomputed values)."""
        s = check_scale(scale)
        gy = self._x(gy, "gy", self.shape[0])
        _check_adapter(A, B, self.shape)
        gx, _, _ = _core.sparse_backward(self._tuple(), gy, None, A, B, s, input_grad=True, weight_grad=False)
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
        _, dA, dB = _core.sparse_backward(self._tuple(), gy, x, A, B, s, input_grad=False, weight_grad=True)
        assert dA is not None and dB is not None
        return dA, dB

    def backward(
        self, gy: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(gx, dA, dB)`` in one fused pass over the nonzeros (faster than the two calls)."""
        gy, x, s = self._grad_args(gy, x, A, B, scale)
        gx, dA, dB = _core.sparse_backward(self._tuple(), gy, x, A, B, s)
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

    def _merged_values(self, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        s = check_scale(scale)
        _check_adapter(A, B, self.shape)
        return _core.sparse_merge(self._tuple(), A, B, s)

    def __repr__(self) -> str:
        out, inn = self.shape
        return f"{type(self).__name__}(shape=({out}, {inn}), nnz={self.nnz}, nbytes={self.nbytes})"


def _owned_copy(a: object, name: str, dtype: type, ndim: int) -> np.ndarray:
    """A read-only copy of a caller's array (the caller's own array keeps its flags and may change
    without changing the base), after checking its type, dtype and number of dimensions."""
    return readonly(np.array(check_array(a, name, dtype, ndim), order="C"))


def _check_shape(shape: object) -> tuple[int, int]:
    if (
        not isinstance(shape, tuple)
        or len(shape) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in shape)
    ):
        raise TypeError(f"shape: expected a tuple (out, in) of two ints, got {shape!r}")
    out, inn = int(shape[0]), int(shape[1])
    if out < 0 or inn < 0:
        raise ValueError(f"shape: expected sizes >= 0, got {shape}")
    return out, inn


class CSRBase(_SparseBase):
    """CSR storage of a masked base: ``values`` (nnz,) float32, ``indices`` (nnz,) int32 columns
    (increasing within a row), ``indptr`` (out+1,) int64 row pointers. Build with ``from_dense``."""

    format: ClassVar[str] = "csr"

    def __init__(self, values: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int]):
        """Copy and check the three arrays (their structure is checked again by every kernel call).

        Raises
        ------
        TypeError, ValueError
            Naming the argument with the wrong type, dtype, dimensions or length.
        """
        out, inn = _check_shape(shape)
        values = _owned_copy(values, "values", np.float32, 1)
        indices = _owned_copy(indices, "indices", np.int32, 1)
        indptr = _owned_copy(indptr, "indptr", np.int64, 1)
        if indices.shape != values.shape:
            raise ValueError(f"indices: expected shape {values.shape} (one per value), got {indices.shape}")
        if indptr.shape != (out + 1,):
            raise ValueError(f"indptr: expected shape ({out + 1},) (out + 1), got {indptr.shape}")
        self._set(values, indices, indptr, (out, inn))

    def _set(self, values: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int]) -> None:
        self.values, self.indices, self.indptr = readonly(values), readonly(indices), readonly(indptr)
        self.shape = shape

    @classmethod
    def _wrap(cls, values: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int]) -> CSRBase:
        """Trusted constructor: fresh arrays owned by the new base, or another base's read-only ones."""
        self = cls.__new__(cls)
        self._set(values, indices, indptr, shape)
        return self

    def _tuple(self) -> tuple[Any, ...]:
        return ("csr", self.shape[0], self.shape[1], 0, 0, self.values, self.indices, self.indptr)

    @classmethod
    def from_dense(cls, W: np.ndarray, mask: np.ndarray) -> CSRBase:
        """Store ``W`` (float32 (out, in), zero off the mask) at the True positions of ``mask``."""
        W, mask = validate_base(W, mask)
        rows, cols = np.nonzero(mask)
        indptr = np.zeros(W.shape[0] + 1, np.int64)
        np.cumsum(np.count_nonzero(mask, axis=1), out=indptr[1:])
        values = np.ascontiguousarray(W[rows, cols], dtype=np.float32)
        return cls._wrap(values, cols.astype(np.int32), indptr, W.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of values + column indices + row pointers."""
        return int(self.values.nbytes + self.indices.nbytes + self.indptr.nbytes)

    def _rows(self) -> np.ndarray:
        return np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))

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

    def merged(self, A: np.ndarray, B: np.ndarray, scale: float) -> CSRBase:
        """A new base holding W' = W + scale·(B A) ⊙ M (same positions, zeros kept)."""
        return CSRBase._wrap(self._merged_values(A, B, scale), self.indices, self.indptr, self.shape)

    def unmerged(self, A: np.ndarray, B: np.ndarray, scale: float) -> CSRBase:
        """The inverse of ``merged``: W = W' - scale·(B A) ⊙ M."""
        return CSRBase._wrap(self._merged_values(A, B, -check_scale(scale)), self.indices, self.indptr, self.shape)


def _check_nm(n: object, m: object, inn: int, where: str = "shape") -> tuple[int, int]:
    """n and m as ints with 0 <= n <= m, 1 <= m <= 256 and m dividing the input dimension."""
    for label, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{label}: expected an int, got {type(v).__name__}")
    ni, mi = int(n), int(m)  # type: ignore[call-overload]
    if not 1 <= mi <= 256:
        raise ValueError(f"m: expected 1 <= m <= 256 (positions stored as uint8), got {mi}")
    if not 0 <= ni <= mi:
        raise ValueError(f"n: expected 0 <= n <= m = {mi}, got {ni}")
    if inn % mi:
        raise ValueError(f"{where}: expected the input dimension to be a multiple of m = {mi}, got {inn}")
    return ni, mi


class NMBase(_SparseBase):
    """N:M storage: ``values`` (out, in·n/m) float32 and ``indices`` (out, in·n/m) uint8, the kept
    positions (increasing) inside each group of ``m`` consecutive inputs. Build with ``from_dense``."""

    format: ClassVar[str] = "nm"

    def __init__(self, values: np.ndarray, indices: np.ndarray, n: int, m: int, shape: tuple[int, int]):
        """Copy and check the arrays (the positions are checked again by every kernel call).

        Raises
        ------
        TypeError, ValueError
            Naming the argument with the wrong type, dtype, shape or value.
        """
        out, inn = _check_shape(shape)
        n, m = _check_nm(n, m, inn)
        values = _owned_copy(values, "values", np.float32, 2)
        indices = _owned_copy(indices, "indices", np.uint8, 2)
        want = (out, inn // m * n)
        if values.shape != want:
            raise ValueError(f"values: expected shape {want} (out, in/m*n), got {values.shape}")
        if indices.shape != want:
            raise ValueError(f"indices: expected shape {want} (out, in/m*n), got {indices.shape}")
        self._set(values, indices, n, m, (out, inn))

    def _set(self, values: np.ndarray, indices: np.ndarray, n: int, m: int, shape: tuple[int, int]) -> None:
        self.values, self.indices = readonly(values), readonly(indices)
        self.n, self.m, self.shape = n, m, shape

    @classmethod
    def _wrap(cls, values: np.ndarray, indices: np.ndarray, n: int, m: int, shape: tuple[int, int]) -> NMBase:
        """Trusted constructor: fresh arrays owned by the new base, or another base's read-only ones."""
        self = cls.__new__(cls)
        self._set(values, indices, n, m, shape)
        return self

    def _tuple(self) -> tuple[Any, ...]:
        return ("nm", self.shape[0], self.shape[1], self.n, self.m, self.values, self.indices, None)

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
        n, m = _check_nm(n, m, inn, "W")
        groups = mask.reshape(out, inn // m, m)
        counts = groups.sum(axis=2)
        if not bool((counts == n).all()):
            bad = int(np.count_nonzero(counts != n))
            raise ValueError(f"mask: expected exactly {n} of every {m} inputs kept, {bad} groups differ")
        # positions of the kept entries, increasing within each group (stable sort of ~mask)
        pos = np.sort(np.argsort(~groups, axis=2, kind="stable")[:, :, :n], axis=2)
        vals = np.take_along_axis(W.reshape(out, inn // m, m), pos, axis=2)
        kpr = inn // m * n  # kept entries per row (an explicit width: out may be 0)
        return cls._wrap(
            np.ascontiguousarray(vals.reshape(out, kpr), dtype=np.float32),
            np.ascontiguousarray(pos.reshape(out, kpr), dtype=np.uint8),
            n,
            m,
            (out, inn),
        )

    @property
    def nbytes(self) -> int:
        """Bytes of values + uint8 positions."""
        return int(self.values.nbytes + self.indices.nbytes)

    def _cols(self) -> np.ndarray:
        out, inn = self.shape
        g = inn // self.m
        base = (np.arange(g) * self.m)[None, :, None]
        return (base + self.indices.reshape(out, g, self.n).astype(np.int64)).reshape(out, -1)

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

    def merged(self, A: np.ndarray, B: np.ndarray, scale: float) -> NMBase:
        """A new base holding W' = W + scale·(B A) ⊙ M (same positions, zeros kept)."""
        return NMBase._wrap(self._merged_values(A, B, scale), self.indices, self.n, self.m, self.shape)

    def unmerged(self, A: np.ndarray, B: np.ndarray, scale: float) -> NMBase:
        """The inverse of ``merged``: W = W' - scale·(B A) ⊙ M."""
        return NMBase._wrap(
            self._merged_values(A, B, -check_scale(scale)), self.indices, self.n, self.m, self.shape
        )
