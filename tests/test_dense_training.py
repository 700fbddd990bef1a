"""Dense full fine-tuning (issue 16): the plain-W GEMM path of a dense base in base mode, trainable
embeddings and head (``train_base(True, embeddings=True)``), the in-place head-gradient kernel, the
exactly-once accounting of a tied head, masks kept on a sparse base, bad inputs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseft as sft
from sparseft import _core
from sparseft.formats.dense import DenseBase
from sparseft.models import GPT, GPTConfig, Llama, LlamaConfig
from sparseft.models.graph import run_step
from sparseft.train.stepgraph import build_step_graph

from . import reference as ref

V, T = 67, 9
TINY_GPT = GPTConfig(vocab_size=V, n_layer=2, n_head=4, d_model=32, seq_len=16)
TINY_LLAMA = LlamaConfig(
    vocab_size=V, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=40, seq_len=16, tie_word_embeddings=False
)


def _base(rng: np.random.Generator, out: int, in_: int, density: float) -> tuple[DenseBase, np.ndarray]:
    mask = rng.random((out, in_)) < density
    W = np.where(mask, rng.standard_normal((out, in_)), 0).astype(np.float32)
    return DenseBase.from_dense(W, mask), W


# ---- the DenseBase plain-W kernels against float64 ----


@settings(max_examples=40, deadline=None)
@given(
    N=st.integers(1, 40),
    out=st.integers(1, 37),
    in_=st.integers(1, 45),
    density=st.sampled_from([0.0, 0.5, 1.0]),
    bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_dense_kernels_match_float64(
    N: int, out: int, in_: int, density: float, bias: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    base, W = _base(rng, out, in_, density)
    x = rng.standard_normal((N, in_)).astype(np.float32)
    gy = rng.standard_normal((N, out)).astype(np.float32)
    b = rng.standard_normal(out).astype(np.float32) if bias else None
    x0, gy0 = x.copy(), gy.copy()
    want = ref.matmul(x, W, trans_b=True) + (0.0 if b is None else b.astype(np.float64))
    np.testing.assert_allclose(base.dense_forward(x, b), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(base.dense_backward_input(gy), ref.matmul(gy, W), rtol=1e-4, atol=1e-4)
    # accumulation onto a masked gradient, twice: gw = 2 (gyᵀx) ⊙ M exactly at the zeros
    M = base.mask_dense()
    gw = np.zeros((out, in_), np.float32)
    base.weight_grad_into(gw, gy, x)
    base.weight_grad_into(gw, gy, x)
    np.testing.assert_allclose(gw, 2 * ref.matmul(gy, x, trans_a=True) * M, rtol=1e-4, atol=1e-4)
    assert not gw[~M].any()
    # full=True: the caller vouches for an all-ones mask, the product is added unmasked
    g2 = np.ones((out, in_), np.float32)
    base.weight_grad_into(g2, gy, x, full=True)
    np.testing.assert_allclose(g2, 1 + ref.matmul(gy, x, trans_a=True), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(gy, gy0)


def test_dense_kernels_reject_bad_inputs(rng: np.random.Generator) -> None:
    base, _ = _base(rng, 5, 7, 0.5)
    x = np.zeros((3, 7), np.float32)
    gy = np.zeros((3, 5), np.float32)
    gw = np.zeros((5, 7), np.float32)
    with pytest.raises(ValueError, match="x:"):
        base.dense_forward(np.zeros((3, 6), np.float32))
    with pytest.raises(TypeError, match="x:"):
        base.dense_forward(x.astype(np.float64))
    with pytest.raises(ValueError, match="gy:"):
        base.dense_backward_input(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="gw:"):
        base.weight_grad_into(np.zeros((5, 6), np.float32), gy, x)
    ro = gw.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="gw:"):
        base.weight_grad_into(ro, gy, x)
    with pytest.raises(ValueError, match="gy, x:"):
        base.weight_grad_into(gw, gy, np.zeros((4, 7), np.float32))
    with pytest.raises(TypeError, match="gy:"):
        base.weight_grad_into(gw, gy.tolist(), x)  # type: ignore[arg-type]
    assert not gw.any()


# ---- the in-place head gradient ----


@pytest.mark.parametrize("N, C, Vh, chunk", [(1, 3, 5, 0), (13, 7, 29, 0), (13, 7, 29, 4), (40, 16, 300, 24)])
def test_head_backward_into_accumulates(
    rng: np.random.Generator, N: int, C: int, Vh: int, chunk: int
) -> None:
    x = rng.standard_normal((N, C)).astype(np.float32)
    w = rng.standard_normal((Vh, C)).astype(np.float32)
    t = rng.integers(0, Vh, N)
    _, lse = _core.lm_head_xent_forward(x, w, t)
    _, _, dx_ref, dw_ref = ref.lm_head_xent(x, w, t)
    dw = rng.standard_normal((Vh, C)).astype(np.float32)
    dw0 = dw.copy()
    dx = _core.lm_head_xent_backward_into(dw, x, w, t, lse, dloss=0.5, chunk=chunk)
    np.testing.assert_allclose(dx, 0.5 * dx_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw, dw0 + 0.5 * dw_ref, rtol=1e-4, atol=1e-5)


def test_head_backward_into_rejects_bad_dw(rng: np.random.Generator) -> None:
    x = rng.standard_normal((4, 3)).astype(np.float32)
    w = rng.standard_normal((6, 3)).astype(np.float32)
    t = rng.integers(0, 6, 4)
    _, lse = _core.lm_head_xent_forward(x, w, t)
    with pytest.raises(ValueError, match="dw:"):
        _core.lm_head_xent_backward_into(np.zeros((5, 3), np.float32), x, w, t, lse)
    with pytest.raises(TypeError, match="dw:"):
        _core.lm_head_xent_backward_into(np.zeros((6, 3)), x, w, t, lse)
    ro = np.zeros((6, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="dw:"):
        _core.lm_head_xent_backward_into(ro, x, w, t, lse)
    with pytest.raises(ValueError, match="dw, w:"):
        _core.lm_head_xent_backward_into(w, x, w, t, lse)  # the head's own weight
    with pytest.raises(ValueError, match="targets:"):
        _core.lm_head_xent_backward_into(np.zeros((6, 3), np.float32), x, w, np.full(4, 6), lse)


# ---- the model: gradients of every weight against torch autograd ----

torch = pytest.importorskip("torch")


def _torch_gpt(sd: dict[str, np.ndarray], cfg: GPTConfig, ids: np.ndarray, tg: np.ndarray) -> Any:
    """Leaves (requires_grad) of a GPT-2 forward written out in torch from the state dict, after
    backward of the mean cross-entropy (tied head)."""
    F = torch.nn.functional
    P = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in sd.items()}
    p = "transformer."
    Bn, Tn = ids.shape
    C, H = cfg.d_model, cfg.n_head
    x = P[p + "wte.weight"][torch.from_numpy(ids)] + P[p + "wpe.weight"][:Tn]
    causal = torch.ones(Tn, Tn, dtype=torch.bool).tril()
    for i in range(cfg.n_layer):
        k = f"{p}h.{i}."

        def lin(name: str, h: Any, k: str = k) -> Any:
            return h @ P[k + name + ".weight"] + P[k + name + ".bias"]  # Conv1D: (in, out)

        h = F.layer_norm(x, (C,), P[k + "ln_1.weight"], P[k + "ln_1.bias"], cfg.ln_eps)
        q, kk, v = lin("attn.c_attn", h).split(C, dim=-1)
        q, kk, v = (a.reshape(Bn, Tn, H, C // H).transpose(1, 2) for a in (q, kk, v))
        s = (q @ kk.transpose(-1, -2)) / np.sqrt(C // H)
        a = torch.softmax(s.masked_fill(~causal, float("-inf")), -1) @ v
        x = x + lin("attn.c_proj", a.transpose(1, 2).reshape(Bn, Tn, C))
        h = F.layer_norm(x, (C,), P[k + "ln_2.weight"], P[k + "ln_2.bias"], cfg.ln_eps)
        x = x + lin("mlp.c_proj", F.gelu(lin("mlp.c_fc", h), approximate="tanh"))
    x = F.layer_norm(x, (C,), P[p + "ln_f.weight"], P[p + "ln_f.bias"], cfg.ln_eps)
    logits = x @ P[p + "wte.weight"].T
    F.cross_entropy(logits.reshape(-1, cfg.vocab_size), torch.from_numpy(tg).reshape(-1)).backward()
    return P


def _grads_by_key(model: Any) -> dict[str, np.ndarray]:
    """The model's gradients under the state-dict keys (conv1d weights transposed back)."""
    out: dict[str, np.ndarray] = {}
    p = model.hf_prefix
    for op in model.ops():
        for k, full in op.grads().items():
            if hasattr(op, "conv1d"):
                out[f"{p}{op.name}.{k}"] = full.T if (k == "weight" and op.conv1d) else full
            elif op.name == "wte":
                out[p + ("wte.weight" if k == "weight" else "wpe.weight")] = full
            elif op.name == "lm_head":
                out["lm_head.weight"] = full
            else:
                out[f"{p}{op.name}.{k}"] = full
    return out


@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_full_gradients_match_torch_float64(sparsity: float) -> None:
    model = GPT.random(TINY_GPT, seed=3)
    sd = model.state_dict()
    rng = np.random.default_rng(4)
    for k in list(sd):  # random biases and gains, so that their gradients are not trivial
        if sd[k].ndim == 1:
            sd[k] = (sd[k] + 0.1 * rng.standard_normal(sd[k].shape)).astype(np.float32)
    if sparsity:
        for n in model.linears():
            key = model.hf_prefix + n + ".weight"
            sd[key] = np.where(rng.random(sd[key].shape) < sparsity, 0, sd[key]).astype(np.float32)
    model.load_state_dict(sd)
    sd = model.state_dict()
    model.train_base(True, embeddings=True)
    ids, tg = rng.integers(0, V, (3, T)), rng.integers(0, V, (3, T))
    ids[0, :3] = 5  # a repeated id: its embedding gradient rows add up
    model.zero_grad()
    loss = run_step(model, ids, tg)
    got = _grads_by_key(model)
    P = _torch_gpt(sd, TINY_GPT, ids, tg)
    assert set(got) == set(sd), set(sd) ^ set(got)
    for k, g in got.items():
        want = P[k].grad.numpy()
        if k.endswith(".weight") and sd[k].ndim == 2 and "wte" not in k and "wpe" not in k:
            want = want * (sd[k] != 0) if sparsity else want  # the mask multiplies the weight
        np.testing.assert_allclose(g, want, rtol=2e-3, atol=2e-6, err_msg=k)
    assert np.isfinite(loss)


def test_untied_head_is_its_own_parameter() -> None:
    model = Llama.random(TINY_LLAMA, seed=1)
    model.train_base(True, embeddings=True)
    params = model.parameters()
    assert "lm_head.weight" in params and "embed_tokens.weight" in params
    assert params["lm_head.weight"] is not params["embed_tokens.weight"]
    ids = np.random.default_rng(0).integers(0, V, (2, T))
    tg = np.random.default_rng(1).integers(0, V, (2, T))
    model.zero_grad()
    run_step(model, ids, tg)
    g = model.gradients()
    # the head's gradient against the float64 twin on the final hidden states
    h = model._hidden(ids).reshape(-1, TINY_LLAMA.d_model)
    _, _, _, dw = ref.lm_head_xent(h, params["lm_head.weight"], tg.reshape(-1))
    np.testing.assert_allclose(g["lm_head.weight"], dw, rtol=1e-3, atol=1e-6)
    emb = g["embed_tokens.weight"]
    unseen = np.setdiff1d(np.arange(V), ids)
    assert not emb[unseen].any() and emb[np.unique(ids)].any()
    model.train_base(False)
    assert model.parameters() == {}


def test_tied_head_backward_runs_exactly_once() -> None:
    model = GPT.random(TINY_GPT, seed=0)
    model.train_base(True, embeddings=True)
    sg = build_step_graph(model.ops(), 2, T)
    head = len(sg.ops) - 1
    assert sg.bwd_node[head] in sg.once and sg.bwd_node[0] in sg.once
    assert sg.ops[head].params() == {}  # tied: wte is the embedding's parameter, listed once
    assert sum(1 for k in model.parameters() if k.endswith("wte.weight") or k == "wte.weight") == 1


def test_trainer_keeps_masks_and_moves_embeddings() -> None:
    model = GPT.random(TINY_GPT, seed=2)
    sft.sparsify(model, sparsity=0.5, method="magnitude")
    zeros = {n: layer.base.to_dense() == 0 for n, layer in model.linears().items()}
    model.train_base(True, embeddings=True)
    wte0 = model.parameters()["wte.weight"].copy()
    tr = sft.Trainer(model, adapter=None, lr=1e-2, weight_decay=0.1, seed=0)
    data = np.random.default_rng(0).integers(0, V, 2000)
    tr.fit(data, steps=3, batch_size=2, seq_len=T, progress=False)
    for n, layer in model.linears().items():
        W = layer.base.to_dense()
        assert not W[zeros[n]].any(), n
        assert W[~zeros[n]].all(), n
    assert not np.array_equal(model.parameters()["wte.weight"], wte0)
    assert all(np.isfinite(tr.history.loss))


def test_base_mode_bad_inputs() -> None:
    model = GPT.random(TINY_GPT, seed=0)
    with pytest.raises(TypeError, match="embeddings"):
        model.train_base(True, embeddings="yes")  # type: ignore[arg-type]
    model.train_base(True)
    assert not any(k.startswith("wte.") for k in model.parameters())
    op = next(o for o in model.ops() if hasattr(o, "conv1d"))
    with pytest.raises(ValueError, match="x:"):
        op.forward(np.zeros((2, 3, TINY_GPT.d_model + 1), np.float32))


def test_pretrained_dense_model_trains_every_weight(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=V, n_layer=1, n_head=2, n_embd=16, n_positions=16)
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.save_pretrained(str(tmp_path))
    model = sft.models.from_pretrained(tmp_path)
    model.train_base(True, embeddings=True)
    n = sum(p.size for p in model.parameters().values())
    assert n == sum(p.numel() for p in hf.parameters())  # every weight, the tied head once


def test_adamw_vector_lanes_equal_the_scalar_tail() -> None:
    # the 8-lane body and the scalar tail run the same operations: element i updated alone
    # (length 1: scalar only) equals element i of one call over the whole array (vector lanes)
    rng = np.random.default_rng(0)
    n = 203
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    m = (0.1 * rng.standard_normal(n)).astype(np.float32)
    v = (0.01 * rng.random(n)).astype(np.float32)
    hp = (1e-3, 0.9, 0.999, 1e-8, 0.1, 3)
    P, M, Vv = p.copy(), m.copy(), v.copy()
    _core.adamw_step(P, g, M, Vv, *hp)
    for i in range(n):
        a, b, c = p[i : i + 1].copy(), m[i : i + 1].copy(), v[i : i + 1].copy()
        _core.adamw_step(a, g[i : i + 1].copy(), b, c, *hp)
        assert (a[0], b[0], c[0]) == (P[i], M[i], Vv[i]), i
    want, wm, wv = ref.adamw_step(p, g, m, v, *hp)
    np.testing.assert_allclose(P, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(M, wm, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(Vv, wv, rtol=1e-4, atol=1e-10)  # 1 - b2 rounded to float32


@pytest.mark.parametrize("m, n, k", [(256, 2100, 300), (145, 2049, 700), (512, 4099, 5), (300, 2048, 655)])
def test_token_gemm_driver_contract_threads_and_scratch(m: int, n: int, k: int) -> None:
    """The dynamic-columns driver (145..512 rows, op(A) small, many column chunks): float64
    contract with beta, bits identical for any thread count, scratch within 1 MiB per thread."""
    r = np.random.default_rng(m + n + k)
    before = sft.get_num_threads()
    try:
        for ta, tb in [(False, False), (True, True), (False, True)]:
            a = r.uniform(-1, 1, (k, m) if ta else (m, k)).astype(np.float32)
            b = r.uniform(-1, 1, (n, k) if tb else (k, n)).astype(np.float32)
            c0 = r.uniform(-1, 1, (m, n)).astype(np.float32)
            want = 0.5 * c0 + ref.matmul(a, b, trans_a=ta, trans_b=tb)
            outs = []
            for t in (1, 2, 3):
                sft.set_num_threads(t)
                c = c0.copy()
                _core.reset_scratch_peak()
                _core.gemm_into(c, a, b, trans_a=ta, trans_b=tb, beta=0.5)
                assert _core.scratch_stats()["peak"] <= t * 2**20
                outs.append(c)
            np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=2e-5 * np.sqrt(k) + 1e-5)
            cp = c0.copy()  # the pack-B callback path (the LoRS kernels') gives the same bits
            _core.gemm_into(cp, a, b, trans_a=ta, trans_b=tb, beta=0.5, packb=True)
            outs.append(cp)
            for c in outs[1:]:
                np.testing.assert_array_equal(c, outs[0])
    finally:
        sft.set_num_threads(before)
