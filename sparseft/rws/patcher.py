"""The :class:`Patcher`: apply signatures to weights in place, compose them, and remove them in any
order with every weight restored bit for bit.

How the undo works (``docs/rws.md``): a patch computes w' = fmaf(α, s, w) per element (one rounding;
float16/bfloat16 weights are widened to float32 exactly and rounded back to nearest even). Its
inverse fmaf(−α, s, w') returns the original bits except where the first rounding crossed a power of
two or hit a tie; the C kernel checks every element while patching and records exactly those
(position, original bits) pairs. Undoing the most recent patch of a tensor is then exact. Removing
an older patch undoes the later ones on that tensor (most recent first), undoes it, and re-applies the
later ones, so the weights always equal what applying the remaining patches, in their order, to the
original weights gives. The undo memory of a patch is its record (a small fraction of the tensor:
measure it with ``Handle.undo_nbytes``) and a reference to the (read-only) signature.
"""

from __future__ import annotations

import contextlib
import copy as copy_module
import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from sparseft import _core
from sparseft.rws.quantized import QuantizedSignature
from sparseft.rws.signature import Signature, _scalar, as_tensors

__all__ = ["Handle", "Patcher"]

_ids = itertools.count(1)


class Handle:
    """One applied signature (returned by :meth:`Patcher.apply`).

    Attributes
    ----------
    signature : Signature or QuantizedSignature
        What was applied.
    id : int
        Unique per process.
    """

    def __init__(self, patcher: Patcher, signature: Signature | QuantizedSignature) -> None:
        self.id = next(_ids)
        self.signature = signature
        self._patcher = patcher
        self.names = tuple(signature.keys())
        self._undo: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def alpha(self) -> float:
        """The current scale (see :meth:`Patcher.rescale`); 0.0 once removed."""
        return self._patcher._alpha_of(self)

    @property
    def active(self) -> bool:
        """Whether the patch is applied."""
        return self._patcher._position(self) is not None

    @property
    def undo_nbytes(self) -> int:
        """Bytes of this patch's undo records (positions and original bits)."""
        return int(sum(i.nbytes + b.nbytes for i, b in self._undo.values()))

    def __repr__(self) -> str:
        state = f"alpha={self.alpha:g}" if self.active else "removed"
        return f"Handle(id={self.id}, {len(self.names)} tensors, {state}, undo {self.undo_nbytes} bytes)"


def _weight_view(name: str, w: object) -> np.ndarray:
    """The array the kernels patch: float32/float16 as is, bfloat16 (ml_dtypes) as its uint16 bits,
    uint16 taken as bfloat16 bits."""
    if not isinstance(w, np.ndarray):
        raise TypeError(f"weights[{name!r}]: expected a numpy.ndarray, got {type(w).__name__}")
    if w.dtype.name == "bfloat16":
        w = w.view(np.uint16)
    if w.dtype not in (np.float32, np.float16, np.uint16):
        raise TypeError(
            f"weights[{name!r}]: expected dtype float32, float16, bfloat16 or uint16 "
            f"(bfloat16 bits), got {w.dtype}"
        )
    if not w.flags.c_contiguous or not w.flags.aligned or not w.dtype.isnative:
        raise ValueError(f"weights[{name!r}]: expected a C-contiguous aligned native-order array")
    if not w.flags.writeable:
        raise ValueError(f"weights[{name!r}]: expected a writeable array (or Patcher(..., copy=True))")
    return w


def _as_float(w: np.ndarray) -> np.ndarray:
    """float32 values of a patchable view (uint16 = bfloat16 bits)."""
    if w.dtype == np.uint16:
        return (w.astype(np.uint32) << 16).view(np.float32)
    return w


class Patcher:
    """Patch a model's weights in place with signatures, and take the patches off bit-exactly.

    Parameters
    ----------
    weights_or_model : dict[str, numpy.ndarray] or model
        The weights to patch (float32, float16, bfloat16 from ml_dtypes, or uint16 arrays holding
        bfloat16 bits), or a model whose ``parameters()`` are its live weights; a model's
        ``masks()`` (bool arrays of pruned tensors) are honoured: entries off a mask are never touched.
    copy : bool
        Patch copies (``patcher.weights``; a model is deep-copied, ``patcher.model``) instead of the
        caller's arrays.
    masks : dict[str, numpy.ndarray] or None
        Bool arrays by tensor name: only entries where the mask is True are patched (so a sparse
        model keeps every zero), added to a model's own masks.

    Notes
    -----
    The patched weights are always exactly what applying the active patches in their order to the
    original weights gives; with none left, the original bits. Do not write to the weights while a
    patch is applied (the undo assumes the patched values).
    """

    def __init__(
        self, weights_or_model: object, copy: bool = False, masks: Mapping[str, Any] | None = None
    ) -> None:
        if not isinstance(copy, (bool, np.bool_)):
            raise TypeError(f"copy: expected a bool, got {type(copy).__name__}")
        self.model: Any = None
        if not isinstance(weights_or_model, Mapping):
            self.model = copy_module.deepcopy(weights_or_model) if copy else weights_or_model
            source: object = self.model
        else:
            source = weights_or_model
        tensors = as_tensors(source, "weights_or_model")
        if not tensors:
            raise ValueError("weights_or_model: expected at least one weight, got none")
        if copy and self.model is None:
            tensors = {k: v.copy() for k, v in tensors.items()}
        self.weights: dict[str, np.ndarray] = tensors
        self._views = {k: _weight_view(k, v) for k, v in tensors.items()}
        for k, v in self._views.items():
            if not np.isfinite(_as_float(v)).all():
                raise ValueError(f"weights[{k!r}]: contains NaN or infinity")
        all_masks: dict[str, Any] = {}
        if self.model is not None and callable(getattr(self.model, "masks", None)):
            all_masks.update(self.model.masks())
        if masks is not None:
            if not isinstance(masks, Mapping):
                raise TypeError(f"masks: expected a dict name -> bool array, got {type(masks).__name__}")
            all_masks.update(masks)
        self._masks: dict[str, np.ndarray] = {}
        for k, m in all_masks.items():
            if k not in self._views:
                raise ValueError(f"masks: {k!r} is not a weight")
            if not isinstance(m, np.ndarray) or m.dtype != np.bool_:
                raise TypeError(
                    f"masks[{k!r}]: expected a bool numpy.ndarray, got {getattr(m, 'dtype', type(m))}"
                )
            if m.shape != self._views[k].shape:
                raise ValueError(f"masks[{k!r}]: expected shape {self._views[k].shape}, got {m.shape}")
            self._masks[k] = np.ascontiguousarray(m)
        self._entries: list[tuple[Handle, float]] = []

    # ---- state ----

    @property
    def active(self) -> list[Handle]:
        """The applied patches, in application order."""
        return [h for h, _ in self._entries]

    @property
    def undo_nbytes(self) -> int:
        """Bytes of all undo records held."""
        return sum(h.undo_nbytes for h, _ in self._entries)

    def _position(self, h: Handle) -> int | None:
        for i, (g, _) in enumerate(self._entries):
            if g is h:
                return i
        return None

    def _alpha_of(self, h: Handle) -> float:
        i = self._position(h)
        return 0.0 if i is None else self._entries[i][1]

    def _check_handle(self, h: object) -> int:
        if not isinstance(h, Handle):
            raise TypeError(f"handle: expected a Handle from Patcher.apply, got {type(h).__name__}")
        i = self._position(h)
        if i is None:
            other = "another Patcher" if h._patcher is not self else "this Patcher; it was removed"
            raise ValueError(f"handle: not active (id {h.id} belongs to {other})")
        return i

    # ---- kernels ----

    def _source(self, sig: Signature | QuantizedSignature, name: str) -> Any:
        if isinstance(sig, QuantizedSignature):
            return sig.source(name)
        return sig[name]

    def _patch(self, h: Handle, name: str, alpha: float) -> int:
        w = self._views[name]
        index, bits, nonfinite = _core.rws_patch(
            w, self._source(h.signature, name), alpha, self._masks.get(name)
        )
        # compact record: positions as uint32 where they fit, 16-bit weights' bits as uint16
        if w.size < 2**32:
            index = index.astype(np.uint32)
        if w.dtype != np.float32:
            bits = bits.astype(np.uint16)
        h._undo[name] = (index, bits)
        return int(nonfinite)

    def _unpatch(self, h: Handle, name: str, alpha: float) -> None:
        index, bits = h._undo.pop(name)
        _core.rws_unpatch(
            self._views[name],
            self._source(h.signature, name),
            alpha,
            index.astype(np.int64),
            bits.astype(np.uint32),
            self._masks.get(name),
        )

    def _rebuild(self, name: str, old: list[tuple[Handle, float]], new: list[tuple[Handle, float]]) -> None:
        """Take tensor ``name`` from the patches ``old`` to ``new`` (both in application order); on a
        non-finite result, back to ``old`` exactly and a ValueError."""
        p = 0
        while p < min(len(old), len(new)) and old[p][0] is new[p][0] and old[p][1] == new[p][1]:
            p += 1
        for h, a in reversed(old[p:]):
            self._unpatch(h, name, a)
        done: list[tuple[Handle, float]] = []
        for h, a in new[p:]:
            bad = self._patch(h, name, a)
            done.append((h, a))
            if bad:
                for h2, a2 in reversed(done):
                    self._unpatch(h2, name, a2)
                for h2, a2 in old[p:]:
                    self._patch(h2, name, a2)  # the same bits as before: the kernels are deterministic
                raise ValueError(
                    f"alpha: patching {name!r} with alpha={a!r} gives {bad} non-finite weights "
                    "(nothing was changed)"
                )

    def _transition(self, new: list[tuple[Handle, float]], names: list[str]) -> None:
        old = self._entries
        done: list[str] = []
        try:
            for name in names:
                self._rebuild(
                    name, [e for e in old if name in e[0].names], [e for e in new if name in e[0].names]
                )
                done.append(name)
        except ValueError:
            for name in reversed(done):
                self._rebuild(
                    name, [e for e in new if name in e[0].names], [e for e in old if name in e[0].names]
                )
            raise
        self._entries = new

    # ---- public ----

    def apply(self, sig: Signature | QuantizedSignature, alpha: float = 1.0) -> Handle:
        """Add ``alpha`` × ``sig`` to the weights in place (on the signature's tensors only).

        Parameters
        ----------
        sig : Signature or QuantizedSignature
            A quantized signature is decoded block by block inside the kernel (no float copy).
        alpha : float
            Finite scale.

        Returns
        -------
        Handle
            For :meth:`remove` and :meth:`rescale`.

        Raises
        ------
        ValueError
            A tensor of ``sig`` missing from the weights or of another shape, a non-finite alpha, or
            a result that is not finite (the weights are then left exactly as they were).
        """
        if not isinstance(sig, (Signature, QuantizedSignature)):
            raise TypeError(f"sig: expected a Signature or QuantizedSignature, got {type(sig).__name__}")
        a = _scalar(alpha, "alpha")
        for name, shape in sig.shapes.items():
            if name not in self._views:
                raise ValueError(f"sig: tensor {name!r} is not among the weights")
            if self._views[name].shape != tuple(shape):
                raise ValueError(
                    f"sig[{name!r}]: expected shape {self._views[name].shape} (the weight), got {shape}"
                )
        h = Handle(self, sig)
        self._transition([*self._entries, (h, a)], list(h.names))
        return h

    def remove(self, handle: Handle) -> None:
        """Take a patch off, whatever was applied after it; the other patches stay."""
        i = self._check_handle(handle)
        self._transition(self._entries[:i] + self._entries[i + 1 :], list(handle.names))

    def rescale(self, handle: Handle, alpha: float) -> None:
        """Change a patch's scale in place (it keeps its position among the patches)."""
        i = self._check_handle(handle)
        a = _scalar(alpha, "alpha")
        new = list(self._entries)
        new[i] = (handle, a)
        self._transition(new, list(handle.names))

    def restore(self) -> None:
        """Remove every patch: the weights are the original bits again."""
        names = list(dict.fromkeys(n for h, _ in self._entries for n in h.names))
        self._transition([], names)

    @contextlib.contextmanager
    def patched(self, sig: Signature | QuantizedSignature, alpha: float = 1.0) -> Iterator[Handle]:
        """A context manager: ``sig`` applied inside the block, removed on exit (even on error)."""
        h = self.apply(sig, alpha)
        try:
            yield h
        finally:
            if h.active:
                self.remove(h)

    def __repr__(self) -> str:
        n = sum(math.prod(v.shape) for v in self._views.values())
        return f"Patcher({len(self._views)} tensors, {n} weights, {len(self._entries)} active patches)"
