"""README's Python snippets run as written, in order, in one namespace (so the tour stays true).

The snippets name a checkpoint directory, calibration text and weight dictionaries that a reader
has; the prelude makes small ones of each in a temporary directory.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from .conftest import ROOT

PRELUDE = """
import numpy as np
import sparseft as sft
_cfg = sft.models.GPTConfig(vocab_size=256, n_layer=2, n_head=2, d_model=32, seq_len=64)
sft.models.GPT.random(_cfg, seed=0).save_pretrained("gpt2-dir")
text = sft.data.builtin_text()[:20000]
val = sft.data.builtin_text()[20000:24000]
_r = np.random.default_rng(0)
pre = {f"layer{i}.weight": _r.standard_normal((8, 8)).astype(np.float32) for i in range(3)}
clean = {k: v + 0.01 * _r.standard_normal(v.shape).astype(np.float32) for k, v in pre.items()}
robust = {k: v + 0.01 * _r.standard_normal(v.shape).astype(np.float32) for k, v in pre.items()}
sig_a = sft.Signature.extract(pre, clean, robust)
sig_b = sft.Signature.extract(pre, robust, clean)
weights = {k: v.copy() for k, v in clean.items()}
"""


def _blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_snippets_run(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _blocks()
    assert len(blocks) >= 6, "README lost its tour"
    monkeypatch.chdir(tmp_path)
    ns: dict[str, object] = {}
    import sparseft as sft

    threads = sft.get_num_threads()
    sft.set_num_threads(1)  # tiny sizes: one thread is fastest and deterministic
    try:
        exec(compile(PRELUDE, "<prelude>", "exec"), ns)
        for i, block in enumerate(blocks):
            if "sft.distributed.init()" in block:
                continue  # needs mpirun: tests/test_distributed.py runs it under MPI
            code = block.replace("    ...\n", "    pass\n")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # export_peft warns by design
                exec(compile(code, f"<README python block {i}>", "exec"), ns)
    finally:
        sft.set_num_threads(threads)
    # what the snippets claim
    W2, mask = ns["W2"], ns["mask"]
    assert isinstance(W2, np.ndarray) and np.all(W2[~mask] == 0)
    assert ns["plan"].peak_memory <= ns["plan"].budget  # type: ignore[attr-defined]
