"""Memory-mapped F32 checkpoints (``from_pretrained(dir, mmap=True)``, the default): tensors are
copy-on-write views of the file, the model trains, merges and saves exactly as a read-in copy does,
and nothing is ever written back into the source file; truncated files and lying headers are still
named ValueErrors; unaligned tensors fall back to reading."""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sparseft as sft
from sparseft.models import GPT, GPTConfig, Llama, LlamaConfig, from_pretrained, save_pretrained
from sparseft.models.checkpoint import SafetensorsReader
from sparseft.models.graph import run_step

pytest.importorskip("safetensors")

V = 53
CFGS = {
    "gpt2": GPTConfig(vocab_size=V, n_layer=2, n_head=4, d_model=32, seq_len=16),
    "llama": LlamaConfig(vocab_size=V, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=40, seq_len=16),
}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mapped(a: np.ndarray) -> bool:
    """Whether ``a`` is a view of an mmap.mmap."""
    b: Any = a
    while isinstance(b, np.ndarray):
        b = b.base
    return isinstance(b, memoryview) and isinstance(b.obj, mmap.mmap)


def saved(tmp_path: Path, kind: str) -> Path:
    cfg = CFGS[kind]
    model = (GPT if kind == "gpt2" else Llama).random(cfg, seed=4)
    sft.sparsify(model, sparsity=0.5)
    d = tmp_path / kind
    save_pretrained(model, d)
    return d


def write_raw(path: Path, header: dict[str, Any], data: bytes, pad_to: int = 8, extra: int = 0) -> None:
    """A safetensors file by hand: the header padded so the data starts at 8 + len ≡ extra (mod pad_to)."""
    h = json.dumps(header, separators=(",", ":")).encode()
    while (8 + len(h)) % pad_to != extra:
        h += b" "
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_f32_tensors_are_copy_on_write_views(tmp_path: Path) -> None:
    d = saved(tmp_path, "gpt2")
    f = d / "model.safetensors"
    before = sha(f)
    key = "transformer.wte.weight"
    a = SafetensorsReader([f]).read(key, (V, 32))
    assert mapped(a) and a.flags.writeable and a.flags.aligned and a.flags.c_contiguous
    want = SafetensorsReader([f], mmap=False).read(key, (V, 32))
    assert not mapped(want)
    np.testing.assert_array_equal(a, want)
    a[...] = 7.0  # a private copy of the pages: the file is untouched
    assert sha(f) == before
    np.testing.assert_array_equal(SafetensorsReader([f]).read(key, (V, 32)), want)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_mapped_model_trains_merges_and_saves_like_a_copy(tmp_path: Path, kind: str) -> None:
    src = saved(tmp_path, kind)
    f = src / "model.safetensors"
    before = sha(f)
    models = {m: from_pretrained(src, tokenizer=None, mmap=m) for m in (True, False)}
    assert any(mapped(a) for a in models[True].state_dict().values())
    assert not any(mapped(a) for a in models[False].state_dict().values())
    rng = np.random.default_rng(5)
    ids, tg = rng.integers(0, V, (2, 11)), rng.integers(0, V, (2, 11))

    def sgd(model: Any) -> None:
        for _ in range(2):
            model.zero_grad()
            run_step(model, ids, tg)
            grads = model.gradients()
            for name, p in model.parameters().items():
                p -= 0.05 * grads[name]

    for model in models.values():
        model.add_adapters(sft.LoRSConfig(r=2, alpha=4.0, seed=1))
        sgd(model)
        model.merge_adapters()
        # sparse full fine-tuning: the norms' weights (mapped arrays) are updated in place
        model.train_base(True)
        sgd(model)
    assert any(mapped(p) for p in models[True].parameters().values())
    mm, cp = models[True], models[False]
    np.testing.assert_array_equal(mm.logits(ids), cp.logits(ids))
    for m in (True, False):
        save_pretrained(models[m], tmp_path / f"out_{m}")
    assert sha(tmp_path / "out_True" / "model.safetensors") == sha(
        tmp_path / "out_False" / "model.safetensors"
    )
    # writing into the mapped arrays themselves stays private too
    for a in mm.state_dict().values():
        if mapped(a):
            a += 1.0
    assert sha(f) == before
    # saving over the source directory replaces the file by a rename: the mapped model is intact
    logits = mm.logits(ids)
    save_pretrained(mm, src)
    np.testing.assert_array_equal(mm.logits(ids), logits)
    np.testing.assert_array_equal(from_pretrained(src, tokenizer=None).logits(ids), logits)


def test_unaligned_f32_tensors_are_read_not_mapped(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    f = tmp_path / "u.safetensors"
    # the data section starts at 2 mod 4: a float32 view of the map would be unaligned
    write_raw(f, {"x": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}, x.tobytes(), 4, 2)
    try:
        r = SafetensorsReader([f])
    except ValueError as e:  # the safetensors package may insist on aligned data
        pytest.skip(f"safetensors refuses an unaligned data section: {e}")
    got = r.read("x", (3, 4))
    assert not mapped(got) and got.flags.aligned
    np.testing.assert_array_equal(got, x)


def test_truncated_and_lying_files_are_named_errors_when_mapping(tmp_path: Path) -> None:
    d = saved(tmp_path, "llama")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-100])  # truncated: the last tensor's bytes are missing
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        from_pretrained(d, tokenizer=None, mmap=True)
    f.write_bytes(data)
    # a header whose offsets point past the end of the file
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    key = "model.embed_tokens.weight"
    e0, e1 = header[key]["data_offsets"]
    header[key]["data_offsets"] = [e0 + 10**6, e1 + 10**6]
    write_raw(f, header, data[8 + n :])
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        from_pretrained(d, tokenizer=None, mmap=True)
    # a header that lies about a shape (the byte count no longer matches)
    header[key]["data_offsets"] = [e0, e1]
    header[key]["shape"] = [V + 1, 32]
    write_raw(f, header, data[8 + n :])
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        SafetensorsReader([f]).read(key, (V + 1, 32))
    # the reader's own check of a lying byte range, past the package's validation
    f.write_bytes(data)
    r = SafetensorsReader([f])
    r._headers[f] = ({key: {"data_offsets": [0, 10**9]}}, 8 + n, len(data))
    with pytest.raises(ValueError, match=rf"model\.safetensors: {key}: data_offsets"):
        r.read(key)


def test_mmap_argument_is_checked(tmp_path: Path) -> None:
    d = saved(tmp_path, "gpt2")
    with pytest.raises(TypeError, match="mmap: expected a bool, got str"):
        from_pretrained(d, mmap="yes")  # type: ignore[arg-type]
