"""Low-rank adapters on sparse bases.

``lors``  -- :class:`LoRSLinear` and :class:`LoRSConfig` (W' = W + s·(B A) ⊙ M).
``dora``  -- :class:`DoRALinear`, the weight-normalized (DoRA-style) variant.
``inits`` -- adapter initializations ("lora", "gaussian", "lors" gradient-SVD).
"""

from __future__ import annotations

from sparseft.adapters.dora import DoRALinear
from sparseft.adapters.lors import LoRSConfig, LoRSLinear

__all__ = ["DoRALinear", "LoRSConfig", "LoRSLinear"]
