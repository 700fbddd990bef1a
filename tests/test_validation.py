"""The settings checkers of sparseft/_validation.py: canonical values back, named TypeError/ValueError otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from sparseft import _validation as v


def test_accepted_values_come_back_canonical() -> None:
    assert v.check_int(np.int64(3), "r", 1, 8) == 3 and type(v.check_int(np.int8(3), "r")) is int
    assert v.check_bool(np.bool_(True), "flag") is True
    assert v.check_choice("csr", "format", ("dense", "csr")) == "csr"
    assert v.check_real(np.float32(0.5), "x", 0.0, 1.0) == 0.5 and type(v.check_real(1, "x")) is float
    assert v.check_real(1e-9, "x", 0.0, lo_open=True) == 1e-9
    assert v.check_scale(-v.F32_MAX) == -v.F32_MAX and v.check_scale(np.float64(2.0)) == 2.0
    assert v.check_nm(np.int32(2), 4, 8) == (2, 4) and v.check_nm(0, 1) == (0, 1)
    assert v.check_size2((np.int64(2), 0)) == (2, 0)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: v.check_int(True, "r"), TypeError, "r: expected an int, got bool"),
        (lambda: v.check_int(2.0, "r"), TypeError, "r: expected an int, got float"),
        (lambda: v.check_int(None, "r"), TypeError, "r: expected an int, got NoneType"),
        (lambda: v.check_int(0, "r", 1), ValueError, r"r: expected an int >= 1, got 0"),
        (lambda: v.check_int(9, "r", None, 8), ValueError, r"r: expected an int <= 8, got 9"),
        (lambda: v.check_int(2**70, "n", 1, 4, what="a count"), ValueError, r"n: expected a count in \[1, 4\]"),
        (lambda: v.check_bool(1, "flag"), TypeError, "flag: expected a bool, got int"),
        (lambda: v.check_bool(np.ones(1, bool), "flag"), TypeError, "flag: expected a bool, got ndarray"),
        (lambda: v.check_choice(5, "format", ("a",)), TypeError, r"format: expected one of \('a',\), got int"),
        (lambda: v.check_choice("b", "format", ("a",)), ValueError, r"format: expected one of \('a',\), got 'b'"),
        (lambda: v.check_real("1", "x"), TypeError, "x: expected a finite number, got str"),
        (lambda: v.check_real(np.bool_(True), "x"), TypeError, "x: expected a finite number, got bool"),
        (lambda: v.check_real(float("nan"), "x"), ValueError, "x: expected a finite number, got nan"),
        (lambda: v.check_real(10**400, "x"), ValueError, "x: expected a finite number, got int beyond float64 range"),
        (lambda: v.check_real(0.0, "x", 0.0, lo_open=True), ValueError, r"x: expected a number > 0.0, got 0.0"),
        (lambda: v.check_real(2, "x", 0.0, 1.0), ValueError, r"x: expected a number in \[0.0, 1.0\], got 2"),
        (lambda: v.check_scale(1e39), ValueError, r"scale: expected a finite float32 number"),
        (lambda: v.check_scale(float("inf")), ValueError, r"scale: expected a finite float32 number"),
        (lambda: v.check_nm(3, 2), ValueError, r"n: expected 0 <= n <= m = 2, got 3"),
        (lambda: v.check_nm(1, 300, max_m=256), ValueError, r"m: expected an int in \[1, 256\], got 300"),
        (lambda: v.check_nm(1, 4, 6, where="W"), ValueError, r"W: expected the input dimension to be a multiple of m = 4"),
        (lambda: v.check_nm(1, "4", prefix="nm."), TypeError, r"nm.m: expected an int, got str"),
        (lambda: v.check_size2([1, 2]), TypeError, r"shape: expected a tuple \(out, in\) of two ints"),
        (lambda: v.check_size2((1, True)), TypeError, r"shape: expected a tuple \(out, in\) of two ints"),
        (lambda: v.check_size2((1, -1)), ValueError, r"shape: expected sizes >= 0"),
        (lambda: v.check_shaped(np.ones(3, np.float32), "b", np.float32, (4,)), ValueError, r"b: expected shape \(4,\), got \(3,\)"),
        (lambda: v.check_shaped(np.ones((2, 3), np.float32), "W", np.float32, (None, 4)), ValueError, r"expected shape \(\.\.\., 4\)"),
        (lambda: v.check_array(np.ones(3), "x", np.float32, 1), TypeError, "x: expected dtype float32, got float64"),
        (lambda: v.check_array([1.0], "x", np.float32, 1), TypeError, "x: expected a numpy.ndarray, got list"),
        (lambda: v.check_finite(np.array([1.0, np.inf]), "g"), ValueError, "g: contains NaN or infinity"),
    ],
)
def test_rejected_values_name_the_argument(call: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()  # type: ignore[operator]
