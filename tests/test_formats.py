"""CSR and N:M bases: every kernel against the float64 reference, merges, memory, choose_format."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseft as sft
from sparseft import _core
from sparseft.formats import (
    DENSITY_CROSSOVERS,
    NM_MAX_DENSITIES,
    CSRBase,
    NMBase,
    choose_format,
    density_crossover,
    detect_nm,
    nm_max_density,
)

from . import reference as ref
from .conftest import SIMD_PATHS, close

# (N tokens, out, in, r): odd sizes, one token, r = 1, in > 128 (several column blocks),
# out > 256 (several row chunks), N > the token block (several blocks per thread)
SHAPES = [
    (1, 1, 8, 1),
    (1, 7, 8, 3),
    (5, 13, 16, 1),
    (33, 17, 40, 16),
    (70, 9, 136, 5),
    (130, 31, 264, 16),
    (9, 300, 24, 2),
    (150, 6, 2048, 2),
]


def _mask(rng: np.random.Generator, out: int, inn: int, kind: str) -> np.ndarray:
    if kind in ("2:4", "4:8"):
        n, m = (2, 4) if kind == "2:4" else (4, 8)
        scores = rng.random((out, inn))
        return sft.prune.nm(scores, n, m)
    return rng.random((out, inn)) < float(kind)


def _problem(rng: np.random.Generator, N: int, out: int, inn: int, r: int, kind: str):  # type: ignore[no-untyped-def]
    mask = _mask(rng, out, inn, kind)
    W = (rng.standard_normal((out, inn)) * mask).astype(np.float32)
    A = rng.standard_normal((r, inn)).astype(np.float32)
    B = rng.standard_normal((out, r)).astype(np.float32)
    x = rng.standard_normal((N, inn)).astype(np.float32)
    gy = rng.standard_normal((N, out)).astype(np.float32)
    return W, mask, A, B, x, gy


def _build(kind: str, W: np.ndarray, mask: np.ndarray) -> CSRBase | NMBase:
    return NMBase.from_dense(W, mask) if ":" in kind else CSRBase.from_dense(W, mask)


def _close(got: np.ndarray, want: np.ndarray, depth: int) -> None:
    """float32 result of reductions of length ``depth``: rounding grows like sqrt(depth)."""
    assert got.dtype == np.float32
    close(got, want, rtol=2e-4, atol=2e-5 * max(1.0, float(np.abs(want).max(initial=0.0))) * np.sqrt(max(depth, 1)))


KINDS = ["0", "0.1", "0.5", "1", "2:4", "4:8"]


@pytest.mark.parametrize(("N", "out", "inn", "r"), SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_kernels_match_reference(
    simd: str, rng: np.random.Generator, N: int, out: int, inn: int, r: int, kind: str
) -> None:
    W, mask, A, B, x, gy = _problem(rng, N, out, inn, r, kind)
    base = _build(kind, W, mask)
    copies = [a.copy() for a in (W, mask, A, B, x, gy)]
    s = 0.75
    assert base.format == ("nm" if ":" in kind else "csr")
    assert base.shape == (out, inn) and base.nnz == int(mask.sum())
    _close(base.forward(x, A, B, s), ref.sparse_forward(W, mask, x, A, B, s), inn)
    gx_want = ref.sparse_backward_input(W, mask, gy, A, B, s)
    dA_want, dB_want = ref.sparse_masked_grad(mask, gy, x, A, B, s)
    _close(base.backward_input(gy, A, B, s), gx_want, out)
    dA, dB = base.masked_grad(gy, x, A, B, s)
    _close(dA, dA_want, N * out)
    _close(dB, dB_want, N * inn)
    gx, dA2, dB2 = base.backward(gy, x, A, B, s)
    _close(gx, gx_want, out)
    np.testing.assert_array_equal(dA2, dA)  # fused and separate passes sum in the same order
    np.testing.assert_array_equal(dB2, dB)
    merged = base.merged(A, B, s)
    _close(merged.to_dense(), ref.lors_weight(W, mask, A, B, s), r)
    _close(merged.unmerged(A, B, s).to_dense(), W.astype(np.float64), r)
    for a, a0 in zip((W, mask, A, B, x, gy), copies, strict=True):
        np.testing.assert_array_equal(a, a0)  # inputs never modified


@pytest.mark.parametrize("kind", ["0.3", "2:4"])
def test_naive_c_reference_agrees(simd: str, rng: np.random.Generator, kind: str) -> None:
    W, mask, A, B, x, gy = _problem(rng, 11, 10, 24, 3, kind)
    t = _build(kind, W, mask).arrays.core()  # type: ignore[union-attr]
    np.testing.assert_allclose(
        _core.sparse_forward(t, x, A, B, 0.5, naive=True),
        _core.sparse_forward(t, x, A, B, 0.5),
        rtol=1e-5,
        atol=1e-5,
    )
    for fast, slow in zip(
        _core.sparse_backward(t, gy, x, A, B, 0.5),
        _core.sparse_backward(t, gy, x, A, B, 0.5, naive=True),
        strict=True,
    ):
        np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-4)


def test_torch_autograd_agrees(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    W, mask, A, B, x, gy = _problem(rng, 20, 12, 32, 4, "0.3")
    s = 1.5
    t = {
        k: torch.tensor(v.astype(np.float64), requires_grad=k in "AB") for k, v in dict(W=W, A=A, B=B).items()
    }
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    M = torch.tensor(mask)
    y = xt @ (t["W"] + s * (t["B"] @ t["A"]) * M).T
    (y * torch.tensor(gy.astype(np.float64))).sum().backward()
    base = CSRBase.from_dense(W, mask)
    gx, dA, dB = base.backward(gy, x, A, B, s)
    np.testing.assert_allclose(base.forward(x, A, B, s), y.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dA, t["A"].grad.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dB, t["B"].grad.numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kind", ["0.1", "0.5", "2:4", "4:8"])
def test_merge_keeps_every_zero_and_roundtrips(rng: np.random.Generator, kind: str) -> None:
    W, mask, A, B, _, _ = _problem(rng, 1, 16, 64, 4, kind)
    base = _build(kind, W, mask)
    np.testing.assert_array_equal(base.to_dense(), W)
    np.testing.assert_array_equal(base.mask_dense(), mask)
    merged = base.merged(A, B, 2.0)
    Wm = merged.to_dense()
    assert type(merged) is type(base) and merged.nnz == base.nnz
    np.testing.assert_array_equal(merged.mask_dense(), mask)
    assert (Wm[~mask] == 0).all()  # positions and count of zeros kept
    assert np.count_nonzero(Wm) <= mask.sum()
    np.testing.assert_allclose(merged.unmerged(A, B, 2.0).to_dense(), W, atol=1e-5)
    # forward of the merged base with a zero adapter equals forward with the adapter applied on the fly
    x = rng.standard_normal((5, 64)).astype(np.float32)
    np.testing.assert_allclose(
        merged.forward(x, np.zeros_like(A), B, 2.0), base.forward(x, A, B, 2.0), rtol=1e-5, atol=1e-4
    )


def test_nbytes_below_dense(rng: np.random.Generator) -> None:
    W = rng.standard_normal((64, 256)).astype(np.float32)
    dense = W.nbytes
    m = sft.prune.magnitude(W, 0.9)
    csr = CSRBase.from_dense(W * m, m)
    assert csr.nbytes == m.sum() * 8 + 65 * 8 and csr.nbytes < 0.25 * dense
    m24 = sft.prune.nm(W, 2, 4)
    nm = NMBase.from_dense(W * m24, m24)
    assert nm.nbytes == W.size // 2 * 5 and nm.nbytes < 0.7 * dense
    assert "nnz=" in repr(nm)


def test_deterministic_and_thread_counts_agree(rng: np.random.Generator) -> None:
    W, mask, A, B, x, gy = _problem(rng, 300, 40, 96, 16, "0.3")
    base = CSRBase.from_dense(W, mask)
    before = sft.get_num_threads()
    try:
        sft.set_num_threads(2)
        one = base.backward(gy, x, A, B, 0.5)
        for a, b in zip(one, base.backward(gy, x, A, B, 0.5), strict=True):
            np.testing.assert_array_equal(a, b)
        sft.set_num_threads(1)
        for a, b in zip(one, base.backward(gy, x, A, B, 0.5), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    finally:
        sft.set_num_threads(before)


def test_scratch_released_and_bounded(rng: np.random.Generator) -> None:
    W, mask, A, B, x, gy = _problem(rng, 256, 64, 512, 16, "0.5")
    base = CSRBase.from_dense(W, mask)
    _core.reset_scratch_peak()
    base.forward(x, A, B, 1.0)
    base.backward(gy, x, A, B, 1.0)
    stats = _core.scratch_stats()
    assert stats["current"] == 0
    nth = sft.get_num_threads()
    # <= 1 MiB of tiles and chunk buffers per thread, plus (in + out) * r floats per thread and A^T
    assert 0 < stats["peak"] <= nth * (2**20 + 4 * (512 + 64) * 16) + 4 * 512 * 16
    fwd_tokens, fwd_slab, bwd_tokens, bwd_slab = _core.sparse_plan(base.arrays.core(), 256)
    assert 8 <= fwd_tokens <= 512 and 8 <= bwd_tokens <= 512 and 0 < fwd_slab <= 512 and 0 < bwd_slab <= 512
    with pytest.raises(ValueError, match="N: expected a token count >= 0, got -1"):
        _core.sparse_plan(base.arrays.core(), -1)


@pytest.mark.parametrize(
    ("N", "out", "inn", "kind", "threads"),
    [
        (300, 24, 4096, "0.5", 1),
        (301, 17, 2056, "2:4", 2),
        (400, 40, 3000, "0.1", 3),
        (64, 33, 8192, "4:8", 2),
    ],
)
def test_kernels_over_column_slabs(
    simd: str, rng: np.random.Generator, N: int, out: int, inn: int, kind: str, threads: int
) -> None:
    """Wide inputs: the kernels walk the columns in slabs (a CSR row's entries split across them;
    the forward carries its partial outputs from slab to slab)."""
    W, mask, A, B, x, gy = _problem(rng, N, out, inn, 3, kind)
    base = _build(kind, W, mask)
    before = sft.get_num_threads()
    try:
        sft.set_num_threads(threads)
        _, fwd_slab, _, bwd_slab = _core.sparse_plan(base.arrays.core(), N)
        # the shapes above are chosen to need several slabs
        assert fwd_slab < inn and bwd_slab < inn
        if ":" in kind:
            assert fwd_slab % int(kind.split(":")[1]) == 0 and bwd_slab % int(kind.split(":")[1]) == 0
        _core.reset_scratch_peak()
        y = base.forward(x, A, B, 0.5)
        gx, dA, dB = base.backward(gy, x, A, B, 0.5)
        stats = _core.scratch_stats()
        assert stats["current"] == 0
        # 1 MiB of tiles, chunk and row positions per thread, plus (in + out) * r partials and A^T
        assert 0 < stats["peak"] <= threads * (2**20 + 4 * (inn + out) * 3) + 4 * inn * 3
    finally:
        sft.set_num_threads(before)
    _close(y, ref.sparse_forward(W, mask, x, A, B, 0.5), inn)
    _close(gx, ref.sparse_backward_input(W, mask, gy, A, B, 0.5), out)
    dA_want, dB_want = ref.sparse_masked_grad(mask, gy, x, A, B, 0.5)
    _close(dA, dA_want, N * out)
    _close(dB, dB_want, N * inn)


def test_short_token_blocks_stay_within_the_tile_bound(rng: np.random.Generator) -> None:
    """A thread's token share below one 64-token tile still gets gy^T tiles 64 tokens wide; the plan
    counts them as allocated (it once counted 24 tokens, and a 300 x 5000 backward at 2 threads took
    1 KiB a thread over the 1 MiB bound)."""
    N, out, inn, r = 40, 300, 5000, 3
    W, mask, A, B, x, gy = _problem(rng, N, out, inn, r, "0.1")
    base = _build("0.1", W, mask)
    before = sft.get_num_threads()
    try:
        sft.set_num_threads(2)
        assert _core.sparse_plan(base.arrays.core(), N)[2] < 64  # the backward's token block
        _core.reset_scratch_peak()
        gx, dA, dB = base.backward(gy, x, A, B, 0.5)
        peak = _core.scratch_stats()["peak"]
    finally:
        sft.set_num_threads(before)
    # 1 MiB of tiles, chunk and row positions per thread, plus (in + out) * r partials and A^T
    assert 0 < peak <= 2 * (2**20 + 4 * (inn + out) * r) + 4 * inn * r
    _close(gx, ref.sparse_backward_input(W, mask, gy, A, B, 0.5), out)
    dA_want, dB_want = ref.sparse_masked_grad(mask, gy, x, A, B, 0.5)
    _close(dA, dA_want, N * out)
    _close(dB, dB_want, N * inn)


@settings(max_examples=25, deadline=None)
@given(
    N=st.integers(1, 40),
    out=st.integers(1, 20),
    groups=st.integers(1, 12),
    r=st.integers(1, 9),
    density=st.sampled_from([0.0, 0.2, 0.6, 1.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_csr_hypothesis(N: int, out: int, groups: int, r: int, density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    W, mask, A, B, x, gy = _problem(rng, N, out, 4 * groups, r, str(density))
    for path in SIMD_PATHS:
        with sft.simd_path(path):
            base = CSRBase.from_dense(W, mask)
            _close(base.forward(x, A, B, 0.3), ref.sparse_forward(W, mask, x, A, B, 0.3), 4 * groups)
            gx, dA, dB = base.backward(gy, x, A, B, 0.3)
            dA_want, dB_want = ref.sparse_masked_grad(mask, gy, x, A, B, 0.3)
            _close(gx, ref.sparse_backward_input(W, mask, gy, A, B, 0.3), out)
            _close(dA, dA_want, N * out)
            _close(dB, dB_want, N * 4 * groups)


# ---- choose_format ----


def test_crossovers_follow_the_simd_path() -> None:
    """Each SIMD path has its own measured crossovers; the default is the path in use now."""
    assert set(DENSITY_CROSSOVERS) == set(NM_MAX_DENSITIES) == {"portable", "avx2", "avx512"}
    assert all(0.0 < v < 1.0 for v in (*DENSITY_CROSSOVERS.values(), *NM_MAX_DENSITIES.values()))
    assert density_crossover("portable") <= density_crossover("avx2")  # portable: not re-measured
    for path in SIMD_PATHS:
        with sft.simd_path(path):
            assert density_crossover() == DENSITY_CROSSOVERS[path]
            assert nm_max_density() == NM_MAX_DENSITIES[path]
            d = density_crossover()
            mask = np.zeros((10, 100), bool)
            mask.flat[: int(d * 1000)] = True
            assert choose_format(mask) == "csr"
            mask.flat[: int(d * 1000) + 20] = True
            assert choose_format(mask) == "dense"
    # wide inputs: more re-reads per column slab, and the dense GEMMs get faster (measured 0.7 at 8192)
    assert density_crossover("avx2", 1024) == density_crossover("avx2", 2048) == density_crossover("avx2")
    assert density_crossover("avx512", 8192) < density_crossover("avx512", 4096) < density_crossover("avx512")
    assert density_crossover("avx2", 8192) == pytest.approx(0.35 * 0.7)
    assert density_crossover("avx2", 16384) == density_crossover("avx2", 8192)  # held past the last point
    assert nm_max_density("avx2", 8192) == pytest.approx(0.25 * 0.7)
    wide = np.random.default_rng(1).random((4, 8192)) < 0.2
    assert choose_format(wide) == "dense"  # CSR measured 1.1x the dense time at 0.2 there
    assert choose_format(wide[:, :2048]) == "csr"  # and 0.6x at in=2048
    with pytest.raises(ValueError, match="in_features: expected an int >= 1, got 0"):
        density_crossover(None, 0)
    with pytest.raises(TypeError, match="in_features: expected an int or None, got float"):
        density_crossover(None, 2048.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="simd: expected one of"):
        density_crossover("sse")
    with pytest.raises(TypeError, match="simd: expected a str or None, got int"):
        nm_max_density(2)  # type: ignore[arg-type]


def test_choose_format(rng: np.random.Generator) -> None:
    W = rng.standard_normal((32, 64)).astype(np.float32)
    for path in SIMD_PATHS:
        with sft.simd_path(path):
            assert choose_format(sft.prune.nm(W, 1, 4)) == "nm"
            assert choose_format(sft.prune.magnitude(W, 0.8)) == "csr"  # density 0.2
            assert choose_format(sft.prune.magnitude(W, 0.5)) == "dense"  # density 0.5
    assert choose_format(sft.prune.nm(W, 1, 8)) == "nm"
    assert choose_format(sft.prune.nm(W, 2, 4)) == "dense"  # measured: N:M is slower than dense at 2:4
    assert choose_format(sft.prune.nm(W, 4, 8)) == "dense"
    assert detect_nm(sft.prune.nm(W, 4, 8)) == (4, 8)
    assert detect_nm(sft.prune.nm(W, 2, 4)) == (2, 4)
    assert choose_format(sft.prune.nm(W, 3, 4)) != "nm"  # 75% dense N:M is not worth it
    assert choose_format(sft.prune.magnitude(W, 0.99)) == "csr"
    assert choose_format(sft.prune.magnitude(W, 0.3)) == "dense"
    random_half = rng.random((32, 64)) < 0.5
    for fmt in ("dense", "csr"):
        assert choose_format(random_half, format=fmt) == fmt
    assert choose_format(sft.prune.nm(W, 2, 4), format="csr") == "csr"
    with pytest.raises(ValueError, match="format: 'nm' needs an N:M mask"):
        choose_format(random_half, format="nm")
    with pytest.raises(ValueError, match=r"format: expected one of \(.*\), got 'bsr'"):
        choose_format(random_half, format="bsr")
    with pytest.raises(TypeError, match="mask: expected dtype bool, got float32"):
        choose_format(W)


# ---- bad input ----

M_OK = np.zeros((4, 8), bool)
M_OK[:, ::2] = True
W_OK = M_OK.astype(np.float32)
A_OK = np.ones((2, 8), np.float32)
B_OK = np.ones((4, 2), np.float32)
X_OK = np.ones((3, 8), np.float32)
GY_OK = np.ones((3, 4), np.float32)
CSR_OK = CSRBase.from_dense(W_OK, M_OK)
NM_OK = NMBase.from_dense(W_OK, M_OK)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda: CSRBase.from_dense(W_OK.astype(np.float64), M_OK),
            TypeError,
            r"W: expected dtype float32, got float64",
        ),
        (lambda: CSRBase.from_dense(W_OK, M_OK.astype(int)), TypeError, r"mask: expected dtype bool"),
        (lambda: CSRBase.from_dense(W_OK, M_OK[:, :4]), ValueError, r"mask: expected shape \(4, 8\)"),
        (lambda: CSRBase.from_dense(W_OK[0], M_OK[0]), ValueError, r"W: expected a 2-D array"),
        (
            lambda: CSRBase.from_dense(np.ones((4, 8), np.float32), M_OK),
            ValueError,
            r"W: expected exact zeros wherever mask is False",
        ),
        (lambda: CSRBase.from_dense(W_OK * np.nan, M_OK), ValueError, r"W: contains NaN"),
        (lambda: NMBase.from_dense(W_OK, ~M_OK | M_OK), ValueError, r"mask: expected an N:M mask"),
        (lambda: NMBase.from_dense(W_OK, M_OK, n=1, m=3), ValueError, r"multiple of m = 3 for N:M groups, got 8"),
        (lambda: NMBase.from_dense(W_OK, M_OK, n=1, m=4), ValueError, r"exactly 1 of every 4 inputs kept"),
        (lambda: NMBase.from_dense(W_OK, M_OK, n=2), ValueError, r"n, m: give both or neither"),
        (
            lambda: CSR_OK.forward(X_OK.astype(np.float64), A_OK, B_OK, 1.0),
            TypeError,
            r"x: expected dtype float32",
        ),
        (lambda: CSR_OK.forward(X_OK[:, :7], A_OK, B_OK, 1.0), ValueError, r"x: expected shape \(N, 8\)"),
        (
            lambda: CSR_OK.forward(np.ones((8, 3), np.float32).T, A_OK, B_OK, 1.0),
            ValueError,
            r"x: expected a C-contig",
        ),
        (lambda: CSR_OK.forward(X_OK * np.nan, A_OK, B_OK, 1.0), ValueError, r"x: contains NaN"),
        (lambda: NM_OK.forward(X_OK, A_OK[:, :4], B_OK, 1.0), ValueError, r"A: expected shape \(r, 8\)"),
        (lambda: NM_OK.forward(X_OK, A_OK, B_OK[:, :1], 1.0), ValueError, r"B: expected shape \(4, 2\)"),
        (
            lambda: NM_OK.forward(X_OK, A_OK[:0], B_OK[:, :0], 1.0),
            ValueError,
            r"A: expected at least one row",
        ),
        (
            lambda: NM_OK.forward(X_OK, A_OK, B_OK, float("nan")),
            ValueError,
            r"scale: expected a finite float32 number",
        ),
        (lambda: NM_OK.forward(X_OK, A_OK, B_OK, "1"), TypeError, r"scale: expected a finite float32 number.*got str"),
        (lambda: CSR_OK.backward_input(X_OK, A_OK, B_OK, 1.0), ValueError, r"gy: expected shape \(N, 4\)"),
        (
            lambda: CSR_OK.masked_grad(GY_OK, X_OK[:2], A_OK, B_OK, 1.0),
            ValueError,
            r"x: expected shape \(3, 8\)",
        ),
        (lambda: NM_OK.merged(A_OK, B_OK * np.inf, 1.0), ValueError, r"B: contains NaN"),
    ],
)
def test_bad_input(call: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()  # type: ignore[operator]


def test_core_rejects_corrupt_bases() -> None:
    v = np.ones(3, np.float32)
    good = ("csr", 2, 4, 0, 0, v, np.array([0, 1, 3], np.int32), np.array([0, 2, 3], np.int64))
    _core.sparse_forward(good, X_OK[:, :4].copy(), A_OK[:, :4].copy(), B_OK[:2].copy(), 1.0)
    cases = [
        ((*good[:6], np.array([0, 1, 4], np.int32), good[7]), r"indices: expected increasing column indices"),
        ((*good[:6], np.array([1, 0, 3], np.int32), good[7]), r"indices: expected increasing column indices"),
        ((*good[:7], np.array([0, 2, 4], np.int64)), r"rowptr: expected 0, nondecreasing"),
        ((*good[:7], np.array([0, 2], np.int64)), r"rowptr: expected axis 0 of length 3"),
        (("coo", *good[1:]), r"base: expected kind 'csr' or 'nm', got 'coo'"),
        (
            ("nm", 2, 4, 1, 4, np.ones((2, 1), np.float32), np.array([[0], [4]], np.uint8), None),
            r"positions in \[0, m\)",
        ),
        (("nm", 2, 6, 1, 4, np.ones((2, 1), np.float32), np.zeros((2, 1), np.uint8), None), r"in % m == 0"),
    ]
    for base, match in cases:
        with pytest.raises(ValueError, match=match):
            _core.sparse_forward(
                base, X_OK[:, : base[2]].copy(), A_OK[:, : base[2]].copy(), B_OK[:2].copy(), 1.0
            )
    with pytest.raises(TypeError, match="base: expected a tuple"):
        _core.sparse_forward([1], X_OK, A_OK, B_OK, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fmt", "kind"), [("csr", "0.2"), ("nm", "2:4")])
def test_lors_linear_on_compressed_bases_matches_dense(rng: np.random.Generator, fmt: str, kind: str) -> None:
    W, mask, _, _, x, gy = _problem(rng, 7, 12, 32, 3, kind)
    layers = [sft.LoRSLinear(W, mask=mask, r=3, init="gaussian", format=f, seed=1) for f in (fmt, "dense")]
    assert layers[0].base.format == fmt and layers[1].base.format == "dense"
    ys = [layer.forward(x) for layer in layers]
    gxs = [layer.backward(gy) for layer in layers]
    np.testing.assert_allclose(ys[0], ys[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gxs[0], gxs[1], rtol=1e-4, atol=1e-4)
    for name in ("grad_A", "grad_B"):
        np.testing.assert_allclose(getattr(layers[0], name), getattr(layers[1], name), rtol=1e-4, atol=1e-4)
    assert layers[0].nbytes < layers[1].nbytes
    layers[0].merge()
    assert (layers[0].merged_weight()[~mask] == 0).all()


# ---- review fixes: the public constructors copy and check; scale range ----


def test_constructors_copy_and_leave_the_callers_arrays_alone() -> None:
    """The constructors used to make the caller's own arrays read-only (and keep them)."""
    v = np.ones(2, np.float32)
    i = np.array([0, 1], np.int32)
    p = np.array([0, 2], np.int64)
    csr = CSRBase(v, i, p, (1, 2))
    assert v.flags.writeable and i.flags.writeable and p.flags.writeable
    v[:] = 7.0  # the base holds its own copy
    np.testing.assert_array_equal(csr.to_dense(), [[1.0, 1.0]])
    assert not csr.values.flags.writeable
    vals, idx = np.ones((1, 2), np.float32), np.array([[0, 2]], np.uint8)
    nm = NMBase(vals, idx, 2, 4, (1, 4))
    assert vals.flags.writeable and idx.flags.writeable
    np.testing.assert_array_equal(nm.mask_dense(), [[True, False, True, False]])
    W, M = np.eye(3, dtype=np.float32), np.eye(3, dtype=np.uint8)
    dense = sft.DenseBase(W, M)
    assert W.flags.writeable and M.flags.writeable
    np.testing.assert_array_equal(dense.to_dense(), W)


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: CSRBase([1.0], np.zeros(1, np.int32), np.array([0, 1]), (1, 1)), TypeError, "values: expected a numpy.ndarray"),
        (lambda: CSRBase(np.ones(1, np.float32), np.zeros(1, np.int64), np.array([0, 1]), (1, 1)), TypeError, "indices: expected dtype int32"),
        (lambda: CSRBase(np.ones(1, np.float32), np.zeros(2, np.int32), np.array([0, 1]), (1, 1)), ValueError, "indices: expected shape"),
        (lambda: CSRBase(np.ones(1, np.float32), np.zeros(1, np.int32), np.array([0, 1]), (2, 1)), ValueError, "indptr: expected shape"),
        (lambda: CSRBase(np.ones(1, np.float32), np.zeros(1, np.int32), np.array([0, 1]), (-1, 2)), ValueError, "shape: expected sizes >= 0"),
        (lambda: CSRBase(np.ones(1, np.float32), np.zeros(1, np.int32), np.array([0, 1]), [1, 1]), TypeError, "shape: expected a tuple"),
        (lambda: NMBase(np.ones((1, 2), np.float32), np.zeros((1, 2), np.uint8), 2, 0, (1, 4)), ValueError, r"m: expected an int in \[1, 256\], got 0"),
        (lambda: NMBase(np.ones((1, 2), np.float32), np.zeros((1, 2), np.uint8), 2, 4, (1, 6)), ValueError, "multiple of m = 4"),
        (lambda: NMBase(np.ones((1, 3), np.float32), np.zeros((1, 2), np.uint8), 2, 4, (1, 4)), ValueError, "values: expected shape"),
        (lambda: sft.DenseBase(np.eye(2, dtype=np.float32), np.eye(2, dtype=bool)), TypeError, "mask_u8: expected dtype uint8"),
        (lambda: sft.DenseBase(np.eye(2, dtype=np.float32), np.full((2, 2), 2, np.uint8)), ValueError, "mask_u8: expected 0/1"),
        (lambda: sft.DenseBase(np.ones((2, 2), np.float32), np.eye(2, dtype=np.uint8)), ValueError, "W: expected exact zeros"),
    ],
)
def test_constructors_reject_bad_arrays(make: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        make()  # type: ignore[operator]

def _csr(indices: list[int], indptr: list[int], shape: tuple[int, int] = (2, 4)) -> CSRBase:
    return CSRBase(np.ones(len(indices), np.float32), np.array(indices, np.int32), np.array(indptr, np.int64), shape)


def _nm(positions: list[list[int]], n: int = 2, m: int = 4) -> NMBase:
    idx = np.array(positions, np.uint8).reshape(len(positions), -1)
    return NMBase(np.ones(idx.shape, np.float32), idx, n, m, (idx.shape[0], idx.shape[1] // max(n, 1) * m))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: _csr([0, 1, 3], [0, -1, 3]), r"indptr: expected non-decreasing row pointers, got 0 then -1 at row 0"),
        (lambda: _csr([0, 1, 3], [0, 100, 3]), r"indptr: expected non-decreasing row pointers, got 100 then 3 at row 1"),
        (lambda: _csr([0, 1, 3], [1, 2, 3]), r"indptr: expected to run from 0 to nnz = 3, got 1 to 3"),
        (lambda: _csr([0, 1, 3], [0, 2, 2]), r"indptr: expected to run from 0 to nnz = 3, got 0 to 2"),
        (lambda: _csr([0, -1, 3], [0, 2, 3]), r"indices: expected columns in \[0, 4\), got -1 at entry 1"),
        (lambda: _csr([0, 400, 3], [0, 2, 3]), r"indices: expected columns in \[0, 4\), got 400 at entry 1"),
        (lambda: _csr([1, 1, 3], [0, 2, 3]), r"indices: column 1 repeated within row 0, at entry 1"),
        (lambda: _csr([2, 1, 3], [0, 2, 3]), r"indices: column 1 not increasing within row 0, at entry 1"),
        (lambda: _nm([[0, 9, 1, 2]]), r"indices: expected positions in \[0, m = 4\), got 9 at row 0"),
        (lambda: _nm([[0, 1, 2, 2]]), r"indices: position 2 repeated within group 1 of row 0, at entry 3"),
        (lambda: _nm([[0, 1], [3, 1]]), r"indices: position 1 not increasing within group 0 of row 1, at entry 3"),
    ],
)
def test_constructors_check_the_index_structure(make: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()  # type: ignore[operator]


def test_constructors_accept_valid_structures_across_rows_and_groups() -> None:
    """Columns restart in every row and positions in every group; empty rows are fine."""
    csr = _csr([3, 0, 2], [0, 1, 1, 3], (3, 4))
    assert csr.to_dense().tolist() == [[0, 0, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0]]
    nm = _nm([[1, 3, 0, 2]])
    assert nm.mask_dense().tolist() == [[False, True, False, True, True, False, True, False]]
    assert _csr([], [0, 0], (1, 4)).nnz == 0
    assert _nm([[]], n=0).nnz == 0



def test_nm_base_with_no_rows() -> None:
    """from_dense of a (0, in) weight tried reshape(0, -1)."""
    base = NMBase.from_dense(np.ones((0, 8), np.float32), np.ones((0, 8), bool), n=2, m=4)
    assert base.shape == (0, 8) and base.values.shape == (0, 4) and base.nnz == 0
    y = base.forward(np.ones((3, 8), np.float32), np.zeros((1, 8), np.float32), np.zeros((0, 1), np.float32), 1.0)
    assert y.shape == (3, 0)


@pytest.mark.parametrize("scale", ["1", True, 1j, 1e39, np.nan])
def test_every_base_checks_the_scale_alike(scale: object) -> None:
    """DenseBase took "1" and True and called the rest of the kernels' scales floats."""
    W = np.eye(4, dtype=np.float32)
    x, A, B = np.ones((1, 4), np.float32), np.ones((1, 4), np.float32), np.ones((4, 1), np.float32)
    for base in (sft.DenseBase.from_dense(W, W != 0), CSRBase.from_dense(W, W != 0)):
        with pytest.raises((TypeError, ValueError), match="scale: expected"):
            base.forward(x, A, B, scale)  # type: ignore[arg-type]
        with pytest.raises((TypeError, ValueError), match="scale: expected"):
            base.merged(A, B, scale)  # type: ignore[arg-type]


@pytest.mark.parametrize("simd", SIMD_PATHS)
def test_naive_backward_without_the_weight_gradient(simd: str) -> None:
    """The naive twin read x (NULL when weight_grad=False) for the sampled gradient: a segfault."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((5, 8)).astype(np.float32)
    mask = rng.random((5, 8)) < 0.5
    A = rng.standard_normal((2, 8)).astype(np.float32)
    B = rng.standard_normal((5, 2)).astype(np.float32)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    gy = rng.standard_normal((3, 5)).astype(np.float32)
    for base in (CSRBase.from_dense(W * mask, mask), NMBase.from_dense(*_nm24(W))):
        with sft.simd_path(simd):
            fast = _core.sparse_backward(base.arrays.core(), gy, x, A, B, 1.0, weight_grad=False)
            naive = _core.sparse_backward(base.arrays.core(), gy, x, A, B, 1.0, weight_grad=False, naive=True)
        assert naive[1] is None and naive[2] is None
        np.testing.assert_allclose(naive[0], fast[0], rtol=1e-5, atol=1e-5)


def _nm24(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = sft.prune.nm(W, 2, 4)
    return W * m, m


def test_sparse_bases_check_once_at_construction_then_call_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The O(nnz) structure/finiteness scan runs when a base is built; kernel calls pass trusted=True."""
    from sparseft.formats import CSRBase

    vals = np.array([1.0, np.nan], np.float32)
    with pytest.raises(ValueError, match="values"):
        CSRBase(vals, np.array([0, 1], np.int32), np.array([0, 1, 2], np.int64), (2, 2))
    base = CSRBase(np.ones(2, np.float32), np.array([0, 1], np.int32), np.array([0, 1, 2], np.int64), (2, 2))
    seen: dict[str, object] = {}
    real = _core.sparse_forward

    def spy(*args: object, **kwargs: object) -> object:
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(_core, "sparse_forward", spy)
    A = np.zeros((1, 2), np.float32)
    B = np.zeros((2, 1), np.float32)
    y = base.forward(np.eye(2, dtype=np.float32), A, B, 1.0)
    assert seen.get("trusted") is True
    np.testing.assert_array_equal(y, np.eye(2, dtype=np.float32))
