"""``python -m sparseft finetune`` and the Trainer on Llama (no transformers needed)."""

from __future__ import annotations

import io
import pathlib
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

import sparseft as sft
from sparseft.__main__ import main
from sparseft.data import builtin_text
from sparseft.models import GPT, GPTConfig, Llama, LlamaConfig


@pytest.fixture
def ckpt(tmp_path: pathlib.Path) -> pathlib.Path:
    m = GPT.random(GPTConfig(vocab_size=256, n_layer=1, n_head=2, d_model=16, seq_len=16), seed=0)
    m.save_pretrained(str(tmp_path / "base"))
    (tmp_path / "text.txt").write_text(builtin_text()[:6000], encoding="utf-8")
    return tmp_path


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_finetune_prunes_trains_and_writes_a_sparse_merged_model(ckpt: pathlib.Path) -> None:
    argv = [
        "finetune",
        "--model",
        str(ckpt / "base"),
        "--data",
        str(ckpt / "text.txt"),
        "--out",
        str(ckpt / "out"),
    ]
    argv += ["--sparsity", "0.5", "--method", "wanda", "--budget", "75%", "--steps", "3", "--seq-len", "16"]
    code, out, err = _run([*argv, "--batch-size", "2", "--no-progress"])
    assert code == 0, out + err
    assert "every pruned zero kept: True" in out and "perplexity after 3 LoRS steps" in out
    merged = sft.models.from_pretrained(ckpt / "out")
    for layer in merged.linears().values():
        W = layer.base.to_dense()
        assert np.isclose((W == 0).mean(), 0.5, atol=0.02)


def test_finetune_errors_are_usage_errors(ckpt: pathlib.Path) -> None:
    base = ["finetune", "--model", str(ckpt / "base"), "--out", str(ckpt / "out"), "--no-progress"]
    code, _, err = _run([*base, "--data", str(ckpt / "missing.txt")])
    assert code == 2 and "cannot read text file" in err
    code, _, err = _run([*base, "--data", str(ckpt / "text.txt"), "--budget", "1B", "--steps", "1"])
    assert code == 2 and "below the minimum" in err
    with pytest.raises(SystemExit) as e, redirect_stderr(io.StringIO()):
        main([*base, "--data", "x", "--sparsity", "1.5"])
    assert e.value.code == 2


def test_llama_adapter_training_under_a_budget_keeps_the_zeros() -> None:
    cfg = LlamaConfig(vocab_size=256, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=64, seq_len=16)
    runs = []
    for budget in (None, 0.5):
        m = Llama.random(cfg, seed=0)
        sft.sparsify(m, sparsity=0.5, method="magnitude")
        zeros = {k: ~lay.mask for k, lay in m.linears().items()}
        tr = sft.Trainer(m, adapter=sft.LoRSConfig(r=2), lr=1e-2, memory_budget=budget, plan_time_limit=2)
        tr.fit(builtin_text()[:5000], steps=2, batch_size=2, seq_len=16, progress=False)
        runs.append(tr.history.loss)
        merged = tr.merge()
        for k, lay in merged.linears().items():
            assert np.array_equal(lay.base.to_dense() == 0, zeros[k]), k
    assert runs[0] == runs[1]
