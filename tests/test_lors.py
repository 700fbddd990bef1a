"""LoRS adapters: the C kernels against their float64 twins, LoRSLinear's API, merge, inits, errors."""

from __future__ import annotations

import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseft
import sparseft as sft
from sparseft import _core
from sparseft.adapters.inits import randomized_svd

from . import reference as ref
from .conftest import SIMD_PATHS, close

# ---- helpers ----


def nm_mask(rng: np.random.Generator, out: int, in_: int, n: int, m: int) -> np.ndarray:
    """N:M along the input dim: in every group of m consecutive inputs, n random ones kept
    (a short last group keeps min(n, its length))."""
    mask = np.zeros((out, in_), bool)
    for g0 in range(0, in_, m):
        width = min(m, in_ - g0)
        keep = np.argsort(rng.random((out, width)), axis=1)[:, : min(n, width)]
        np.put_along_axis(mask[:, g0 : g0 + width], keep, True, axis=1)
    return mask


def make_mask(rng: np.random.Generator, out: int, in_: int, kind: str) -> np.ndarray:
    if kind == "2:4":
        return nm_mask(rng, out, in_, 2, 4)
    if kind == "4:8":
        return nm_mask(rng, out, in_, 4, 8)
    return rng.random((out, in_)) < float(kind)


def problem(
    rng: np.random.Generator, N: int, in_: int, out: int, r: int, kind: str = "0.5"
) -> dict[str, np.ndarray]:
    mask = make_mask(rng, out, in_, kind)
    W = (rng.standard_normal((out, in_)) * mask).astype(np.float32)
    return {
        "x": rng.standard_normal((N, in_)).astype(np.float32),
        "gy": rng.standard_normal((N, out)).astype(np.float32),
        "W": W,
        "mask": mask,
        "A": rng.standard_normal((r, in_)).astype(np.float32),
        "B": rng.standard_normal((out, r)).astype(np.float32),
        "bias": rng.standard_normal(out).astype(np.float32),
    }


def abs_problem(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: (np.abs(v) if v.dtype != bool else v) for k, v in p.items()}


def check_kernels(p: dict[str, np.ndarray], s: float, naive: bool = False) -> None:
    """Every LoRS kernel on problem p against tests/reference.py."""
    m8 = p["mask"].astype(np.uint8)
    q = abs_problem(p)
    args = (p["W"], m8, p["A"], p["B"], s)
    y = _core.lors_forward(p["x"], *args, bias=p["bias"], naive=naive)
    mag = ref.lors_forward(q["x"], q["W"], q["mask"], q["A"], q["B"], abs(s), q["bias"])
    close(y, ref.lors_forward(p["x"], p["W"], p["mask"], p["A"], p["B"], s, p["bias"]), mag)
    y0 = _core.lors_forward(p["x"], *args, naive=naive)
    close(y0, ref.lors_forward(p["x"], p["W"], p["mask"], p["A"], p["B"], s), mag)
    gx = _core.lors_backward_input(p["gy"], *args, naive=naive)
    mag = ref.lors_backward_input(q["gy"], q["W"], q["mask"], q["A"], q["B"], abs(s))
    close(gx, ref.lors_backward_input(p["gy"], p["W"], p["mask"], p["A"], p["B"], s), mag)
    dA, dB = _core.lors_backward_exact(p["gy"], p["x"], m8, p["A"], p["B"], s, naive=naive)
    wA, wB = ref.lors_grad_exact(p["gy"], p["x"], p["mask"], p["A"], p["B"], s)
    mA, mB = ref.lors_grad_exact(q["gy"], q["x"], q["mask"], q["A"], q["B"], abs(s))
    close(dA, wA, mA)
    close(dB, wB, mB)
    dA, dB = _core.lors_backward_lors(p["gy"], p["x"], p["A"], p["B"], s, naive=naive)
    wA, wB = ref.lors_grad_lors(p["gy"], p["x"], p["A"], p["B"], s)
    mA, mB = ref.lors_grad_lors(q["gy"], q["x"], q["A"], q["B"], abs(s))
    close(dA, wA, mA)
    close(dB, wB, mB)
    W2 = _core.lors_merge(*args, naive=naive)
    mag = ref.lors_merged_weight(q["W"], q["mask"], q["A"], q["B"], abs(s))
    close(W2, ref.lors_merged_weight(p["W"], p["mask"], p["A"], p["B"], s), mag)
    assert (W2[~p["mask"]] == 0).all()


# ---- kernels against the float64 reference ----

SHAPES = [  # (N, in, out, r)
    (1, 1, 1, 1),
    (1, 7, 5, 1),
    (3, 16, 16, 2),
    (7, 33, 17, 3),
    (13, 300, 37, 5),  # in > GEMM_KC: several depth blocks in forward
    (40, 65, 600, 8),  # out > LORS_TILE_O and GEMM_KC: several tiles and depth blocks
    (5, 530, 300, 4),  # in > LORS_TILE_I: several gradient tiles along in
    (150, 40, 20, 16),  # N > GEMM_MC: several row blocks
]
KINDS = ["0", "0.1", "0.5", "1", "2:4", "4:8"]


@pytest.mark.parametrize(("N", "in_", "out", "r"), SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_kernels_match_reference(simd: str, N: int, in_: int, out: int, r: int, kind: str) -> None:
    rng = np.random.default_rng(zlib.crc32(repr((N, in_, out, r, kind)).encode()))
    p = problem(rng, N, in_, out, r, kind)
    before = {k: v.copy() for k, v in p.items()}
    check_kernels(p, 0.75)
    for k in p:  # inputs never modified
        np.testing.assert_array_equal(p[k], before[k])


@pytest.mark.parametrize(("N", "in_", "out", "r"), SHAPES[:5])
@pytest.mark.parametrize("kind", ["0", "0.5", "1", "2:4"])
def test_naive_kernels_match_reference(N: int, in_: int, out: int, r: int, kind: str) -> None:
    rng = np.random.default_rng(7)
    check_kernels(problem(rng, N, in_, out, r, kind), -1.5, naive=True)


@settings(max_examples=30, deadline=None)
@given(
    N=st.integers(1, 30),
    in_=st.integers(1, 80),
    out=st.integers(1, 80),
    r=st.integers(1, 6),
    density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    s=st.floats(-3, 3, allow_nan=False),
    seed=st.integers(0, 2**31 - 1),
)
def test_kernels_hypothesis(N: int, in_: int, out: int, r: int, density: float, s: float, seed: int) -> None:
    p = problem(np.random.default_rng(seed), N, in_, out, min(r, in_, out), str(density))
    for path in SIMD_PATHS:
        with sparseft.simd_path(path):
            check_kernels(p, s)


def test_kernels_scale_zero_is_the_base(simd: str, rng: np.random.Generator) -> None:
    p = problem(rng, 9, 40, 30, 4)
    m8 = p["mask"].astype(np.uint8)
    y = _core.lors_forward(p["x"], p["W"], m8, p["A"], p["B"], 0.0)
    close(y, p["x"].astype(np.float64) @ p["W"].T, np.abs(p["x"]) @ np.abs(p["W"]).T)
    np.testing.assert_array_equal(_core.lors_merge(p["W"], m8, p["A"], p["B"], 0.0), p["W"])


def test_kernels_accept_bool_mask(rng: np.random.Generator) -> None:
    p = problem(rng, 4, 20, 10, 2)
    a = _core.lors_forward(p["x"], p["W"], p["mask"], p["A"], p["B"], 0.5)
    b = _core.lors_forward(p["x"], p["W"], p["mask"].astype(np.uint8), p["A"], p["B"], 0.5)
    np.testing.assert_array_equal(a, b)


def test_kernels_empty_token_batch(rng: np.random.Generator) -> None:
    p = problem(rng, 1, 20, 10, 2)
    m8 = p["mask"].astype(np.uint8)
    x0 = np.zeros((0, 20), np.float32)
    assert _core.lors_forward(x0, p["W"], m8, p["A"], p["B"], 1.0).shape == (0, 10)
    dA, dB = _core.lors_backward_exact(np.zeros((0, 10), np.float32), x0, m8, p["A"], p["B"], 1.0)
    assert not dA.any() and not dB.any()
    dA, dB = _core.lors_backward_lors(np.zeros((0, 10), np.float32), x0, p["A"], p["B"], 1.0)
    assert dA.shape == (2, 20) and not dA.any() and not dB.any()


def test_kernels_deterministic_and_thread_count_independent(rng: np.random.Generator) -> None:
    """Bit-identical repeats for a fixed thread count; forward, input gradient, merge and the
    "lors" gradient are also identical across thread counts (each output summed by one thread in one order); the exact
    gradient sums per-thread partials, so across counts it agrees to rounding."""
    p = problem(rng, 200, 1100, 310, 8)
    m8 = p["mask"].astype(np.uint8)

    def run() -> list[np.ndarray]:
        args = (p["W"], m8, p["A"], p["B"], 0.3)
        return [
            _core.lors_forward(p["x"], *args, bias=p["bias"]),
            _core.lors_backward_input(p["gy"], *args),
            _core.lors_merge(*args),
            *_core.lors_backward_lors(p["gy"], p["x"], p["A"], p["B"], 0.3),
            *_core.lors_backward_exact(p["gy"], p["x"], m8, p["A"], p["B"], 0.3),
        ]

    before = sparseft.get_num_threads()
    try:
        sparseft.set_num_threads(2)
        two, again = run(), run()
        sparseft.set_num_threads(1)
        one, one_again = run(), run()
    finally:
        sparseft.set_num_threads(before)
    for a, b in zip(two + one, again + one_again, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, c in zip(two[:5], one[:5], strict=True):
        np.testing.assert_array_equal(a, c)
    for a, c in zip(two[5:], one[5:], strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
@pytest.mark.parametrize(("out", "in_"), [(5, 40), (17, 9), (300, 530), (1100, 70)])
def test_exact_gradient_any_thread_count(threads: int, out: int, in_: int) -> None:
    """The exact gradient splits the output rows into one slab per thread (fewer threads than
    asked when out < 8 per thread) and tiles each slab: every split matches the reference, with
    an all-zero mask region (tiles skipped) in the middle."""
    rng = np.random.default_rng(zlib.crc32(repr((threads, out, in_)).encode()))
    p = problem(rng, 23, in_, out, 3)
    p["mask"][out // 3 : out // 2] = False
    p["W"][~p["mask"]] = 0.0
    m8 = p["mask"].astype(np.uint8)
    q = abs_problem(p)
    before = sparseft.get_num_threads()
    try:
        sparseft.set_num_threads(threads)
        dA, dB = _core.lors_backward_exact(p["gy"], p["x"], m8, p["A"], p["B"], 0.5)
    finally:
        sparseft.set_num_threads(before)
    wA, wB = ref.lors_grad_exact(p["gy"], p["x"], p["mask"], p["A"], p["B"], 0.5)
    mA, mB = ref.lors_grad_exact(q["gy"], q["x"], q["mask"], q["A"], q["B"], 0.5)
    close(dA, wA, mA)
    close(dB, wB, mB)


def test_exact_gradient_skips_density_zero(rng: np.random.Generator) -> None:
    p = problem(rng, 64, 700, 700, 4, "0")
    dA, dB = _core.lors_backward_exact(p["gy"], p["x"], p["mask"].astype(np.uint8), p["A"], p["B"], 1.0)
    assert not dA.any() and not dB.any()


def test_scratch_bounded_independent_of_out_in(rng: np.random.Generator) -> None:
    """Kernel scratch of a fwd+bwd stays within the tiles + GEMM panels, whatever out×in is."""
    for out, in_ in [(64, 64), (1200, 1100)]:
        p = problem(rng, 16, in_, out, 4)
        m8 = p["mask"].astype(np.uint8)
        _core.reset_scratch_peak()
        _core.lors_forward(p["x"], p["W"], m8, p["A"], p["B"], 1.0)
        _core.lors_backward_input(p["gy"], p["W"], m8, p["A"], p["B"], 1.0)
        _core.lors_backward_exact(p["gy"], p["x"], m8, p["A"], p["B"], 1.0)
        stats = _core.scratch_stats()
        assert stats["current"] == 0
        assert 0 < stats["peak"] <= _core.lors_scratch_bytes(in_, out, 4)
    # the bound grows with r·(in + out) only: far below one out×in array for large layers
    small, big = _core.lors_scratch_bytes(1024, 1024, 16), _core.lors_scratch_bytes(8192, 8192, 16)
    assert big - small == (sparseft.get_num_threads() - 1) * 16 * (2 * 8192 - 2 * 1024) * 4
    assert big < 8192 * 8192 * 4 / 40
    with pytest.raises(ValueError, match="expected sizes >= 0"):
        _core.lors_scratch_bytes(-1, 2, 3)


# ---- the reference itself: finite differences and torch ----


def _loss(p: dict[str, np.ndarray], A: np.ndarray, B: np.ndarray, s: float, masked: bool = True) -> float:
    mask = p["mask"] if masked else np.ones_like(p["mask"])
    return float((ref.lors_forward(p["x"], p["W"], mask, A, B, s) * p["gy"]).sum())


@pytest.mark.parametrize("kind", ["0.5", "2:4", "1"])
def test_reference_gradients_by_finite_differences(kind: str) -> None:
    """dL/dA, dL/dB for L = Σ gy ⊙ y: exact mode = the masked adapter's gradient, lors mode =
    the unmasked adapter's gradient (the two agree at density 1)."""
    rng = np.random.default_rng(3)
    p = {k: v.astype(np.float64) if v.dtype != bool else v for k, v in problem(rng, 5, 8, 6, 2, kind).items()}
    s, h = 0.8, 1e-6
    A, B = p["A"], p["B"]
    for masked, (dA, dB) in [
        (True, ref.lors_grad_exact(p["gy"], p["x"], p["mask"], A, B, s)),
        (False, ref.lors_grad_lors(p["gy"], p["x"], A, B, s)),
    ]:
        for arr, grad, name in [(A, dA, "A"), (B, dB, "B")]:
            num = np.zeros_like(arr)
            for idx in np.ndindex(arr.shape):
                e = np.zeros_like(arr)
                e[idx] = h
                plus = _loss(p, A + e if name == "A" else A, B + e if name == "B" else B, s, masked)
                minus = _loss(p, A - e if name == "A" else A, B - e if name == "B" else B, s, masked)
                num[idx] = (plus - minus) / (2 * h)
            np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-6)
    gx = ref.lors_backward_input(p["gy"], p["W"], p["mask"], A, B, s)
    num = np.zeros_like(p["x"])
    for idx in np.ndindex(p["x"].shape):
        e = np.zeros_like(p["x"])
        e[idx] = h
        num[idx] = (
            (ref.lors_forward(p["x"] + e, p["W"], p["mask"], A, B, s) * p["gy"]).sum()
            - (ref.lors_forward(p["x"] - e, p["W"], p["mask"], A, B, s) * p["gy"]).sum()
        ) / (2 * h)
    np.testing.assert_allclose(gx, num, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["0.5", "2:4", "0"])
def test_layer_matches_torch_autograd(kind: str) -> None:
    """exact mode = SPP-style W + s·(B@A)*M under autograd; lors mode = plain LoRA's gradient."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    p = problem(rng, 6, 23, 19, 3, kind)
    x3 = p["x"].reshape(2, 3, 23)
    gy3 = p["gy"].reshape(2, 3, 19)
    t = {k: torch.tensor(v.astype(np.float64) if v.dtype != bool else v) for k, v in p.items()}
    A = t["A"].clone().requires_grad_(True)
    B = t["B"].clone().requires_grad_(True)
    x = t["x"].reshape(2, 3, 23).clone().requires_grad_(True)
    s = 2.0 / 3
    y = x @ (t["W"] + s * (B @ A) * t["mask"]).T + t["bias"]
    y.backward(t["gy"].reshape(2, 3, 19))
    lay = sft.LoRSLinear(p["W"], mask=p["mask"], r=3, alpha=2.0, bias=p["bias"], grad="exact")
    lay.A[...] = p["A"]
    lay.B[...] = p["B"]
    got_y = lay.forward(x3)
    gx = lay.backward(gy3)
    np.testing.assert_allclose(got_y, y.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gx, x.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lay.grad_A, A.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lay.grad_B, B.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lay.grad_bias, t["gy"].sum(0).numpy(), rtol=1e-4, atol=1e-4)
    # lors mode: the gradient of plain LoRA x Wᵀ + s·(x Aᵀ) Bᵀ at the same point
    A2 = t["A"].clone().requires_grad_(True)
    B2 = t["B"].clone().requires_grad_(True)
    y2 = t["x"] @ t["W"].T + s * (t["x"] @ A2.T) @ B2.T
    y2.backward(t["gy"])
    lay2 = sft.LoRSLinear(p["W"], mask=p["mask"], r=3, alpha=2.0, grad="lors")
    lay2.A[...] = p["A"]
    lay2.B[...] = p["B"]
    lay2.forward(p["x"])
    lay2.backward(p["gy"])
    np.testing.assert_allclose(lay2.grad_A, A2.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lay2.grad_B, B2.grad.numpy(), rtol=1e-4, atol=1e-4)


# ---- LoRSLinear ----


def trained_layer(
    rng: np.random.Generator, out: int = 24, in_: int = 40, r: int = 4, kind: str = "0.5", **kw: object
) -> tuple[sft.LoRSLinear, dict[str, np.ndarray]]:
    p = problem(rng, 7, in_, out, r, kind)
    lay = sft.LoRSLinear(p["W"], mask=p["mask"], r=r, bias=p["bias"], **kw)  # type: ignore[arg-type]
    lay.B[...] = rng.standard_normal(lay.B.shape).astype(np.float32)
    return lay, p


@pytest.mark.parametrize("grad", ["exact", "lors"])
@pytest.mark.parametrize("kind", ["0", "0.1", "0.5", "1", "2:4"])
def test_layer_forward_backward_match_reference(simd: str, grad: str, kind: str) -> None:
    rng = np.random.default_rng(5)
    lay, p = trained_layer(rng, kind=kind, grad=grad, alpha=6.0)
    s = lay.scaling
    assert s == 6.0 / 4
    x, gy = p["x"], p["gy"]
    q = abs_problem(p)
    y = lay.forward(x)
    want = ref.lors_forward(x, p["W"], p["mask"], lay.A, lay.B, s, p["bias"])
    close(
        y, want, ref.lors_forward(q["x"], q["W"], q["mask"], np.abs(lay.A), np.abs(lay.B), s, q["bias"])
    )
    gx = lay.backward(gy)
    np.testing.assert_allclose(
        gx, ref.lors_backward_input(gy, p["W"], p["mask"], lay.A, lay.B, s), rtol=1e-4, atol=1e-4
    )
    if grad == "exact":
        wA, wB = ref.lors_grad_exact(gy, x, p["mask"], lay.A, lay.B, s)
    else:
        wA, wB = ref.lors_grad_lors(gy, x, lay.A, lay.B, s)
    np.testing.assert_allclose(lay.grad_A, wA, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lay.grad_B, wB, rtol=1e-4, atol=1e-4)


def test_grad_modes_agree_at_full_density(rng: np.random.Generator) -> None:
    lay, p = trained_layer(rng, kind="1", grad="exact")
    lay2 = sft.LoRSLinear(p["W"], mask=p["mask"], r=4, bias=p["bias"], grad="lors")
    lay2.B[...] = lay.B
    for layer in (lay, lay2):
        layer.forward(p["x"])
        layer.backward(p["gy"])
    np.testing.assert_allclose(lay.grad_A, lay2.grad_A, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lay.grad_B, lay2.grad_B, rtol=1e-4, atol=1e-4)


def test_leading_dims_and_accumulation(rng: np.random.Generator) -> None:
    lay, _ = trained_layer(rng)
    x3 = rng.standard_normal((2, 5, 40)).astype(np.float32)
    gy3 = rng.standard_normal((2, 5, 24)).astype(np.float32)
    y3 = lay.forward(x3)
    gx3 = lay.backward(gy3)
    assert y3.shape == (2, 5, 24) and gx3.shape == (2, 5, 40)
    gA, gB, gb = lay.grad_A.copy(), lay.grad_B.copy(), lay.grad_bias.copy()
    y2 = lay.forward(x3.reshape(10, 40))
    gx2 = lay.backward(gy3.reshape(10, 24))
    np.testing.assert_array_equal(y2, y3.reshape(10, 24))
    np.testing.assert_array_equal(gx2, gx3.reshape(10, 40))
    np.testing.assert_allclose(lay.grad_A, 2 * gA, rtol=1e-6)  # accumulated
    np.testing.assert_allclose(lay.grad_B, 2 * gB, rtol=1e-6)
    np.testing.assert_allclose(lay.grad_bias, 2 * gb, rtol=1e-6)
    lay.zero_grad()
    assert not lay.grad_A.any() and not lay.grad_B.any() and not lay.grad_bias.any()
    # a single vector (no leading dims) works too
    assert lay.forward(x3[0, 0]).shape == (24,)
    assert lay.backward(gy3[0, 0]).shape == (40,)


def test_backward_needs_a_pending_forward(rng: np.random.Generator) -> None:
    lay, p = trained_layer(rng)
    with pytest.raises(RuntimeError, match="backward: call forward"):
        lay.backward(p["gy"])
    lay.forward(p["x"])
    lay.backward(p["gy"])
    with pytest.raises(RuntimeError, match="backward: call forward"):
        lay.backward(p["gy"])


def test_forward_keeps_no_out_by_in_buffer(rng: np.random.Generator) -> None:
    """NumPy allocations of a fwd+bwd step stay far below one out×in float32 array."""
    out = in_ = 768
    for grad in ("exact", "lors"):
        lay, _ = trained_layer(rng, out=out, in_=in_, r=8, grad=grad)
        x = rng.standard_normal((8, in_)).astype(np.float32)
        gy = rng.standard_normal((8, out)).astype(np.float32)
        lay.forward(x)
        lay.backward(gy)  # warm up
        tracemalloc.start()
        try:
            lay.forward(x)
            lay.backward(gy)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < out * in_ * 4 / 8, (grad, peak)


def test_merge_keeps_every_zero_and_the_output(simd: str) -> None:
    rng = np.random.default_rng(8)
    for kind in ["0", "0.1", "0.5", "2:4", "1"]:
        lay, p = trained_layer(rng, kind=kind)
        mask = p["mask"]
        x = p["x"]
        W2 = lay.merged_weight()
        assert W2.dtype == np.float32 and W2.shape == mask.shape
        assert (W2[~mask] == 0).all()
        assert np.count_nonzero(W2) <= np.count_nonzero(mask)
        np.testing.assert_allclose(
            W2, ref.lors_merged_weight(p["W"], mask, lay.A, lay.B, lay.scaling), rtol=1e-5, atol=1e-5
        )
        y = lay.forward(x)
        lay.forward(x)
        lay.merge()
        assert lay.merged
        np.testing.assert_array_equal(lay.merged_weight(), W2)
        np.testing.assert_allclose(lay.forward(x), y, rtol=1e-5, atol=1e-4)
        lay.merge()  # no-op
        np.testing.assert_array_equal(lay.merged_weight(), W2)
        lay.unmerge()
        assert not lay.merged
        W_back = lay.base.to_dense()
        assert (W_back[~mask] == 0).all()
        np.testing.assert_allclose(W_back, p["W"], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(lay.mask, mask)


def test_backward_after_merge_matches_unmerged(rng: np.random.Generator) -> None:
    lay, p = trained_layer(rng)
    lay.forward(p["x"])
    gx = lay.backward(p["gy"])
    g = (lay.grad_A.copy(), lay.grad_B.copy())
    lay.zero_grad()
    lay.merge()
    lay.forward(p["x"])
    np.testing.assert_allclose(lay.backward(p["gy"]), gx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lay.grad_A, g[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lay.grad_B, g[1], rtol=1e-4, atol=1e-4)


def test_state_dict_round_trip(rng: np.random.Generator) -> None:
    lay, p = trained_layer(rng)
    sd = lay.state_dict()
    assert set(sd) == {
        "lora_A.weight",
        "lora_B.weight",
        "base_layer.weight",
        "base_layer.weight_mask",
        "base_layer.bias",
    }
    assert sd["lora_A.weight"].shape == (4, 40) and sd["lora_B.weight"].shape == (24, 4)
    np.testing.assert_array_equal(sd["base_layer.weight"], p["W"])
    np.testing.assert_array_equal(sd["base_layer.weight_mask"], p["mask"])
    other = sft.LoRSLinear(np.ones((24, 40), np.float32), r=4, seed=9)
    other.load_state_dict(sd)
    np.testing.assert_array_equal(other.forward(p["x"]), lay.forward(p["x"]))
    sd["lora_A.weight"][...] = 0  # copies: the layer is not affected
    assert lay.A.any()
    lay.merge()
    sd2 = lay.state_dict()  # a merged layer reports the unmerged base
    np.testing.assert_allclose(sd2["base_layer.weight"], p["W"], rtol=1e-5, atol=1e-5)


def test_load_state_dict_errors_leave_layer_unchanged(rng: np.random.Generator) -> None:
    lay, _ = trained_layer(rng)
    A0, B0 = lay.A.copy(), lay.B.copy()
    good = lay.state_dict()
    good["lora_A.weight"] = good["lora_A.weight"] + 1
    cases = [
        (
            {k: v for k, v in good.items() if k != "lora_B.weight"},
            ValueError,
            r"missing keys \['lora_B.weight'\]",
        ),
        ({**good, "extra": np.zeros(1)}, ValueError, "unexpected keys"),
        (
            {**good, "lora_B.weight": np.zeros((24, 5), np.float32)},
            ValueError,
            r"lora_B.weight: expected shape \(24, 4\)",
        ),
        (
            {**good, "lora_A.weight": good["lora_A.weight"].astype(np.float64)},
            TypeError,
            "lora_A.weight: expected dtype float32",
        ),
        ({**good, "base_layer.weight": np.ones((24, 40), np.float32)}, ValueError, "base_layer.weight: expected exact zeros"),
        ({**good, "base_layer.bias": np.zeros(3, np.float32)}, ValueError, "base_layer.bias: expected shape"),
    ]
    for sd, exc, match in cases:
        with pytest.raises(exc, match=match):
            lay.load_state_dict(sd)
        np.testing.assert_array_equal(lay.A, A0)
        np.testing.assert_array_equal(lay.B, B0)
    lay.load_state_dict({**good, "extra": np.zeros(1)}, strict=False)
    np.testing.assert_array_equal(lay.A, A0 + 1)


def test_inputs_never_modified(rng: np.random.Generator) -> None:
    p = problem(rng, 7, 40, 24, 4)
    G = rng.standard_normal((24, 40)).astype(np.float32)
    before = {**{k: v.copy() for k, v in p.items()}, "G": G.copy()}
    for init in ("lora", "gaussian", "lors"):
        for grad in ("exact", "lors"):
            lay = sft.LoRSLinear(
                p["W"], mask=p["mask"], r=4, bias=p["bias"], init=init, grad=grad, init_grad=G
            )
            lay.forward(p["x"])
            lay.backward(p["gy"])
            lay.merge()
            lay.forward(p["x"])
            lay.unmerge()
    for k, v in p.items():
        np.testing.assert_array_equal(v, before[k])
    np.testing.assert_array_equal(G, before["G"])


def test_nbytes_counts_base_and_parameters(rng: np.random.Generator) -> None:
    lay, p = trained_layer(rng)
    assert lay.base.format == "dense"
    assert lay.base.nbytes == 24 * 40 * 4 + 24 * 40
    assert lay.nbytes == lay.base.nbytes + (4 * 40 + 24 * 4 + 24) * 4
    assert lay.base.nnz == np.count_nonzero(p["mask"])
    assert set(lay.parameters()) == set(lay.gradients()) == {"A", "B", "bias"}


# ---- inits ----


def test_lora_and_gaussian_inits(rng: np.random.Generator) -> None:
    W = rng.standard_normal((64, 400)).astype(np.float32)
    lay = sft.LoRSLinear(W, r=8, seed=3)
    assert not lay.B.any()
    bound = 1 / np.sqrt(400)
    assert np.abs(lay.A).max() <= bound and np.abs(lay.A).max() > 0.95 * bound
    np.testing.assert_array_equal(lay.A, sft.LoRSLinear(W, r=8, seed=3).A)  # seeded
    assert not np.array_equal(lay.A, sft.LoRSLinear(W, r=8, seed=4).A)
    g = sft.LoRSLinear(W, r=8, init="gaussian")
    assert not g.B.any()
    assert abs(g.A.std() - 1 / 8) < 0.01
    y = lay.forward(rng.standard_normal((3, 400)).astype(np.float32))  # B = 0: the base alone
    assert y.shape == (3, 64)


def test_lors_init_picks_top_singular_vectors_of_masked_gradient(rng: np.random.Generator) -> None:
    out, in_, r = 50, 60, 4
    p = problem(rng, 30, in_, out, r)
    G = (10 * rng.standard_normal((out, r)) @ rng.standard_normal((r, in_))).astype(np.float32)
    G += (0.01 * rng.standard_normal((out, in_))).astype(np.float32)
    lay = sft.LoRSLinear(p["W"], mask=p["mask"], r=r, init="lors", init_grad=G, lors_scale="unit")
    assert not lay.B.any()
    np.testing.assert_allclose(lay.A @ lay.A.T, np.eye(r), atol=1e-5)
    Vt = np.linalg.svd(G.astype(np.float64) * p["mask"])[2][:r]
    cos = np.linalg.svd(Vt @ lay.A.T.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(cos, 1.0, atol=1e-4)  # the same subspace
    lora = sft.LoRSLinear(p["W"], mask=p["mask"], r=r, init="lors", init_grad=G)
    np.testing.assert_allclose(np.linalg.norm(lora.A, axis=1), 1 / np.sqrt(3), rtol=1e-5)
    two = sft.LoRSLinear(p["W"], mask=p["mask"], r=r, init="lors", init_grad=G, lors_scale=2.0)
    np.testing.assert_allclose(two.A, 2 * lay.A, rtol=1e-5, atol=1e-6)


def test_lors_init_from_calibration_batches(rng: np.random.Generator) -> None:
    p = problem(rng, 12, 30, 20, 3)
    batches = [(p["x"][:5], p["gy"][:5]), (p["x"][5:].reshape(1, 7, 30), p["gy"][5:].reshape(1, 7, 20))]
    lay = sft.LoRSLinear(p["W"], mask=p["mask"], r=3, init="lors", calibration=batches)
    G = lay.estimate_full_grad(batches)
    np.testing.assert_allclose(G, (p["gy"].T.astype(np.float64) @ p["x"]) * p["mask"], rtol=1e-4, atol=1e-4)
    assert (G[~p["mask"]] == 0).all()
    via_g = sft.LoRSLinear(p["W"], mask=p["mask"], r=3, init="lors", init_grad=G)
    np.testing.assert_allclose(lay.A, via_g.A, rtol=1e-4, atol=1e-5)
    # with a loss gradient: gy = y - target
    target = rng.standard_normal((12, 20)).astype(np.float32)
    G2 = lay.estimate_full_grad([p["x"]], loss_grad=lambda y: y - target)
    want = ((lay.forward(p["x"]) - target).T.astype(np.float64) @ p["x"]) * p["mask"]
    np.testing.assert_allclose(G2, want, rtol=1e-4, atol=1e-4)


def test_randomized_svd_matches_numpy(rng: np.random.Generator) -> None:
    G = (
        rng.standard_normal((40, 30))
        @ np.diag(np.linspace(3, 0.1, 30))
        @ np.linalg.qr(rng.standard_normal((30, 30)))[0]
    )
    S, Vt = randomized_svd(G, 5, np.random.default_rng(0))
    np.testing.assert_allclose(S, np.linalg.svd(G, compute_uv=False)[:5], rtol=1e-6)
    assert Vt.shape == (5, 30)


# ---- config ----


def test_config_builds_layers(rng: np.random.Generator) -> None:
    cfg = sft.LoRSConfig(r=4, alpha=16)
    assert (cfg.r, cfg.alpha, cfg.init, cfg.grad, cfg.use_rslora, cfg.format) == (
        4,
        16,
        "lora",
        "exact",
        False,
        "auto",
    )
    W = rng.standard_normal((10, 12)).astype(np.float32)
    lay = cfg.make(W)
    assert lay.scaling == 4.0 and lay.r == 4
    rs = sft.LoRSConfig(r=4, alpha=16, use_rslora=True).make(W)
    assert rs.scaling == 8.0
    assert sft.LoRSConfig().r == 8
    with pytest.raises(ValueError, match=r"r: expected an int >= 1, got 0"):
        sft.LoRSConfig(r=0)
    with pytest.raises(ValueError, match="grad: expected one of"):
        sft.LoRSConfig(grad="fast")


# ---- bad input ----

GOOD_W = (np.arange(1, 13, dtype=np.float32).reshape(3, 4) - 6) * (np.arange(12).reshape(3, 4) % 3 != 0)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"W": GOOD_W.astype(np.float64)}, TypeError, "W: expected dtype float32, got float64"),
        ({"W": [[1.0]]}, TypeError, "W: expected a numpy.ndarray, got list"),
        ({"W": np.ones(4, np.float32)}, ValueError, r"W: expected shape \(\.\.\., \.\.\.\), got \(4,\)"),
        ({"mask": np.ones((3, 4), np.uint8)}, TypeError, "mask: expected dtype bool, got uint8"),
        ({"mask": np.ones((4, 3), bool)}, ValueError, r"mask: expected shape \(3, 4\)"),
        (
            {"mask": np.zeros((3, 4), bool)},
            ValueError,
            r"W: expected exact zeros wherever mask is False, got 7",
        ),
        ({"W": np.full((3, 4), np.nan, np.float32)}, ValueError, "W: contains NaN"),
        ({"r": 0}, ValueError, r"r: expected an int in \[1, 3\], got 0"),
        ({"r": -2}, ValueError, r"r: expected an int in \[1, 3\], got -2"),
        ({"r": 4}, ValueError, r"r: expected an int in \[1, 3\], got 4"),
        ({"r": 2.0}, TypeError, "r: expected an int, got float"),
        ({"alpha": float("nan")}, ValueError, "alpha: expected a finite number"),
        ({"grad": "fast"}, ValueError, "grad: expected one of"),
        ({"init": "zeros"}, ValueError, "init: expected one of"),
        ({"init": "lors"}, ValueError, "init_grad: init='lors' needs"),
        (
            {"init": "lors", "init_grad": np.zeros((3, 4), np.float32)},
            ValueError,
            "init_grad: G ⊙ mask is all zero",
        ),
        (
            {"init": "lors", "init_grad": np.ones((4, 3), np.float32)},
            ValueError,
            r"init_grad: expected shape \(3, 4\)",
        ),
        (
            {"init": "lors", "init_grad": np.ones((3, 4), np.float32), "lors_scale": "big"},
            ValueError,
            "lors_scale",
        ),
        ({"init": "lors", "calibration": []}, ValueError, "batches: expected at least one"),
        ({"format": "bsr"}, ValueError, "format: expected one of"),
        ({"format": 5}, TypeError, r"format: expected one of \(.*\), got int"),
        ({"r": None}, TypeError, "r: expected an int, got NoneType"),
        ({"alpha": 10**400}, ValueError, "alpha: expected a finite number or None, got int beyond float64 range"),
        (
            {"init": "lors", "init_grad": np.ones((3, 4), np.float32), "lors_scale": 10**400},
            ValueError,
            "lors_scale: expected a positive finite float, got int beyond float64 range",
        ),
        ({"bias": np.zeros(4, np.float32)}, ValueError, r"bias: expected shape \(3,\), got \(4,\)"),
        ({"bias": np.zeros(3, np.float64)}, TypeError, "bias: expected dtype float32"),
        ({"seed": -1}, ValueError, "seed: expected an int >= 0"),
    ],
)
def test_layer_bad_construction(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    args: dict[str, object] = {"W": GOOD_W, "r": 2, **kwargs}
    with pytest.raises(exc, match=match):
        sft.LoRSLinear(**args)  # type: ignore[arg-type]


def test_layer_bad_forward_backward(rng: np.random.Generator) -> None:
    lay, p = trained_layer(rng)
    with pytest.raises(TypeError, match="x: expected dtype float32, got float64"):
        lay.forward(p["x"].astype(np.float64))
    with pytest.raises(TypeError, match=r"x: expected a numpy\.ndarray, got list"):
        lay.forward([[0.0] * 40])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 40\), got \(7, 41\)"):
        lay.forward(np.zeros((7, 41), np.float32))
    bad = p["x"].copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="x: contains NaN or infinity"):
        lay.forward(bad)
    lay.forward(p["x"])
    gA = lay.grad_A.copy()
    with pytest.raises(ValueError, match=r"gy: expected shape \(7, 24\), got \(7, 23\)"):
        lay.backward(np.zeros((7, 23), np.float32))
    with pytest.raises(TypeError, match="gy: expected dtype float32"):
        lay.backward(p["gy"].astype(np.float64))
    badg = p["gy"].copy()
    badg[0, 0] = np.inf
    with pytest.raises(ValueError, match="gy: contains NaN or infinity"):
        lay.backward(badg)
    np.testing.assert_array_equal(lay.grad_A, gA)  # nothing accumulated on failure
    lay.backward(p["gy"])  # the forward is still pending after the failures


@pytest.mark.parametrize(
    ("change", "exc", "match"),
    [
        ({"mask": np.ones((5, 6), np.int32)}, TypeError, "mask: expected dtype uint8, got int32"),
        ({"W": np.ones((5, 7), np.float32)}, ValueError, r"W: expected axis 1 of length 6 \(in, from mask\)"),
        ({"A": np.ones((2, 7), np.float32)}, ValueError, r"A: expected axis 1 of length 6 \(in, from mask\)"),
        ({"B": np.ones((5, 3), np.float32)}, ValueError, r"B: expected axis 1 of length 2 \(r, from A\)"),
        (
            {"B": np.ones((4, 2), np.float32)},
            ValueError,
            r"B: expected axis 0 of length 5 \(out, from mask\)",
        ),
        ({"x": np.ones((3, 5), np.float32)}, ValueError, r"x: expected axis 1 of length 6"),
        ({"x": np.ones((6, 3), np.float32).T}, ValueError, "x: expected a C-contiguous"),
        ({"A": np.full((2, 6), np.nan, np.float32)}, ValueError, "A: contains NaN or infinity"),
        ({"W": np.full((5, 6), np.inf, np.float32)}, ValueError, "W: contains NaN or infinity"),
        ({"scale": float("nan")}, ValueError, "scale: expected a finite number"),
        ({"bias": np.ones(4, np.float32)}, ValueError, r"bias: expected axis 0 of length 5"),
        ({"x": np.ones((3, 6), np.float64)}, TypeError, "x: expected dtype float32, got float64"),
    ],
)
def test_kernel_bad_input(change: dict[str, object], exc: type[Exception], match: str) -> None:
    a: dict[str, object] = {
        "x": np.ones((3, 6), np.float32),
        "W": np.ones((5, 6), np.float32),
        "mask": np.ones((5, 6), np.uint8),
        "A": np.ones((2, 6), np.float32),
        "B": np.ones((5, 2), np.float32),
        "scale": 1.0,
        "bias": None,
        **change,
    }
    with pytest.raises(exc, match=match):
        _core.lors_forward(a["x"], a["W"], a["mask"], a["A"], a["B"], a["scale"], bias=a["bias"])  # type: ignore[arg-type]


def test_kernel_bad_input_backward() -> None:
    m = np.ones((5, 6), np.uint8)
    A, B = np.ones((2, 6), np.float32), np.ones((5, 2), np.float32)
    with pytest.raises(ValueError, match=r"x: expected axis 0 of length 3 \(tokens, from gy\)"):
        _core.lors_backward_exact(np.ones((3, 5), np.float32), np.ones((4, 6), np.float32), m, A, B, 1.0)
    with pytest.raises(ValueError, match=r"gy: expected axis 1 of length 5"):
        _core.lors_backward_input(np.ones((3, 4), np.float32), np.ones((5, 6), np.float32), m, A, B, 1.0)
    gy = np.ones((3, 5), np.float32)
    gy[1, 1] = np.nan
    with pytest.raises(ValueError, match="gy: contains NaN"):
        _core.lors_backward_exact(gy, np.ones((3, 6), np.float32), m, A, B, 1.0)
    with pytest.raises(ValueError, match="gy: contains NaN"):
        _core.lors_backward_lors(gy, np.ones((3, 6), np.float32), A, B, 1.0)
    x = np.ones((3, 6), np.float32)
    with pytest.raises(ValueError, match=r"B: expected axis 1 of length 2 \(r, from A\)"):
        _core.lors_backward_lors(np.ones((3, 5), np.float32), x, A, np.ones((5, 3), np.float32), 1.0)
    with pytest.raises(ValueError, match=r"gy: expected axis 1 of length 5 \(out, from B\)"):
        _core.lors_backward_lors(np.ones((3, 4), np.float32), x, A, B, 1.0)
    with pytest.raises(ValueError, match=r"x: expected axis 0 of length 3 \(tokens, from gy\)"):
        _core.lors_backward_lors(np.ones((3, 5), np.float32), np.ones((2, 6), np.float32), A, B, 1.0)
    with pytest.raises(TypeError, match="A: expected dtype float32"):
        _core.lors_backward_lors(np.ones((3, 5), np.float32), x, A.astype(np.float64), B, 1.0)


@pytest.mark.parametrize("fmt", ["csr", "nm"])
@pytest.mark.parametrize("grad", ["exact", "lors"])
def test_layer_with_compressed_formats(fmt: str, grad: str) -> None:
    """LoRSLinear runs on the compressed bases of sparseft.formats unchanged."""
    rng = np.random.default_rng(21)
    lay, p = trained_layer(rng, out=24, in_=40, kind="2:4" if fmt == "nm" else "0.1", grad=grad, format=fmt)
    assert lay.base.format == fmt
    s = lay.scaling
    y = lay.forward(p["x"].reshape(7, 1, 40))
    np.testing.assert_allclose(
        y.reshape(7, 24),
        ref.lors_forward(p["x"], p["W"], p["mask"], lay.A, lay.B, s, p["bias"]),
        rtol=1e-4,
        atol=1e-4,
    )
    gx = lay.backward(p["gy"].reshape(7, 1, 24))
    np.testing.assert_allclose(
        gx.reshape(7, 40),
        ref.lors_backward_input(p["gy"], p["W"], p["mask"], lay.A, lay.B, s),
        rtol=1e-4,
        atol=1e-4,
    )
    want = (
        ref.lors_grad_exact
        if grad == "exact"
        else lambda gy, x, m, A, B, s: ref.lors_grad_lors(gy, x, A, B, s)
    )(p["gy"], p["x"], p["mask"], lay.A, lay.B, s)
    np.testing.assert_allclose(lay.grad_A, want[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lay.grad_B, want[1], rtol=1e-4, atol=1e-4)
    W2 = lay.merged_weight()
    assert (W2[~p["mask"]] == 0).all()
    lay.merge()
    assert lay.base.format == fmt
    np.testing.assert_allclose(lay.forward(p["x"]), y.reshape(7, 24), rtol=1e-4, atol=1e-4)
    lay.unmerge()
    sd = lay.state_dict()
    other = sft.LoRSLinear(sd["base_layer.weight"], mask=sd["base_layer.weight_mask"], r=4, format=fmt)
    other.load_state_dict(sd)
    assert other.base.format == fmt
    np.testing.assert_allclose(other.forward(p["x"]), lay.forward(p["x"]), rtol=1e-6, atol=1e-6)
    assert lay.nbytes < p["W"].nbytes + p["mask"].size  # compressed below the dense-masked base


# ---- review fixes: training while merged, scales, calibration ----


@pytest.mark.parametrize("fmt", ["dense", "csr", "nm"])
def test_training_while_merged_keeps_the_frozen_base(fmt: str) -> None:
    """unmerge() subtracted the *current* s·BA, so SGD steps taken while merged moved the frozen
    base by 0.03 (the README lets gradients flow while merged)."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((8, 16)).astype(np.float32)
    M = sft.prune.nm(W, 2, 4) if fmt == "nm" else rng.random((8, 16)) < 0.5
    W = W * M
    layer = sft.LoRSLinear(W, M, r=2, format=fmt, seed=1)
    layer.B[:] = rng.standard_normal(layer.B.shape).astype(np.float32)
    layer.merge()
    x = rng.standard_normal((4, 16)).astype(np.float32)
    y = layer.forward(x)
    layer.backward(np.ones_like(y))
    for name, p in layer.parameters().items():
        p -= 0.5 * layer.gradients()[name]
    np.testing.assert_allclose(layer.state_dict()["base_layer.weight"], W, atol=1e-6)
    layer.unmerge()
    base = layer.state_dict()["base_layer.weight"]
    np.testing.assert_allclose(base, W, atol=1e-6)
    assert not base[~M].any()
    # the trained adapter takes effect after unmerge(): the output is the new W' on the original base
    want = x.astype(np.float64) @ ref.lors_merged_weight(W, M, layer.A, layer.B, layer.scaling).T
    np.testing.assert_allclose(layer.forward(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_scale_beyond_float32_is_rejected_at_construction(fmt: str) -> None:
    """alpha/r = 1e39 passed the double check and became inf in float32: NaN outputs on CSR."""
    W = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="alpha: expected a scale alpha/r that is finite in float32"):
        sft.LoRSLinear(W, r=1, alpha=1e39, format=fmt)
    with pytest.raises(ValueError, match=r"alpha/sqrt\(r\)"):
        sft.LoRSLinear(W, r=1, alpha=1e39, use_rslora=True, format=fmt)


def test_use_rslora_must_be_a_bool() -> None:
    """use_rslora="no" used to turn rsLoRA on (bool("no") is True)."""
    with pytest.raises(TypeError, match="use_rslora: expected a bool, got str"):
        sft.LoRSLinear(np.eye(4, dtype=np.float32), r=4, use_rslora="no")
    with pytest.raises(TypeError, match="use_rslora: expected a bool, got str"):
        sft.LoRSConfig(use_rslora="yes")


def test_calibration_errors_name_the_argument() -> None:
    W = np.eye(4, dtype=np.float32)
    ok = np.ones((2, 4), np.float32)
    with pytest.raises(TypeError, match="calibration: expected an iterable of batches"):
        sft.LoRSLinear(W, r=1, init="lors", calibration=5)
    with pytest.raises(ValueError, match=r"gy: contains NaN or infinity \(batch 0\)"):
        sft.LoRSLinear(W, r=1, init="lors", calibration=[(ok, np.full((2, 4), np.nan, np.float32))])
    with pytest.raises(ValueError, match=r"x: contains NaN or infinity \(batch 1\)"):
        sft.LoRSLinear(W, r=1, init="lors", calibration=[(ok, ok), (np.full((2, 4), np.inf, np.float32), ok)])
    with pytest.raises(ValueError, match="loss_grad: returned NaN or infinity"):
        sft.LoRSLinear(W, r=1, init="lors", calibration=[ok], loss_grad=lambda y: y * np.nan)
    layer = sft.LoRSLinear(W, r=1)
    with pytest.raises(TypeError, match="batches: expected an iterable of batches, got int"):
        layer.estimate_full_grad(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss_grad: expected a callable or None"):
        layer.estimate_full_grad([ok], loss_grad=1)  # type: ignore[arg-type]


def test_init_alpha_and_state_errors_name_the_argument() -> None:
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 8)).astype(np.float32)
    M = sft.prune.nm(W, 2, 4)
    W = W * M
    G = rng.standard_normal((6, 8)).astype(np.float32)
    # a lors_scale whose rows overflow (or vanish) in float32
    for bad in (1e300, 1e-300):
        with pytest.raises(ValueError, match="lors_scale: expected a row norm in"):
            sft.LoRSLinear(W, M, r=2, init="lors", init_grad=G, lors_scale=bad)
    assert sft.LoRSLinear(W, M, r=2, init="lors", init_grad=G, lors_scale=np.float32(0.5)).A.dtype == np.float32
    # calibration whose gy^T x overflows float32
    x, gy = np.full((4, 8), 1e20, np.float32), np.full((4, 6), 1e20, np.float32)
    with pytest.raises(ValueError, match="batches: the summed gradient gy\\^T x overflows float32"):
        sft.LoRSLinear(W, M, r=2, init="lors", calibration=[(x, gy)])
    # alpha: NumPy reals accepted alike, non-numbers a TypeError
    for alpha in (np.float32(4), np.int64(4), 4, 4.0):
        assert sft.LoRSLinear(W, M, r=2, alpha=alpha).scaling == 2.0
        assert sft.LoRSConfig(r=2, alpha=alpha).make(W, M).scaling == 2.0
    with pytest.raises(TypeError, match="alpha: expected a finite number or None, got str"):
        sft.LoRSLinear(W, M, r=2, alpha="4")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="alpha: expected a finite number or None, got str"):
        sft.LoRSConfig(r=2, alpha="4")  # type: ignore[arg-type]
    # load_state_dict names the state entries
    layer = sft.LoRSLinear(W, M, r=2)
    sd = layer.state_dict()
    with pytest.raises(ValueError, match=r"base_layer\.weight: expected exact zeros"):
        layer.load_state_dict({**sd, "base_layer.weight": np.ones((6, 8), np.float32)})
    with pytest.raises(TypeError, match=r"base_layer\.weight_mask: expected a bool numpy\.ndarray, got uint8"):
        layer.load_state_dict({**sd, "base_layer.weight_mask": M.astype(np.uint8)})
    only_mask = {k: v for k, v in sd.items() if k != "base_layer.weight"}
    with pytest.raises(ValueError, match=r"base_layer\.weight_mask: given without base_layer\.weight"):
        layer.load_state_dict(only_mask)
    np.testing.assert_array_equal(layer.state_dict()["base_layer.weight"], W)


@pytest.mark.parametrize(
    ("state", "exc", "match"),
    [
        ({1: 0, "x": 0}, TypeError, r"state: expected str keys, got the int key 1"),
        ([("lora_A.weight", 0)], TypeError, r"state: expected a dict, got list"),
        ({"lora_A.weight": 0}, ValueError, r"state: missing keys \['lora_B.weight'\]"),
    ],
)
def test_load_state_dict_names_bad_keys(state: object, exc: type[Exception], match: str) -> None:
    layer = sft.LoRSLinear(GOOD_W, r=2)
    before = layer.state_dict()
    with pytest.raises(exc, match=match):
        layer.load_state_dict(state)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="strict: expected a bool, got int"):
        layer.load_state_dict(before, strict=1)  # type: ignore[arg-type]
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_runtime_argument_types() -> None:
    with pytest.raises(TypeError, match="path: expected a str, got int"):
        with sft.simd_path(3):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValueError, match="path: expected one of"):
        with sft.simd_path("avx2\x00x"):
            pass
    before = sft.get_num_threads()
    try:
        sft.set_num_threads(np.int64(1))  # type: ignore[arg-type]
        assert sft.get_num_threads() == 1
    finally:
        sft.set_num_threads(before)


@pytest.mark.parametrize("magnitude", [False, True])
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_backward_at_a_given_input_equals_the_pending_one(magnitude: bool, fmt: str) -> None:
    """forward(x, save=False) keeps nothing; backward(gy, x=x) equals forward(x) + backward(gy)."""
    rng = np.random.default_rng(7)
    W = rng.standard_normal((13, 11)).astype(np.float32)
    W[rng.random(W.shape) < 0.6] = 0
    kw = dict(r=3, alpha=4.0, seed=1, format=fmt, magnitude=magnitude)
    a, b = sparseft.LoRSLinear(W, **kw), sparseft.LoRSLinear(W, **kw)
    for layer in (a, b):
        layer.B[...] = rng.standard_normal(layer.B.shape).astype(np.float32) if layer is a else a.B
    x = rng.standard_normal((2, 5, 11)).astype(np.float32)
    gy = rng.standard_normal((2, 5, 13)).astype(np.float32)
    ya = a.forward(x)
    gxa = a.backward(gy)
    yb = b.forward(x, save=False)
    assert b._saved is None
    with pytest.raises(RuntimeError, match="forward"):
        b.backward(gy)
    gxb = b.backward(gy, x=x)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(gxa, gxb)
    for name, g in a.gradients().items():
        np.testing.assert_array_equal(g, b.gradients()[name], err_msg=name)
    # a pending forward survives a save=False forward and an explicit backward
    b.zero_grad()
    b.forward(x)
    b.forward(x[:1], save=False)
    b.backward(gy[:1], x=x[:1])
    b.zero_grad()
    np.testing.assert_array_equal(b.backward(gy), gxa)
    with pytest.raises(ValueError, match="x"):
        b.backward(gy, x=np.full_like(x, np.nan))
    with pytest.raises(TypeError, match="save"):
        b.forward(x, save="yes")
