"""sparseft.models.ops (the C nn kernels) against the float64 twins in tests/reference.py, finite
differences, and torch autograd where torch is installed; bad inputs; memory of the flash-style ops."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseft
from sparseft import _core
from sparseft.models import ops
from tests import reference as ref

RTOL = 2e-5


def rnd(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def close(got: object, want: object, rtol: float = RTOL, atol: float = 0.0) -> None:
    """Max abs error within rtol of the reference's largest magnitude (plus atol)."""
    g = np.asarray(got, np.float64)
    w = np.asarray(want, np.float64)
    assert g.shape == w.shape, (g.shape, w.shape)
    tol = rtol * max(1.0, float(np.abs(w).max()) if w.size else 1.0) + atol
    err = float(np.abs(g - w).max()) if w.size else 0.0
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"


@pytest.fixture(params=["avx2", "portable"])
def simd(request: pytest.FixtureRequest):
    """Run on each SIMD path this machine has (the kernels dispatch at run time)."""
    before = _core.build_info()["simd"]
    try:
        _core.set_simd(request.param)
    except ValueError:
        pytest.skip(f"{request.param} path not available here")
    yield request.param
    _core.set_simd(before)


ROWS = [(1, 1), (1, 7), (5, 8), (33, 29), (70, 768)]


# ---- norms -------------------------------------------------------------------------------------


@pytest.mark.parametrize("N,C", ROWS)
def test_layernorm_matches_reference(simd: str, N: int, C: int) -> None:
    rng = np.random.default_rng(N * 100 + C)
    x, w, b, dy = rnd(rng, N, C, scale=3.0) + 1.5, rnd(rng, C), rnd(rng, C), rnd(rng, N, C)
    y, mean, rstd = ops.layernorm_forward(x, w, b)
    Y, M, R = ref.layernorm_forward(x, w, b)
    close(y, Y), close(mean, M), close(rstd, R)
    dx, dw, db = ops.layernorm_backward(dy, x, w, mean, rstd)
    DX, DW, DB = ref.layernorm_backward(dy, x, w, M, R)
    close(dx, DX, 1e-4), close(dw, DW, 1e-4), close(db, DB, 1e-4)


@pytest.mark.parametrize("N,C", ROWS)
def test_rmsnorm_matches_reference(simd: str, N: int, C: int) -> None:
    rng = np.random.default_rng(N * 100 + C + 1)
    x, w, dy = rnd(rng, N, C, scale=2.0), rnd(rng, C), rnd(rng, N, C)
    y, rstd = ops.rmsnorm_forward(x, w, 1e-5)
    Y, R = ref.rmsnorm_forward(x, w, 1e-5)
    close(y, Y), close(rstd, R)
    dx, dw = ops.rmsnorm_backward(dy, x, w, rstd)
    DX, DW = ref.rmsnorm_backward(dy, x, w, R)
    close(dx, DX, 1e-4), close(dw, DW, 1e-4)


def test_norms_take_leading_axes() -> None:
    rng = np.random.default_rng(3)
    x, w, b = rnd(rng, 2, 3, 9), rnd(rng, 9), rnd(rng, 9)
    y, mean, rstd = ops.layernorm_forward(x, w, b)
    assert y.shape == x.shape and mean.shape == (2, 3) and rstd.shape == (2, 3)
    close(y, ref.layernorm_forward(x, w, b)[0])
    dx, _, _ = ops.layernorm_backward(x, x, w, mean, rstd)
    assert dx.shape == x.shape
    y2, r2 = ops.rmsnorm_forward(x, w)
    assert y2.shape == x.shape and r2.shape == (2, 3)


def test_norm_backwards_match_finite_differences() -> None:
    """The float64 twins' backward is the derivative of their forward (so matching them means something)."""
    rng = np.random.default_rng(4)
    x, w, b, dy = (rng.standard_normal(s) for s in ((3, 6), (6,), (6,), (3, 6)))
    h = 1e-6
    for fwd, bwd, args in (
        (lambda x, w: ref.layernorm_forward(x, w, b)[0], ref.layernorm_backward, None),
        (lambda x, w: ref.rmsnorm_forward(x, w)[0], ref.rmsnorm_backward, None),
    ):
        del args
        if bwd is ref.layernorm_backward:
            _, M, R = ref.layernorm_forward(x, w, b)
            dx, dw, _ = bwd(dy, x, w, M, R)
        else:
            _, R = ref.rmsnorm_forward(x, w)
            dx, dw = bwd(dy, x, w, R)
        for arr, grad in ((x, dx), (w, dw)):
            fd = np.zeros_like(arr)
            for i in np.ndindex(arr.shape):
                old = arr[i]
                arr[i] = old + h
                up = (fwd(x, w) * dy).sum()
                arr[i] = old - h
                dn = (fwd(x, w) * dy).sum()
                arr[i] = old
                fd[i] = (up - dn) / (2 * h)
            np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(
    N=st.integers(1, 40),
    C=st.integers(1, 70),
    seed=st.integers(0, 2**31),
    shift=st.floats(-100, 100),
)
def test_layernorm_hypothesis(N: int, C: int, seed: int, shift: float) -> None:
    rng = np.random.default_rng(seed)
    x = rnd(rng, N, C) + np.float32(shift)
    w, b = rnd(rng, C), rnd(rng, C)
    y, mean, rstd = ops.layernorm_forward(x, w, b)
    Y, M, R = ref.layernorm_forward(x, w, b)
    close(mean, M), close(rstd, R, 1e-4), close(y, Y, 1e-3)


# ---- activations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 17), (2, 5, 64), (4097,)])
def test_gelu_swiglu_match_reference(simd: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    x, u, dy = rnd(rng, *shape, scale=4.0), rnd(rng, *shape), rnd(rng, *shape)
    close(ops.gelu_forward(x), ref.gelu_forward(x))
    close(ops.gelu_backward(dy, x), ref.gelu_backward(dy, x), 1e-5)
    close(ops.swiglu_forward(x, u), ref.swiglu_forward(x, u))
    dg, du = ops.swiglu_backward(dy, x, u)
    DG, DU = ref.swiglu_backward(dy, x, u)
    close(dg, DG), close(du, DU)


def test_activations_extremes() -> None:
    """Saturated inputs give exact limits, no NaN; NaN stays NaN."""
    x = np.array([-1e30, -200.0, -90.0, -1e-30, 0.0, 1e-30, 90.0, 200.0, 1e30, np.inf, -np.inf], np.float32)
    y = ops.gelu_forward(x)
    assert np.isfinite(y[:-2]).all() and y[0] == 0.0 and y[8] == np.float32(1e30)
    s = ops.swiglu_forward(x[:-2], np.ones(9, np.float32))
    assert np.isfinite(s).all() and s[0] == 0.0 and s[-1] == np.float32(1e30)
    assert np.isnan(ops.gelu_forward(np.array([np.nan], np.float32)))[0]


def test_exp_accuracy_over_range(simd: str) -> None:
    """The vector exp inside softmax: a row with one large logit gives lse within 2 ulp-ish of float64."""
    L = np.linspace(-87, 88, 2001, dtype=np.float32).reshape(-1, 1) + np.zeros((1, 9), np.float32)
    L[:, 1:] = -1e30  # lse of a row = its first entry: exp(0) = 1 at the max, exp(-huge) = 0
    _, lse = ops.softmax_xent_forward(L, np.zeros(len(L), np.int64))
    close(lse, L[:, 0], 0.0, 1e-6 * 88)
    x = np.linspace(-20, 20, 4001, dtype=np.float32)
    close(ops.swiglu_forward(x, np.ones_like(x)), ref.swiglu_forward(x, np.ones_like(x)), 1e-6)


# ---- RoPE -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "B,T,H,D,offset", [(1, 1, 1, 2, 0), (2, 9, 3, 10, 0), (1, 70, 2, 64, 5), (1, 3, 1, 34, 1000)]
)
def test_rope_matches_reference(simd: str, B: int, T: int, H: int, D: int, offset: int) -> None:
    rng = np.random.default_rng(T * D)
    x = rnd(rng, B, T, H, D)
    close(ops.rope_forward(x, 10000.0, offset), ref.rope_forward(x, 10000.0, offset))
    close(ops.rope_backward(x, 500000.0, offset), ref.rope_forward(x, 500000.0, offset, inverse=True))
    # a rotation: the backward undoes the forward
    close(ops.rope_backward(ops.rope_forward(x, 10000.0, offset), 10000.0, offset), x, 1e-5)


def test_rope_with_given_frequencies() -> None:
    """inv_freq replaces theta's frequencies (Llama 3.1's scaled RoPE passes its own)."""
    rng = np.random.default_rng(18)
    x = rnd(rng, 2, 40, 3, 8)
    inv = np.array([1.0, 0.3, 0.01, 1e-4], np.float32)
    y = ops.rope_forward(x, offset=7, inv_freq=inv)
    close(y, ref.rope_forward(x, offset=7, inv_freq=inv))
    close(ops.rope_backward(y, offset=7, inv_freq=inv), x, 1e-5)
    # the default frequencies passed explicitly give the theta path bit for bit
    default = (1.0 / 500.0 ** (np.arange(0, 8, 2) / 8)).astype(np.float32)
    np.testing.assert_array_equal(
        ops.rope_forward(x, 500.0, 3, inv_freq=default), ops.rope_forward(x, 500.0, 3)
    )
    with pytest.raises(ValueError, match=r"inv_freq: expected axis 0 of length 4"):
        ops.rope_forward(x, inv_freq=inv[:3])
    with pytest.raises(ValueError, match="inv_freq: contains NaN or infinity"):
        ops.rope_forward(x, inv_freq=np.array([1.0, np.nan, 0.1, 0.1], np.float32))


def test_rope_matches_transformers_llama() -> None:
    torch = pytest.importorskip("torch")
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0)
    rot = llama.LlamaRotaryEmbedding(config=cfg)
    rng = np.random.default_rng(5)
    B, T, H, D = 2, 37, 4, 16
    q, k = rnd(rng, B, T, H, D), rnd(rng, B, T, 2, D)
    offset = 3
    pos = torch.arange(offset, offset + T)[None].expand(B, T)
    qt, kt = torch.tensor(q).transpose(1, 2), torch.tensor(k).transpose(1, 2)
    cos, sin = rot(qt, pos)
    qe, ke = llama.apply_rotary_pos_emb(qt, kt, cos, sin)
    close(ops.rope_forward(q, 10000.0, offset), qe.transpose(1, 2).numpy(), 1e-5)
    close(ops.rope_forward(k, 10000.0, offset), ke.transpose(1, 2).numpy(), 1e-5)


# ---- attention ------------------------------------------------------------------------------------

ATTN = [
    (1, 1, 1, 1, 4, True),
    (2, 4, 2, 37, 10, True),
    (1, 3, 3, 200, 16, True),
    (2, 2, 1, 129, 7, False),
    (1, 6, 2, 65, 5, True),
    (1, 2, 2, 300, 64, True),
]


@pytest.mark.parametrize("B,H,Hkv,T,D,causal", ATTN)
def test_attention_matches_reference(
    simd: str, B: int, H: int, Hkv: int, T: int, D: int, causal: bool
) -> None:
    rng = np.random.default_rng(B + H + T + D)
    q, k, v, do = rnd(rng, B, H, T, D), rnd(rng, B, Hkv, T, D), rnd(rng, B, Hkv, T, D), rnd(rng, B, H, T, D)
    o, lse = ops.attention_forward(q, k, v, causal)
    O, LSE = ref.attention_forward(q, k, v, causal)
    close(o, O, 1e-5), close(lse, LSE, 1e-5)
    dq, dk, dv = ops.attention_backward(do, q, k, v, o, lse, causal)
    DQ, DK, DV = ref.attention_backward(do, q, k, v, causal)
    close(dq, DQ, 1e-4), close(dk, DK, 1e-4), close(dv, DV, 1e-4)


def test_attention_reference_backward_matches_finite_differences() -> None:
    rng = np.random.default_rng(6)
    q, k, v, do = (rng.standard_normal(s) for s in ((1, 2, 5, 3), (1, 1, 5, 3), (1, 1, 5, 3), (1, 2, 5, 3)))
    grads = ref.attention_backward(do, q, k, v, True, 0.7)
    h = 1e-6
    for arr, grad in zip((q, k, v), grads, strict=True):
        fd = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            up = (ref.attention_forward(q, k, v, True, 0.7)[0] * do).sum()
            arr[i] = old - h
            dn = (ref.attention_forward(q, k, v, True, 0.7)[0] * do).sum()
            arr[i] = old
            fd[i] = (up - dn) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


def test_attention_matches_torch_sdpa() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(7)
    B, H, Hkv, T, D = 2, 4, 2, 150, 12
    q, k, v, do = rnd(rng, B, H, T, D), rnd(rng, B, Hkv, T, D), rnd(rng, B, Hkv, T, D), rnd(rng, B, H, T, D)
    qt, kt, vt = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    ot = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
    ot.backward(torch.tensor(do))
    o, lse = ops.attention_forward(q, k, v)
    close(o, ot.detach().numpy(), 1e-5)
    for got, t in zip(ops.attention_backward(do, q, k, v, o, lse), (qt, kt, vt), strict=True):
        close(got, t.grad.numpy(), 1e-4)


def test_attention_keeps_no_t_by_t_matrix() -> None:
    """Kernel scratch of the forward and the backward grows with the tile, not with T^2."""
    rng = np.random.default_rng(8)
    B, H, T, D = 1, 2, 1024, 16
    q, k, v = rnd(rng, B, H, T, D), rnd(rng, B, H, T, D), rnd(rng, B, H, T, D)
    _core.reset_scratch_peak()
    o, lse = ops.attention_forward(q, k, v)
    ops.attention_backward(o, q, k, v, o, lse)
    peak = _core.scratch_stats()["peak"]
    assert peak < T * T * 4 // 4, peak  # one head's T x T float32 matrix is 4 MiB


def test_attention_is_deterministic_across_thread_counts() -> None:
    rng = np.random.default_rng(9)
    q, k, v = rnd(rng, 2, 4, 90, 8), rnd(rng, 2, 2, 90, 8), rnd(rng, 2, 2, 90, 8)
    before = sparseft.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            sparseft.set_num_threads(n)
            o, lse = ops.attention_forward(q, k, v)
            outs.append((o, lse, *ops.attention_backward(o, q, k, v, o, lse)))
    finally:
        sparseft.set_num_threads(before)
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


# ---- embedding, cross-entropy, fused head ------------------------------------------------------------


def test_embedding() -> None:
    rng = np.random.default_rng(10)
    V, C = 13, 9
    ids = rng.integers(0, V, (3, 11))
    ids[0, :4] = 5  # repeated ids sum
    wte = rnd(rng, V, C)
    np.testing.assert_array_equal(ops.embedding_forward(ids, wte), wte[ids])
    dx = rnd(rng, 3, 11, C)
    close(ops.embedding_backward(dx, ids, V), ref.embedding_backward(dx, ids, V), 1e-6)


@pytest.mark.parametrize("N,K", [(1, 1), (1, 2), (45, 13), (64, 1000)])
def test_softmax_xent_matches_reference(simd: str, N: int, K: int) -> None:
    rng = np.random.default_rng(N + K)
    L, t = rnd(rng, N, K, scale=5.0), rng.integers(0, K, N)
    loss, lse = ops.softmax_xent_forward(L, t)
    LOSS, LSE, DL = ref.softmax_xent(L, t)
    assert loss.dtype == np.float32 and loss.shape == ()
    close(loss, LOSS), close(lse, LSE)
    close(ops.softmax_xent_backward(L, t, lse, 0.5), 0.5 * DL, 1e-5)


@pytest.mark.parametrize("chunk", [None, 1, 7, 32, 50, 1000])
def test_lm_head_xent_matches_reference(simd: str, chunk: int | None) -> None:
    rng = np.random.default_rng(11)
    N, C, V = 70, 24, 301
    x, w, t = rnd(rng, N, C), rnd(rng, V, C), rng.integers(0, V, N)
    LOSS, LSE, DX, DW = ref.lm_head_xent(x, w, t)
    loss, lse = ops.lm_head_xent_forward(x, w, t, chunk=chunk)
    close(loss, LOSS), close(lse, LSE)
    dx, dw = ops.lm_head_xent_backward(x, w, t, lse, 0.25, need_dw=True, chunk=chunk)
    close(dx, 0.25 * DX, 1e-5), close(dw, 0.25 * DW, 1e-5)
    assert ops.lm_head_xent_backward(x, w, t, lse, chunk=chunk)[1] is None
    loss2, _, dx2, dw2 = ops.lm_head_xent_forward(x, w, t, chunk=chunk, grad=True, need_dw=True)
    close(loss2, LOSS), close(dx2, DX, 1e-5), close(dw2, DW, 1e-5)
    assert ops.lm_head_xent_forward(x, w, t, chunk=chunk, grad=True)[3] is None


def test_lm_head_xent_matches_torch_and_never_builds_all_logits() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    N, C, V = 256, 32, 5000
    x, w, t = rnd(rng, N, C), rnd(rng, V, C, scale=0.3), rng.integers(0, V, N)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(xt @ wt.T, torch.tensor(t))
    lt.backward()
    _core.reset_scratch_peak()
    loss, lse = ops.lm_head_xent_forward(x, w, t, chunk=16)
    dx, dw = ops.lm_head_xent_backward(x, w, t, lse, need_dw=True, chunk=16)
    assert _core.scratch_stats()["peak"] < N * V * 4 // 8
    close(loss, lt.item()), close(dx, xt.grad.numpy(), 1e-5), close(dw, wt.grad.numpy(), 1e-5)
    close(ops.lm_head_logits(x, w), x.astype(np.float64) @ w.T.astype(np.float64), 1e-5)


def test_losses_deterministic_across_thread_counts() -> None:
    rng = np.random.default_rng(13)
    x, w, t = rnd(rng, 300, 16), rnd(rng, 777, 16), rng.integers(0, 777, 300)
    gy, xn = rnd(rng, 300, 16), rnd(rng, 16)
    before = sparseft.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            sparseft.set_num_threads(n)
            _, mean, rstd = ops.layernorm_forward(x, xn, xn)
            outs.append(
                (
                    *ops.lm_head_xent_forward(x, w, t, chunk=40, grad=True, need_dw=True)[:3],
                    *ops.layernorm_backward(gy, x, xn, mean, rstd),
                    ops.embedding_backward(x.reshape(3, 100, 16), t.reshape(3, 100), 777),
                )
            )
    finally:
        sparseft.set_num_threads(before)
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


# ---- AdamW -------------------------------------------------------------------------------------------


def test_adamw_matches_reference_and_torch() -> None:
    rng = np.random.default_rng(14)
    shape = (37, 5)
    p, g = rnd(rng, *shape), rnd(rng, *shape)
    m, v = rnd(rng, *shape, scale=0.1), np.abs(rnd(rng, *shape, scale=0.01))
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    P, M, Vv = p.copy(), m.copy(), v.copy()
    g0 = g.copy()
    ops.adamw_step(P, g, M, Vv, step=3, **hp)
    np.testing.assert_array_equal(g, g0)
    RP, RM, RV = ref.adamw_step(p, g, m, v, step=3, **hp)
    close(P, RP, 1e-6), close(M, RM, 1e-6), close(Vv, RV, 1e-6)
    torch = pytest.importorskip("torch")
    pt = torch.tensor(p, requires_grad=True)
    opt = torch.optim.AdamW([pt], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    pt.grad = torch.tensor(g)
    P1, M1, V1 = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for step in (1, 2):
        opt.step()
        ops.adamw_step(P1, g, M1, V1, step=step, **hp)
    np.testing.assert_allclose(P1, pt.detach().numpy(), rtol=0, atol=2e-7)
    np.testing.assert_allclose(M1, opt.state[pt]["exp_avg"].numpy(), rtol=1e-6)


# ---- torch autograd for the row ops ------------------------------------------------------------------


def test_row_ops_match_torch_autograd() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(15)
    N, C = 19, 45
    x, w, b, dy = rnd(rng, N, C), rnd(rng, C), rnd(rng, C), rnd(rng, N, C)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    F.layer_norm(xt, (C,), wt, bt, 1e-5).backward(torch.tensor(dy))
    y, mean, rstd = ops.layernorm_forward(x, w, b)
    for got, t in zip(ops.layernorm_backward(dy, x, w, mean, rstd), (xt, wt, bt), strict=True):
        close(got, t.grad.numpy(), 1e-5)
    xt, wt = (torch.tensor(a, requires_grad=True) for a in (x, w))
    yt = F.rms_norm(xt, (C,), wt, 1e-6)
    yt.backward(torch.tensor(dy))
    y, rstd = ops.rmsnorm_forward(x, w)
    close(y, yt.detach().numpy())
    for got, t in zip(ops.rmsnorm_backward(dy, x, w, rstd), (xt, wt), strict=True):
        close(got, t.grad.numpy(), 1e-5)
    xt = torch.tensor(x, requires_grad=True)
    yt = F.gelu(xt, approximate="tanh")
    yt.backward(torch.tensor(dy))
    close(ops.gelu_forward(x), yt.detach().numpy()), close(ops.gelu_backward(dy, x), xt.grad.numpy())
    gt, ut = torch.tensor(x, requires_grad=True), torch.tensor(dy, requires_grad=True)
    (F.silu(gt) * ut).backward(torch.tensor(x))
    for got, t in zip(ops.swiglu_backward(x, x, dy), (gt, ut), strict=True):
        close(got, t.grad.numpy())


# ---- bad inputs -----------------------------------------------------------------------------------------


def test_bad_inputs_are_named_errors() -> None:
    rng = np.random.default_rng(16)
    x, w, b = rnd(rng, 4, 6), rnd(rng, 6), rnd(rng, 6)
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        ops.layernorm_forward(x.astype(np.float64), w, b)
    with pytest.raises(ValueError, match=r"w: expected axis 0 of length 6"):
        ops.layernorm_forward(x, rnd(rng, 5), b)
    with pytest.raises(ValueError, match="eps: expected a finite positive"):
        ops.rmsnorm_forward(x, w, eps=0.0)
    with pytest.raises(TypeError, match=r"x: expected a numpy\.ndarray, got list"):
        ops.gelu_forward([1.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"up: expected shape \(4, 6\)"):
        ops.swiglu_forward(x, rnd(rng, 4, 5))
    with pytest.raises(ValueError, match="rstd: expected shape"):
        ops.rmsnorm_backward(x, x, w, rnd(rng, 5))
    with pytest.raises(ValueError, match="x: expected an even head size"):
        ops.rope_forward(rnd(rng, 1, 2, 1, 3))
    with pytest.raises(ValueError, match="offset: expected a non-negative int"):
        ops.rope_forward(rnd(rng, 1, 2, 1, 4), offset=-1)
    q, k = rnd(rng, 1, 4, 5, 8), rnd(rng, 1, 3, 5, 8)
    with pytest.raises(ValueError, match="k: expected a number of kv heads dividing H = 4"):
        ops.attention_forward(q, k, k)
    with pytest.raises(ValueError, match=r"k: expected axis 2 of length 5 \(T, from q\)"):
        ops.attention_forward(q, rnd(rng, 1, 2, 6, 8), rnd(rng, 1, 2, 6, 8))
    with pytest.raises(ValueError, match="q: expected a 4-D array"):
        ops.attention_forward(x, x, x)
    ids = np.array([[0, 6]])
    with pytest.raises(ValueError, match=r"ids: expected ids in \[0, 6\), got 6"):
        ops.embedding_forward(ids, rnd(rng, 6, 3))
    with pytest.raises(TypeError, match="ids: expected dtype int64"):
        ops.embedding_forward(ids.astype(np.int32), rnd(rng, 6, 3))
    with pytest.raises(ValueError, match=r"targets: expected ids in \[0, 6\), got -1"):
        ops.lm_head_xent_forward(x, rnd(rng, 6, 6), np.array([0, 1, 2, -1]))
    with pytest.raises(ValueError, match=r"targets: expected axis 0 of length 4"):
        ops.softmax_xent_forward(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="chunk: expected a positive int"):
        ops.lm_head_xent_forward(x, rnd(rng, 6, 6), np.array([0, 1, 2, 3]), chunk=0)
    with pytest.raises(ValueError, match=r"w: expected axis 1 of length 6"):
        ops.lm_head_xent_backward(x, rnd(rng, 6, 5), np.array([0, 1, 2, 3]), rnd(rng, 4))
    p = rnd(rng, 3)
    ro = p.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="param: expected a writeable array"):
        ops.adamw_step(ro, p, p.copy(), p.copy(), lr=0.1)
    with pytest.raises(ValueError, match=r"beta1: expected a float in \[0, 1\), got 1\.0"):
        ops.adamw_step(p.copy(), p, p.copy(), p.copy(), lr=0.1, beta1=1.0)
    with pytest.raises(ValueError, match=r"weight_decay: expected a finite float >= 0, got -0\.5"):
        ops.adamw_step(p.copy(), p, p.copy(), p.copy(), lr=0.1, weight_decay=-0.5)
    with pytest.raises(ValueError, match=r"m: expected shape \(3,\)"):
        ops.adamw_step(p.copy(), p, rnd(rng, 4), p.copy(), lr=0.1)
    with pytest.raises(ValueError, match="step: expected a positive int"):
        ops.adamw_step(p.copy(), p, p.copy(), p.copy(), lr=0.1, step=0)


def test_inputs_are_not_modified_and_views_are_accepted() -> None:
    rng = np.random.default_rng(17)
    big = rnd(rng, 8, 12)
    x = big[:, ::2]  # a strided view
    w, b = rnd(rng, 6), rnd(rng, 6)
    keep = [a.copy() for a in (big, w, b)]
    y, mean, rstd = ops.layernorm_forward(x, w, b)
    close(y, ref.layernorm_forward(x, w, b)[0])
    ops.layernorm_backward(x, x, w, mean, rstd)
    ops.gelu_backward(x, x)
    q = rnd(rng, 1, 2, 9, 4)
    qk = q.copy()
    o, lse = ops.attention_forward(q, q, q)
    ops.attention_backward(o, q, q, q, o, lse)
    for a, k in zip((big, w, b), keep, strict=True):
        np.testing.assert_array_equal(a, k)
    np.testing.assert_array_equal(q, qk)


def test_empty_shapes_do_not_crash() -> None:
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    assert ops.layernorm_forward(z(0, 4), z(4), z(4))[0].shape == (0, 4)
    assert ops.rmsnorm_backward(z(3, 0), z(3, 0), z(0), z(3))[1].shape == (0,)
    o, lse = ops.attention_forward(z(1, 2, 0, 4), z(1, 1, 0, 4), z(1, 1, 0, 4))
    assert o.shape == (1, 2, 0, 4) and lse.shape == (1, 2, 0)
    assert ops.attention_backward(o, z(1, 2, 0, 4), z(1, 1, 0, 4), z(1, 1, 0, 4), o, lse)[1].shape == (
        1,
        1,
        0,
        4,
    )
    loss, lse, dx, dw = ops.lm_head_xent_forward(
        z(0, 4), z(5, 4), np.zeros(0, np.int64), grad=True, need_dw=True
    )
    assert float(loss) == 0.0 and dx.shape == (0, 4)
    np.testing.assert_array_equal(dw, z(5, 4))
    assert ops.embedding_backward(z(1, 2, 0), np.zeros((1, 2), np.int64), 3).shape == (3, 0)
    assert ops.rope_forward(z(1, 0, 2, 4)).shape == (1, 0, 2, 4)


# ---- row kernels: thread counts, streaming stores, out= ---------------------------------------------


def _row_ops_all(x: np.ndarray, dy: np.ndarray, w: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Every row op forward and backward on (N, C) inputs (RoPE on (1, N, 1, C))."""
    y, m, r = ops.layernorm_forward(x, w, b)
    out = [y, m, r, *ops.layernorm_backward(dy, x, w, m, r)]
    y, r = ops.rmsnorm_forward(x, w)
    out += [y, r, *ops.rmsnorm_backward(dy, x, w, r)]
    out += [ops.gelu_forward(x), ops.gelu_backward(dy, x), ops.swiglu_forward(x, dy)]
    out += [*ops.swiglu_backward(dy, x, b * np.ones_like(x)), ops.rope_forward(x[None, :, None, :])]
    p, m1, v1 = x.copy(), np.zeros_like(x), np.zeros_like(x)
    ops.adamw_step(p, dy, m1, v1, 1e-3, 0.9, 0.999, 1e-8, 0.1, 1)
    return [*out, p, m1, v1]


@pytest.mark.parametrize("shape", [(300, 96), (2100, 1024)])  # the second streams (outputs >= 8 MiB)
def test_row_ops_bit_identical_across_thread_counts(simd: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(21)
    x, dy, w, b = rnd(rng, *shape), rnd(rng, *shape), rnd(rng, shape[1]), rnd(rng, shape[1])
    before = sparseft.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 3):
            sparseft.set_num_threads(n)
            runs.append(_row_ops_all(x, dy, w, b))
    finally:
        sparseft.set_num_threads(before)
    for other in runs[1:]:
        for a, o in zip(runs[0], other, strict=True):
            np.testing.assert_array_equal(a, o)


def test_streamed_outputs_match_reference(simd: str) -> None:
    """Outputs >= 8 MiB take the streaming stores (aligned fresh outputs, misaligned out=): same values."""
    rng = np.random.default_rng(5)
    x, dy, w, b = rnd(rng, 2100, 1024), rnd(rng, 2100, 1024), rnd(rng, 1024), rnd(rng, 1024)
    y, m, r = ops.layernorm_forward(x, w, b)
    assert y.ctypes.data % 64 == 0
    Y, M, R = ref.layernorm_forward(x, w, b)
    close(y, Y), close(m, M), close(r, R)
    close(ops.gelu_forward(x), ref.gelu_forward(x))
    # a misaligned out= (4 bytes off a 64-byte boundary): the elementwise kernels peel to alignment
    buf = np.empty(x.size + 16, np.float32)
    off = (64 - buf.ctypes.data % 64) % 64 // 4 + 1
    o = buf[off : off + x.size].reshape(x.shape)
    assert ops.gelu_backward(dy, x, out=o) is o
    close(o, ref.gelu_backward(dy, x), 1e-5)
    o2 = ops.layernorm_backward(dy, x, w, m, r, out=o)[0]
    assert np.shares_memory(o2, o)
    close(o, ref.layernorm_backward(dy, x, w, m, r)[0], 1e-4)


def test_out_argument_writes_in_place_and_rejects_bad_buffers() -> None:
    rng = np.random.default_rng(8)
    x, dy, w, b = rnd(rng, 6, 10), rnd(rng, 6, 10), rnd(rng, 10), rnd(rng, 10)
    o = np.full_like(x, np.nan)
    y = ops.layernorm_forward(x, w, b, out=o)[0]
    assert np.shares_memory(y, o)
    np.testing.assert_array_equal(o, ops.layernorm_forward(x, w, b)[0])
    dx = ops.rmsnorm_backward(dy, x, w, ops.rmsnorm_forward(x, w)[1], out=o)[0]
    assert np.shares_memory(dx, o)
    pair = (np.empty_like(x), np.empty_like(x))
    got = ops.swiglu_backward(dy, x, b * np.ones_like(x), out=pair)
    assert got[0] is pair[0] and got[1] is pair[1]
    x4 = x.reshape(1, 6, 1, 10)
    o4 = np.empty_like(x4)
    assert ops.rope_forward(x4, out=o4) is o4
    np.testing.assert_array_equal(o4, ops.rope_forward(x4))
    with pytest.raises(ValueError, match="out"):
        ops.gelu_forward(x, out=x)  # shares memory with the input
    with pytest.raises(ValueError, match="out"):
        ops.gelu_forward(x, out=np.empty((6, 9), np.float32))
    with pytest.raises(TypeError, match="out"):
        ops.gelu_forward(x, out=np.empty((6, 10), np.float64))
    with pytest.raises(ValueError, match="out"):
        ro = np.empty_like(x)
        ro.flags.writeable = False
        ops.layernorm_forward(x, w, b, out=ro)
    with pytest.raises(ValueError, match="out"):
        ops.swiglu_backward(dy, x, x, out=(pair[0], pair[0]))
    with pytest.raises(TypeError, match="out"):
        ops.swiglu_backward(dy, x, x, out=pair[0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out"):
        ops.rope_forward(x4, out=np.empty((6, 10), np.float32))
