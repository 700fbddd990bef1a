"""``python -m sparseft finetune``: prune a Hugging Face checkpoint, fine-tune LoRS adapters under a
memory budget, merge them (every pruned zero kept) and write the merged model."""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Any, TextIO

import numpy as np

import sparseft
from sparseft.data.corpus import tokenize
from sparseft.train.trainer import evaluate, parse_bytes

__all__ = ["finetune"]


def _prune(model: Any, sparsity: float, method: str, calib: str) -> None:
    sparsify = getattr(sparseft, "sparsify", None)
    if sparsify is not None:
        sparsify(model, sparsity=sparsity, method=method, calib=calib if method != "magnitude" else None)
        return
    if method != "magnitude":
        raise ValueError(f"method: {method!r} needs sparseft.sparsify, which this build lacks; use magnitude")
    for layer in model.linears().values():
        W = layer.base.to_dense()
        Wp = np.where(sparseft.prune.magnitude(W, sparsity=sparsity), W, 0).astype(np.float32)
        state = {"lora_A.weight": layer.A, "lora_B.weight": layer.B, "base_layer.weight": Wp}
        layer.load_state_dict({**state, "base_layer.weight_mask": Wp != 0})


def finetune(
    model: str,
    data: str,
    out: str,
    sparsity: float = 0.5,
    method: str = "wanda",
    budget: str | None = None,
    steps: int = 100,
    r: int = 8,
    alpha: float = 16.0,
    lr: float = 1e-3,
    batch_size: int = 8,
    seq_len: int = 128,
    seed: int = 0,
    progress: bool = True,
    stream: TextIO | None = None,
) -> int:
    """Prune ``model`` (a Hugging Face GPT-2/Llama directory), fine-tune LoRS adapters on the text
    file ``data`` and write the merged sparse model to ``out`` (``save_pretrained``); returns 0.

    The last 10% of the tokens are held out for the perplexities printed before and after.

    Raises
    ------
    ValueError
        On an unreadable checkpoint or data file, too little data, or a budget below the minimum.
    """
    stream = sys.stdout if stream is None else stream
    memory_budget = None if budget is None else parse_bytes(budget, "budget")
    m = sparseft.models.from_pretrained(model)
    ids = tokenize(pathlib.Path(data), getattr(m, "tokenizer", None), m.config.vocab_size, "data")
    seq_len = min(seq_len, m.config.seq_len)
    cut = int(0.9 * ids.size)
    train, val = ids[:cut], ids[cut:]
    if val.size < seq_len + 1:
        raise ValueError(
            f"data: too short, {ids.size} tokens leave fewer than seq_len + 1 = {seq_len + 1} held out"
        )

    def ppl(mm: Any) -> float:
        return evaluate(mm, val, batch_size=batch_size, seq_len=seq_len)["perplexity"]

    dense = ppl(m)
    if sparsity > 0:
        text = sparseft.data.builtin_text() if m.tokenizer is None else None
        calib = text[:8192] if text is not None else pathlib.Path(data).read_text(encoding="utf-8")[:8192]
        _prune(m, sparsity, method, calib)
    zeros = {name: ~layer.mask for name, layer in m.linears().items()}
    pruned = ppl(m)
    print(f"perplexity: dense {dense:.3f}, pruned ({method}, {sparsity:.0%}) {pruned:.3f}", file=stream)
    trainer = sparseft.Trainer(
        m,
        adapter=sparseft.LoRSConfig(r=r, alpha=alpha, seed=seed),
        lr=lr,
        memory_budget=memory_budget,
        seed=seed,
    )
    t0 = time.perf_counter()
    trainer.fit(train, steps=steps, batch_size=batch_size, seq_len=seq_len, progress=progress)
    dt = time.perf_counter() - t0
    tuned = ppl(m)
    plan = trainer.plan
    merged: Any = trainer.merge()
    kept = all(np.array_equal(lay.base.to_dense() == 0, zeros[n]) for n, lay in merged.linears().items())
    merged.save_pretrained(out)
    print(f"perplexity after {steps} LoRS steps: {tuned:.3f}", file=stream)
    if plan is not None:
        print(
            f"activation peak {trainer.peak_activation_bytes} bytes (plan {plan.solver} {plan.status}, "
            f"budget {plan.budget}); {steps * batch_size * seq_len / dt:.0f} tokens/s",
            file=stream,
        )
    print(f"every pruned zero kept: {kept}; merged model written to {out}", file=stream)
    return 0
