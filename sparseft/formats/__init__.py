"""Base formats: how a masked, frozen base weight is stored and multiplied.

``base``   -- the :class:`BaseFormat` protocol every format implements, and the (W, mask) checks.
``dense``  -- :class:`DenseBase`: dense float32 with zeros + a uint8 mask.
``sparse`` -- :class:`CSRBase` and :class:`NMBase`, the compressed formats.
``choose`` -- :func:`choose_format`, the measured choice between them.
"""

from __future__ import annotations

from sparseft.formats.base import BaseFormat, validate_base
from sparseft.formats.choose import (
    CROSSOVER_WIDTH_SCALE,
    DENSITY_CROSSOVERS,
    FORMATS,
    NM_MAX_DENSITIES,
    choose_format,
    density_crossover,
    format_class,
    nm_max_density,
)
from sparseft.formats.dense import DenseBase
from sparseft.formats.sparse import CSRBase, NMBase, SparseArrays, detect_nm

__all__ = [
    "CROSSOVER_WIDTH_SCALE",
    "DENSITY_CROSSOVERS",
    "FORMATS",
    "NM_MAX_DENSITIES",
    "BaseFormat",
    "CSRBase",
    "DenseBase",
    "NMBase",
    "SparseArrays",
    "choose_format",
    "density_crossover",
    "detect_nm",
    "format_class",
    "nm_max_density",
    "validate_base",
]
