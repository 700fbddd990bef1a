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
        [sys.executable, "-m", "mypy.stubtest", "sparseft._core"],
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


def test_sparse_plan_of_a_huge_input_returns_at_once() -> None:
    """The slab search once stepped through `in` one column block at a time (2**33 steps here)."""
    import time

    base = ("csr", 1, 2**40, 0, 0, np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(2, np.int64))
    t0 = time.perf_counter()
    fwd_t, fwd_s, bwd_t, bwd_s = _core.sparse_plan(base, 1)
    assert time.perf_counter() - t0 < 5.0
    assert min(fwd_t, fwd_s, bwd_t, bwd_s) > 0
