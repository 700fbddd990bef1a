"""The GEMM core's whole contract through ``_core.gemm_into``: every driver (streamed rows, few
rows, many rows), edge tiles, depth and column blocks, strides, alpha/beta, the pack-B callback,
thread counts (including more threads than tiles or panels), bounded scratch, both SIMD paths."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import sparseft
from sparseft import _core

# (M, N, K) chosen to reach each driver and edge: GEMM_MR = 6 (AVX2, portable) or 24 (AVX-512),
# GEMM_NR = 16, GEMM_KC = 256, GEMM_MC = 144, GEMM_NC = 880; M <= 4 with contiguous op(B) rows
# streams B; M*N*K < 2**20 runs on one thread.
SHAPES = [
    (1, 33, 300),  # one row: streamed (packed through the callback), K > KC
    (3, 1100, 9),  # streamed, several column chunks per thread
    (4, 17, 1),  # streamed, K = 1
    (5, 40, 257),  # few rows, a 5-row kernel, K = KC + 1
    (7, 3, 5),  # M and N below one micro-tile, more threads than panels
    (16, 300, 520),  # M = r = 16: few rows, K not a multiple of KC
    (144, 50, 300),  # the largest few-rows problem
    (50, 5, 40),  # one column panel, rows shared instead
    (145, 37, 260),  # many rows just past MC
    (301, 1000, 300),  # many rows, N past NC (two column blocks), K past KC, ragged edges
    (150, 1800, 270),  # many rows, N past 2 x NC: two column blocks at two threads too
    (13, 1, 600),  # a single column
    # products below 2**20 multiply-adds run on one thread: these keep thin shapes threaded
    (7, 3, 50000),  # M and N below one micro-tile, many depth blocks, more threads than panels
    (2, 1100, 600),  # streamed, two threads
    (50, 5, 5000),  # one column panel, rows shared out
    (5, 40, 5200),  # few rows, three column panels
    (13, 1, 90000),  # a single column: one panel, too few rows to share, one thread
    (23, 47, 33),  # AVX-512: one tile short of MR = 24 rows (the 23-row kernel)
    (24, 16, 257),  # AVX-512: exactly one full 24 x 16 tile, K = KC + 1 (the asm depth tail)
    (73, 70, 1030),  # AVX-512: three full tiles and a 1-row edge, four depth blocks, ragged N
    (290, 33, 300),  # AVX-512: many rows, row blocks of whole 24-row tiles plus a 2-row edge
]
AB = [(1.0, 0.0), (1.0, 1.0), (-0.5, 2.0)]


@pytest.fixture(params=[1, 2, 3])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run with 1, 2 and 3 threads (3 > the CPUs of a 2-core machine is fine)."""
    before = sparseft.get_num_threads()
    sparseft.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        sparseft.set_num_threads(before)


def _operands(r: np.random.Generator, m: int, n: int, k: int, ta: bool, tb: bool) -> tuple[np.ndarray, ...]:
    a = r.uniform(-1, 1, (k, m) if ta else (m, k)).astype(np.float32)
    b = r.uniform(-1, 1, (n, k) if tb else (k, n)).astype(np.float32)
    return a, b


def _want(
    a: np.ndarray, b: np.ndarray, c0: np.ndarray, ta: bool, tb: bool, alpha: float, beta: float
) -> np.ndarray:
    oa = a.astype(np.float64).T if ta else a.astype(np.float64)
    ob = b.astype(np.float64).T if tb else b.astype(np.float64)
    prod = alpha * (oa @ ob)
    return prod if beta == 0.0 else beta * c0.astype(np.float64) + prod


@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
def test_gemm_contract(simd: str, threads: int, m: int, n: int, k: int) -> None:
    r = np.random.default_rng(m * 1000003 + n * 1009 + k)
    extra = 3  # ldc = n + 3: the columns past N are never touched
    for ta in (False, True):
        for tb in (False, True):
            a, b = _operands(r, m, n, k, ta, tb)
            a0, b0 = a.copy(), b.copy()
            for alpha, beta in AB:
                for packb in (False, True):
                    c = r.uniform(-1, 1, (m, n + extra)).astype(np.float32)
                    c[:, n:] = 7.0
                    if beta == 0.0:
                        c[:, :n] = np.nan  # beta == 0 never reads C
                    c0 = c[:, :n].copy()
                    _core.gemm_into(c, a, b, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta, packb=packb)
                    want = _want(a, b, c0, ta, tb, alpha, beta)
                    tol = 2e-5 * np.sqrt(k) * abs(alpha) + 1e-5 * abs(beta)
                    np.testing.assert_allclose(
                        c[:, :n],
                        want,
                        rtol=1e-4,
                        atol=tol,
                        err_msg=f"ta={ta} tb={tb} a={alpha} b={beta} pb={packb}",
                    )
                    assert np.all(c[:, n:] == 7.0), "columns past N were written"
            np.testing.assert_array_equal(a, a0)  # inputs never modified
            np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
def test_gemm_identical_for_any_thread_count(simd: str, m: int, n: int, k: int) -> None:
    """Each C element is summed by one thread over the same depth blocks in the same order."""
    r = np.random.default_rng(7)
    before = sparseft.get_num_threads()
    try:
        for ta, tb, packb in [(False, False, False), (True, True, False), (False, False, True)]:
            a, b = _operands(r, m, n, k, ta, tb)
            outs = []
            for t in (1, 2, 3, 5):
                sparseft.set_num_threads(t)
                c = np.empty((m, n), np.float32)
                _core.gemm_into(c, a, b, trans_a=ta, trans_b=tb, packb=packb)
                outs.append(c)
            for c in outs[1:]:
                np.testing.assert_array_equal(c, outs[0])
    finally:
        sparseft.set_num_threads(before)


def test_gemm_packb_equals_strided(simd: str) -> None:
    """The callback path (what the LoRS kernels use) gives the same bits as the strided one,
    except for M <= 4 where the strided path streams B rows (another summation order)."""
    r = np.random.default_rng(3)
    for m, n, k in [(5, 40, 257), (145, 37, 260), (301, 1000, 300)]:
        a, b = _operands(r, m, n, k, False, False)
        c1 = np.empty((m, n), np.float32)
        c2 = np.empty((m, n), np.float32)
        _core.gemm_into(c1, a, b)
        _core.gemm_into(c2, a, b, packb=True)
        np.testing.assert_array_equal(c1, c2)


def test_gemm_naive_twin(simd: str) -> None:
    r = np.random.default_rng(11)
    for m, n, k in [(1, 5, 3), (7, 17, 300), (20, 33, 70)]:
        for ta in (False, True):
            a, b = _operands(r, m, n, k, ta, False)
            c0 = r.uniform(-1, 1, (m, n)).astype(np.float32)
            fast, slow = c0.copy(), c0.copy()
            _core.gemm_into(fast, a, b, trans_a=ta, beta=0.5)
            _core.gemm_into(slow, a, b, trans_a=ta, beta=0.5, naive=True)
            np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-4 * np.sqrt(k))


def test_gemm_alpha_zero_and_empty_depth_only_scale(simd: str) -> None:
    a = np.full((4, 3), np.nan, np.float32)  # alpha == 0: op(A) @ op(B) is not evaluated
    b = np.ones((3, 5), np.float32)
    c = np.ones((4, 5), np.float32)
    _core.gemm_into(c, a, b, alpha=0.0, beta=3.0)
    np.testing.assert_array_equal(c, np.full((4, 5), 3.0, np.float32))
    c = np.full((4, 5), np.nan, np.float32)
    _core.gemm_into(c, np.zeros((4, 0), np.float32), np.zeros((0, 5), np.float32))
    np.testing.assert_array_equal(c, np.zeros((4, 5), np.float32))


def test_gemm_scratch_at_most_one_mib_per_thread(simd: str) -> None:
    """Issue 3 caps the tile scratch at 1 MiB per thread; it is also released after each call."""
    r = np.random.default_rng(5)
    before = sparseft.get_num_threads()
    try:
        for m, n, k in [(1000, 2000, 700), (16, 3000, 600), (1, 3000, 600), (600, 16, 900)]:
            a, b = _operands(r, m, n, k, False, False)
            for t in (1, 2, 3):
                for packb in (False, True):
                    sparseft.set_num_threads(t)
                    _core.reset_scratch_peak()
                    c = np.empty((m, n), np.float32)
                    _core.gemm_into(c, a, b, packb=packb)
                    stats = _core.scratch_stats()
                    assert stats["current"] == 0
                    assert stats["peak"] <= t * 2**20, (m, n, k, t, stats)
    finally:
        sparseft.set_num_threads(before)


def test_gemm_into_bad_input() -> None:
    a = np.ones((3, 4), np.float32)
    b = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"c: expected at least 5 columns \(the columns of op\(b\)\), got 4"):
        _core.gemm_into(np.empty((3, 4), np.float32), a, b)
    with pytest.raises(ValueError, match=r"c: expected axis 0 of length 3"):
        _core.gemm_into(np.empty((2, 5), np.float32), a, b)
    with pytest.raises(ValueError, match=r"alpha: the naive GEMM supports alpha == 1 only"):
        _core.gemm_into(np.empty((3, 5), np.float32), a, b, alpha=2.0, naive=True)
    with pytest.raises(TypeError, match=r"c: expected dtype float32, got float64"):
        _core.gemm_into(np.empty((3, 5)), a, b)
