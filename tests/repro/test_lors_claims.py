"""LoRS (2025) at small scale on the built-in GPT: memory of a step against the SPP/SQFT-style
masked adapter, perplexity recovery after Wanda and SparseGPT pruning, the gradient-SVD init, and
exact sparsity through the merge. See docs/comparison.md."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import numpy as np
import pytest

import sparseft as sft
from sparseft import _core
from sparseft.models import GPT, GPTConfig
from sparseft.models.graph import run_step

from . import builtin_gpt
from .conftest import (
    BATCH,
    CFG,
    SEQ,
    batch_windows,
    corpus_split,
    load_gpt,
    masked_weight_grads,
    perplexity,
    use_spp,
)

pytestmark = pytest.mark.repro

FT_STEPS = 100
ADAPTER: dict[str, Any] = {"r": 4, "alpha": 8}


def _calib_text() -> str:
    return corpus_split()[0][:4096].astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def _pruned(gpt_dir: Any, method: str) -> Any:
    model = load_gpt(gpt_dir)
    sft.sparsify(model, sparsity=0.5, method=method, calib=_calib_text(), nsamples=16, seq_len=SEQ)
    return model


def _finetune(
    model: Any, init: str = "lora", spp: bool = False, steps: int = FT_STEPS, seed: int = 0, lr: float = 1e-2
) -> Any:
    """LoRS (or, with ``spp``, the SPP-style twin) adapters on every block linear, ``steps`` steps.
    ``init="lors"`` goes through the Trainer (its fit runs the gradient-SVD init first)."""
    if spp:
        model.add_adapters(sft.LoRSConfig(**ADAPTER, init=init, seed=seed))
        use_spp(model)
        trainer = sft.Trainer(model, adapter=None, lr=lr, warmup=3, seed=seed)
    else:
        trainer = sft.Trainer(
            model, adapter=sft.LoRSConfig(**ADAPTER, init=init, seed=seed), lr=lr, warmup=3, seed=seed
        )
    return trainer.fit(corpus_split()[0], steps=steps, batch_size=BATCH, seq_len=SEQ, progress=False)


def test_shipped_builtin_gpt_matches_its_recipe(gpt_dir: Any) -> None:
    """The shipped weights are the recipe's: shape, file digest, and (on the corpus it was trained
    on) the recorded held-out perplexity; the file stays small."""
    import hashlib
    import json

    rec = builtin_gpt.recipe()
    weights = (gpt_dir / "model.safetensors").read_bytes()
    assert len(weights) < 600_000
    assert hashlib.sha256(weights).hexdigest() == rec["model_sha256"]
    assert rec["config"] == builtin_gpt.CONFIG and rec["train"] == builtin_gpt.TRAIN  # the demo's recipe
    hf = json.loads((gpt_dir / "config.json").read_text())
    assert (hf["n_layer"], hf["n_embd"], hf["vocab_size"]) == (2, 64, 256)
    if builtin_gpt.corpus_digest() != rec["corpus_sha256"]:
        pytest.skip("this Python's pydoc_data corpus differs from the one the model was trained on")
    ppl = perplexity(load_gpt(gpt_dir))
    print(f"\nshipped built-in GPT: held-out perplexity {ppl:.4f} (recipe {rec['held_out_perplexity']})")
    assert ppl == pytest.approx(rec["held_out_perplexity"], rel=1e-3)


def _step_peak(model: Any, ids: np.ndarray) -> tuple[int, float]:
    """Peak bytes of one forward+backward (run_step) above its start: Python/NumPy allocations
    (tracemalloc) plus the C kernels' scratch peak (malloc'ed outside tracemalloc), and seconds."""
    model.zero_grad()
    run_step(model, ids[:, :-1], ids[:, 1:])  # warm up (first-call allocations)
    model.zero_grad()
    _core.reset_scratch_peak()
    tracemalloc.start()
    t0 = time.perf_counter()
    run_step(model, ids[:, :-1], ids[:, 1:])
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak + _core.scratch_stats()["peak"], dt


def _wide_pruned() -> Any:
    """The built-in GPT's shape at d_model 256 (untrained: memory does not depend on the weights),
    so the out×in buffers stand out beside the C kernels' fixed per-thread scratch."""
    model = GPT.random(GPTConfig(**{**CFG, "d_model": 256, "n_head": 4}), seed=0)
    sft.sparsify(model, sparsity=0.5, method="magnitude")
    model.add_adapters(sft.LoRSConfig(**ADAPTER, seed=0))
    return model


def test_step_memory_below_spp_by_the_outxin_buffers() -> None:
    sft.set_num_threads(1)
    ids = batch_windows(2, seed=1)
    lors = _wide_pruned()
    spp = _wide_pruned()
    use_spp(spp)
    avoided = sum(4 * L.out_features * L.in_features for L in lors.linears().values())
    peak_lors, t_lors = _step_peak(lors, ids)
    peak_spp, t_spp = _step_peak(spp, ids)
    print(
        f"\nstep peak: LoRS {peak_lors:,} B vs SPP-style "
        f"{peak_spp:,} B; out×in buffers kept by SPP {avoided:,} B; step time LoRS {t_lors * 1e3:.1f} ms vs "
        f"SPP-style {t_spp * 1e3:.1f} ms (timing on a loaded host: reported, not asserted)"
    )
    assert peak_spp - peak_lors >= avoided
    # same math: equal gradients up to float32 rounding
    for (n, a), b in zip(lors.gradients().items(), spp.gradients().values(), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4 * float(np.abs(b).max() + 1e-12), err_msg=n)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_recovery_after_pruning(gpt_dir: Any, method: str) -> None:
    dense = perplexity(load_gpt(gpt_dir))
    pruned_model = _pruned(gpt_dir, method)
    pruned = perplexity(pruned_model)
    zeros = {n: ~L.mask for n, L in pruned_model.linears().items()}
    _finetune(pruned_model)
    lors = perplexity(pruned_model)
    spp_model = _pruned(gpt_dir, method)
    _finetune(spp_model, spp=True)
    spp = perplexity(spp_model)
    print(
        f"\n{method}: dense ppl {dense:.3f}, pruned {pruned:.3f}, LoRS {FT_STEPS} steps {lors:.3f}, "
        f"SPP-style {FT_STEPS} steps {spp:.3f}"
    )
    # same steps, same math: at least the SPP-style recovery (float32 rounding apart)
    assert lors <= spp * 1.01
    # far more than the pruned model: pruning costs the trained model > 30 % perplexity, and LoRS
    # fine-tuning wins back at least 40 % of that gap (the figures: docs/comparison.md)
    assert pruned >= 1.3 * dense
    recovered = (pruned - lors) / (pruned - dense)
    print(f"{method}: LoRS recovered {100 * recovered:.1f} % of the pruning loss")
    assert recovered >= 0.4
    # merged: exactly the pruned zeros
    pruned_model.merge_adapters()
    for n, L in pruned_model.linears().items():
        np.testing.assert_array_equal(L.base.to_dense() == 0, zeros[n], err_msg=n)


def test_lors_init_aligns_adapters_with_the_gradient(gpt_dir: Any) -> None:
    """The "lors" init puts A on the top singular directions of G ⊙ M, so the first step's adapter
    gradient dB = s·(G ⊙ M) Aᵀ is far larger than from the "lora" init at the same row norm of A."""
    model = _pruned(gpt_dir, "magnitude")
    grads = masked_weight_grads(model, batch_windows(BATCH, seed=99))
    model.add_adapters(sft.LoRSConfig(**ADAPTER))
    ratios = []
    for name, layer in model.linears().items():
        Gm = grads[name].astype(np.float64)
        norms = {}
        for init in ("lora", "lors"):
            if init == "lors":
                layer.init_adapters("lors", init_grad=grads[name])
            else:
                layer.init_adapters("lora")
            norms[init] = float(np.linalg.norm(Gm @ layer.A.T.astype(np.float64)))
        ratios.append(norms["lors"] / norms["lora"])
    print(f"\n|dB| at step 0, lors init / lora init, per layer: {np.round(ratios, 2).tolist()}")
    assert min(ratios) >= 2.0


INIT_SEEDS = (0, 1, 2, 3)
INIT_STEPS, INIT_LR = 30, 3e-3


def init_gaps(
    gpt_dir: Any, method: str, lr: float, steps: int, seeds: tuple[int, ...]
) -> dict[str, list[float]]:
    """lora - lors, per seed: the mean training loss of the run ("train") and the held-out loss
    after it ("held-out"), fine-tuning the built-in GPT pruned with ``method`` (also used by
    ``python -m tests.repro.init_sweep``)."""
    gaps: dict[str, list[float]] = {"train": [], "held-out": []}
    for seed in seeds:
        res = {}
        for init in ("lora", "lors"):
            model = _pruned(gpt_dir, method)
            hist = _finetune(model, init=init, steps=steps, seed=seed, lr=lr)
            res[init] = (float(np.mean(hist.loss)), float(np.log(perplexity(model))))
            if init == "lors":
                assert all(L.init == "lors" for L in model.linears().values())
        gaps["train"].append(res["lora"][0] - res["lors"][0])
        gaps["held-out"].append(res["lora"][1] - res["lors"][1])
    return gaps


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_lors_init_beats_lora_init_at_equal_steps(gpt_dir: Any, method: str) -> None:
    """``LoRSConfig(init="lors")`` through the Trainer (fit runs the gradient-SVD init on 4
    calibration batches) against ``init="lora"``, same data order, same steps, over 4 seeds: the
    mean training loss and the held-out loss after the run are lower with the "lors" init.

    Holds at lr 3e-3 on every seed; at lr 1e-2 the "lora" init catches up within 30 steps and the
    held-out gap is within seed noise (docs/comparison.md)."""
    gaps = init_gaps(gpt_dir, method, INIT_LR, INIT_STEPS, INIT_SEEDS)
    print(
        f"\n{method}: loss gap lora - lors over seeds {INIT_SEEDS} ({INIT_STEPS} steps, lr {INIT_LR}): mean training "
        f"loss {np.round(gaps['train'], 4).tolist()}, held-out loss {np.round(gaps['held-out'], 4).tolist()}"
    )
    for what, g in gaps.items():
        assert float(np.mean(g)) >= 0.015, what
        assert min(g) > 0.0, what


def test_merge_keeps_zeros_plain_lora_fills_them(gpt_dir: Any) -> None:
    model = _pruned(gpt_dir, "magnitude")
    _finetune(model, steps=5)
    zeros = {n: ~L.mask for n, L in model.linears().items()}
    lora_filled = 0
    for L in model.linears().values():  # plain LoRA's merge: W + s·B A, no mask
        plain = L.base.to_dense() + np.float32(L.scaling) * (L.B @ L.A)
        lora_filled += int(((plain != 0) & ~L.mask).sum())
    model.merge_adapters()
    kept = sum(int(((L.base.to_dense() == 0) & zeros[n]).sum()) for n, L in model.linears().items())
    total = sum(int(z.sum()) for z in zeros.values())
    print(
        f"\npruned zeros kept by the LoRS merge: {kept} of {total}; filled in by a plain LoRA merge: {lora_filled}"
    )
    assert kept == total
    for n, L in model.linears().items():
        np.testing.assert_array_equal(L.base.to_dense() == 0, zeros[n], err_msg=n)
    assert lora_filled > 0.99 * total
