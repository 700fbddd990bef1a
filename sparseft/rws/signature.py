"""The :class:`Signature`: one float32 array per tensor, extracted, combined and restricted.

See ``docs/rws.md`` for the math (RWS = r − (d·r / d·d)·d per tensor) and the file format.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from sparseft import _core

if TYPE_CHECKING:
    from sparseft.rws.quantized import QuantizedSignature

__all__ = ["Signature", "as_tensors", "float32_of", "layer_of"]

F32_MAX = float(np.finfo(np.float32).max)


def layer_of(name: str) -> str:
    """The layer a tensor belongs to: its name without the last dotted part (``fc.0.weight`` → ``fc.0``)."""
    return name.rsplit(".", 1)[0] if "." in name else name


def as_tensors(obj: object, name: str) -> dict[str, np.ndarray]:
    """The tensors of a dict name → array, or of a model (its ``parameters()``), in order."""
    if isinstance(obj, Mapping):
        tensors = dict(obj)
    elif callable(getattr(obj, "parameters", None)):
        tensors = dict(obj.parameters())  # type: ignore[attr-defined]
    else:
        raise TypeError(
            f"{name}: expected a dict name -> numpy.ndarray or a model with parameters(), "
            f"got {type(obj).__name__}"
        )
    for key, a in tensors.items():
        if not isinstance(key, str):
            raise TypeError(f"{name}: expected str keys, got {type(key).__name__} {key!r}")
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}[{key!r}]: expected a numpy.ndarray, got {type(a).__name__}")
    return tensors


def _is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f" or a.dtype.name == "bfloat16"


def float32_of(a: np.ndarray, name: str) -> np.ndarray:
    """A C-contiguous float32 array of a floating-point ``a`` (float16, bfloat16, float32, float64),
    else a TypeError naming ``name``; float64 values beyond float32's range are a ValueError."""
    if not _is_float(a):
        raise TypeError(f"{name}: expected a floating-point array, got dtype {a.dtype}")
    if a.dtype == np.float64 and a.size and np.nanmax(np.abs(a), initial=0.0) > F32_MAX:
        raise ValueError(f"{name}: float64 values beyond float32's range (|x| > {F32_MAX:.6g})")
    return np.ascontiguousarray(a, dtype=np.float32)


def _check_finite(a: np.ndarray, name: str) -> None:
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or infinity")


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _scalar(x: object, name: str) -> float:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(x).__name__}")
    v = float(x)
    if not math.isfinite(v) or abs(v) > F32_MAX:
        raise ValueError(f"{name}: expected a finite number within float32's range, got {x!r}")
    return v


def select_names(names: list[str], layers: Iterable[str] | None, shallow: int | None) -> list[str]:
    """The tensor names kept by ``layers`` (tensor or layer names) and ``shallow`` (first k layers)."""
    keep = list(names)
    if layers is not None:
        if isinstance(layers, str):
            raise TypeError("layers: expected an iterable of tensor or layer names, got a str")
        wanted = list(layers)
        for w in wanted:
            if not isinstance(w, str):
                raise TypeError(f"layers: expected str names, got {type(w).__name__} {w!r}")
            if w not in names and not any(layer_of(n) == w for n in names):
                raise ValueError(f"layers: {w!r} is neither a tensor nor a layer of pretrained")
        keep = [n for n in keep if n in wanted or layer_of(n) in wanted]
    if shallow is not None:
        if isinstance(shallow, (bool, np.bool_)) or not isinstance(shallow, numbers.Integral):
            raise TypeError(f"shallow: expected an int >= 1 or None, got {type(shallow).__name__}")
        order = list(dict.fromkeys(layer_of(n) for n in keep))
        if shallow < 1 or shallow > len(order):
            raise ValueError(
                f"shallow: expected 1 <= shallow <= {len(order)} (the number of layers), got {shallow}"
            )
        first = set(order[: int(shallow)])
        keep = [n for n in keep if layer_of(n) in first]
    if not keep:
        raise ValueError("layers: no tensor selected")
    return keep


class Signature:
    """A robust weight signature: float32 arrays by tensor name, in the model's order.

    Build one with :meth:`extract` (or from a dict of arrays); combine with ``*``, ``+``, ``-``,
    ``sum``; compare with :meth:`norm` and :meth:`cosine`; store with :meth:`save` or
    :meth:`quantize`; apply with :class:`sparseft.Patcher`.

    Parameters
    ----------
    tensors : dict[str, numpy.ndarray]
        Name → floating-point array (copied to float32; NaN and infinity are refused).

    Attributes
    ----------
    coefficients : dict[str, float]
        From :meth:`extract`: the projection coefficient d·r / d·d per tensor (0 where d·d = 0).

    Notes
    -----
    The arrays are read-only: the :class:`~sparseft.Patcher` undoes a patch by recomputing it, so a
    signature must not change while applied.
    """

    def __init__(self, tensors: Mapping[str, np.ndarray]) -> None:
        if not isinstance(tensors, Mapping):
            raise TypeError(f"tensors: expected a dict name -> numpy.ndarray, got {type(tensors).__name__}")
        if not tensors:
            raise ValueError("tensors: expected at least one tensor, got an empty dict")
        self._t: dict[str, np.ndarray] = {}
        for key, a in as_tensors(tensors, "tensors").items():
            a32 = float32_of(a, f"tensors[{key!r}]")
            _check_finite(a32, f"tensors[{key!r}]")
            self._t[key] = _readonly(a32.copy() if a32 is a else a32)
        self.coefficients: dict[str, float] = {}

    @classmethod
    def _own(cls, tensors: dict[str, np.ndarray]) -> Signature:
        """A signature adopting already checked float32 arrays (no copy)."""
        sig = cls.__new__(cls)
        sig._t = {k: _readonly(v) for k, v in tensors.items()}
        sig.coefficients = {}
        return sig

    @classmethod
    def extract(
        cls,
        pretrained: object,
        clean: object,
        robust: object,
        layers: Iterable[str] | None = None,
        shallow: int | None = None,
    ) -> Signature:
        """RWS per tensor: r − (d·r / d·d)·d with r = robust − pretrained, d = clean − pretrained.

        Parameters
        ----------
        pretrained, clean, robust : dict[str, numpy.ndarray] or model
            The three checkpoints (dicts name → floating-point array, or models with ``parameters()``).
        layers : iterable of str or None
            Tensor names, or layer names (a tensor's name without its last dotted part, e.g.
            ``fc.0`` for ``fc.0.weight``) to extract; None: every tensor of ``pretrained``.
        shallow : int or None
            Keep only the first ``shallow`` layers in the model's (``pretrained``'s) order.

        Returns
        -------
        Signature
            With ``coefficients`` (d·r / d·d per tensor).

        Raises
        ------
        ValueError
            A tensor absent from an input, of different shapes, or containing NaN/infinity.
        TypeError
            A tensor that is not floating point.
        """
        ts = [as_tensors(x, n) for x, n in ((pretrained, "pretrained"), (clean, "clean"), (robust, "robust"))]
        if layers is None:
            for t, n in zip(ts[1:], ("clean", "robust"), strict=True):
                extra = [k for k in t if k not in ts[0]]
                if extra:
                    raise ValueError(f"{n}: tensor {extra[0]!r} is absent from pretrained")
        names = select_names(list(ts[0]), layers, shallow)
        out: dict[str, np.ndarray] = {}
        coef: dict[str, float] = {}
        for key in names:
            arrs = []
            for t, n in zip(ts, ("pretrained", "clean", "robust"), strict=True):
                if key not in t:
                    raise ValueError(f"{n}: tensor {key!r} is absent")
                a = float32_of(t[key], f"{n}[{key!r}]")
                _check_finite(a, f"{n}[{key!r}]")
                if a.shape != ts[0][key].shape:
                    raise ValueError(
                        f"{n}[{key!r}]: expected shape {ts[0][key].shape} (pretrained), got {a.shape}"
                    )
                arrs.append(a)
            sig, dr, dd = _core.rws_extract(arrs[0], arrs[1], arrs[2])
            _check_finite(sig, f"signature[{key!r}] (robust - pretrained overflows float32)")
            out[key] = sig
            coef[key] = dr / dd if dd > 0 else 0.0
        result = cls._own(out)
        result.coefficients = coef
        return result

    # ---- mapping ----

    def __getitem__(self, name: str) -> np.ndarray:
        return self._t[name]

    def __contains__(self, name: object) -> bool:
        return name in self._t

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def keys(self) -> list[str]:
        """Tensor names, in order."""
        return list(self._t)

    def items(self) -> list[tuple[str, np.ndarray]]:
        """(name, read-only float32 array) pairs, in order."""
        return list(self._t.items())

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape per tensor."""
        return {k: v.shape for k, v in self._t.items()}

    @property
    def nbytes(self) -> int:
        """Bytes of the float32 values."""
        return int(sum(v.nbytes for v in self._t.values()))

    @property
    def size(self) -> int:
        """Number of values."""
        return int(sum(v.size for v in self._t.values()))

    def __repr__(self) -> str:
        return f"Signature({len(self)} tensors, {self.size} values, norm {self.norm():.4g})"

    def to_dict(self) -> dict[str, np.ndarray]:
        """Writeable float32 copies by name."""
        return {k: v.copy() for k, v in self._t.items()}

    def select(self, layers: Iterable[str] | None = None, shallow: int | None = None) -> Signature:
        """The sub-signature of some tensors or layers (as in :meth:`extract`)."""
        return Signature._own({k: self._t[k] for k in select_names(list(self._t), layers, shallow)})

    # ---- arithmetic (task vectors) ----

    def _map(self, f: Any, name: str) -> Signature:
        out = {}
        for k, v in self._t.items():
            with np.errstate(over="ignore"):  # an overflow is reported below
                r = np.asarray(f(v), dtype=np.float32)
            _check_finite(r, f"{name} (overflows float32 at {k!r})")
            out[k] = r
        return Signature._own(out)

    def __mul__(self, a: object) -> Signature:
        s = _scalar(a, "alpha")
        return self._map(lambda v: v * np.float32(s), "sig * alpha")

    __rmul__ = __mul__

    def __truediv__(self, a: object) -> Signature:
        s = _scalar(a, "alpha")
        if s == 0:
            raise ZeroDivisionError("alpha: division of a signature by 0")
        return self._map(lambda v: v / np.float32(s), "sig / alpha")

    def __neg__(self) -> Signature:
        return Signature._own({k: -v for k, v in self._t.items()})

    def __add__(self, other: object) -> Signature:
        if isinstance(other, numbers.Number) and other == 0:
            return self  # sum() starts from 0
        if not isinstance(other, Signature):
            return NotImplemented
        out = dict(self._t)
        for k, v in other._t.items():
            if k in out:
                if out[k].shape != v.shape:
                    raise ValueError(f"other[{k!r}]: expected shape {out[k].shape}, got {v.shape}")
                with np.errstate(over="ignore"):  # an overflow is reported below
                    out[k] = out[k] + v
                _check_finite(out[k], f"sig + other (overflows float32 at {k!r})")
            else:
                out[k] = v
        return Signature._own(out)

    __radd__ = __add__

    def __sub__(self, other: object) -> Signature:
        if not isinstance(other, Signature):
            return NotImplemented
        return self + (-other)

    def norm(self, per_layer: bool = False) -> float | dict[str, float]:
        """L2 norm over all tensors (accumulated in double), or one per tensor with ``per_layer``."""
        per = {
            k: float(np.sqrt(np.dot(v.ravel().astype(np.float64), v.ravel().astype(np.float64))))
            for k, v in self._t.items()
        }
        if per_layer:
            return per
        return float(math.sqrt(sum(x * x for x in per.values())))

    def cosine(self, other: Signature, per_layer: bool = False) -> float | dict[str, float]:
        """Cosine similarity with ``other`` over their common tensors (0 where a norm is 0), overall
        or per tensor with ``per_layer``. Tensors of one but not the other count as zeros overall."""
        if not isinstance(other, Signature):
            raise TypeError(f"other: expected a Signature, got {type(other).__name__}")
        per: dict[str, float] = {}
        dot = 0.0
        for k, v in self._t.items():
            if k not in other._t:
                continue
            w = other._t[k]
            if w.shape != v.shape:
                raise ValueError(f"other[{k!r}]: expected shape {v.shape}, got {w.shape}")
            a, b = v.ravel().astype(np.float64), w.ravel().astype(np.float64)
            d = float(np.dot(a, b))
            dot += d
            na, nb = math.sqrt(float(np.dot(a, a))), math.sqrt(float(np.dot(b, b)))
            per[k] = d / (na * nb) if na > 0 and nb > 0 else 0.0
        if per_layer:
            return per
        n1, n2 = self.norm(), other.norm()
        assert isinstance(n1, float) and isinstance(n2, float)
        return dot / (n1 * n2) if n1 > 0 and n2 > 0 else 0.0

    def restrict(self, masks: object) -> Signature:
        """Zero every entry outside a sparse model's masks (dict name → bool array shaped like the
        tensor, or a model with ``masks()``); tensors without a mask are kept as they are."""
        if callable(getattr(masks, "masks", None)):
            masks = masks.masks()  # type: ignore[attr-defined]
        if not isinstance(masks, Mapping):
            raise TypeError(
                f"masks: expected a dict name -> bool array or a model with masks(), got "
                f"{type(masks).__name__}"
            )
        out = dict(self._t)
        for k, m in masks.items():
            if k not in out:
                continue
            if not isinstance(m, np.ndarray) or m.dtype != np.bool_:
                raise TypeError(
                    f"masks[{k!r}]: expected a bool numpy.ndarray, got "
                    f"{getattr(m, 'dtype', type(m).__name__)}"
                )
            if m.shape != out[k].shape:
                raise ValueError(f"masks[{k!r}]: expected shape {out[k].shape}, got {m.shape}")
            out[k] = np.where(m, out[k], np.float32(0))
        return Signature._own(out)

    # ---- storage ----

    def quantize(
        self, bits: int = 8, granularity: str = "channel", scheme: str = "linear"
    ) -> QuantizedSignature:
        """Packed ``bits``-bit codes per tensor (see :class:`sparseft.QuantizedSignature`)."""
        from sparseft.rws.quantized import QuantizedSignature

        return QuantizedSignature.from_signature(self, bits=bits, granularity=granularity, scheme=scheme)

    def save(self, path: str | Any) -> None:
        """Write a safetensors file (atomically: a temporary file renamed over ``path``)."""
        from sparseft.rws import io

        io.save_signature(self, path)

    @staticmethod
    def load(path: str | Any) -> Signature | QuantizedSignature:
        """Read a file written by :meth:`save` or :meth:`QuantizedSignature.save`; a truncated,
        tampered or foreign file is a ValueError naming the path."""
        from sparseft.rws import io

        return io.load(path)

    def dequantize(self) -> Signature:
        """Itself (so code can treat Signature and QuantizedSignature alike)."""
        return self
