"""The measured choice of a base format for a mask: dense-masked, CSR or N:M.

The thresholds below are crossovers measured with ``python benchmarks/bench_sparse.py`` (forward
plus exact backward of a LoRS layer, compressed time / ``DenseBase`` time, side by side in one
run); the figures behind them, with dates and CPU lines, are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import itertools

import numpy as np

from sparseft import _core
from sparseft._validation import check_choice, check_int
from sparseft.formats.base import BaseFormat, check_mask
from sparseft.formats.dense import DenseBase
from sparseft.formats.sparse import CSRBase, NMBase, detect_nm

__all__ = [
    "CROSSOVER_WIDTH_SCALE",
    "DENSITY_CROSSOVERS",
    "FORMATS",
    "NM_MAX_DENSITIES",
    "choose_format",
    "density_crossover",
    "format_class",
    "nm_max_density",
]

#: Names accepted by ``choose_format`` / ``LoRSLinear(format=...)``.
FORMATS = ("auto", "dense", "csr", "nm")

#: Per SIMD path, the density at or below which CSR is faster than the dense-masked path
#: (``DenseBase``), forward + exact backward. The dense path rides on the GEMM core and the sparse
#: kernels on their own blocking, so the crossover moves with both. Each value sits below the
#: measured crossover (N=2048, W 2048x2048, r=16, 2 threads), keeping CSR's time at about 0.8 of
#: the dense path's at the boundary. The portable value is the AVX2 one of an earlier kernel
#: generation: a portable DenseBase step at this size takes seconds, too long to re-measure.
DENSITY_CROSSOVERS: dict[str, float] = {"portable": 0.25, "avx2": 0.35, "avx512": 0.25}

#: Per SIMD path, N:M masks with n/m at most this use the N:M format under ``format="auto"``.
#: Measured the same way: 1:4 and sparser are faster than the dense path on every path; 2:4 is
#: not (force ``format="nm"`` to halve the base's memory at 2:4: 2.5 bytes per weight instead of
#: 5), and 4:8 on AVX2 is within the noise of even, so it stays dense too.
NM_MAX_DENSITIES: dict[str, float] = {"portable": 0.25, "avx2": 0.25, "avx512": 0.25}

#: How the crossovers change with the input width, as pairs (in, factor): the crossover at ``in``
#: is the path's value times the factor, interpolated in log2(in) and held past the last point.
#: The sparse kernels cut a wide input into column slabs, so what grows with the width is the
#: re-reading of partial outputs (forward) and of gy (backward) per slab, while the dense path's
#: GEMMs get more efficient on the larger shape. The factor 0.7 at in=8192 is the AVX-512
#: measurement; on AVX2 the crossover does not fall with the width, so one table for all paths
#: is conservative there.
CROSSOVER_WIDTH_SCALE: tuple[tuple[int, float], ...] = ((2048, 1.0), (8192, 0.7))

_CLASSES: dict[str, type[BaseFormat]] = {"dense": DenseBase, "csr": CSRBase, "nm": NMBase}


def _width_scale(in_features: int | None) -> float:
    if in_features is None:
        return 1.0
    if isinstance(in_features, bool) or not isinstance(in_features, int | np.integer):
        raise TypeError(f"in_features: expected an int or None, got {type(in_features).__name__}")
    n = check_int(in_features, "in_features", 1)
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
    return check_choice(simd, "simd", tuple(sorted(DENSITY_CROSSOVERS)))


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
    check_choice(format, "format", FORMATS)
    if format in ("dense", "csr"):
        return format
    if format == "nm":
        if detect_nm(mask) is None:
            raise ValueError(
                "format: 'nm' needs an N:M mask (exactly n of every m consecutive inputs kept), "
                "and this mask is not one"
            )
        return "nm"
    nm = detect_nm(mask)
    simd, in_features = _simd(None), max(int(mask.shape[1]), 1)
    if nm is not None and nm[0] / nm[1] <= nm_max_density(simd, in_features):
        return "nm"
    density = np.count_nonzero(mask) / max(mask.size, 1)
    return "csr" if density <= density_crossover(simd, in_features) else "dense"


def format_class(mask: np.ndarray, format: str = "auto") -> type[BaseFormat]:
    """The base-format class for a mask: :class:`DenseBase`, :class:`CSRBase` or :class:`NMBase`.

    Parameters
    ----------
    mask : numpy.ndarray
        bool (out, in).
    format : {"auto", "dense", "csr", "nm"}
        As :func:`choose_format` (``"auto"``: the measured crossover).

    Raises
    ------
    TypeError
        If ``format`` is not a str or ``mask`` not a bool ndarray.
    ValueError
        If ``format`` is unknown or does not fit the mask.
    """
    return _CLASSES[choose_format(mask, format)]
