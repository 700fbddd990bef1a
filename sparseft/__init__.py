"""sparseft: fine-tune sparse (pruned) neural networks on NumPy arrays without losing the sparsity.

The heavy loops live in the C extension :mod:`sparseft._core`; this package validates input,
holds the objects and does I/O. See ``README.md`` and ``docs/design.md``.
"""

from __future__ import annotations

from sparseft import _core, adapters, data, distributed, formats, models, prune, remat, rws
from sparseft.adapters import DoRALinear, LoRSConfig, LoRSLinear
from sparseft.formats import DenseBase
from sparseft.models.sparsify import sparsify
from sparseft.remat import Graph, Planner, Schedule, simulate
from sparseft.remat import generators as graphs
from sparseft.runtime import build_info, get_num_threads, set_num_threads, simd_path
from sparseft.rws import Patcher, QuantizedSignature, Signature
from sparseft.sparsegpt import sparsegpt
from sparseft.train import Trainer
from sparseft.weightnorm import WeightNorm

__version__ = "0.1.0"

__all__ = [
    "DenseBase",
    "DoRALinear",
    "Graph",
    "LoRSConfig",
    "LoRSLinear",
    "Patcher",
    "Planner",
    "QuantizedSignature",
    "Schedule",
    "Signature",
    "Trainer",
    "WeightNorm",
    "__version__",
    "_core",
    "adapters",
    "build_info",
    "data",
    "distributed",
    "formats",
    "get_num_threads",
    "graphs",
    "models",
    "prune",
    "remat",
    "rws",
    "set_num_threads",
    "simd_path",
    "simulate",
    "sparsegpt",
    "sparsify",
]
