"""sparseft: fine-tune sparse (pruned) neural networks on NumPy arrays without losing the sparsity.

The heavy loops live in the C extension :mod:`sparseft._core`; this package validates input,
holds the objects and does I/O. See ``README.md`` and ``DESIGN.md`` for the API contract.
"""

from __future__ import annotations

from sparseft import _core, graphs
from sparseft._runtime import build_info, get_num_threads, set_num_threads, simd_path
from sparseft.formats_dense import DenseBase
from sparseft.graph import Graph
from sparseft.lors import LoRSConfig, LoRSLinear
from sparseft.planner import Planner, Schedule, simulate
from sparseft.weightnorm import WeightNorm

__version__ = "0.1.0"

__all__ = [
    "DenseBase",
    "Graph",
    "LoRSConfig",
    "LoRSLinear",
    "Planner",
    "Schedule",
    "WeightNorm",
    "__version__",
    "_core",
    "build_info",
    "get_num_threads",
    "graphs",
    "set_num_threads",
    "simd_path",
    "simulate",
]
