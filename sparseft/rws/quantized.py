"""The :class:`QuantizedSignature`: a signature stored as packed 1/2/4/8-bit codes.

Each tensor is cut into groups (a row per group with ``granularity="channel"`` for tensors of two or
more dimensions; the whole tensor with ``"tensor"``, and always for 1-D tensors); a group keeps two
float32 parameters and its codes, packed LSB first. Levels are uniform between the group's min and
max (``scheme="linear"``) or a sign plus geometric magnitudes (``"log"``); see ``docs/rws.md``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sparseft import _core
from sparseft.rws.signature import Signature

__all__ = ["BITS", "GRANULARITIES", "SCHEMES", "QuantizedSignature"]

BITS = (1, 2, 4, 8)
GRANULARITIES = ("channel", "tensor")
SCHEMES = ("linear", "log")


def group_size(shape: tuple[int, ...], granularity: str) -> int:
    """Elements per group: a row (the product of the trailing axes) for "channel" on 2+-D tensors,
    else the whole tensor."""
    size = math.prod(shape)
    if granularity == "channel" and len(shape) >= 2 and shape[0] > 0:
        return max(1, size // shape[0])
    return max(1, size)


class QuantizedSignature:
    """A signature as packed codes plus per-group parameters (truly packed: ``bits``/8 bytes per value).

    Made by :meth:`Signature.quantize` or :meth:`Signature.load`; applied by
    :class:`sparseft.Patcher` directly from the codes (decoded block by block in C, never as a full
    float copy).

    Attributes
    ----------
    bits : int
        1, 2, 4 or 8.
    granularity : str
        "channel" or "tensor".
    scheme : str
        "linear" or "log".
    errors : dict[str, dict[str, float]]
        Per tensor: ``max_abs`` and ``rel_l2`` (‖q − s‖/‖s‖, 0 for a zero tensor) of the
        dequantized values against the signature quantized (stored in saved files too).
    """

    def __init__(
        self,
        bits: int,
        granularity: str,
        scheme: str,
        tensors: dict[str, tuple[np.ndarray, np.ndarray, tuple[int, ...]]],
        errors: dict[str, dict[str, float]] | None = None,
    ) -> None:
        self.bits, self.granularity, self.scheme = bits, granularity, scheme
        self._t = tensors  # name -> (codes uint8, params float32 (groups, 2), shape)
        for codes, params, _ in tensors.values():
            codes.flags.writeable = False
            params.flags.writeable = False
        self.errors: dict[str, dict[str, float]] = errors or {}

    @classmethod
    def from_signature(
        cls, sig: Signature, bits: int = 8, granularity: str = "channel", scheme: str = "linear"
    ) -> QuantizedSignature:
        """Quantize every tensor of ``sig`` (see :meth:`Signature.quantize`)."""
        if not isinstance(sig, Signature):
            raise TypeError(f"sig: expected a Signature, got {type(sig).__name__}")
        if (
            isinstance(bits, (bool, np.bool_))
            or not isinstance(bits, (int, np.integer))
            or int(bits) not in BITS
        ):
            raise ValueError(f"bits: expected one of {BITS}, got {bits!r}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity: expected one of {GRANULARITIES}, got {granularity!r}")
        if scheme not in SCHEMES:
            raise ValueError(f"scheme: expected one of {SCHEMES}, got {scheme!r}")
        bits = int(bits)
        tensors: dict[str, tuple[np.ndarray, np.ndarray, tuple[int, ...]]] = {}
        errors: dict[str, dict[str, float]] = {}
        for name, v in sig.items():
            if v.size == 0:
                raise ValueError(f"sig[{name!r}]: cannot quantize an empty tensor")
            g = group_size(v.shape, granularity)
            codes, params, (err2, max_abs, x2) = _core.rws_quantize(v.ravel(), g, bits, SCHEMES.index(scheme))
            tensors[name] = (codes, params, v.shape)
            errors[name] = {"max_abs": max_abs, "rel_l2": math.sqrt(err2 / x2) if x2 > 0 else 0.0}
        return cls(bits, granularity, scheme, tensors, errors)

    # ---- mapping ----

    def keys(self) -> list[str]:
        """Tensor names, in order."""
        return list(self._t)

    def __iter__(self) -> Any:
        return iter(self._t)

    def __contains__(self, name: object) -> bool:
        return name in self._t

    def __len__(self) -> int:
        return len(self._t)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape per tensor."""
        return {k: t[2] for k, t in self._t.items()}

    def packed(self, name: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(codes, params, group size) of one tensor (read-only arrays)."""
        codes, params, shape = self._t[name]
        return codes, params, group_size(shape, self.granularity)

    def source(self, name: str) -> tuple[np.ndarray, np.ndarray, int, int, int]:
        """The packed source tuple the ``_core`` patch kernels take."""
        codes, params, g = self.packed(name)
        return (codes, params, g, self.bits, SCHEMES.index(self.scheme))

    @property
    def nbytes(self) -> int:
        """Bytes of the packed codes plus the per-group parameters."""
        return int(sum(c.nbytes + p.nbytes for c, p, _ in self._t.values()))

    @property
    def size(self) -> int:
        """Number of values."""
        return int(sum(math.prod(s) for _, _, s in self._t.values()))

    def __repr__(self) -> str:
        return (
            f"QuantizedSignature({len(self)} tensors, {self.size} values, {self.bits}-bit {self.scheme} "
            f"per {self.granularity}, {self.nbytes} bytes)"
        )

    def dequantize(self) -> Signature:
        """The float32 signature the codes stand for."""
        out = {}
        for name, (codes, params, shape) in self._t.items():
            g = group_size(shape, self.granularity)
            out[name] = _core.rws_dequantize(
                codes, params, math.prod(shape), g, self.bits, SCHEMES.index(self.scheme)
            ).reshape(shape)
        return Signature._own(out)

    def save(self, path: Any) -> None:
        """Write a safetensors file (atomically: a temporary file renamed over ``path``)."""
        from sparseft.rws import io

        io.save_quantized(self, path)
