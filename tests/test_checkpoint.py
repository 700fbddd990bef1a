"""Hugging Face checkpoints in and out: BF16/F16, sharded, prefix-less GPT-2 keys; corrupt, truncated
and lying files; bad config.json; tokenizers."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparseft.models import ByteTokenizer, HFTokenizer, from_pretrained, load_tokenizer
from sparseft.models.checkpoint import SafetensorsReader

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import save_file  # noqa: E402

from tests.test_models import V, hf_gpt2, hf_llama, hf_logits, save_hf  # noqa: E402


@pytest.fixture(scope="module")
def llama_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same tiny Llama saved as F32, BF16 sharded into several files, and F16."""
    hf = hf_llama(seed=3)
    root = tmp_path_factory.mktemp("llama")
    ids = np.random.default_rng(0).integers(0, V, (2, 11))
    out: dict[str, Any] = {"ids": ids, "f32": save_hf(hf, root / "f32"), "ref": hf_logits(hf, ids)}
    for name, dt in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        h = hf_llama(seed=3).to(dt)
        out[name] = save_hf(h, root / name, max_shard_size="20KB")
        out[name + "_ref"] = hf_logits(h.float(), ids)  # the rounded weights, computed in float32
    return out


def test_bf16_and_f16_sharded_load(llama_dirs: dict[str, Any]) -> None:
    ids = llama_dirs["ids"]
    for name in ("bf16", "f16"):
        d = llama_dirs[name]
        assert (d / "model.safetensors.index.json").exists()
        assert len(list(d.glob("model-*.safetensors"))) > 1
        np.testing.assert_allclose(
            from_pretrained(d).logits(ids), llama_dirs[name + "_ref"], rtol=1e-4, atol=2e-5
        )
    np.testing.assert_allclose(
        from_pretrained(llama_dirs["f32"]).logits(ids), llama_dirs["ref"], rtol=1e-4, atol=2e-5
    )


def test_bf16_decoding_is_exact(tmp_path: Path) -> None:
    vals = torch.tensor([0.0, -0.0, 1.0, -2.5, 3.14159, 1e-30, 6e4, float(torch.finfo(torch.bfloat16).max)])
    from safetensors.torch import save_file as save_torch

    save_torch({"x": vals.to(torch.bfloat16)}, str(tmp_path / "a.safetensors"))
    got = SafetensorsReader([tmp_path / "a.safetensors"]).read("x")
    np.testing.assert_array_equal(got, vals.to(torch.bfloat16).float().numpy())


def test_gpt2_keys_without_prefix(tmp_path: Path) -> None:
    hf = hf_gpt2(seed=2)
    sd = {k.removeprefix("transformer."): v.detach().numpy().copy() for k, v in hf.state_dict().items()}
    sd.pop("lm_head.weight")
    save_hf(hf, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    save_file(sd, str(tmp_path / "model.safetensors"))
    ids = np.arange(12).reshape(2, 6) % V
    np.testing.assert_allclose(
        from_pretrained(tmp_path).logits(ids), hf_logits(hf, ids), rtol=1e-4, atol=2e-5
    )


# ---- corrupt, truncated and lying files ----


@pytest.fixture
def gpt2_dir(tmp_path: Path) -> Path:
    return save_hf(hf_gpt2(seed=1), tmp_path / "g")


def _rewrite_header(path: Path, edit: Any) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n :])


def test_truncated_file(gpt2_dir: Path) -> None:
    f = gpt2_dir / "model.safetensors"
    raw = f.read_bytes()
    for cut in (len(raw) - 4, 100, 5, 0):
        f.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=r"model\.safetensors"):
            from_pretrained(gpt2_dir)


def test_header_lies_about_offsets_and_sizes(gpt2_dir: Path) -> None:
    f = gpt2_dir / "model.safetensors"
    raw = f.read_bytes()
    key = "transformer.h.0.attn.c_attn.weight"

    def grow(h: dict[str, Any]) -> None:
        h[key]["data_offsets"][1] += 4

    def shape(h: dict[str, Any]) -> None:
        h[key]["shape"] = [32, 97]

    def past_end(h: dict[str, Any]) -> None:
        h[key]["data_offsets"] = [10**12, 10**12 + 4]

    def dtype(h: dict[str, Any]) -> None:
        h[key]["dtype"] = "I64"

    for edit in (grow, shape, past_end, dtype):
        f.write_bytes(raw)
        _rewrite_header(f, edit)
        with pytest.raises(ValueError, match=r"model\.safetensors"):
            from_pretrained(gpt2_dir)
    f.write_bytes(struct.pack("<Q", 2**40) + raw[8:])  # a header length beyond the file
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        from_pretrained(gpt2_dir)
    f.write_bytes(struct.pack("<Q", 8) + b"not json" + raw[8:])
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        from_pretrained(gpt2_dir)


def test_bf16_header_lying_is_caught(tmp_path: Path) -> None:
    from safetensors.torch import save_file as save_torch

    f = tmp_path / "b.safetensors"
    save_torch(
        {"x": torch.ones(4, 4, dtype=torch.bfloat16), "y": torch.ones(2, dtype=torch.bfloat16)}, str(f)
    )
    raw = f.read_bytes()
    f.write_bytes(raw[:-3])
    with pytest.raises(ValueError, match=r"b\.safetensors"):
        SafetensorsReader([f]).read("x")


def test_missing_misshaped_and_nonfinite_tensors(gpt2_dir: Path) -> None:
    f = gpt2_dir / "model.safetensors"
    from safetensors.numpy import load_file

    sd = load_file(str(f))
    key = "transformer.h.1.mlp.c_fc.weight"
    for change, pattern in (
        (lambda s: s.pop(key), r"h\.1\.mlp\.c_fc\.weight.*missing"),
        (
            lambda s: s.__setitem__(key, np.zeros((4, 4), np.float32)),
            r"c_fc\.weight: expected shape \(32, 128\)",
        ),
        (lambda s: s[key].__setitem__((0, 0), np.inf), r"c_fc\.weight: contains NaN"),
        (
            lambda s: s.__setitem__("transformer.ln_f.bias", np.full(32, np.nan, np.float32)),
            r"ln_f\.bias: contains NaN",
        ),
    ):
        bad = {k: v.copy() for k, v in sd.items()}
        change(bad)
        save_file(bad, str(f))
        with pytest.raises(ValueError, match=pattern):
            from_pretrained(gpt2_dir)


def test_bad_config_json(gpt2_dir: Path) -> None:
    c = gpt2_dir / "config.json"
    good = json.loads(c.read_text())
    for text, pattern in (
        ("{not json", "not valid JSON"),
        (json.dumps({**good, "model_type": "bert"}), "model_type: expected 'gpt2' or 'llama'"),
        (json.dumps({k: v for k, v in good.items() if k != "n_embd"}), "n_embd: missing"),
        (json.dumps({**good, "n_head": 5}), "d_model: expected a multiple of n_head"),
        (json.dumps({**good, "activation_function": "relu"}), "activation_function"),
        (json.dumps({**good, "n_layer": "2"}), "n_layer: expected an int"),
        (json.dumps([1, 2]), "expected a JSON object"),
    ):
        c.write_text(text)
        with pytest.raises((ValueError, TypeError), match=pattern):
            from_pretrained(gpt2_dir)
    c.unlink()
    with pytest.raises(ValueError, match=r"config\.json: missing"):
        from_pretrained(gpt2_dir)
    with pytest.raises(ValueError, match="expected a checkpoint directory"):
        from_pretrained(gpt2_dir / "nowhere")


def test_llama_unsupported_variants(llama_dirs: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "l"
    shutil.copytree(llama_dirs["f32"], d)
    good = json.loads((d / "config.json").read_text())
    for change, pattern in (
        ({"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "rope_scaling: only plain RoPE"),
        (
            {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            "llama3 scaling without 'low_freq_factor'",
        ),
        ({"attention_bias": True}, "attention_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"num_key_value_heads": 3}, "n_kv_head"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ):
        (d / "config.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(ValueError, match=pattern):
            from_pretrained(d)


def test_bad_shard_index(llama_dirs: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "s"
    shutil.copytree(llama_dirs["bf16"], d)
    idx = d / "model.safetensors.index.json"
    good = json.loads(idx.read_text())
    shard = sorted(d.glob("model-*.safetensors"))[0]
    shard.rename(d / "gone")
    with pytest.raises(ValueError, match=rf"shard '{shard.name}' is missing"):
        from_pretrained(d)
    (d / "gone").rename(shard)
    bad = {**good, "weight_map": {**good["weight_map"], "model.norm.weight": "../escape.safetensors"}}
    idx.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"not a \.safetensors file name"):
        from_pretrained(d)
    idx.write_text("[]")
    with pytest.raises(ValueError, match="not a valid index file"):
        from_pretrained(d)
    (d / "model.safetensors.index.json").unlink()
    with pytest.raises(ValueError, match=r"no model\.safetensors"):
        from_pretrained(d)


def test_save_is_atomic_and_replaces_a_sharded_checkpoint(llama_dirs: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "x"
    shutil.copytree(llama_dirs["bf16"], d)
    model = from_pretrained(d)
    model.save_pretrained(d)
    assert not (d / "model.safetensors.index.json").exists()
    assert not list(d.glob(".*tmp"))
    np.testing.assert_array_equal(
        from_pretrained(d).logits(llama_dirs["ids"]), model.logits(llama_dirs["ids"])
    )

    first = list(model.iter_state())[:3]

    def boom() -> Any:  # the disk fills after three tensors
        yield from first
        raise OSError("disk full")

    before = (d / "model.safetensors").read_bytes()
    mp = pytest.MonkeyPatch()
    mp.setattr(model, "iter_state", boom)
    try:
        with pytest.raises(OSError, match="disk full"):
            model.save_pretrained(d)
    finally:
        mp.undo()
    assert (d / "model.safetensors").read_bytes() == before
    assert not list(d.glob(".*tmp"))


# ---- tokenizers ----


def test_byte_tokenizer_roundtrip() -> None:
    tok = ByteTokenizer()
    ids = tok.encode("héllo\n")
    assert ids.dtype == np.int64 and ids.tolist() == list("héllo\n".encode())
    assert tok.decode(ids) == "héllo\n"
    assert tok.encode(b"\xff").tolist() == [255]
    assert tok.decode([255]) == "\ufffd"
    with pytest.raises(ValueError, match=r"ids: expected ids in \[0, 256\)"):
        tok.decode([256])
    with pytest.raises(TypeError, match="text: expected str or bytes"):
        tok.encode(3)  # type: ignore[arg-type]


def _word_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", "the", "cat", "sat", "on", "mat"])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.save(str(path))


def test_tokenizer_json_is_used(gpt2_dir: Path, tmp_path: Path) -> None:
    assert isinstance(from_pretrained(gpt2_dir, tokenizer=None).tokenizer, type(None))
    assert from_pretrained(gpt2_dir).tokenizer is None  # vocab 67 < 256: no byte fallback
    _word_tokenizer(gpt2_dir / "tokenizer.json")
    model = from_pretrained(gpt2_dir)
    assert isinstance(model.tokenizer, HFTokenizer)
    ids = model.tokenizer.encode("the cat sat on the dog")
    assert ids.tolist() == [1, 2, 3, 4, 1, 0]
    assert model.tokenizer.decode(ids[:3]) == "the cat sat"
    out = tmp_path / "saved"
    model.save_pretrained(out)
    assert load_tokenizer(out).encode("mat").tolist() == [5]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match=r"bad\.json: not a valid tokenizer"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not found"):
        load_tokenizer(tmp_path / "none")
    with pytest.raises(TypeError, match="tokenizer: expected"):
        from_pretrained(gpt2_dir, tokenizer=3)


def test_llama_with_tied_head(tmp_path: Path) -> None:
    hf = hf_llama(
        0,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        hidden_size=16,
        intermediate_size=24,
        max_position_embeddings=8,
        tie_word_embeddings=True,
    )
    d = save_hf(hf, tmp_path / "in")
    model = from_pretrained(d)
    assert model.config.tie_word_embeddings and "lm_head.weight" not in model.state_dict()
    ids = np.arange(16).reshape(2, 8) % V
    np.testing.assert_allclose(model.logits(ids), hf_logits(hf, ids), rtol=1e-4, atol=2e-5)
    model.save_pretrained(tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    np.testing.assert_allclose(hf_logits(back, ids), model.logits(ids), rtol=1e-4, atol=2e-5)


def test_llama3_rope_scaling(tmp_path: Path) -> None:
    """Llama 3.1's scaled frequencies: low ones divided by the factor, middle ones smoothed."""
    rope = {
        "rope_type": "llama3",
        "factor": 4.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8,
        "rope_theta": 500.0,
    }
    hf = hf_llama(1, rope_parameters=rope)
    model = from_pretrained(save_hf(hf, tmp_path / "in"))
    assert model.config.rope_llama3 == (4.0, 1.0, 4.0, 8)
    np.testing.assert_allclose(model.config.inv_freq(), hf.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)
    ids = np.random.default_rng(0).integers(0, V, (2, 16))
    np.testing.assert_allclose(model.logits(ids), hf_logits(hf, ids), rtol=1e-4, atol=2e-5)
    model.save_pretrained(tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    np.testing.assert_allclose(hf_logits(back, ids), model.logits(ids), rtol=1e-4, atol=2e-5)
