"""Pruning masks: exact counts, deterministic ties, N:M groups, Wanda scores, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseft as sft

from . import reference as ref


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (8, 16), (5, 33)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("scope", ["row", "global"])
def test_magnitude_matches_reference(
    rng: np.random.Generator, shape: tuple[int, int], sparsity: float, scope: str
) -> None:
    W = rng.standard_normal(shape).astype(np.float32)
    W0 = W.copy()
    mask = sft.prune.magnitude(W, sparsity, scope=scope)
    assert mask.dtype == np.bool_ and mask.shape == shape
    np.testing.assert_array_equal(mask, ref.prune_magnitude(W, sparsity, scope))
    np.testing.assert_array_equal(W, W0)  # input not modified
    if scope == "row":
        kept = shape[1] - round(sparsity * shape[1])
        assert (mask.sum(axis=1) == kept).all()
    else:
        assert mask.sum() == W.size - round(sparsity * W.size)


def test_magnitude_keeps_largest_and_breaks_ties_by_index() -> None:
    W = np.array([[1.0, -1.0, 1.0, 0.5, -3.0, 1.0]], np.float32)
    mask = sft.prune.magnitude(W, 0.5)
    # 0.5 is smallest; among the four |1.0| the two lowest columns go next
    np.testing.assert_array_equal(mask, [[False, False, True, False, True, True]])
    ties = np.ones((2, 8), np.float32)
    np.testing.assert_array_equal(sft.prune.magnitude(ties, 0.25)[0], [False] * 2 + [True] * 6)
    # global scope: the lower flat indices are pruned first
    g = sft.prune.magnitude(ties, 0.25, scope="global")
    assert g.sum() == 12 and not g[0, :4].any() and g[1].all()


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4), (0, 2), (3, 3)])
def test_nm_groups(rng: np.random.Generator, n: int, m: int) -> None:
    W = rng.standard_normal((6, 4 * m)).astype(np.float32)
    W0 = W.copy()
    mask = sft.prune.nm(W, n, m)
    groups = mask.reshape(6, 4, m)
    assert (groups.sum(axis=2) == n).all()
    np.testing.assert_array_equal(mask, ref.prune_nm_scores(np.abs(W), n, m))
    np.testing.assert_array_equal(W, W0)


def test_nm_ties_prune_lower_columns() -> None:
    W = np.ones((1, 8), np.float32)
    np.testing.assert_array_equal(sft.prune.nm(W, 2, 4)[0], [False, False, True, True] * 2)


@pytest.mark.parametrize("nm", [None, (2, 4), (4, 8)])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 1.0])
def test_wanda_matches_reference(
    rng: np.random.Generator, nm: tuple[int, int] | None, sparsity: float
) -> None:
    W = rng.standard_normal((5, 16)).astype(np.float32)
    X = (rng.standard_normal((9, 16)) * rng.uniform(0.1, 5, 16)).astype(np.float32)
    W0, X0 = W.copy(), X.copy()
    mask = sft.prune.wanda(W, X, sparsity, nm=nm)
    np.testing.assert_array_equal(mask, ref.prune_wanda(W, X, sparsity, nm))
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(X, X0)


def test_wanda_uses_input_norms() -> None:
    W = np.ones((1, 4), np.float32)
    X = np.zeros((3, 4), np.float32)
    X[:, 2] = 5.0
    X[:, 0] = 1.0
    # equal weights: the columns with larger activations are kept
    np.testing.assert_array_equal(sft.prune.wanda(W, X, 0.5)[0], [True, False, True, False])
    # with equal activations it reduces to magnitude pruning
    W2 = np.array([[0.1, -2.0, 0.3, 4.0]], np.float32)
    np.testing.assert_array_equal(
        sft.prune.wanda(W2, np.ones((2, 4), np.float32), 0.5), sft.prune.magnitude(W2)
    )


def test_float64_and_float16_accepted(rng: np.random.Generator) -> None:
    W = rng.standard_normal((4, 8))
    np.testing.assert_array_equal(sft.prune.magnitude(W), sft.prune.magnitude(W.astype(np.float16)))


@settings(max_examples=40, deadline=None)
@given(
    out=st.integers(1, 6),
    groups=st.integers(1, 6),
    sparsity=st.floats(0, 1),
    seed=st.integers(0, 2**31 - 1),
)
def test_counts_hypothesis(out: int, groups: int, sparsity: float, seed: int) -> None:
    r = np.random.default_rng(seed)
    W = r.integers(-3, 4, (out, 4 * groups)).astype(np.float32)  # many ties on purpose
    inn = 4 * groups
    mask = sft.prune.magnitude(W, sparsity)
    assert (mask.sum(axis=1) == inn - round(sparsity * inn)).all()
    np.testing.assert_array_equal(mask, ref.prune_magnitude(W, sparsity))
    # kept magnitudes dominate pruned ones in every row
    for i in range(out):
        if mask[i].any() and (~mask[i]).any():
            assert np.abs(W[i][mask[i]]).min() >= np.abs(W[i][~mask[i]]).max()
    np.testing.assert_array_equal(sft.prune.nm(W, 2, 4), ref.prune_nm_scores(np.abs(W), 2, 4))


# ---- bad input ----

W_OK = np.ones((2, 8), np.float32)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: sft.prune.magnitude([[1.0]]), TypeError, r"W: expected a numpy.ndarray, got list"),
        (lambda: sft.prune.magnitude(np.ones((2, 2), int)), TypeError, r"W: expected a floating dtype"),
        (
            lambda: sft.prune.magnitude(np.ones(3, np.float32)),
            ValueError,
            r"W: expected a 2-D array .*\(3,\)",
        ),
        (lambda: sft.prune.magnitude(np.full((2, 2), np.nan, np.float32)), ValueError, r"W: contains NaN"),
        (
            lambda: sft.prune.magnitude(W_OK, 1.5),
            ValueError,
            r"sparsity: expected a number in \[0, 1\], got 1.5",
        ),
        (lambda: sft.prune.magnitude(W_OK, -0.1), ValueError, r"sparsity: expected a number in \[0, 1\]"),
        (lambda: sft.prune.magnitude(W_OK, "half"), TypeError, r"sparsity: expected a number in \[0, 1\], got (str|bool)"),
        (lambda: sft.prune.magnitude(W_OK, True), TypeError, r"sparsity: expected a number in \[0, 1\], got (str|bool)"),
        (lambda: sft.prune.magnitude(W_OK, scope="col"), ValueError, r"scope: expected one of \(.row., .global.\), got .col."),
        (
            lambda: sft.prune.nm(np.ones((2, 6), np.float32), 2, 4),
            ValueError,
            r"W: expected the input dimension to be a multiple of m = 4 .*got 6",
        ),
        (lambda: sft.prune.nm(W_OK, 5, 4), ValueError, r"n: expected 0 <= n <= m = 4, got 5"),
        (lambda: sft.prune.nm(W_OK, 2, 0), ValueError, r"m: expected an int >= 1, got 0"),
        (lambda: sft.prune.nm(W_OK, 2.0, 4), TypeError, r"n: expected an int, got float"),
        (
            lambda: sft.prune.wanda(W_OK, np.ones((3, 7), np.float32)),
            ValueError,
            r"X: expected shape \(tokens, 8\)",
        ),
        (lambda: sft.prune.wanda(W_OK, np.ones((3, 8), int)), TypeError, r"X: expected a floating dtype"),
        (lambda: sft.prune.wanda(W_OK, np.ones((3, 8), np.float32), nm=2), TypeError, r"nm: expected a pair"),
        (
            lambda: sft.prune.wanda(W_OK, np.ones((3, 8), np.float32), nm=(3, 2)),
            ValueError,
            r"nm.n: expected",
        ),
        (
            lambda: sft.prune.wanda(W_OK, np.full((3, 8), np.inf, np.float32)),
            ValueError,
            r"X: contains NaN or infinity",
        ),
    ],
)
def test_bad_input(call: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()  # type: ignore[operator]


def test_wanda_with_column_norms_beyond_float64() -> None:
    """||X_col|| overflowed to inf and 0 * inf = NaN ranked the zero weight first."""
    W = np.array([[0.0, 1.0, 2.0, 3.0]])
    big = np.full((2, 4), 1e200)
    want = sft.prune.wanda(W, np.ones((2, 4)), 0.5)
    np.testing.assert_array_equal(want, [[False, False, True, True]])
    np.testing.assert_array_equal(sft.prune.wanda(W, big, 0.5), want)
    W8 = np.array([[0.0, 1.0, 2.0, 3.0, 0.0, 5.0, 1.0, 4.0]])
    np.testing.assert_array_equal(
        sft.prune.wanda(W8, np.full((3, 8), 1e200), 0.5, nm=(2, 4)), sft.prune.wanda(W8, np.ones((3, 8)), 0.5, nm=(2, 4))
    )
