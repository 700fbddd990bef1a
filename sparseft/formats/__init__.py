"""Sparse base formats: how a masked, frozen base weight is stored and multiplied.

``dense``  -- :class:`DenseBase` (dense float32 with zeros + a uint8 mask) and the :class:`BaseFormat`
              protocol every format implements.
``sparse`` -- :class:`CSRBase`, :class:`NMBase` and :func:`choose_format`, the measured choice
              between them.
"""

from __future__ import annotations

from sparseft.formats.dense import BaseFormat, DenseBase
from sparseft.formats.sparse import (
    CROSSOVER_WIDTH_SCALE,
    DENSITY_CROSSOVERS,
    NM_MAX_DENSITIES,
    CSRBase,
    NMBase,
    choose_format,
    density_crossover,
    detect_nm,
    nm_max_density,
)

__all__ = [
    "CROSSOVER_WIDTH_SCALE",
    "DENSITY_CROSSOVERS",
    "NM_MAX_DENSITIES",
    "BaseFormat",
    "CSRBase",
    "DenseBase",
    "NMBase",
    "choose_format",
    "density_crossover",
    "detect_nm",
    "nm_max_density",
]
