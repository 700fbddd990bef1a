"""GPT-2 and Llama decoders: logits and gradients against Hugging Face transformers / torch autograd,
the op protocol's byte accounting, adapters, sparse full fine-tuning, bad configs and inputs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sparseft as sft
from sparseft.models import GPT, GPTConfig, Llama, LlamaConfig, from_pretrained
from sparseft.models.graph import act_nbytes, primary, run_step

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V, T = 67, 9
GPT_CFG = GPTConfig(vocab_size=V, n_layer=2, n_head=4, d_model=32, seq_len=16)
LLAMA_CFG = LlamaConfig(
    vocab_size=V, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=40, seq_len=16, rope_theta=500.0
)


def hf_gpt2(seed: int = 0) -> Any:
    """A tiny random GPT2LMHeadModel (float32, eval mode, random biases and norms)."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=V, n_layer=2, n_head=4, n_embd=32, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    m = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return m


def hf_llama(seed: int = 0, **config: Any) -> Any:
    """A tiny random LlamaForCausalLM with grouped-query attention and random norm weights
    (``config`` overrides LlamaConfig fields)."""
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=V,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=32,
        intermediate_size=40,
        max_position_embeddings=16,
        rope_theta=500.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    cfg = transformers.LlamaConfig(**{**fields, **config})
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return m


def save_hf(m: Any, path: Path, **kw: Any) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.save_pretrained(str(path), **kw)
    return path


def hf_logits(m: Any, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return m(torch.from_numpy(ids)).logits.numpy()


def ids_and_targets(seed: int = 0, B: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """(transformers model, sparseft model loaded from its save_pretrained directory, directory)."""
    hf = hf_gpt2() if request.param == "gpt2" else hf_llama()
    d = save_hf(hf, tmp_path_factory.mktemp(request.param))
    return hf, from_pretrained(d), d


def test_logits_match_transformers(pair: tuple[Any, Any, Path]) -> None:
    hf, model, _ = pair
    for B, t in ((2, T), (1, 1), (3, 16)):
        ids = np.random.default_rng(B).integers(0, V, (B, t))
        got = model.logits(ids)
        assert got.dtype == np.float32 and got.shape == (B, t, V)
        np.testing.assert_allclose(got, hf_logits(hf, ids), rtol=1e-4, atol=2e-5)


def test_loss_matches_transformers_and_run_step(pair: tuple[Any, Any, Path]) -> None:
    hf, model, _ = pair
    ids, tg = ids_and_targets()
    ref = torch.nn.functional.cross_entropy(
        torch.from_numpy(hf_logits(hf, ids)).reshape(-1, V), torch.from_numpy(tg).reshape(-1)
    )
    assert model.loss(ids, tg) == pytest.approx(float(ref), rel=1e-5)
    assert run_step(model, ids, tg) == pytest.approx(float(ref), rel=1e-5)


def _torch_grads(
    hf: Any, model: Any, ids: np.ndarray, tg: np.ndarray, leaves: dict[str, Any], build: Any
) -> None:
    """Backpropagate the HF model's mean cross-entropy with weights ``build(leaves)`` (functional_call)."""
    params = dict(hf.named_parameters())
    params.update(build(leaves))
    logits = torch.func.functional_call(hf, params, (torch.from_numpy(ids),)).logits
    torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(tg).reshape(-1)).backward()


def _prune(model: Any, seed: int, sparsity: float = 0.5) -> None:
    """Zero a random half of every block linear (through load_state_dict: zeros become the masks)."""
    rng = np.random.default_rng(seed)
    sd = model.state_dict()
    lin = {model.hf_prefix + n + ".weight" for n in model.linears()}
    for k in lin:
        sd[k] = np.where(rng.random(sd[k].shape) < sparsity, 0, sd[k]).astype(np.float32)
    model.load_state_dict(sd)


def test_adapter_gradients_match_torch_autograd(pair: tuple[Any, Any, Path]) -> None:
    hf, _, d = pair
    model = from_pretrained(d)
    _prune(model, 1)
    adapted = model.add_adapters(sft.LoRSConfig(r=2, alpha=4.0))
    assert adapted == list(model.linears())
    rng = np.random.default_rng(2)
    for layer in model.linears().values():
        layer.B[...] = rng.standard_normal(layer.B.shape).astype(np.float32) * 0.1
    ids, tg = ids_and_targets(3)
    model.zero_grad()
    loss = run_step(model, ids, tg)
    grads = model.gradients()
    assert set(grads) == {f"{n}.{p}" for n in model.linears() for p in ("A", "B")}

    leaves = {}
    for n, layer in model.linears().items():
        leaves[n] = (
            torch.tensor(layer.A, requires_grad=True),
            torch.tensor(layer.B, requires_grad=True),
            torch.from_numpy(layer.base.to_dense()),
            torch.from_numpy(layer.mask),
            layer.scaling,
        )
    conv = {n: op.conv1d for n, op in ((o.name, o) for o in model.ops() if hasattr(o, "conv1d"))}

    def build(lv: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for n, (A, B, W, M, s) in lv.items():
            Wp = W + s * (B @ A) * M
            out[model.hf_prefix + n + ".weight"] = Wp.T if conv[n] else Wp
        return out

    _torch_grads(hf, model, ids, tg, leaves, build)
    for n, (A, B, *_rest) in leaves.items():
        np.testing.assert_allclose(grads[n + ".A"], A.grad.numpy(), rtol=2e-3, atol=2e-6, err_msg=n)
        np.testing.assert_allclose(grads[n + ".B"], B.grad.numpy(), rtol=2e-3, atol=2e-6, err_msg=n)
    assert np.isfinite(loss)


@pytest.mark.parametrize("fmt", ["dense", "csr", "nm"])
def test_base_training_gradients_match_torch_and_keep_zeros(pair: tuple[Any, Any, Path], fmt: str) -> None:
    hf, _, d = pair
    model = from_pretrained(d)
    _prune(model, 4, sparsity={"dense": 0.5, "csr": 0.9, "nm": 0.0}[fmt])
    if fmt == "nm":  # 2:4 masks stored in the N:M format (swapped in, as sparsify does)
        for op in model.ops():
            if hasattr(op, "conv1d"):
                W = op.layer.base.to_dense()
                W = np.where(sft.prune.nm(W, 2, 4), W, np.float32(0))
                op.layer = sft.LoRSLinear(W, r=1, bias=op.layer.bias, format="nm")
    assert {layer.base.format for layer in model.linears().values()} == {fmt}
    masks = {n: layer.mask for n, layer in model.linears().items()}
    model.train_base(True)
    ids, tg = ids_and_targets(5)
    model.zero_grad()
    run_step(model, ids, tg)
    grads = model.gradients()
    sd = model.state_dict()
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in sd.items()}
    # the mask multiplies the weights, as the sparse base does: gradients at pruned positions vanish
    conv = {model.hf_prefix + o.name + ".weight": o for o in model.ops() if hasattr(o, "conv1d")}

    def build(lv: dict[str, Any]) -> dict[str, Any]:
        out = dict(lv)
        for k, op in conv.items():
            M = torch.from_numpy(masks[op.name].T if op.conv1d else masks[op.name])
            out[k] = lv[k] * M
        if "lm_head.weight" not in lv:
            out["lm_head.weight"] = lv[
                next(k for k in lv if k.endswith(("wte.weight", "embed_tokens.weight")))
            ]
        return out

    _torch_grads(hf, model, ids, tg, leaves, build)
    for k, op in conv.items():
        g = grads[op.name + ".weight"]
        ref = leaves[k].grad.numpy()
        ref = ref.T if op.conv1d else ref
        layer = op.layer
        dense = np.zeros(layer.mask.shape, np.float32)
        if g.shape == dense.shape:
            dense = g
        else:
            dense[layer.mask] = g.reshape(-1)
        np.testing.assert_allclose(dense, ref * masks[op.name], rtol=2e-3, atol=2e-6, err_msg=k)
        if op.layer.bias is not None:
            np.testing.assert_allclose(
                grads[op.name + ".bias"], leaves[k[:-6] + "bias"].grad.numpy(), rtol=2e-3, atol=2e-6
            )
    norms = [n for n in grads if "ln" in n or "norm" in n]
    assert norms
    for n in norms:
        key = model.hf_prefix + n if not n.startswith("lm_head") else n
        np.testing.assert_allclose(grads[n], leaves[key].grad.numpy(), rtol=2e-3, atol=2e-6, err_msg=n)
    # AdamW steps (with weight decay) on the stored values never move a pruned zero
    from sparseft.models.ops import adamw_step

    for n, p in model.parameters().items():
        m, v = np.zeros_like(p), np.zeros_like(p)
        for step in (1, 2):
            adamw_step(
                p, grads[n], m, v, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, step=step
            )
    for n, layer in model.linears().items():
        assert not layer.base.to_dense()[~masks[n]].any(), n
        assert np.array_equal(layer.mask, masks[n])


@pytest.mark.parametrize("cfg", [GPT_CFG, LLAMA_CFG], ids=["gpt2", "llama"])
def test_whole_model_gradient_finite_differences(cfg: Any) -> None:
    """Adapter gradients of the whole model against central differences of model.loss (float32)."""
    model = (GPT if isinstance(cfg, GPTConfig) else Llama).random(cfg, seed=7)
    model.add_adapters(
        sft.LoRSConfig(r=2, alpha=2.0, seed=1),
        target_modules=["c_fc", "c_attn"] if isinstance(cfg, GPTConfig) else ["v_proj", "down_proj"],
    )
    rng = np.random.default_rng(8)
    for layer in model.linears().values():
        layer.B[...] = (rng.standard_normal(layer.B.shape) * 0.3).astype(np.float32)
    ids, tg = ids_and_targets(9)
    model.zero_grad()
    run_step(model, ids, tg)
    grads = model.gradients()
    params = model.parameters()
    assert len(params) == 4 * cfg.n_layer // 2 * 2  # two targeted linears per block, A and B each
    eps = 1e-2
    for name in sorted(params)[:6]:
        p, g = params[name], grads[name]
        for idx in [np.unravel_index(i, p.shape) for i in rng.choice(p.size, 3, replace=False)]:
            old = p[idx]
            p[idx] = old + eps
            hi = model.loss(ids, tg)
            p[idx] = old - eps
            lo = model.loss(ids, tg)
            p[idx] = old
            assert g[idx] == pytest.approx((hi - lo) / (2 * eps), rel=5e-2, abs=3e-4), (name, idx)


@pytest.mark.parametrize("cfg", [GPT_CFG, LLAMA_CFG], ids=["gpt2", "llama"])
def test_op_byte_accounting_matches_the_arrays(cfg: Any) -> None:
    """out_nbytes/grad_nbytes (what the planner is told) equal the bytes the ops really produce."""
    model = (GPT if isinstance(cfg, GPTConfig) else Llama).random(cfg, seed=0)
    model.add_adapters(sft.LoRSConfig(r=2))
    B = 3
    ids, tg = ids_and_targets(1, B=B)
    acts: dict[str, Any] = {"input": ids, "target": tg}
    for op in model.ops():
        acts[op.name] = op.forward(*(acts[i] for i in op.inputs))
        assert op.out_nbytes(B, T) == act_nbytes(acts[op.name]), op.name
    ops = model.ops()
    gys: dict[str, Any] = {}
    for op in reversed(ops):
        gy = None if op is ops[-1] else gys.get(op.name, np.ones_like(primary(acts[op.name])))
        gxs = op.backward(gy, *(acts[i] for i in op.inputs), y=acts[op.name])
        got = sum(g.nbytes for g in {id(g): g for g in gxs if g is not None}.values())
        assert op.grad_nbytes(B, T) == got, op.name
        for i, g in zip(op.inputs, gxs, strict=True):
            if g is not None:
                gys[i] = g
    # no op keeps an activation alive: forward again gives the same loss
    assert float(primary(acts[ops[-1].name])) == pytest.approx(model.loss(ids, tg), rel=1e-6)


def test_save_pretrained_roundtrip_keeps_every_zero(tmp_path: Path) -> None:
    for cls, cfg in ((GPT, GPT_CFG), (Llama, LLAMA_CFG)):
        model = cls.random(cfg, seed=3)
        _prune(model, 6, sparsity=0.6)
        model.add_adapters(sft.LoRSConfig(r=4, seed=2))
        rng = np.random.default_rng(0)
        for layer in model.linears().values():
            layer.B[...] = rng.standard_normal(layer.B.shape).astype(np.float32) * 0.05
        masks = {n: layer.mask for n, layer in model.linears().items()}
        ids, _ = ids_and_targets(2)
        before = model.logits(ids)
        model.merge_adapters()
        np.testing.assert_allclose(model.logits(ids), before, rtol=1e-4, atol=1e-5)
        d = tmp_path / cls.__name__
        model.save_pretrained(d)
        assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(d)).eval()
        np.testing.assert_allclose(hf_logits(hf, ids), before, rtol=1e-4, atol=1e-5)
        hsd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
        for n, m in masks.items():
            w = hsd[model.hf_prefix + n + ".weight"]
            w = w.T if isinstance(model, GPT) else w
            assert np.array_equal(w != 0, m), n  # every pruned zero kept, nothing else zero
        again = from_pretrained(d)
        for n, layer in again.linears().items():
            assert np.array_equal(layer.mask, masks[n])
        np.testing.assert_array_equal(again.logits(ids), model.logits(ids))


def test_state_dict_roundtrip_and_prefixless_keys() -> None:
    model = GPT.random(GPT_CFG, seed=1)
    other = GPT.random(GPT_CFG, seed=2)
    sd = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
    sd["lm_head.weight"] = sd["wte.weight"]
    sd["h.0.attn.bias"] = np.ones((1, 1, 16, 16), np.float32)  # an old checkpoint's causal-mask buffer
    other.load_state_dict(sd)
    ids, _ = ids_and_targets(0)
    np.testing.assert_array_equal(other.logits(ids), model.logits(ids))
    assert model.nbytes > sum(v.nbytes for v in model.state_dict().values())  # masks counted too


def test_load_state_dict_rejects_bad_entries() -> None:
    model = Llama.random(LLAMA_CFG, seed=0)
    ids, _ = ids_and_targets(0)
    before = model.logits(ids)
    sd = model.state_dict()
    bad = dict(sd)
    del bad["model.norm.weight"]
    with pytest.raises(ValueError, match=r"missing keys.*model\.norm\.weight"):
        model.load_state_dict(bad)
    bad = dict(sd, **{"model.layers.0.mlp.up_proj.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"up_proj.weight: expected shape \(40, 32\)"):
        model.load_state_dict(bad)
    bad = dict(
        sd,
        **{
            "model.layers.1.self_attn.q_proj.weight": sd["model.layers.1.self_attn.q_proj.weight"].astype(
                np.float64
            )
        },
    )
    with pytest.raises(TypeError, match=r"q_proj\.weight: expected a float32"):
        model.load_state_dict(bad)
    nan = sd["model.norm.weight"].copy()
    nan[0] = np.nan
    with pytest.raises(ValueError, match=r"norm\.weight: contains NaN"):
        model.load_state_dict(dict(sd, **{"model.norm.weight": nan}))
    with pytest.raises(ValueError, match="unexpected keys"):
        model.load_state_dict(dict(sd, extra=np.zeros(1, np.float32)))
    model.load_state_dict(dict(sd, extra=np.zeros(1, np.float32)), strict=False)
    np.testing.assert_array_equal(model.logits(ids), before)  # nothing changed by the failures


def test_bad_configs() -> None:
    with pytest.raises(ValueError, match="d_model: expected a multiple of n_head"):
        GPTConfig(vocab_size=10, n_layer=1, n_head=3, d_model=32, seq_len=8)
    with pytest.raises(ValueError, match="n_kv_head: expected a divisor"):
        LlamaConfig(vocab_size=10, n_layer=1, n_head=4, n_kv_head=3, d_model=32, d_ff=8, seq_len=8)
    with pytest.raises(ValueError, match="even head size"):
        LlamaConfig(vocab_size=10, n_layer=1, n_head=4, n_kv_head=4, d_model=12, d_ff=8, seq_len=8)
    with pytest.raises(TypeError, match="vocab_size: expected an int"):
        GPTConfig(vocab_size=10.0, n_layer=1, n_head=1, d_model=8, seq_len=8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_layer: expected an int >= 1"):
        GPTConfig(vocab_size=10, n_layer=0, n_head=1, d_model=8, seq_len=8)
    with pytest.raises(ValueError, match="rope_theta"):
        LlamaConfig(
            vocab_size=10, n_layer=1, n_head=1, n_kv_head=1, d_model=8, d_ff=8, seq_len=8, rope_theta=-1.0
        )
    with pytest.raises(ValueError, match="high_freq_factor > low_freq_factor"):
        LlamaConfig(
            vocab_size=10,
            n_layer=1,
            n_head=1,
            n_kv_head=1,
            d_model=8,
            d_ff=8,
            seq_len=8,
            rope_llama3=(8.0, 4.0, 1.0, 8),
        )
    with pytest.raises(TypeError, match="rope_llama3: expected a tuple"):
        LlamaConfig(
            vocab_size=10, n_layer=1, n_head=1, n_kv_head=1, d_model=8, d_ff=8, seq_len=8, rope_llama3=[8.0]
        )  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config: expected a GPTConfig"):
        GPT.random(LLAMA_CFG)
    with pytest.raises(ValueError, match="seed"):
        GPT.random(GPT_CFG, seed=-1)


def test_bad_inputs_name_the_argument() -> None:
    model = GPT.random(GPT_CFG, seed=0)
    with pytest.raises(ValueError, match=r"ids: expected token ids in \[0, 67\)"):
        model.logits(np.array([[0, 67]]))
    with pytest.raises(ValueError, match="at most 16 tokens"):
        model.logits(np.zeros((1, 17), np.int64))
    with pytest.raises(ValueError, match="2-D"):
        model.logits(np.zeros(5, np.int64))
    with pytest.raises(TypeError, match="ids: expected an integer"):
        model.logits(np.zeros((1, 3), np.float32))
    with pytest.raises(TypeError, match="targets: expected an int64"):
        model.loss(np.zeros((1, 3), np.int64), np.zeros((1, 3), np.int32))
    with pytest.raises(ValueError, match="targets: expected shape"):
        model.loss(np.zeros((1, 3), np.int64), np.zeros((1, 4), np.int64))
    with pytest.raises(ValueError, match="target_modules: 'q_proj' matches no block linear"):
        model.add_adapters(sft.LoRSConfig(), target_modules=["q_proj"])
    with pytest.raises(TypeError, match="config: expected a LoRSConfig"):
        model.add_adapters({"r": 2})  # type: ignore[arg-type]
    model.add_adapters(sft.LoRSConfig(r=2), target_modules="c_fc")
    with pytest.raises(ValueError, match="merge_adapters"):
        model.train_base(True)
    model.train_base(False)  # leaves the adapters training
    assert sorted(model.parameters()) == sorted(f"h.{i}.mlp.c_fc.{p}" for i in range(2) for p in ("A", "B"))


def test_deterministic_random_init_and_sizes() -> None:
    a, b = Llama.random(LLAMA_CFG, seed=5), Llama.random(LLAMA_CFG, seed=5)
    ids, _ = ids_and_targets(0)
    np.testing.assert_array_equal(a.logits(ids), b.logits(ids))
    assert not np.array_equal(a.logits(ids), Llama.random(LLAMA_CFG, seed=6).logits(ids))
    assert sorted(a.linears())[:2] == ["layers.0.mlp.down_proj", "layers.0.mlp.gate_proj"]
    assert a.linears()["layers.0.self_attn.k_proj"].base.shape == (16, 32)  # 2 kv heads of 8


def test_base_training_after_merge_and_layer_swap() -> None:
    model = GPT.random(GPT_CFG, seed=4)
    _prune(model, 2)
    model.add_adapters(sft.LoRSConfig(r=2))
    for layer in model.linears().values():
        layer.B[...] = 0.1
    ids, tg = ids_and_targets(0)
    before = model.logits(ids)
    model.merge_adapters()
    model.train_base(True)  # the merged weights become the trainable base
    np.testing.assert_allclose(model.logits(ids), before, rtol=1e-5, atol=1e-6)
    op = next(o for o in model.ops() if o.name == "h.1.mlp.c_fc")
    W = op.layer.base.to_dense()
    W[:, ::2] = 0  # a sparser rebuild swapped in (as sparsify does): base mode follows the new mask
    op.layer = sft.LoRSLinear(W, r=1, bias=op.layer.bias)
    model.zero_grad()
    run_step(model, ids, tg)
    g = model.gradients()["h.1.mlp.c_fc.weight"]
    assert g.shape == model.parameters()["h.1.mlp.c_fc.weight"].shape
    assert not (g.reshape(op.layer.mask.shape)[~op.layer.mask] if g.ndim == 2 else g[:0]).any()
    model.train_base(False)
    assert model.parameters() == {}


@pytest.mark.parametrize("scaled", [False, True])
def test_rope_backward_is_the_adjoint(scaled: bool) -> None:
    """<rope(x), g> == <x, rope_backward(g)> for plain and Llama 3.1-scaled frequencies."""
    cfg = LlamaConfig(
        vocab_size=V,
        n_layer=1,
        n_head=2,
        n_kv_head=1,
        d_model=12,
        d_ff=8,
        seq_len=16,
        rope_llama3=(8.0, 1.0, 4.0, 4) if scaled else None,
    )
    op = next(o for o in Llama.random(cfg).ops() if o.name.endswith("rope_q"))
    rng = np.random.default_rng(0)
    x, g = (rng.standard_normal((2, 13, 12)).astype(np.float32) for _ in range(2))
    y = op.forward(x)
    (gx,) = op.backward(g, x, y=y)
    assert float(np.vdot(y, g)) == pytest.approx(float(np.vdot(x, gx)), rel=1e-5)
    np.testing.assert_allclose(np.linalg.norm(y), np.linalg.norm(x), rtol=1e-5)  # a rotation
