"""Checkers for settings and objects: one function per rule, shared by every public constructor.

Python checks an object's settings once, when the object is built (``LoRSLinear``, the base
formats, ``WeightNorm``, the prune functions, the graph generators, the runtime settings); the C
core ``sparseft._core`` checks arrays (dtype, shape, strides, NaN/inf) at its own boundary. Every
checker returns the value in its canonical Python type and raises ``TypeError`` for a wrong type or
``ValueError`` for a wrong value, with a message that starts with the argument's name:
``"r: expected an int >= 1, got 0"``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "F32_MAX",
    "NM_MAX_M",
    "check_array",
    "check_bool",
    "check_choice",
    "check_finite",
    "check_int",
    "check_nm",
    "check_real",
    "check_scale",
    "check_shaped",
    "check_size2",
]

#: Largest finite float32, as a Python float: scales and other settings the float32 kernels
#: multiply by must not exceed it (1e39 becomes inf in float32).
F32_MAX = float(np.finfo(np.float32).max)

#: Largest group size ``m`` of an N:M base: positions inside a group are stored as uint8.
NM_MAX_M = 256


def _kind(value: object) -> str:
    return type(value).__name__


def check_int(
    value: object, name: str, lo: int | None = None, hi: int | None = None, *, what: str = "an int"
) -> int:
    """``value`` as an int in ``[lo, hi]`` (either bound optional); bool is not an int here.
    ``what`` describes the value in the range message (``"n: expected a thread count in [1, 8]"``).

    Raises
    ------
    TypeError
        If ``value`` is not an integer (Python or NumPy), or is a bool.
    ValueError
        If it lies outside the bounds.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {_kind(value)}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = (
            f"in [{lo}, {hi}]"
            if lo is not None and hi is not None
            else f">= {lo}"
            if lo is not None
            else f"<= {hi}"
        )
        raise ValueError(f"{name}: expected {what} {rng}, got {v}")
    return v


def check_bool(value: object, name: str) -> bool:
    """``value`` as a bool (Python or NumPy bool only: 0/1 and arrays are refused)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {_kind(value)}")
    return bool(value)


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of the strings ``choices``.

    Raises
    ------
    TypeError
        If ``value`` is not a str.
    ValueError
        If it is a str outside ``choices``.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected one of {choices}, got {_kind(value)}")
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def check_real(
    value: object,
    name: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    what: str | None = None,
) -> float:
    """``value`` as a finite float within ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``).

    Python and NumPy reals are accepted, bool is not. ``what`` replaces the default description
    (e.g. ``"a number in [0, 1]"``) in the messages. An int too large for a float (``10**400``)
    is a ValueError, not an OverflowError.
    """
    if what is None:
        left = "(" if lo_open else "["
        if lo is not None and hi is not None:
            what = f"a number in {left}{lo}, {hi}]"
        elif lo is not None:
            what = f"a number {'>' if lo_open else '>='} {lo}"
        elif hi is not None:
            what = f"a number <= {hi}"
        else:
            what = "a finite number"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {what}, got {_kind(value)}")
    try:
        v = float(value)
    except OverflowError:
        raise ValueError(f"{name}: expected {what}, got {_kind(value)} beyond float64 range") from None
    if (
        not math.isfinite(v)
        or (lo is not None and (v <= lo if lo_open else v < lo))
        or (hi is not None and v > hi)
    ):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return v


def check_scale(scale: object, name: str = "scale") -> float:
    """``scale`` as a float that is finite in float32 (the adapter scale the kernels multiply by)."""
    if type(scale) is float and -F32_MAX <= scale <= F32_MAX:  # the per-call case; NaN fails both
        return scale
    return check_real(
        scale, name, -F32_MAX, F32_MAX, what=f"a finite float32 number (|{name}| <= {F32_MAX:.6g})"
    )


def check_nm(
    n: object,
    m: object,
    in_features: int | None = None,
    *,
    prefix: str = "",
    where: str = "W",
    max_m: int | None = None,
) -> tuple[int, int]:
    """An N:M pattern ``(n, m)``: ints with ``0 <= n <= m``, ``1 <= m <= max_m`` and, when
    ``in_features`` is given, ``m`` dividing it (the error then names ``where``).

    ``prefix`` is put before ``n`` and ``m`` in the messages (``"nm."`` for a pair argument).
    """
    ni = check_int(n, f"{prefix}n")
    mi = check_int(m, f"{prefix}m", 1, max_m)
    if not 0 <= ni <= mi:
        raise ValueError(f"{prefix}n: expected 0 <= n <= m = {mi}, got {ni}")
    if in_features is not None and in_features % mi:
        raise ValueError(
            f"{where}: expected the input dimension to be a multiple of m = {mi} for N:M groups, got {in_features}"
        )
    return ni, mi


def check_size2(shape: object, name: str = "shape") -> tuple[int, int]:
    """A matrix size ``(rows, cols)``: a tuple of two ints >= 0."""
    if (
        not isinstance(shape, tuple)
        or len(shape) != 2
        or any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) for v in shape)
    ):
        raise TypeError(f"{name}: expected a tuple (out, in) of two ints, got {shape!r}")
    rows, cols = int(shape[0]), int(shape[1])
    if rows < 0 or cols < 0:
        raise ValueError(f"{name}: expected sizes >= 0, got {shape}")
    return rows, cols


def _check_ndarray(a: object, name: str, dtype: type | None) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {_kind(a)}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype).name}, got {a.dtype}")
    return a


def check_array(a: object, name: str, dtype: type, ndim: int, dims: str = "") -> np.ndarray:
    """An ``ndim``-D ndarray of ``dtype`` (returned as is); ``dims`` names the axes in the message
    (e.g. ``" (out, in)"``)."""
    a = _check_ndarray(a, name, dtype)
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array{dims}, got shape {a.shape}")
    return a


def check_shaped(a: object, name: str, dtype: type, shape: tuple[int | None, ...]) -> np.ndarray:
    """An ndarray of ``dtype`` whose shape matches ``shape`` (None: any length on that axis)."""
    a = _check_ndarray(a, name, dtype)
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape, strict=False)):
        want = (
            "("
            + ", ".join("..." if s is None else str(s) for s in shape)
            + ("," if len(shape) == 1 else "")
            + ")"
        )
        raise ValueError(f"{name}: expected shape {want}, got {a.shape}")
    return a


def check_finite(a: np.ndarray, name: str) -> np.ndarray:
    """``a`` if every entry is finite, else a ValueError naming ``name``."""
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or infinity")
    return a
