"""Robust Weight Signatures: extraction, quantization, merging and the bit-exact Patcher.

See ``docs/rws.md``.
"""

from sparseft.rws.merge import METHODS, merge
from sparseft.rws.patcher import Handle, Patcher
from sparseft.rws.quantized import QuantizedSignature
from sparseft.rws.signature import Signature

__all__ = ["METHODS", "Handle", "Patcher", "QuantizedSignature", "Signature", "merge"]
