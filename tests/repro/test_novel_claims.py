"""Claims none of the papers tested, on the built-in GPT pruned to 50%:

1. LoRS fine-tuning executed under a Moccasin plan at half the step's activation memory trains
   bit-identically to the run without a budget (the plan really frees and recomputes).
2. A robust weight signature extracted from LoRS-fine-tuned (and merged) sparse models keeps
   their sparsity when patched in, and transfers: it helps the clean model it came from and a
   clean model fine-tuned further, on the shifted data the robust model was tuned for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import sparseft as sft
from sparseft.train import evaluate

from .conftest import BATCH, SEQ, corpus_split, load_gpt

pytestmark = pytest.mark.repro


def _pruned(gpt_dir: Any) -> Any:
    model = load_gpt(gpt_dir)
    sft.sparsify(model, sparsity=0.5, method="magnitude")
    return model


def test_lors_under_half_budget_is_bit_identical(gpt_dir: Any) -> None:
    sft.set_num_threads(1)
    train = corpus_split()[0]
    runs = {}
    for budget in (None, 0.5):
        model = _pruned(gpt_dir)
        trainer = sft.Trainer(
            model,
            adapter=sft.LoRSConfig(r=4, alpha=8),
            lr=1e-2,
            warmup=2,
            memory_budget=budget,
            planner="moccasin",
            seed=0,
            plan_time_limit=5,
        )
        hist = trainer.fit(train, steps=6, batch_size=BATCH, seq_len=SEQ, progress=False)
        runs[budget] = (np.array(hist.loss), {k: v.copy() for k, v in model.parameters().items()}, trainer)
    (l0, p0, t0), (l1, p1, t1) = runs[None], runs[0.5]
    plan = t1.plan
    assert plan is not None
    print(
        f"\nno budget: activation peak {t0.peak_activation_bytes:,} B; budget {plan.budget:,} B: "
        f"peak {t1.peak_activation_bytes:,} B, {plan.recomputations} recomputations ({plan.solver}, {plan.status})"
    )
    assert plan.recomputations > 0  # the budget is binding: activations really were recomputed
    assert t1.peak_activation_bytes <= plan.budget < t0.peak_activation_bytes
    np.testing.assert_array_equal(l0, l1)
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)


def _lors_merged(start: Any, data: np.ndarray, steps: int, seed: int) -> Any:
    """``start`` fine-tuned with LoRS adapters, merged (zeros kept), in sparse full-tuning mode so
    its parameters() are the live base values the Patcher patches."""
    start.train_base(False)  # a model merged here before is in sparse full-tuning mode
    trainer = sft.Trainer(
        start, adapter=sft.LoRSConfig(r=4, alpha=8, seed=seed), lr=1e-2, warmup=2, seed=seed
    )
    trainer.fit(data, steps=steps, batch_size=BATCH, seq_len=SEQ, progress=False)
    model = trainer.merge()
    model.train_base(True)
    return model


def _loss(model: Any, data: np.ndarray) -> float:
    return float(evaluate(model, data, batch_size=BATCH, seq_len=SEQ)["loss"])


def test_signature_from_lors_sparse_models_keeps_sparsity_and_transfers(gpt_dir: Any) -> None:
    sft.set_num_threads(1)
    train, val = corpus_split()
    shifted = np.frombuffer(train.astype(np.uint8).tobytes().upper(), np.uint8).astype(train.dtype)
    shifted_val = np.frombuffer(val.astype(np.uint8).tobytes().upper(), np.uint8).astype(val.dtype)
    pre = _pruned(gpt_dir)
    zeros = {n: ~L.mask for n, L in pre.linears().items()}
    clean = _lors_merged(_pruned(gpt_dir), train, 15, seed=1)
    robust = _lors_merged(_pruned(gpt_dir), shifted, 15, seed=1)
    pre.train_base(True)
    sig = sft.Signature.extract(pre, clean, robust)
    further = _lors_merged(_lors_merged(_pruned(gpt_dir), train, 15, seed=1), train[::-1].copy(), 10, seed=2)

    gains = {}
    for name, model in (("clean", clean), ("further", further)):
        before = _loss(model, shifted_val)
        clean_before = _loss(model, val)
        patcher = sft.Patcher(model)
        with patcher.patched(sig):
            after = _loss(model, shifted_val)
            clean_after = _loss(model, val)
            for n, L in model.linears().items():  # every pruned zero still exactly zero
                np.testing.assert_array_equal(L.base.to_dense() == 0, zeros[n], err_msg=n)
        gains[name] = (before, after, clean_before, clean_after)
    robust_loss = _loss(robust, shifted_val)
    print(f"\nshifted-data loss: robust model {robust_loss:.4f}")
    for name, (b, a, cb, ca) in gains.items():
        print(f"{name}: shifted {b:.4f} -> patched {a:.4f}; clean {cb:.4f} -> patched {ca:.4f}")
    b, a, _, _ = gains["clean"]
    assert b > robust_loss  # the robust fine-tune learned the shift
    assert b - a >= 0.5 * (b - robust_loss)  # patching recovers most of the robust gain
    bf, af, _, _ = gains["further"]
    assert af < bf - 0.25 * (b - robust_loss)  # and transfers to the further-tuned model
    for b_, a_, cb, ca in gains.values():
        # the patch trades little clean loss for the shift gain: the trained built-in GPT pays
        # 0.11-0.19 nats clean for 0.52-0.59 shifted (printed above); at most half is asserted
        assert ca - cb <= 0.5 * (b_ - a_)
    for n, L in further.linears().items():  # the with-block restored the weights
        np.testing.assert_array_equal(L.base.to_dense() == 0, zeros[n], err_msg=n)
