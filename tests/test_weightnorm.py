"""Weight normalization: C kernels vs float64 references, finite differences, torch, zero norms, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseft
from sparseft import WeightNorm, _core

from . import reference as ref
from .conftest import SIMD_PATHS, close

DIMS = [0, 1, None]
SHAPES = [(1, 1), (1, 7), (9, 1), (7, 13), (33, 1000), (130, 67), (3, 40000)]


def _g_shape(shape: tuple[int, int], dim: int | None) -> tuple[int, ...]:
    return (shape[0], 1) if dim == 0 else (1, shape[1]) if dim == 1 else ()


def _random_case(
    rng: np.random.Generator, shape: tuple[int, int], dim: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = rng.standard_normal(shape).astype(np.float32)
    g = rng.uniform(-2, 2, _g_shape(shape, dim)).astype(np.float32)
    gw = rng.standard_normal(shape).astype(np.float32)
    return v, g, gw


def _grad_scale(v: np.ndarray, g: np.ndarray, gw: np.ndarray, dim: int | None) -> float:
    """Size of the terms of grad_v = (g/n) grad_w - ...: its entries may cancel to ~0 (e.g. a 1x1 v)."""
    n = ref.weightnorm_norms(v, dim)
    a = np.abs(np.divide(np.asarray(g, np.float64), n, out=np.zeros(np.shape(n)), where=n > 0))
    return float(np.abs(a * gw).max(initial=0.0)) + float(np.abs(gw).max(initial=0.0)) * 1e-30


# ---- kernels vs the float64 reference ----


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dim", DIMS)
def test_forward_backward_match_reference(
    simd: str, rng: np.random.Generator, shape: tuple[int, int], dim: int | None
) -> None:
    v, g, gw = _random_case(rng, shape, dim)
    v0, g0, gw0 = v.copy(), g.copy(), gw.copy()
    wn = WeightNorm(v, g, dim)
    w = wn.weight()
    assert w.dtype == np.float32 and w.shape == shape
    close(w, ref.weightnorm_forward(v, g, dim))
    gv, gg = wn.backward(gw)
    want_gv, want_gg = ref.weightnorm_backward(gw, v, g, dim)
    assert gv.dtype == np.float32 and gv.shape == shape
    assert gg.dtype == np.float32 and gg.shape == g.shape
    close(gv, want_gv, scale=_grad_scale(v, g, gw, dim))
    close(gg, want_gg)
    close(wn.norms(), ref.weightnorm_norms(v, dim), rtol=1e-6)
    for a, a0 in [(v, v0), (g, g0), (gw, gw0)]:
        np.testing.assert_array_equal(a, a0)  # inputs never modified


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 70),
    cols=st.integers(1, 300),
    dim=st.sampled_from(DIMS),
    seed=st.integers(0, 2**31 - 1),
    zero_frac=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_hypothesis_both_paths(rows: int, cols: int, dim: int | None, seed: int, zero_frac: float) -> None:
    r = np.random.default_rng(seed)
    v, g, gw = _random_case(r, (rows, cols), dim)
    # zero some rows (dim 0) / columns (dim 1) / everything (dim None, zero_frac 1)
    if dim == 0:
        v[r.random(rows) < zero_frac] = 0
    elif dim == 1:
        v[:, r.random(cols) < zero_frac] = 0
    elif zero_frac == 1.0:
        v[:] = 0
    for path in SIMD_PATHS:
        with sparseft.simd_path(path):
            wn = WeightNorm(v, g, dim)
            close(wn.weight(), ref.weightnorm_forward(v, g, dim))
            gv, gg = wn.backward(gw)
            want_gv, want_gg = ref.weightnorm_backward(gw, v, g, dim)
            close(gv, want_gv, scale=_grad_scale(v, g, gw, dim))
            close(gg, want_gg)


def test_reference_backward_matches_finite_differences(rng: np.random.Generator) -> None:
    """The float64 reference's gradients against central differences of the float64 forward."""
    for dim in DIMS:
        v = rng.standard_normal((5, 6))
        g = rng.uniform(0.5, 2, _g_shape((5, 6), dim))
        R = rng.standard_normal((5, 6))  # loss = <R, w>
        gv, gg = ref.weightnorm_backward(R, v, g, dim)
        eps = 1e-6
        for _ in range(5):
            d = rng.standard_normal(v.shape)
            fd = (
                (R * ref.weightnorm_forward(v + eps * d, g, dim)).sum()
                - (R * ref.weightnorm_forward(v - eps * d, g, dim)).sum()
            ) / (2 * eps)
            assert fd == pytest.approx((gv * d).sum(), rel=1e-6, abs=1e-9)
            e = rng.standard_normal(np.shape(g))
            fd_g = (
                (R * ref.weightnorm_forward(v, g + eps * e, dim)).sum()
                - (R * ref.weightnorm_forward(v, g - eps * e, dim)).sum()
            ) / (2 * eps)
            assert fd_g == pytest.approx((gg * e).sum(), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("dim", DIMS)
def test_kernel_backward_matches_finite_differences(
    simd: str, rng: np.random.Generator, dim: int | None
) -> None:
    """Directional derivatives of the C forward (float32, loose step) against the C backward."""
    v, g, R = _random_case(rng, (11, 23), dim)
    wn = WeightNorm(v, g, dim)
    gv, gg = wn.backward(R)
    eps = 1e-2

    def loss(vv: np.ndarray, gg_: np.ndarray) -> float:
        return float((R.astype(np.float64) * WeightNorm(vv, gg_, dim).weight()).sum())

    for _ in range(4):
        d = rng.standard_normal(v.shape).astype(np.float32)
        fd = (loss(v + eps * d, g) - loss(v - eps * d, g)) / (2 * eps)
        assert fd == pytest.approx(float((gv * d).sum()), rel=2e-3, abs=2e-3)
        e = rng.standard_normal(g.shape).astype(np.float32)
        fd_g = (loss(v, g + eps * e) - loss(v, g - eps * e)) / (2 * eps)
        assert fd_g == pytest.approx(float((gg * e).sum()), rel=2e-3, abs=2e-3)


# ---- torch ----


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 300)])
def test_matches_torch_weight_norm(
    simd: str, rng: np.random.Generator, dim: int | None, shape: tuple[int, int]
) -> None:
    torch = pytest.importorskip("torch")
    v, g, gw = _random_case(rng, shape, dim)
    tv = torch.tensor(v, dtype=torch.float64, requires_grad=True)
    tg = torch.tensor(g, dtype=torch.float64, requires_grad=True)
    tw = torch._weight_norm(tv, tg, -1 if dim is None else dim)
    tw.backward(torch.tensor(gw, dtype=torch.float64))
    wn = WeightNorm(v, g, dim)
    close(wn.weight(), tw.detach().numpy())
    gv, gg = wn.backward(gw)
    close(gv, tv.grad.numpy(), scale=_grad_scale(v, g, gw, dim))
    close(gg, tg.grad.numpy())
    assert gg.shape == tuple(tg.grad.shape)  # torch's g shape, including () for dim=None


def test_g_shapes_follow_torch_parametrization() -> None:
    torch = pytest.importorskip("torch")
    from torch.nn.utils.parametrizations import weight_norm

    for dim in DIMS:
        layer = weight_norm(torch.nn.Linear(5, 3), dim=dim)
        g_torch = layer.parametrizations.weight.original0
        wn = WeightNorm.from_weight(layer.weight.detach().numpy(), dim)
        assert wn.g.shape == tuple(g_torch.shape)
        close(wn.g, g_torch.detach().numpy(), rtol=1e-6)


# ---- zero and tiny norms ----


@pytest.mark.parametrize("dim", DIMS)
def test_zero_norm_gives_zero_weight_and_zero_grads(
    simd: str, rng: np.random.Generator, dim: int | None
) -> None:
    v, g, gw = _random_case(rng, (6, 9), dim)
    if dim == 0:
        v[2] = 0
        zero = (slice(2, 3), slice(None))
    elif dim == 1:
        v[:, 4] = 0
        zero = (slice(None), slice(4, 5))
    else:
        v[:] = 0
        zero = (slice(None), slice(None))
    wn = WeightNorm(v, g, dim)
    w = wn.weight()
    gv, gg = wn.backward(gw)
    assert np.isfinite(w).all() and np.isfinite(gv).all() and np.isfinite(gg).all()
    np.testing.assert_array_equal(w[zero], 0)
    np.testing.assert_array_equal(gv[zero], 0)
    gg_zero = gg.reshape(-1)[2] if dim == 0 else gg.reshape(-1)[4] if dim == 1 else gg
    assert gg_zero == 0
    # the other slices are unaffected by the zero one
    close(w, ref.weightnorm_forward(v, g, dim))
    close(gv, ref.weightnorm_backward(gw, v, g, dim)[0], scale=_grad_scale(v, g, gw, dim))


def test_zero_row_where_torch_gives_nan() -> None:
    torch = pytest.importorskip("torch")
    v = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
    g = np.ones((2, 1), np.float32)
    tv = torch.tensor(v, requires_grad=True)
    tw = torch._weight_norm(tv, torch.tensor(g), 0)
    assert torch.isnan(tw[0]).all()  # pytorch#19126: the case sparseft defines
    w = WeightNorm(v, g, 0).weight()
    np.testing.assert_array_equal(w, np.array([[0.0, 0.0], [0.6, 0.8]], np.float32))


def test_tiny_norms_stay_finite_and_exact(simd: str) -> None:
    """Tiny norms: coefficients that overflow float32 fall back to double arithmetic for the slice."""
    # forward: subnormal rows, g / ||v|| ~ 1e41 > FLT_MAX, yet w = g * v / ||v|| is of order g
    v = np.full((3, 64), 1e-42, np.float32)
    v[1] = 2.0
    v[2, ::2] = -1e-40
    g = np.array([[2.0], [1.0], [3.0]], np.float32)
    for dim, gg in [(0, g), (None, np.float32(2.0)), (1, np.full((1, 64), 2.0, np.float32))]:
        vv = v if dim != 1 else v[[0, 2]]
        w = WeightNorm(vv, gg, dim).weight()
        assert np.isfinite(w).all()
        close(w, ref.weightnorm_forward(vv, gg, dim), rtol=1e-5)
    # backward: ||v|| ~ 1e-29, the coefficient of v is ~1e58 > FLT_MAX, yet grad_v ~ 1e29 is finite
    v = np.full((2, 33), 3e-30, np.float32)
    v[0, ::3] = -1e-30
    gw = np.linspace(-1, 1, 66, dtype=np.float32).reshape(2, 33)
    for dim, gg in [(0, g[:2]), (None, np.float32(2.0)), (1, np.full((1, 33), 2.0, np.float32))]:
        vv = v if dim != 1 else np.ascontiguousarray(np.vstack([v, v]))[:2]
        grad_v, grad_g = WeightNorm(vv, gg, dim).backward(gw)
        assert np.isfinite(grad_v).all() and np.isfinite(grad_g).all()
        want_gv, want_gg = ref.weightnorm_backward(gw, vv, gg, dim)
        close(grad_v, want_gv, rtol=1e-4)
        close(grad_g, want_gg, rtol=1e-4)


@pytest.mark.parametrize("dim", DIMS)
def test_out_buffers_including_in_place(simd: str, rng: np.random.Generator, dim: int | None) -> None:
    v, g, gw = _random_case(rng, (40, 70), dim)
    wn = WeightNorm(v, g, dim)
    want_w = wn.weight()
    want_gv, want_gg = wn.backward(gw)
    buf = np.full_like(v, np.nan)
    assert wn.weight(out=buf) is buf
    np.testing.assert_array_equal(buf, want_w)
    gbuf = np.full_like(v, np.nan)
    gv, gg = wn.backward(gw, out=gbuf)
    assert gv is gbuf
    np.testing.assert_array_equal(gv, want_gv)
    np.testing.assert_array_equal(gg, want_gg)
    gw_inplace = gw.copy()
    gv, _ = wn.backward(gw_inplace, out=gw_inplace)  # grad_v overwrites grad_w
    assert gv is gw_inplace
    np.testing.assert_array_equal(gv, want_gv)
    v_inplace = v.copy()
    _core.weightnorm_forward(v_inplace, g.reshape(-1), -1 if dim is None else dim, v_inplace)
    np.testing.assert_array_equal(v_inplace, want_w)  # the kernel may write w over v
    with pytest.raises(ValueError, match=r"out: expected axis 1 of length 70"):
        wn.weight(out=np.empty((40, 71), np.float32))
    with pytest.raises(TypeError, match=r"out: expected dtype float32, got float64"):
        wn.backward(gw, out=np.empty((40, 70)))
    ro = np.empty_like(v)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"out.*read-only"):
        wn.weight(out=ro)


def test_large_outputs_use_streaming_stores(simd: str, rng: np.random.Generator) -> None:
    """Outputs >= 2^22 floats take the streaming-store writers (peeled to 32 bytes: misaligned out too)."""
    shape = (1031, 4099)  # 4.2M floats, odd row length
    v, _, gw = _random_case(rng, shape, 0)
    raw = np.empty(v.size + 3, np.float32)
    misaligned = raw[3:].reshape(shape)  # 12 bytes past a 64-byte boundary (numpy aligns to >= 16)
    for dim in DIMS:
        g = rng.uniform(0.5, 2, _g_shape(shape, dim)).astype(np.float32)
        wn = WeightNorm(v, g, dim)
        close(wn.weight(out=misaligned), ref.weightnorm_forward(v, g, dim))
        gv, gg = wn.backward(gw)
        want_gv, want_gg = ref.weightnorm_backward(gw, v, g, dim)
        close(gv, want_gv, scale=_grad_scale(v, g, gw, dim))
        close(gg, want_gg)


# ---- constructors, data-dependent init ----


@pytest.mark.parametrize("dim", DIMS)
def test_from_weight_keeps_the_weight(rng: np.random.Generator, dim: int | None) -> None:
    w = rng.standard_normal((17, 29)).astype(np.float32)
    w[3] = 0
    wn = WeightNorm.from_weight(w, dim)
    close(wn.g, ref.weightnorm_norms(w, dim), rtol=1e-6)
    np.testing.assert_allclose(wn.weight(), w, rtol=1e-5, atol=1e-6)
    default = WeightNorm(w, dim=dim)  # g=None means the same
    np.testing.assert_array_equal(default.g, wn.g)


def test_v_and_g_are_copied_and_float64_accepted(rng: np.random.Generator) -> None:
    v = rng.standard_normal((4, 5))  # float64 input, computed in float32
    g = np.ones((4, 1))
    wn = WeightNorm(v, g, 0)
    assert wn.v.dtype == np.float32 and wn.g.dtype == np.float32
    w_before = wn.weight()
    v[:] = 0
    g[:] = 5
    np.testing.assert_array_equal(wn.weight(), w_before)  # the object owns its arrays
    v32 = rng.standard_normal((4, 5)).astype(np.float32)
    wn32 = WeightNorm(v32, dim=0)
    assert not np.shares_memory(wn32.v, v32)


def test_data_init_normalizes_preactivations(simd: str, rng: np.random.Generator) -> None:
    v = rng.standard_normal((12, 30)).astype(np.float32)
    v[5] = 0  # a dead unit: t = 0, finite g, b = 0
    x = (rng.standard_normal((200, 30)) * 3 + 1).astype(np.float32)
    x0 = x.copy()
    for scale in (1.0, 0.1):
        g, b = WeightNorm.data_init(v, x, init_scale=scale)
        assert g.shape == (12, 1) and b.shape == (12,) and g.dtype == b.dtype == np.float32
        want_g, want_b = ref.weightnorm_data_init(v, x, scale)
        close(g[np.arange(12) != 5], want_g[np.arange(12) != 5], rtol=1e-4)
        close(b, want_b, rtol=1e-4)
        assert np.isfinite(g).all() and b[5] == 0
        y = x.astype(np.float64) @ WeightNorm(v, g, 0).weight().T.astype(np.float64) + b
        live = np.arange(12) != 5
        np.testing.assert_allclose(y[:, live].mean(axis=0), 0, atol=1e-4 * scale + 1e-5)
        np.testing.assert_allclose(y[:, live].std(axis=0), scale, rtol=1e-4)
    np.testing.assert_array_equal(x, x0)


# ---- threads, scratch ----


@pytest.mark.parametrize("dim", DIMS)
def test_thread_counts_agree_bitwise(rng: np.random.Generator, dim: int | None) -> None:
    v, g, gw = _random_case(rng, (300, 2100), dim)
    wn = WeightNorm(v, g, dim)
    before = sparseft.get_num_threads()
    try:
        sparseft.set_num_threads(1)
        one = (wn.weight(), *wn.backward(gw))
        sparseft.set_num_threads(2)
        two = (wn.weight(), *wn.backward(gw))
    finally:
        sparseft.set_num_threads(before)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)  # every reduction has a fixed order


def test_scratch_is_released(rng: np.random.Generator) -> None:
    v, _, gw = _random_case(rng, (50, 3000), 1)
    for dim in DIMS:
        wn = WeightNorm(v, dim=dim)
        for _ in range(5):
            wn.weight()
            wn.backward(gw)
    assert _core.scratch_stats()["current"] == 0


# ---- bad input: every error names the argument, what was expected and what came ----

V = np.ones((3, 4), np.float32)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"dim": 2}, ValueError, r"dim: expected 0, 1 or None for a 2-D weight, got 2"),
        ({"dim": -1}, ValueError, r"dim: expected 0, 1 or None .*got -1 \(use dim=None"),
        ({"dim": 1.0}, TypeError, r"dim: expected 0, 1 or None, got float"),
        ({"dim": True}, TypeError, r"dim: expected 0, 1 or None, got bool"),
        ({"g": np.ones(3, np.float32)}, ValueError, r"g: expected shape \(3, 1\) for dim=0, got \(3,\)"),
        ({"g": np.ones((1, 4), np.float32), "dim": 0}, ValueError, r"g: expected shape \(3, 1\)"),
        ({"g": np.ones((3, 1), np.float32), "dim": 1}, ValueError, r"g: expected shape \(1, 4\) for dim=1"),
        ({"g": np.ones((1, 1), np.float32), "dim": None}, ValueError, r"g: expected shape \(\) for dim=None"),
        ({"g": np.full((3, 1), np.inf, np.float32)}, ValueError, r"g: contains NaN or infinity"),
        ({"g": np.ones((3, 1), np.int64)}, TypeError, r"g: expected a floating-point dtype .*got int64"),
        ({"v": np.where(np.eye(3, 4) > 0, np.nan, 1).astype(np.float32)}, ValueError, r"v: contains NaN"),
        ({"v": np.ones((3, 4), np.int32)}, TypeError, r"v: expected a floating-point dtype .*got int32"),
        ({"v": np.ones((3, 4), np.complex64)}, TypeError, r"v: expected a floating-point dtype .*complex64"),
        ({"v": [[1.0, 2.0]]}, TypeError, r"v: expected a numpy.ndarray of floats, got list"),
        ({"v": np.ones(4, np.float32)}, ValueError, r"v: expected a 2-D array, got shape \(4,\)"),
        (
            {"v": np.ones((2, 3, 4), np.float32)},
            ValueError,
            r"v: expected a 2-D array, got shape \(2, 3, 4\)",
        ),
    ],
)
def test_weightnorm_bad_input(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    args: dict[str, object] = {"v": V, "g": None, "dim": 0}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        WeightNorm(args["v"], args["g"], args["dim"])  # type: ignore[arg-type]


def test_backward_and_setters_bad_input() -> None:
    wn = WeightNorm(V)
    with pytest.raises(ValueError, match=r"grad_w: expected shape \(3, 4\), got \(4, 3\)"):
        wn.backward(np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match=r"grad_w: expected a floating-point dtype .*got bool"):
        wn.backward(np.ones((3, 4), bool))
    with pytest.raises(ValueError, match=r"v: expected shape \(3, 4\), got \(3, 5\)"):
        wn.v = np.ones((3, 5), np.float32)
    with pytest.raises(ValueError, match=r"v: contains NaN or infinity"):
        wn.v = np.full((3, 4), np.nan, np.float32)
    with pytest.raises(ValueError, match=r"g: expected shape \(3, 1\)"):
        wn.g = np.ones((3,), np.float32)
    np.testing.assert_array_equal(wn.weight(), V)  # failed updates left the object unchanged


@pytest.mark.parametrize(
    ("v", "x", "scale", "exc", "match"),
    [
        (V, np.ones((5, 3), np.float32), 1.0, ValueError, r"x: expected shape \(N, 4\) .*got \(5, 3\)"),
        (V, np.ones((0, 4), np.float32), 1.0, ValueError, r"x: expected at least one example"),
        (V, np.ones(4, np.float32), 1.0, ValueError, r"x: expected a 2-D array, got shape \(4,\)"),
        (V, np.ones((5, 4), np.int64), 1.0, TypeError, r"x: expected a floating-point dtype"),
        (V, np.full((5, 4), np.nan, np.float32), 1.0, ValueError, r"x: contains NaN"),
        (
            np.full((3, 4), np.inf, np.float32),
            np.ones((5, 4), np.float32),
            1.0,
            ValueError,
            r"v: contains NaN",
        ),
        (
            V,
            np.ones((5, 4), np.float32),
            0.0,
            ValueError,
            r"init_scale: expected a positive finite float, got 0.0",
        ),
        (V, np.ones((5, 4), np.float32), "1", TypeError, r"init_scale: expected a positive finite float, got str"),
    ],
)
def test_data_init_bad_input(v: object, x: object, scale: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        WeightNorm.data_init(v, x, scale)  # type: ignore[arg-type]


# ---- float32 range: finite inputs whose norms or results do not fit float32 ----


@pytest.mark.parametrize(
    ("dim", "fits", "where"),
    [(0, 1.5e38, r"row 0"), (1, 1.5e38, r"column 0"), (None, 9e37, r"the whole tensor")],
)
def test_default_g_norm_overflow(simd: str, dim: int | None, fits: float, where: str) -> None:
    """g = ||w||: exact where the norms fit float32 (summed in double), a ValueError where they don't."""
    w = np.full((3, 4), fits, np.float32)
    w[1, 2] = -fits
    for wn in (WeightNorm.from_weight(w, dim), WeightNorm(w, dim=dim)):
        assert np.isfinite(wn.g).all()
        np.testing.assert_allclose(wn.weight(), w, rtol=1e-6)
    big = np.full((3, 4), 3e38, np.float32)
    big0 = big.copy()
    with pytest.raises(
        ValueError, match=rf"w: expected norms that fit float32 .*got a norm of .*for {where}"
    ):
        WeightNorm.from_weight(big, dim)
    with pytest.raises(
        ValueError, match=rf"v: expected norms that fit float32 .*got a norm of .*for {where}"
    ):
        WeightNorm(big, dim=dim)
    np.testing.assert_array_equal(big, big0)
    WeightNorm(big, np.ones(_g_shape((3, 4), dim), np.float32), dim)  # an explicit g is fine


def test_from_weight_errors_name_w() -> None:
    with pytest.raises(TypeError, match=r"w: expected a numpy.ndarray of floats, got list"):
        WeightNorm.from_weight([[1.0, 2.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"w: contains NaN or infinity"):
        WeightNorm.from_weight(np.full((2, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"w: expected a 2-D array, got shape \(4,\)"):
        WeightNorm.from_weight(np.ones(4, np.float32))


def test_float64_values_beyond_float32_range() -> None:
    """A finite float64 v/g/w/x that overflows float32 is named as such (not as 'NaN or infinity')."""
    msg = r"expected values within float32 range \(\|value\| <= 3.403e\+38\), got 1e\+39"
    with pytest.raises(ValueError, match=r"v: " + msg):
        WeightNorm(np.full((2, 2), 1e39))
    with pytest.raises(ValueError, match=r"g: " + msg):
        WeightNorm(np.ones((2, 2)), np.array(1e39), dim=None)
    with pytest.raises(ValueError, match=r"g: contains NaN or infinity"):
        WeightNorm(np.ones((2, 2)), np.array(np.inf), dim=None)  # a real inf still says so
    with pytest.raises(ValueError, match=r"w: " + msg):
        WeightNorm.from_weight(np.full((2, 2), -1e39))
    with pytest.raises(ValueError, match=r"x: " + msg):
        WeightNorm.data_init(np.ones((2, 2)), np.full((3, 2), 1e39))
    wn = WeightNorm(np.ones((2, 2)))
    before = (wn.v.copy(), wn.g.copy())
    with pytest.raises(ValueError, match=r"g: " + msg):
        wn.g = np.full((2, 1), 1e39)
    with pytest.raises(ValueError, match=r"v: " + msg):
        wn.v = np.full((2, 2), 1e39)
    np.testing.assert_array_equal(wn.v, before[0])
    np.testing.assert_array_equal(wn.g, before[1])


@pytest.mark.parametrize(
    ("scale", "match"),
    [
        (1e300, r"init_scale: expected a positive float representable in float32 .*got 1e\+300"),
        (3.5e38, r"init_scale: expected a positive float representable in float32 .*got 3.5e\+38"),
        (1e-300, r"init_scale: expected a positive float representable in float32 .*got 1e-300"),
        (10**400, r"init_scale: expected a positive finite float, got int beyond float64 range"),
        (-(10**400), r"init_scale: expected a positive finite float, got int beyond float64 range"),
        (np.inf, r"init_scale: expected a positive finite float, got inf"),
    ],
    ids=["1e300", "3.5e38", "1e-300", "10**400", "-10**400", "inf"],
)
def test_data_init_init_scale_beyond_float32(scale: object, match: str) -> None:
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        WeightNorm.data_init(V, x, scale)  # type: ignore[arg-type]


def test_data_init_results_must_fit_float32() -> None:
    x = np.ones((5, 4), np.float32)  # t constant over the batch: std(t) = 1e-5 (eps)
    x0 = x.copy()
    WeightNorm.data_init(V, x, 1e30)  # g = 1e35 fits
    # g = init_scale / std(t) overflows (init_scale itself fits float32)
    with pytest.raises(
        ValueError, match=r"init_scale: expected a value for which g = init_scale / std\(t\) fits"
    ):
        WeightNorm.data_init(V, x, 1e38)
    np.testing.assert_array_equal(x, x0)
    # ... or underflows to 0 (a dead unit): std(t) ~ 1e38, init_scale = 1e-44
    spread = (np.linspace(-1.0, 1.0, 5)[:, None] * np.full((5, 4), 1e38)).astype(np.float32)
    with pytest.raises(
        ValueError, match=r"init_scale: expected a value for which g = .*got 1e-44 \(g = 7.071e-83"
    ):
        WeightNorm.data_init(V, spread, 1e-44)
    # b = -mean(t) / std(t) * init_scale overflows because of init_scale ...
    const = np.full((5, 4), 3e30, np.float32)  # t = 6e30 on every example: std(t) = 1e-5 (eps)
    g, b = WeightNorm.data_init(V, const, 1.0)
    assert np.isfinite(g).all() and np.isfinite(b).all()
    with pytest.raises(ValueError, match=r"init_scale: expected a value for which b = .*got 1e\+30"):
        WeightNorm.data_init(V, const, 1e30)
    # ... or even with init_scale = 1: the inputs' fault
    with pytest.raises(
        ValueError, match=r"x: expected inputs for which b = .*fits float32, got mean\(t\) = 6e\+38"
    ):
        WeightNorm.data_init(V, np.full((5, 4), 3e38, np.float32), 1.0)


def test_data_init_large_finite_inputs(rng: np.random.Generator) -> None:
    """x v^T beyond float32 range (t up to 6e38) still gives the float64 reference's finite g and b."""
    x = (np.linspace(0.2, 1.0, 5)[:, None] * np.full((5, 4), 3e38)).astype(np.float32)
    v = np.vstack([np.ones((2, 4)), rng.uniform(0.5, 1.0, (1, 4))]).astype(np.float32)
    g, b = WeightNorm.data_init(v, x)
    assert np.isfinite(g).all() and np.isfinite(b).all()
    want_g, want_b = ref.weightnorm_data_init(v, x)
    close(g, want_g, rtol=1e-5)
    close(b, want_b, rtol=1e-5)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda: _core.weightnorm_forward(V, np.ones(3, np.float32), 2),
            ValueError,
            r"dim: expected 0, 1 or -1",
        ),
        (
            lambda: _core.weightnorm_forward(V, np.ones(4, np.float32), 0),
            ValueError,
            r"g: expected axis 0 of length 3",
        ),
        (
            lambda: _core.weightnorm_forward(V.astype(np.float64), np.ones(3, np.float32), 0),
            TypeError,
            r"v: expected dtype float32",
        ),
        (
            lambda: _core.weightnorm_forward(V.T, np.ones(4, np.float32), 1),
            ValueError,
            r"v: expected a C-contiguous",
        ),
        (
            lambda: _core.weightnorm_backward(np.ones((3, 5), np.float32), V, np.ones(1, np.float32), -1),
            ValueError,
            r"grad_w: expected axis 1 of length 4 \(columns of v\)",
        ),
        (lambda: _core.weightnorm_norms(np.ones(3, np.float32), 0), ValueError, r"v: expected a 2-D array"),
    ],
)
def test_core_bad_input(call: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()  # type: ignore[operator]


# ---- sparse DoRA row-norm kernels ----

DORA_SHAPES = [(1, 1, 1), (1, 9, 2), (5, 7, 1), (37, 100, 4), (64, 257, 8), (13, 1030, 3)]


def _dora_case(
    rng: np.random.Generator, out: int, inn: int, r: int, density: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    M = rng.random((out, inn)) < density
    W = (rng.standard_normal((out, inn)) * M).astype(np.float32)
    A = rng.standard_normal((r, inn)).astype(np.float32)
    B = rng.standard_normal((out, r)).astype(np.float32)
    return W, M, A, B


@pytest.mark.parametrize(("out", "inn", "r"), DORA_SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_dora_rownorm_kernels_match_reference(
    simd: str, rng: np.random.Generator, out: int, inn: int, r: int, density: float
) -> None:
    W, M, A, B = _dora_case(rng, out, inn, r, density)
    B[0] = 0  # a row still at its init (B = 0): the kernel skips B A there
    if out > 2:
        W[1] = 0  # with B[1] masked away at density 0 this row has norm 0
    s = 0.75
    inputs = [a.copy() for a in (W, M, A, B)]
    n = _core.dora_rownorm_forward(W, M, A, B, s)
    close(n, ref.dora_rownorm_forward(W, M, A, B, s), rtol=1e-5)
    np.testing.assert_array_equal(_core.dora_rownorm_forward(W, M.astype(np.uint8), A, B, s), n)
    grad_n = rng.standard_normal(out).astype(np.float32)
    dA, dB = _core.dora_rownorm_backward(grad_n, n, W, M, A, B, s)
    want_dA, want_dB = ref.dora_rownorm_backward(grad_n, n, W, M, A, B, s)
    assert dA.shape == A.shape and dB.shape == B.shape
    close(dA, want_dA, rtol=1e-4)
    close(dB, want_dB, rtol=1e-4)
    assert np.isfinite(dA).all() and np.isfinite(dB).all()
    for a, a0 in zip((W, M, A, B), inputs, strict=True):
        np.testing.assert_array_equal(a, a0)


def test_dora_rownorm_backward_matches_torch(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    W, M, A, B = _dora_case(rng, 20, 50, 4, 0.5)
    s = 2.0
    tA = torch.tensor(A, dtype=torch.float64, requires_grad=True)
    tB = torch.tensor(B, dtype=torch.float64, requires_grad=True)
    Wp = torch.tensor(W, dtype=torch.float64) + s * (tB @ tA) * torch.tensor(M, dtype=torch.float64)
    tn = Wp.norm(dim=1)
    grad_n = rng.standard_normal(20)
    tn.backward(torch.tensor(grad_n))
    n = _core.dora_rownorm_forward(W, M, A, B, s)
    close(n, tn.detach().numpy(), rtol=1e-5)
    dA, dB = _core.dora_rownorm_backward(grad_n.astype(np.float32), n, W, M, A, B, s)
    close(dA, tA.grad.numpy(), rtol=1e-4)
    close(dB, tB.grad.numpy(), rtol=1e-4)


def test_dora_rownorm_thread_counts_agree(rng: np.random.Generator) -> None:
    W, M, A, B = _dora_case(rng, 301, 517, 8, 0.5)
    n = _core.dora_rownorm_forward(W, M, A, B, 0.5)
    grad_n = rng.standard_normal(301).astype(np.float32)
    before = sparseft.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 1):
            sparseft.set_num_threads(t)
            outs.append(
                (
                    _core.dora_rownorm_forward(W, M, A, B, 0.5),
                    *_core.dora_rownorm_backward(grad_n, n, W, M, A, B, 0.5),
                )
            )
    finally:
        sparseft.set_num_threads(before)
    for a, b in zip(outs[0], outs[2], strict=True):
        np.testing.assert_array_equal(a, b)  # deterministic for a fixed thread count
    np.testing.assert_array_equal(outs[0][0], outs[1][0])  # row norms: per-row, any thread count
    for a, b in zip(outs[0][1:], outs[1][1:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((V, V > 0, np.ones((2, 4), np.float32), np.ones((3, 2), np.float32), 1.0), None, None),
        (
            (V, V, np.ones((2, 4), np.float32), np.ones((3, 2), np.float32), 1.0),
            TypeError,
            r"mask: expected dtype bool",
        ),
        (
            (V, V > 0, np.ones((2, 5), np.float32), np.ones((3, 2), np.float32), 1.0),
            ValueError,
            r"A: expected axis 1 of length 4",
        ),
        (
            (V, V > 0, np.ones((2, 4), np.float32), np.ones((3, 3), np.float32), 1.0),
            ValueError,
            r"B: expected axis 1 of length 2 \(rows of A\)",
        ),
        (
            (V, np.ones((4, 3), bool), np.ones((2, 4), np.float32), np.ones((3, 2), np.float32), 1.0),
            ValueError,
            r"mask: expected axis 0 of length 3",
        ),
    ],
)
def test_dora_core_bad_input(
    args: tuple[object, ...], exc: type[Exception] | None, match: str | None
) -> None:
    if exc is None:
        assert _core.dora_rownorm_forward(*args).shape == (3,)  # type: ignore[arg-type]
        return
    with pytest.raises(exc, match=match):
        _core.dora_rownorm_forward(*args)  # type: ignore[arg-type]
    with pytest.raises(exc, match=match):
        _core.dora_rownorm_backward(np.ones(3, np.float32), np.ones(3, np.float32), *args)  # type: ignore[arg-type]
