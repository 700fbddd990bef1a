"""Strided attention: q/k/v read in place (layouts "bhtd" and "bthd", views of a fused (B, T, 3C)
qkv array, transposed and reversed views), o and dq/dk/dv written into out= views, against the
float64 reference and torch autograd; bad layouts, strides and aliasing out= buffers; the whole
models' logits and gradients unchanged against the copy-based head-major path."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseft
from sparseft import _core
from sparseft.models import GPT, GPTConfig, Llama, LlamaConfig, ops
from sparseft.models import transformer as tr
from sparseft.models.graph import run_step
from tests import reference as ref


def rnd(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def close(got: object, want: object, rtol: float) -> None:
    """Max abs error within rtol of the reference's largest magnitude."""
    g, w = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert g.shape == w.shape, (g.shape, w.shape)
    if w.size == 0:
        return
    tol = rtol * max(1.0, float(np.abs(w).max()))
    err = float(np.abs(g - w).max())
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"


def bhtd(a: np.ndarray) -> np.ndarray:
    """(B, T, h, D) -> (B, h, T, D) view (for the reference, which is head-major)."""
    return a.transpose(0, 2, 1, 3)


def fused(
    rng: np.random.Generator, B: int, T: int, H: int, Hkv: int, D: int, pad: int = 3
) -> tuple[Any, ...]:
    """q, k, v as (B, T, heads, D) views of one (B, T, (H + 2 Hkv) D + pad) array (the fused qkv
    projection's output, with a few extra columns so that no stride is a multiple of the row)."""
    width = (H + 2 * Hkv) * D
    buf = rnd(rng, B, T, width + pad)
    cq, ck = H * D, (H + Hkv) * D
    q = buf[..., :cq].reshape(B, T, H, D)
    k = buf[..., cq:ck].reshape(B, T, Hkv, D)
    v = buf[..., ck:width].reshape(B, T, Hkv, D)
    return buf, q, k, v


def grad_views(B: int, T: int, H: int, Hkv: int, D: int, pad: int = 5) -> tuple[Any, ...]:
    """dq, dk, dv as views of one NaN-filled (B, T, (H + 2 Hkv) D + pad) gradient buffer."""
    width = (H + 2 * Hkv) * D
    g = np.full((B, T, width + pad), np.nan, np.float32)
    cq, ck = H * D, (H + Hkv) * D
    return (
        g,
        g[..., :cq].reshape(B, T, H, D),
        g[..., cq:ck].reshape(B, T, Hkv, D),
        g[..., ck:width].reshape(B, T, Hkv, D),
    )


# odd T, T = 1, GQA (H != Hkv), D not a multiple of 16, non-causal
CASES = [
    (1, 1, 1, 1, 4, True),
    (2, 4, 2, 37, 10, True),
    (1, 3, 3, 200, 16, True),
    (2, 2, 1, 129, 7, False),
    (1, 6, 2, 65, 5, True),
    (2, 4, 1, 1, 20, True),
    (1, 2, 2, 131, 64, True),
]


@pytest.mark.parametrize("B,H,Hkv,T,D,causal", CASES)
def test_fused_qkv_views_and_out_buffers_match_reference(
    B: int, H: int, Hkv: int, T: int, D: int, causal: bool
) -> None:
    rng = np.random.default_rng(B * 100 + H * 10 + T + D)
    buf, q, k, v = fused(rng, B, T, H, Hkv, D)
    keep = buf.copy()
    obuf = np.full((B, T, H * D + 2), np.nan, np.float32)  # o written into its first H*D columns
    o_out = obuf[..., : H * D].reshape(B, T, H, D)
    o, lse = ops.attention_forward(q, k, v, causal, layout="bthd", out=o_out)
    assert o is o_out and lse.shape == (B, H, T)
    assert np.isnan(obuf[..., H * D :]).all()  # nothing outside the view is written
    O, LSE = ref.attention_forward(bhtd(q), bhtd(k), bhtd(v), causal)
    close(bhtd(o), O, 1e-5), close(lse, LSE, 1e-5)
    do = rnd(rng, B, T, H, D)
    g, gq, gk, gv = grad_views(B, T, H, Hkv, D)
    got = ops.attention_backward(do, q, k, v, o, lse, causal, layout="bthd", out=(gq, gk, gv))
    assert got[0] is gq and got[1] is gk and got[2] is gv
    DQ, DK, DV = ref.attention_backward(bhtd(do), bhtd(q), bhtd(k), bhtd(v), causal)
    close(bhtd(gq), DQ, 1e-4), close(bhtd(gk), DK, 1e-4), close(bhtd(gv), DV, 1e-4)
    width = (H + 2 * Hkv) * D
    assert not np.isnan(g[..., :width]).any() and np.isnan(g[..., width:]).all()
    np.testing.assert_array_equal(buf, keep)  # inputs untouched


@pytest.mark.parametrize("B,H,Hkv,T,D,causal", CASES[:5])
def test_layouts_agree_with_contiguous_head_major(
    B: int, H: int, Hkv: int, T: int, D: int, causal: bool
) -> None:
    """The same numbers through every layout and stride pattern: contiguous (B,H,T,D), a transposed
    (B,H,T,D) view of (B,T,H,D) memory, (B,T,H,D) contiguous, and batch-reversed (negative
    strides) views; the results agree to float32 rounding."""
    rng = np.random.default_rng(T + 7)
    qc, kc, vc, doc = (
        rnd(rng, B, H, T, D),
        rnd(rng, B, Hkv, T, D),
        rnd(rng, B, Hkv, T, D),
        rnd(rng, B, H, T, D),
    )
    o0, lse0 = ops.attention_forward(qc, kc, vc, causal)
    g0 = ops.attention_backward(doc, qc, kc, vc, o0, lse0, causal)
    # (B, T, h, D) memory seen head-major through a transpose
    qt, kt, vt, dt = (np.ascontiguousarray(bhtd(a)) for a in (qc, kc, vc, doc))
    o1, lse1 = ops.attention_forward(bhtd(qt), bhtd(kt), bhtd(vt), causal)
    g1 = ops.attention_backward(bhtd(dt), bhtd(qt), bhtd(kt), bhtd(vt), o1, lse1, causal)
    # the same memory in layout "bthd"
    o2, lse2 = ops.attention_forward(qt, kt, vt, causal, layout="bthd")
    g2 = ops.attention_backward(dt, qt, kt, vt, o2, lse2, causal, layout="bthd")
    assert o2.shape == (B, T, H, D) and o2.flags.c_contiguous
    # reversed batch order (negative strides) and results reversed back
    r = slice(None, None, -1)
    o3, lse3 = ops.attention_forward(qc[r], kc[r], vc[r], causal)
    g3 = ops.attention_backward(doc[r], qc[r], kc[r], vc[r], o3, lse3, causal)
    for o, lse, g in (
        (o1, lse1, g1),
        (bhtd(o2), lse2, [bhtd(x) for x in g2]),
        (o3[r], lse3[r], [x[r] for x in g3]),
    ):
        close(o, o0, 1e-6), close(lse, lse0, 1e-6)
        for a, b in zip(g, g0, strict=True):
            close(a, b, 1e-5)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 2),
    Hkv=st.integers(1, 3),
    group=st.integers(1, 3),
    T=st.integers(1, 150),
    D=st.integers(1, 40),
    causal=st.booleans(),
    layout=st.sampled_from(["bhtd", "bthd"]),
    seed=st.integers(0, 2**16),
)
def test_strided_attention_hypothesis(
    B: int, Hkv: int, group: int, T: int, D: int, causal: bool, layout: str, seed: int
) -> None:
    H = Hkv * group
    rng = np.random.default_rng(seed)
    _, q, k, v = fused(rng, B, T, H, Hkv, D, pad=int(rng.integers(0, 4)))
    if layout == "bhtd":
        q, k, v = bhtd(q), bhtd(k), bhtd(v)
    o, lse = ops.attention_forward(q, k, v, causal, layout=layout)
    to_ref = bhtd if layout == "bthd" else (lambda a: a)
    O, LSE = ref.attention_forward(to_ref(q), to_ref(k), to_ref(v), causal)
    close(to_ref(o), O, 1e-5), close(lse, LSE, 1e-5)
    do = rnd(rng, *q.shape)
    _, gq, gk, gv = grad_views(B, T, H, Hkv, D)
    if layout == "bhtd":
        gq, gk, gv = bhtd(gq), bhtd(gk), bhtd(gv)
    ops.attention_backward(do, q, k, v, o, lse, causal, layout=layout, out=(gq, gk, gv))
    want = ref.attention_backward(to_ref(do), to_ref(q), to_ref(k), to_ref(v), causal)
    for a, b in zip((gq, gk, gv), want, strict=True):
        close(to_ref(a), b, 1e-4)


def test_strided_gqa_matches_torch_autograd() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(11)
    B, H, Hkv, T, D = 2, 6, 2, 77, 24
    _, q, k, v = fused(rng, B, T, H, Hkv, D)
    do = rnd(rng, B, T, H, D)
    qt, kt, vt = (torch.tensor(np.ascontiguousarray(bhtd(a)), requires_grad=True) for a in (q, k, v))
    ot = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
    ot.backward(torch.tensor(np.ascontiguousarray(bhtd(do))))
    o, lse = ops.attention_forward(q, k, v, layout="bthd")
    close(bhtd(o), ot.detach().numpy(), 1e-5)
    _, gq, gk, gv = grad_views(B, T, H, Hkv, D)
    ops.attention_backward(do, q, k, v, o, lse, layout="bthd", out=(gq, gk, gv))
    for got, t in zip((gq, gk, gv), (qt, kt, vt), strict=True):
        close(bhtd(got), t.grad.numpy(), 1e-4)


def test_strided_results_do_not_depend_on_thread_count() -> None:
    rng = np.random.default_rng(12)
    _, q, k, v = fused(rng, 2, 90, 4, 2, 8)
    before = sparseft.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            sparseft.set_num_threads(n)
            o, lse = ops.attention_forward(q, k, v, layout="bthd")
            outs.append((o, lse, *ops.attention_backward(o, q, k, v, o, lse, layout="bthd")))
    finally:
        sparseft.set_num_threads(before)
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


# ---- bad layouts, strides and out= buffers ------------------------------------------------------------


def test_bad_layout_and_strides_are_named_errors() -> None:
    rng = np.random.default_rng(13)
    q = rnd(rng, 1, 2, 5, 4)
    with pytest.raises(ValueError, match="layout: expected 'bhtd' or 'bthd', got 'tbhd'"):
        ops.attention_forward(q, q, q, layout="tbhd")
    with pytest.raises(TypeError, match="layout: expected a str, got int"):
        ops.attention_forward(q, q, q, layout=1)  # type: ignore[arg-type]
    # the kernel itself refuses a D axis that is not contiguous (ops copies such inputs)
    wide = rnd(rng, 1, 2, 5, 8)
    with pytest.raises(ValueError, match=r"q: expected the last axis \(D\) contiguous"):
        _core.attention_forward(wide[..., ::2], q, q, True, 0.5)
    o = ops.attention_forward(wide[..., ::2], q, q)[0]  # copied by ops: same result as contiguous
    close(o, ops.attention_forward(np.ascontiguousarray(wide[..., ::2]), q, q)[0], 0.0)
    # strides that are not whole float32 elements (an unaligned view of a byte buffer)
    raw = np.zeros(4 * 40 + 2, np.uint8)[2:].view(np.float32).reshape(1, 2, 5, 4)
    with pytest.raises(ValueError, match="q: expected an aligned array"):
        _core.attention_forward(raw, q, q, True, 0.5)
    with pytest.raises(TypeError, match="k: expected dtype float32"):
        ops.attention_forward(q, q.astype(np.float64), q)
    with pytest.raises(ValueError, match=r"q: expected a 4-D array \(B, T, heads, D\)"):
        ops.attention_forward(q[0], q, q, layout="bthd")
    # in layout "bthd" axis 1 is T: the message names the array's own axis
    with pytest.raises(ValueError, match=r"k: expected axis 1 of length 1 \(T, from q\)"):
        ops.attention_forward(rnd(rng, 1, 1, 2, 4), q, q, layout="bthd")


def test_bad_out_buffers_are_named_errors() -> None:
    rng = np.random.default_rng(14)
    B, T, H, D = 1, 6, 2, 4
    buf, q, k, v = fused(rng, B, T, H, H, D)
    with pytest.raises(ValueError, match=r"out: expected shape \(1, 6, 2, 4\), got \(1, 6, 2, 5\)"):
        ops.attention_forward(q, k, v, layout="bthd", out=np.empty((B, T, H, 5), np.float32))
    ro = np.empty((B, T, H, D), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable array"):
        ops.attention_forward(q, k, v, layout="bthd", out=ro)
    with pytest.raises(TypeError, match="out: expected dtype float32"):
        ops.attention_forward(q, k, v, layout="bthd", out=np.empty((B, T, H, D)))
    with pytest.raises(ValueError, match=r"out: expected the last axis \(D\) contiguous"):
        ops.attention_forward(q, k, v, layout="bthd", out=np.empty((B, T, H, 2 * D), np.float32)[..., ::2])
    base = np.empty((B, T, D), np.float32)
    bcast = np.lib.stride_tricks.as_strided(base, (B, T, H, D), (base.strides[0], base.strides[1], 0, 4))
    with pytest.raises(ValueError, match="out: expected an output whose elements do not overlap"):
        ops.attention_forward(q, k, v, layout="bthd", out=bcast)
    # o written over its own input (the q columns of the fused buffer, or v's)
    with pytest.raises(ValueError, match="out, q: expected arrays that do not share memory"):
        ops.attention_forward(q, k, v, layout="bthd", out=q)
    with pytest.raises(ValueError, match="out, v: expected arrays that do not share memory"):
        ops.attention_forward(q, k, v, layout="bthd", out=buf[..., 2 * H * D : 3 * H * D].reshape(B, T, H, D))
    o, lse = ops.attention_forward(q, k, v, layout="bthd")
    do = rnd(rng, B, T, H, D)
    _, gq, gk, gv = grad_views(B, T, H, H, D)
    with pytest.raises(ValueError, match="dk, dq: expected arrays that do not share memory"):
        ops.attention_backward(do, q, k, v, o, lse, layout="bthd", out=(gq, gq, gv))
    with pytest.raises(ValueError, match="dv, do: expected arrays that do not share memory"):
        ops.attention_backward(do, q, k, v, o, lse, layout="bthd", out=(gq, gk, do))
    with pytest.raises(ValueError, match="dq, k: expected arrays that do not share memory"):
        ops.attention_backward(do, q, k, v, o, lse, layout="bthd", out=(k, None, None))
    with pytest.raises(ValueError, match="dq, o: expected arrays that do not share memory"):
        ops.attention_backward(do, q, k, v, o, lse, layout="bthd", out=(o, None, None))
    with pytest.raises(ValueError, match=r"dk: expected shape \(1, 6, 2, 4\)"):
        ops.attention_backward(do, q, k, v, o, lse, layout="bthd", out=(None, gq[:, :3], None))
    with pytest.raises(TypeError, match=r"out: expected a tuple \(dq, dk, dv\)"):
        ops.attention_backward(do, q, k, v, o, lse, layout="bthd", out=[gq, gk, gv])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"do: expected axis 2 of length 2 \(heads, from q\)"):
        ops.attention_backward(rnd(rng, B, T, 1, D), q, k, v, o, lse, layout="bthd")
    # nothing was written by the refused calls
    assert np.isnan(gq).all() and np.isnan(gk).all() and np.isnan(gv).all()
    # entries left None are new arrays; a partial out= works
    dq, dk, dv = ops.attention_backward(do, q, k, v, o, lse, layout="bthd", out=(None, gk, None))
    assert dk is gk and dq.flags.c_contiguous and dv.shape == (B, T, H, D)


# ---- whole models: the in-place op against the copy-based head-major one ------------------------------


def _copy_based_forward(self: Any, *xs: Any) -> Any:
    q, k, v = (np.ascontiguousarray(bhtd(a)) for a in self._qkv(xs))
    o, lse = ops.attention_forward(q, k, v, causal=True)
    return (np.ascontiguousarray(bhtd(o)).reshape(o.shape[0], o.shape[2], -1), lse)


def _copy_based_backward(self: Any, gy: Any, *xs: Any, y: Any) -> Any:
    q, k, v = (np.ascontiguousarray(bhtd(a)) for a in self._qkv(xs))
    B, T = gy.shape[:2]

    def heads(a: np.ndarray, h: int) -> np.ndarray:
        return np.ascontiguousarray(bhtd(a.reshape(B, T, h, self.D)))

    dq, dk, dv = ops.attention_backward(heads(gy, self.H), q, k, v, heads(y[0], self.H), y[1], causal=True)
    merged = [np.ascontiguousarray(bhtd(g)).reshape(B, T, -1) for g in (dq, dk, dv)]
    if len(xs) == 1:
        return (np.concatenate(merged, axis=-1),)
    return tuple(merged)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_whole_model_logits_and_gradients_unchanged(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if kind == "gpt2":
        model: Any = GPT.random(GPTConfig(vocab_size=61, n_layer=2, n_head=4, d_model=36, seq_len=24), seed=3)
    else:
        cfg = LlamaConfig(vocab_size=61, n_layer=2, n_head=6, n_kv_head=2, d_model=36, d_ff=40, seq_len=24)
        model = Llama.random(cfg, seed=3)
    model.train_base(True)
    rng = np.random.default_rng(15)
    ids, tg = rng.integers(0, 61, (2, 23)), rng.integers(0, 61, (2, 23))

    def step() -> tuple[np.ndarray, float, dict[str, np.ndarray]]:
        model.zero_grad()
        loss = run_step(model, ids, tg)
        return model.logits(ids), loss, {k: g.copy() for k, g in model.gradients().items()}

    logits, loss, grads = step()
    monkeypatch.setattr(tr._Attention, "forward", _copy_based_forward)
    monkeypatch.setattr(tr._Attention, "backward", _copy_based_backward)
    logits0, loss0, grads0 = step()
    assert grads and set(grads) == set(grads0)
    close(logits, logits0, 1e-6)
    assert loss == pytest.approx(loss0, rel=1e-6)
    for name in grads:
        close(grads[name], grads0[name], 1e-5)
