"""The Trainer on GPT-2 checkpoints: transformers round trip of a merged model, PEFT export, exact
sparsity, executed budgets and resume on the real model."""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pytest

import sparseft as sft
from sparseft.data import builtin_corpus

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXT = builtin_corpus()[:30000]
LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _prune(model: sft.models.Decoder, sparsity: float = 0.5) -> None:
    """Magnitude-prune every block linear (Conv1D layout in the state dict)."""
    sd = {k: v.copy() for k, v in model.state_dict().items()}
    for k, v in sd.items():
        if k.endswith(".weight") and any(f".{n}." in k for n in LINEARS):
            mask = sft.prune.magnitude(np.ascontiguousarray(v.T), sparsity=sparsity).T
            sd[k] = np.where(mask, v, 0).astype(np.float32)
    model.load_state_dict(sd)


def _zeros(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v == 0 for k, v in sd.items() if k.endswith(".weight") and any(f".{n}." in k for n in LINEARS)}


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("gpt2")
    cfg = transformers.GPT2Config(
        vocab_size=256, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(d / "dense")
    m = sft.models.from_pretrained(d / "dense")
    _prune(m)
    m.save_pretrained(str(d / "pruned"))
    return d / "pruned"


def _hf(path: pathlib.Path):
    return transformers.GPT2LMHeadModel.from_pretrained(path).eval()


def _ids(B: int = 2, T: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (B, T))


def _fit(model, adapter, steps=3, **kw) -> sft.Trainer:
    tr = sft.Trainer(model, adapter=adapter, lr=2e-2, seed=0, **kw)
    tr.fit(TEXT, steps=steps, batch_size=2, seq_len=16, progress=False)
    return tr


def test_merged_model_loads_into_transformers_with_every_zero_kept(pruned_dir, tmp_path) -> None:
    m = sft.models.from_pretrained(pruned_dir)
    before = m.state_dict()
    pruned = _zeros(before)
    tr = _fit(m, sft.LoRSConfig(r=4, alpha=8))
    assert any(np.abs(lay.B).max() > 0 for lay in m.linears().values())
    merged = tr.merge()
    merged.save_pretrained(str(tmp_path / "merged"))
    hf = _hf(tmp_path / "merged")
    ids = _ids()
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(merged.logits(ids), ref, rtol=1e-4, atol=1e-4)
    hf_sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    changed = 0
    for k, z in pruned.items():
        assert np.array_equal(hf_sd[k] == 0, z), k  # every pruned zero kept, no new zero
        changed += int((hf_sd[k] != before[k]).sum())
    assert changed > 0
    with pytest.raises(ValueError, match="nothing to merge"):
        sft.Trainer(sft.models.from_pretrained(pruned_dir)).merge()


@pytest.mark.parametrize("dora", [False, True])
def test_peft_export_loads_with_peft_and_adds_the_unmasked_adapter(pruned_dir, tmp_path, dora) -> None:
    peft = pytest.importorskip("peft")
    m = sft.models.from_pretrained(pruned_dir)
    tr = _fit(m, sft.LoRSConfig(r=4, alpha=8, magnitude=dora))
    with pytest.warns(UserWarning, match="UNMASKED"):
        modules = tr.export_peft(tmp_path / "adapter")
    assert len(modules) == 4 * 2 and all(mod.startswith("transformer.h.") for mod in modules)
    pm = peft.PeftModel.from_pretrained(_hf(pruned_dir), tmp_path / "adapter").eval()
    # reference: the base with the unmasked W + s B A (and DoRA's m / ||.||_row) written in
    ref = _hf(pruned_dir)
    sd = ref.state_dict()
    filled = 0
    for name, layer in m.linears().items():
        W = layer.base.to_dense().astype(np.float64)
        Wp = W + layer.scaling * (layer.B.astype(np.float64) @ layer.A.astype(np.float64))
        if dora:
            Wp = layer.magnitude[:, None] * Wp / np.linalg.norm(Wp, axis=1, keepdims=True)
        filled += int(((Wp != 0) & (W == 0)).sum())
        sd[f"transformer.{name}.weight"] = torch.from_numpy(np.ascontiguousarray(Wp.T).astype(np.float32))
    ref.load_state_dict(sd)
    ids = torch.from_numpy(_ids())
    with torch.no_grad():
        np.testing.assert_allclose(pm(ids).logits.numpy(), ref(ids).logits.numpy(), rtol=1e-4, atol=1e-4)
    assert filled > 0  # PEFT fills in pruned zeros, as the warning says
    with pytest.raises(ValueError, match="has no adapter"):
        sft.Trainer(sft.models.from_pretrained(pruned_dir)).export_peft(tmp_path / "x")


def test_sparse_full_finetuning_keeps_every_zero(pruned_dir) -> None:
    m = sft.models.from_pretrained(pruned_dir)
    before = m.state_dict()
    pruned = _zeros(before)
    tr = _fit(m, None, weight_decay=0.1)
    assert tr.history.loss[-1] < tr.history.loss[0]
    after = m.state_dict()
    for k, z in pruned.items():
        assert np.array_equal(after[k] == 0, z), k
        assert not np.array_equal(after[k], before[k]), k


def test_budget_on_gpt_is_bit_identical_and_within_budget(pruned_dir) -> None:
    runs = []
    for budget in (None, 0.5):
        m = sft.models.from_pretrained(pruned_dir)
        tr = _fit(m, sft.LoRSConfig(r=4), steps=2, memory_budget=budget, plan_time_limit=3)
        runs.append((tr, {k: v.copy() for k, v in m.parameters().items()}))
    (t0, p0), (t1, p1) = runs
    assert t0.history.loss == t1.history.loss
    for k in p0:
        assert np.array_equal(p0[k], p1[k]), k
    assert t1.plan is not None and t1.plan.recomputations > 0
    assert t1.peak_activation_bytes <= t1.plan.budget <= t0.peak_activation_bytes // 2 + 1


def test_gpt_checkpoint_resumes_bit_identically(pruned_dir, tmp_path) -> None:
    cfg = sft.LoRSConfig(r=2, magnitude=True)
    full = _fit(sft.models.from_pretrained(pruned_dir), cfg, steps=4)
    part = sft.Trainer(sft.models.from_pretrained(pruned_dir), adapter=cfg, lr=2e-2, seed=0)
    part.fit(TEXT, steps=4, batch_size=2, seq_len=16, progress=False, callbacks=[lambda t, r: r["step"] < 2])
    part.save(tmp_path / "ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = sft.Trainer.load(tmp_path / "ckpt")  # the model comes from ckpt/model
    resumed.fit(TEXT, steps=4, batch_size=2, seq_len=16, progress=False)
    assert resumed.history.loss == full.history.loss
    for k, v in full.model.parameters().items():
        assert np.array_equal(v, resumed.model.parameters()[k]), k
    with pytest.raises(ValueError, match="seq_len: the model has 32 positions"):
        resumed.fit(TEXT, steps=5, batch_size=2, seq_len=64, progress=False)
