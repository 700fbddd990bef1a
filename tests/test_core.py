"""The foundation: build info, threads, SIMD dispatch, argument validation and the GEMM core."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseft
from sparseft import _core

from . import reference as ref
from .conftest import SIMD_PATHS


def test_build_info_reports_paths() -> None:
    info = sparseft.build_info()
    assert set(info) >= {"compiler", "openmp", "simd_compiled", "simd", "num_threads"}
    assert "portable" in info["simd_compiled"]
    assert info["simd"] in info["simd_compiled"]
    assert isinstance(info["openmp"], bool)
    assert info["num_threads"] >= 1
    env = os.environ.get("SPARSEFT_SIMD")
    if info["avx512_supported"] and env not in ("portable", "avx2"):
        assert info["simd"] == "avx512"
    elif info["avx2_supported"] and env != "portable":
        assert info["simd"] == "avx2"


def test_env_var_forces_portable_path() -> None:
    code = "import sparseft; print(sparseft.build_info()['simd'])"
    env = dict(os.environ, SPARSEFT_SIMD="portable")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "portable"


def test_env_var_caps_at_avx2() -> None:
    if not sparseft.build_info()["avx2_supported"]:
        pytest.skip("this CPU has no AVX2/FMA")
    code = "import sparseft; print(sparseft.build_info()['simd'])"
    env = dict(os.environ, SPARSEFT_SIMD="avx2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "avx2"


def test_env_var_typo_warns_and_is_ignored() -> None:
    code = "import sparseft; print(sparseft.build_info()['simd'])"
    env = dict(os.environ, SPARSEFT_SIMD="portible")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "SPARSEFT_SIMD='portible' is not one of portable, avx2, avx512: ignored" in out.stderr
    best = subprocess.run(
        [sys.executable, "-c", code],
        env={k: v for k, v in os.environ.items() if k != "SPARSEFT_SIMD"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == best.stdout.strip()


def test_avx512_path_selectable_or_a_clean_error() -> None:
    """Where the CPU has AVX-512 the path can be selected; elsewhere asking for it is a ValueError."""
    if sparseft.build_info()["avx512_supported"]:
        with sparseft.simd_path("avx512"):
            assert sparseft.build_info()["simd"] == "avx512"
            np.testing.assert_allclose(
                _core.matmul(np.eye(30, dtype=np.float32), np.eye(30, dtype=np.float32)), np.eye(30)
            )
    else:
        with pytest.raises(ValueError, match="path: 'avx512' is not available"):
            with sparseft.simd_path("avx512"):
                pass


def test_set_num_threads_roundtrip_and_errors() -> None:
    before = sparseft.get_num_threads()
    try:
        sparseft.set_num_threads(1)
        assert sparseft.get_num_threads() == 1
        assert sparseft.build_info()["num_threads"] == 1
    finally:
        sparseft.set_num_threads(before)
    with pytest.raises(ValueError, match=r"n: expected a thread count in \[1, 4096\], got 0"):
        sparseft.set_num_threads(0)
    with pytest.raises(ValueError, match=r"n: expected a thread count in \[1, 4096\], got 1099511627776"):
        sparseft.set_num_threads(2**40)  # an OverflowError from the C int before
    assert sparseft.get_num_threads() == before
    with pytest.raises(TypeError, match="n: expected an int"):
        sparseft.set_num_threads(2.0)  # type: ignore[arg-type]


def test_simd_path_context_restores() -> None:
    before = sparseft.build_info()["simd"]
    with sparseft.simd_path("portable"):
        assert sparseft.build_info()["simd"] == "portable"
    assert sparseft.build_info()["simd"] == before
    with pytest.raises(ValueError, match="path: expected 'avx512', 'avx2', 'portable' or 'auto'"):
        with sparseft.simd_path("sse9"):
            pass


SHAPES = [
    (1, 1, 1),
    (1, 7, 3),
    (5, 1, 9),
    (6, 16, 1),
    (7, 17, 5),
    (13, 33, 257),
    (145, 31, 300),
    (64, 1025, 40),
]


@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
@pytest.mark.parametrize(("ta", "tb"), [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_matches_reference(
    simd: str, rng: np.random.Generator, m: int, n: int, k: int, ta: bool, tb: bool
) -> None:
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    a0, b0 = a.copy(), b.copy()
    got = _core.matmul(a, b, trans_a=ta, trans_b=tb)
    want = ref.matmul(a, b, ta, tb)
    assert got.dtype == np.float32 and got.shape == (m, n)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.sqrt(k))
    np.testing.assert_array_equal(a, a0)  # inputs never modified
    np.testing.assert_array_equal(b, b0)


def test_matmul_empty_depth_gives_zeros(simd: str) -> None:
    got = _core.matmul(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32))
    np.testing.assert_array_equal(got, np.zeros((3, 4), np.float32))
    assert _core.matmul(np.zeros((0, 5), np.float32), np.zeros((5, 2), np.float32)).shape == (0, 2)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 40),
    n=st.integers(1, 40),
    k=st.integers(1, 300),
    ta=st.booleans(),
    tb=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_matmul_hypothesis(m: int, n: int, k: int, ta: bool, tb: bool, seed: int) -> None:
    r = np.random.default_rng(seed)
    a = r.uniform(-1, 1, (k, m) if ta else (m, k)).astype(np.float32)
    b = r.uniform(-1, 1, (n, k) if tb else (k, n)).astype(np.float32)
    for path in SIMD_PATHS:
        with sparseft.simd_path(path):
            np.testing.assert_allclose(
                _core.matmul(a, b, trans_a=ta, trans_b=tb),
                ref.matmul(a, b, ta, tb),
                rtol=1e-4,
                atol=1e-4 * np.sqrt(k),
            )


def test_matmul_deterministic_for_fixed_threads(rng: np.random.Generator) -> None:
    a = rng.standard_normal((300, 700)).astype(np.float32)
    b = rng.standard_normal((700, 500)).astype(np.float32)
    np.testing.assert_array_equal(_core.matmul(a, b), _core.matmul(a, b))


def test_matmul_thread_counts_agree(rng: np.random.Generator) -> None:
    a = rng.standard_normal((200, 300)).astype(np.float32)
    b = rng.standard_normal((300, 100)).astype(np.float32)
    before = sparseft.get_num_threads()
    try:
        sparseft.set_num_threads(1)
        one = _core.matmul(a, b)
        sparseft.set_num_threads(2)
        two = _core.matmul(a, b)
    finally:
        sparseft.set_num_threads(before)
    np.testing.assert_array_equal(one, two)  # each element is summed by one thread in one order


def test_scratch_is_released() -> None:
    a = np.ones((300, 300), np.float32)
    for _ in range(20):
        _core.matmul(a, a)
    stats = _core.scratch_stats()
    assert stats["current"] == 0
    assert stats["peak"] > 0


# ---- bad input: every error names the argument, what was expected and what came ----

GOOD = np.ones((3, 4), np.float32)


@pytest.mark.parametrize(
    ("a", "b", "exc", "match"),
    [
        (GOOD.astype(np.float64), GOOD.T.copy(), TypeError, r"a: expected dtype float32, got float64"),
        (GOOD, GOOD.T.astype(np.float64), TypeError, r"b: expected dtype float32, got float64"),
        ([[1.0]], GOOD, TypeError, r"a: expected a numpy.ndarray, got list"),
        (np.ones((4, 3), np.float32).T, GOOD.T.copy(), ValueError, r"a: expected a C-contiguous"),
        (GOOD, np.ones((8, 3), np.float32)[::2], ValueError, r"b: expected a C-contiguous"),
        (np.ones(3, np.float32), GOOD, ValueError, r"a: expected a 2-D array, got shape \(3,\)"),
        (
            GOOD,
            np.ones((5, 2), np.float32),
            ValueError,
            r"b: expected axis 0 of length 4 .*got shape \(5, 2\)",
        ),
    ],
)
def test_matmul_bad_input(a: object, b: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        _core.matmul(a, b)  # type: ignore[arg-type]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("where", [0, 1 << 19, (1 << 20) + 5, (3 << 19) - 1])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_large_arrays_scanned_for_nonfinite_by_every_thread(threads: int, where: int, value: float) -> None:
    """Arrays of 1M+ floats are scanned in one share per thread: a bad value in any share (first
    element, a share boundary, the last element) is reported, and a clean array passes."""
    x = np.ones((3 << 19,), np.float32).reshape(-1, 1024)
    W, m, A, B = (
        np.ones(s, t)
        for s, t in [
            ((1, 1024), np.float32),
            ((1, 1024), np.uint8),
            ((1, 1024), np.float32),
            ((1, 1), np.float32),
        ]
    )
    before = sparseft.get_num_threads()
    try:
        sparseft.set_num_threads(threads)
        assert _core.lors_forward(x, W, m, A, B, 0.0)[0, 0] == 1024.0
        x.flat[where] = value
        with pytest.raises(ValueError, match="x: contains NaN or infinity"):
            _core.lors_forward(x, W, m, A, B, 0.0)
    finally:
        sparseft.set_num_threads(before)


def test_stub_matches_compiled_module() -> None:
    """mypy.stubtest: sparseft/_core.pyi says exactly what the compiled module holds."""
    pytest.importorskip("mypy")
    out = subprocess.run(
        # the project's mypy settings explicitly: with an editable install mypy otherwise resolves the
        # package through site-packages and ignores [tool.mypy] (missing stubs of scipy, tqdm)
        [sys.executable, "-m", "mypy.stubtest", "sparseft._core", "--mypy-config-file", "pyproject.toml"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_non_native_byte_order_is_a_type_error() -> None:
    """'>f4' has float32's type number; reading its bytes as native floats gave zeros and 4.6e-41."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    with pytest.raises(TypeError, match=r"a: expected dtype float32 in native byte order, got >f4"):
        _core.matmul(a.astype(">f4"), a, trans_b=True)
    W = np.eye(3, dtype=">f4")
    with pytest.raises(TypeError, match="W: expected dtype float32 in native byte order"):
        _core.lors_forward(
            np.ones((1, 3), np.float32), W, np.ones((3, 3), np.uint8), np.zeros((1, 3), np.float32),
            np.zeros((3, 1), np.float32), 1.0,
        )


def test_unaligned_buffer_is_named_as_such() -> None:
    buf = np.zeros(33, np.uint8)
    x = np.frombuffer(buf[1:].data, np.float32).reshape(2, 4)
    assert x.flags.c_contiguous and not x.flags.aligned
    with pytest.raises(ValueError, match=r"a: expected a C-contiguous aligned array, got an unaligned buffer \(pass a.copy\(\)\)"):
        _core.matmul(x, np.ones((4, 2), np.float32))


def test_gemm_into_refuses_a_read_only_output() -> None:
    c = np.zeros((2, 2), np.float32)
    c.flags.writeable = False
    with pytest.raises(ValueError, match="c: expected a writeable array"):
        _core.gemm_into(c, np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))
    assert not c.any()


@pytest.mark.parametrize("scale", [1e39, -1e39, np.nan, np.inf])
def test_scales_beyond_float32_are_value_errors(scale: float) -> None:
    """A finite double above float32's range became inf in the kernels (and 0 * inf = NaN)."""
    x, W, M = np.ones((1, 3), np.float32), np.eye(3, dtype=np.float32), np.ones((3, 3), np.uint8)
    A, B = np.zeros((1, 3), np.float32), np.zeros((3, 1), np.float32)
    with pytest.raises(ValueError, match="scale: expected a finite"):
        _core.lors_forward(x, W, M, A, B, scale)
    with pytest.raises(ValueError, match="scale: expected a finite"):
        _core.lors_merge(W, M, A, B, scale)
    base = ("csr", 3, 3, 0, 0, np.ones(3, np.float32), np.arange(3, dtype=np.int32), np.arange(4, dtype=np.int64))
    with pytest.raises(ValueError, match="scale: expected a finite"):
        _core.sparse_forward(base, x, A, B, scale)
    with pytest.raises(ValueError, match="scale: expected a finite"):
        _core.dora_rownorm_forward(W, M, A, B, scale)
    # the largest float32 itself is fine
    assert np.isfinite(_core.lors_forward(x, W, M, A, B, float(np.finfo(np.float32).max))).all()


def test_lors_scratch_bytes_refuses_sizes_that_overflow() -> None:
    assert _core.lors_scratch_bytes(2048, 2048, 16) > 0
    with pytest.raises(ValueError, match="expected sizes whose scratch fits in int64"):
        _core.lors_scratch_bytes(2**62, 1, 1)


def test_sparse_plan_of_the_widest_input_stops_its_slab_search() -> None:
    """The slab search stops once no token block fits, so the widest base (in = 2**31 - 1: column
    indices are int32) plans without stepping through every column block; wider is a named error."""
    wide = 2**31 - 1
    base = ("csr", 1, wide, 0, 0, np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(2, np.int64))
    fwd_t, fwd_s, bwd_t, bwd_s = _core.sparse_plan(base, 1)
    assert min(fwd_t, fwd_s, bwd_t, bwd_s) > 0
    with pytest.raises(ValueError, match=r"base\[2\] \(in\): expected an integer in \[0, 2147483647\]"):
        _core.sparse_plan(("csr", 1, 2**40, *base[3:]), 1)


# ---- reliability: structure checks, aliasing, argument errors, the scale-0 rule ----


def _csr(W: np.ndarray) -> tuple:
    """A CSR base tuple of the nonzeros of W."""
    rows, cols = np.nonzero(W)
    rowptr = np.zeros(W.shape[0] + 1, np.int64)
    np.add.at(rowptr, rows + 1, 1)
    return (
        "csr",
        W.shape[0],
        W.shape[1],
        0,
        0,
        W[rows, cols].astype(np.float32),
        cols.astype(np.int32),
        np.cumsum(rowptr),
    )


def test_csr_row_pointers_are_checked_before_any_index_is_read() -> None:
    """rowptr [0, 100, 3] over 3 indices placed against a guard page: reading row 0's "100 indices"
    died with SIGSEGV; the pointers are now validated completely first (run in a child process)."""
    from .fuzz.child import Call, Worker

    base = (
        "csr",
        2,
        10**9,
        0,
        0,
        np.ones(3, np.float32),
        np.arange(3, dtype=np.int32),
        np.array([0, 100, 3], np.int64),
    )
    w = Worker()
    try:
        for fn, args in [("sparse_plan", (base, 4)), ("sparse_check", (base,))]:
            got = w.call(Call(fn, args, guard="end"))
            assert (got.kind, got.exc_type) == ("raised", "ValueError"), got
            assert got.message.startswith("rowptr: expected 0, nondecreasing")
    finally:
        w.close()


@pytest.mark.parametrize(
    "rowptr, match",
    [
        ([0, 2, 1, 3], "rowptr: expected 0, nondecreasing"),
        ([0, -1, 2, 3], "rowptr: expected 0, nondecreasing"),
        (
            [1, 1, 2, 3],
            r"rowptr: expected 0, nondecreasing, ending at the number of values \(3\), got 1 .. 3",
        ),
        (
            [0, 1, 2, 4],
            r"rowptr: expected 0, nondecreasing, ending at the number of values \(3\), got 0 .. 4",
        ),
    ],
)
def test_bad_row_pointers_are_named(rowptr: list[int], match: str) -> None:
    base = ("csr", 3, 4, 0, 0, np.ones(3, np.float32), np.zeros(3, np.int32), np.array(rowptr, np.int64))
    with pytest.raises(ValueError, match=match):
        _core.sparse_check(base)


def test_sparse_check_and_trusted_calls(rng: np.random.Generator) -> None:
    """sparse_check runs the whole structural check once; trusted=True then skips it per call with
    identical results, while the O(1) checks (shapes, dtypes, lengths, rowptr ends) still run."""
    W = rng.standard_normal((7, 9)).astype(np.float32) * (rng.random((7, 9)) < 0.4)
    base = _csr(W)
    x = rng.standard_normal((5, 9)).astype(np.float32)
    A = rng.standard_normal((3, 9)).astype(np.float32)
    B = rng.standard_normal((7, 3)).astype(np.float32)
    assert _core.sparse_check(base) is None
    y0 = _core.sparse_forward(base, x, A, B, 0.5)
    np.testing.assert_array_equal(_core.sparse_forward(base, x, A, B, 0.5, trusted=True), y0)
    gy = rng.standard_normal((5, 7)).astype(np.float32)
    for a, b in zip(
        _core.sparse_backward(base, gy, x, A, B, 0.5),
        _core.sparse_backward(base, gy, x, A, B, 0.5, trusted=True),
        strict=False,
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        _core.sparse_merge(base, A, B, 0.5, trusted=True), _core.sparse_merge(base, A, B, 0.5)
    )
    assert _core.sparse_plan(base, 64, trusted=True) == _core.sparse_plan(base, 64)
    # a bad column index: found by the check, not looked for when trusted
    bad = (*base[:6], np.where(np.arange(len(base[6])) == 0, 99, base[6]).astype(np.int32), *base[7:])
    with pytest.raises(ValueError, match="indices: expected increasing column indices"):
        _core.sparse_check(bad)
    with pytest.raises(ValueError, match="indices: expected increasing column indices"):
        _core.sparse_forward(bad, x, A, B, 0.5)
    # the O(1) checks still run when trusted
    with pytest.raises(ValueError, match="rowptr: expected axis 0 of length 8"):
        _core.sparse_forward((*base[:7], base[7][:-1]), x, A, B, 0.5, trusted=True)
    with pytest.raises(
        ValueError, match=r"rowptr: expected 0, nondecreasing, ending at the number of values \(\d+\), got 1"
    ):
        _core.sparse_forward((*base[:7], base[7] + 1), x, A, B, 0.5, trusted=True)
    with pytest.raises(TypeError, match=r"trusted: expected a bool, got numpy\.ndarray"):
        _core.sparse_forward(base, x, A, B, 0.5, trusted=np.ones(2, bool))


def test_gemm_into_refuses_an_output_that_overlaps_an_input(rng: np.random.Generator) -> None:
    """c aliasing a or b gave errors of 20+ on the naive path; every path now refuses overlap by
    memory range (a shifted view counts, disjoint halves of one buffer do not)."""
    buf = rng.standard_normal((6, 6)).astype(np.float32)
    for naive in (False, True):
        with pytest.raises(ValueError, match="c, a: expected arrays that do not share memory"):
            _core.gemm_into(buf, buf, np.eye(6, dtype=np.float32), naive=naive)
        with pytest.raises(ValueError, match="c, b: expected arrays that do not share memory"):
            _core.gemm_into(buf, np.eye(6, dtype=np.float32), buf, naive=naive)
    flat = rng.standard_normal(40).astype(np.float32)
    c, a = flat[:16].reshape(4, 4), flat[2:18].reshape(4, 4)  # overlapping views, different starts
    with pytest.raises(ValueError, match="c, a: expected arrays that do not share memory"):
        _core.gemm_into(c, a, np.eye(4, dtype=np.float32))
    c, a = flat[:16].reshape(4, 4), flat[16:32].reshape(4, 4)  # one buffer, disjoint halves
    want = a @ np.full((4, 4), 0.5, np.float32)
    _core.gemm_into(c, a, np.full((4, 4), 0.5, np.float32))
    np.testing.assert_allclose(c, want, rtol=1e-6)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_weightnorm_out_may_be_v_but_not_overlap_otherwise(dim: int, rng: np.random.Generator) -> None:
    """out overlapping g gave errors of 1.1 (forward) and 0.41 (backward): refused now; out == v
    (and grad_w for the backward) stays the documented in-place case."""
    v = rng.standard_normal((4, 6)).astype(np.float32)
    K = {0: 4, 1: 6, -1: 1}[dim]
    g = rng.standard_normal(K).astype(np.float32)
    buf = np.zeros(64, np.float32)
    out, gal = buf[:24].reshape(4, 6), buf[20 : 20 + K]
    gal[:] = g
    with pytest.raises(ValueError, match="out, g: expected arrays that do not share memory"):
        _core.weightnorm_forward(v, gal, dim, out)
    with pytest.raises(ValueError, match="out, g: expected arrays that do not share memory"):
        _core.weightnorm_backward(v, v, gal, dim, out)
    shifted = np.concatenate([v.ravel(), np.zeros(1, np.float32)])
    with pytest.raises(ValueError, match="out, v: expected arrays that do not share memory"):
        _core.weightnorm_forward(shifted[:24].reshape(4, 6), g, dim, shifted[1:].reshape(4, 6))
    want = _core.weightnorm_forward(v, g, dim)
    inplace = v.copy()
    _core.weightnorm_forward(inplace, g, dim, inplace)
    np.testing.assert_array_equal(inplace, want)
    gw = rng.standard_normal((4, 6)).astype(np.float32)
    gv_ref, _ = _core.weightnorm_backward(gw, v, g, dim)
    gw2 = gw.copy()
    gv, _ = _core.weightnorm_backward(gw2, v, g, dim, gw2)
    np.testing.assert_array_equal(gv, gv_ref)


def _tiny_dag() -> tuple[np.ndarray, ...]:
    """memory, duration, pred_ptr, pred_idx, succ_ptr, succ_idx, order of a 2-node chain."""
    i64 = np.int64
    return (np.ones(2, i64), np.ones(2, i64), np.array([0, 0, 1], i64), np.array([0], i64),
            np.array([0, 1, 1], i64), np.array([1], i64), np.arange(2, dtype=i64))


F32 = np.ones((2, 3), np.float32)
A13, B21 = np.ones((1, 3), np.float32), np.ones((2, 1), np.float32)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: _core.set_num_threads(2**40), ValueError, r"n: expected an integer in \[1, 4096\]"),
        (lambda: _core.set_num_threads(None), TypeError, "n: expected an integer, got NoneType"),
        (lambda: _core.set_num_threads(2.0), TypeError, "n: expected an integer, got float"),
        (lambda: _core.set_simd("avx2\0"), ValueError, "path: expected a str without NUL"),
        (lambda: _core.set_simd(b"avx2"), TypeError, "path: expected a str, got bytes"),
        (lambda: _core.weightnorm_norms(F32, 2**40), ValueError, "dim: expected 0, 1 or -1"),
        (lambda: _core.weightnorm_norms(F32, 2**70), ValueError, "dim: expected an integer .* outside int64"),
        (lambda: _core.weightnorm_norms(F32, None), TypeError, "dim: expected an integer, got NoneType"),
        (lambda: _core.lors_scratch_bytes(2**70, 1, 1), ValueError, "in_features: expected an integer"),
        (lambda: _core.lors_scratch_bytes(1, None, 1), TypeError, "out_features: expected an integer"),
        (
            lambda: _core.lors_merge(F32, F32 > 0, A13, B21, 10**400),
            ValueError,
            "scale: expected a finite number, got an integer beyond the float range",
        ),
        (
            lambda: _core.lors_merge(F32, F32 > 0, A13, B21, "1"),
            TypeError,
            "scale: expected a real number, got str",
        ),
        (
            lambda: _core.lors_merge(F32, F32 > 0, A13, B21, None),
            TypeError,
            "scale: expected a real number, got NoneType",
        ),
        (
            lambda: _core.lors_merge(F32, F32 > 0, A13, B21, 1.0, naive=np.ones(2)),
            TypeError,
            "naive: expected a bool, got numpy.ndarray",
        ),
        (lambda: _core.matmul(F32, F32.T, trans_a=np.zeros(3)), TypeError, "trans_a: expected a bool"),
        (
            lambda: _core.gemm_into(np.ones((2, 2), np.float32), F32, F32.T, packb=[1]),
            TypeError,
            "packb: expected a bool, got list",
        ),
        (
            lambda: _core.gemm_into(np.ones((2, 2), np.float32), F32, F32.T, alpha=1e39),
            ValueError,
            "alpha: expected a finite float32 number",
        ),
        (
            lambda: _core.sparse_plan(_csr(np.eye(3, dtype=np.float32)), 2**70),
            ValueError,
            "N: expected an integer in .* got one outside int64",
        ),
        (
            lambda: _core.sparse_plan(_csr(np.eye(3, dtype=np.float32)), None),
            TypeError,
            "N: expected an integer",
        ),
        (
            lambda: _core.sparse_plan(("csr", 2**63 - 1, *_csr(np.eye(3, dtype=np.float32))[2:]), 1),
            ValueError,
            r"base\[1\] \(out\): expected an integer in \[0, ",
        ),
        (
            lambda: _core.sparse_plan(("csr", None, *_csr(np.eye(3, dtype=np.float32))[2:]), 1),
            TypeError,
            r"base\[1\] \(out\): expected an integer, got NoneType",
        ),
        (
            lambda: _core.sparse_plan(("cs\x00r", *_csr(np.eye(3, dtype=np.float32))[1:]), 1),
            ValueError,
            r"base\[0\] \(kind\): expected a str without NUL",
        ),
        (
            lambda: _core.sparse_plan(_csr(np.eye(3, dtype=np.float32))[:7], 1),
            TypeError,
            "base: expected a tuple .* of another length",
        ),
        (
            lambda: _core.sparse_backward(
                _csr(np.eye(3, dtype=np.float32)),
                np.ones((2, 3), np.float32),
                None,
                np.ones((1, 3), np.float32),
                np.ones((3, 1), np.float32),
                1.0,
                weight_grad=np.array([True, False]),
            ),
            TypeError,
            "weight_grad: expected a bool, got numpy.ndarray",
        ),
        (
            lambda: _core.remat_compact(np.arange(2, dtype=np.int64), np.zeros(3, np.int64), np.zeros(0, np.int64), 2**63),
            ValueError,
            r"n: expected an int(eger)? in \[.*\], got",
        ),
        (
            lambda: _core.remat_greedy(*_tiny_dag(), 2**63),
            ValueError,
            r"budget: expected an int(eger)? in \[.*\], got",
        ),
        (
            lambda: _core.remat_simulate(np.arange(2, dtype=np.int64), *_tiny_dag()[:4], profile=np.ones(2)),
            TypeError,
            r"profile: expected a bool, got numpy\.ndarray",
        ),
    ],
)
def test_argument_errors_name_the_argument(call: object, exc: type[Exception], match: str) -> None:
    """Huge ints, None where an int is expected, arrays as flags, str scales and NUL characters gave
    unnamed OverflowError/TypeError/ValueError messages; each names its argument now."""
    with pytest.raises(exc, match=match):
        call()  # type: ignore[operator]


def test_dora_on_empty_wide_arrays_needs_no_scratch() -> None:
    """(0, 2**40) operands raised an empty MemoryError (a row buffer of `in` floats per thread was
    allocated for zero rows); zero rows now need no scratch."""
    W = np.zeros((0, 2**40), np.float32)
    M = np.zeros((0, 2**40), np.uint8)
    A = np.zeros((0, 2**40), np.float32)
    B = np.zeros((0, 0), np.float32)
    assert _core.dora_rownorm_forward(W, M, A, B, 1.0).shape == (0,)
    dA, dB = _core.dora_rownorm_backward(np.zeros(0, np.float32), np.zeros(0, np.float32), W, M, A, B, 1.0)
    assert dA.shape == (0, 2**40) and dB.shape == (0, 0)


def _overflowing_adapter(rng: np.random.Generator, out: int, inn: int, r: int):
    """Finite A, B whose product B A overflows float32 (1e20 * 1e20 * r)."""
    A = np.full((r, inn), 1e20, np.float32) * np.sign(rng.standard_normal((r, inn))).astype(np.float32)
    B = np.full((out, r), 1e20, np.float32)
    return A, B


@pytest.mark.parametrize("fmt", ["dense", "csr", "nm"])
def test_scale_zero_turns_the_adapter_off_on_every_path(
    fmt: str, simd: str, rng: np.random.Generator
) -> None:
    """With finite A, B whose product overflows float32 and scale=0, the dense path returned finite
    values and the naive twin, CSR and DoRA NaN. The rule (docs/numerics.md): scale == 0 means
    W' = W exactly and zero adapter gradients, on every path."""
    out, inn, r, N = 6, 8, 3, 5
    W = rng.standard_normal((out, inn)).astype(np.float32)
    mask = np.zeros((out, inn), bool)
    mask[:, ::2] = True  # 2:4 (positions 0 and 2 of every group of 4)
    W *= mask
    A, B = _overflowing_adapter(rng, out, inn, r)
    x = rng.standard_normal((N, inn)).astype(np.float32)
    gy = rng.standard_normal((N, out)).astype(np.float32)
    y_ref, gx_ref = x @ W.T, gy @ W
    zA, zB = np.zeros_like(A), np.zeros_like(B)
    if fmt == "dense":
        M = mask.astype(np.uint8)
        for naive in (False, True):
            np.testing.assert_allclose(
                _core.lors_forward(x, W, M, A, B, 0.0, naive=naive), y_ref, rtol=1e-5, atol=1e-5
            )
            np.testing.assert_allclose(
                _core.lors_backward_input(gy, W, M, A, B, 0.0, naive=naive), gx_ref, rtol=1e-5, atol=1e-5
            )
            np.testing.assert_array_equal(_core.lors_merge(W, M, A, B, 0.0, naive=naive), W)
            for got, want in zip(
                _core.lors_backward_exact(gy * 1e30, x * 1e8, M, A, B, 0.0, naive=naive),
                (zA, zB),
                strict=False,
            ):
                np.testing.assert_array_equal(got, want)
            for got, want in zip(
                _core.lors_backward_lors(gy * 1e30, x * 1e8, A, B, 0.0, naive=naive), (zA, zB), strict=False
            ):
                np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(
            _core.dora_rownorm_forward(W, M, A, B, 0.0), np.linalg.norm(W, axis=1), rtol=1e-6
        )
        n = np.linalg.norm(W, axis=1).astype(np.float32)
        for got, want in zip(
            _core.dora_rownorm_backward(np.ones(out, np.float32), n, W, M, A, B, 0.0), (zA, zB), strict=False
        ):
            np.testing.assert_array_equal(got, want)
        return
    if fmt == "csr":
        base = _csr(W)
    else:
        pos = np.nonzero(mask[0].reshape(-1, 4))[1].reshape(-1, 2)
        idx = np.tile(pos.reshape(1, -1), (out, 1)).astype(np.uint8)
        base = ("nm", out, inn, 2, 4, W[mask].reshape(out, -1), idx, np.zeros(0, np.int64))
    for naive in (False, True):
        np.testing.assert_allclose(
            _core.sparse_forward(base, x, A, B, 0.0, naive=naive), y_ref, rtol=1e-5, atol=1e-5
        )
        gx, dA, dB = _core.sparse_backward(base, gy, x, A, B, 0.0, naive=naive)
        np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(dA, zA)
        np.testing.assert_array_equal(dB, zB)
    np.testing.assert_array_equal(_core.sparse_merge(base, A, B, 0.0), base[5])


@pytest.mark.parametrize("naive", [False, True])
def test_lors_gradient_of_a_layer_without_outputs_is_zero(naive: bool) -> None:
    """out = 0 returned dA (r, in) uninitialised (found by the fuzz suite): gy B = 0, so dA = 0."""
    rng = np.random.default_rng(3)
    gy, x = np.zeros((4, 0), np.float32), rng.standard_normal((4, 17)).astype(np.float32)
    A, B = rng.standard_normal((5, 17)).astype(np.float32), np.zeros((0, 5), np.float32)
    for _ in range(3):  # fresh allocations may hold anything
        dA, dB = _core.lors_backward_lors(gy, x, A, B, 1.5, naive=naive)
        np.testing.assert_array_equal(dA, np.zeros((5, 17), np.float32))
        assert dB.shape == (0, 5)
