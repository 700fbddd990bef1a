"""``python -m tests.repro.init_sweep [--lr LR] [--steps N]``: the "lors" vs "lora" init gap on the
built-in GPT after Wanda and SparseGPT pruning to 50%, over seeds 0-3 (the figures behind
docs/comparison.md; tests/repro/test_lors_claims.py asserts the lr 3e-3 setting)."""

from __future__ import annotations

import argparse

import numpy as np

import sparseft as sft

from .builtin_gpt import HERE
from .conftest import perplexity
from .test_lors_claims import _finetune, _pruned


def gaps(method: str, lr: float, steps: int, seeds: tuple[int, ...] = (0, 1, 2, 3)) -> dict[str, list[float]]:
    """lora - lors: mean training loss of the run and held-out loss after it, per seed."""
    out: dict[str, list[float]] = {"train": [], "held-out": []}
    for seed in seeds:
        res = {}
        for init in ("lora", "lors"):
            model = _pruned(HERE, method)
            hist = _finetune(model, init=init, steps=steps, seed=seed, lr=lr)
            res[init] = (float(np.mean(hist.loss)), float(np.log(perplexity(model))))
        out["train"].append(res["lora"][0] - res["lors"][0])
        out["held-out"].append(res["lora"][1] - res["lors"][1])
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    sft.set_num_threads(1)
    for method in ("wanda", "sparsegpt"):
        g = gaps(method, args.lr, args.steps)
        print(
            f"{method} lr {args.lr:g} {args.steps} steps, gap lora - lors (nats) per seed: "
            + "; ".join(f"{k} {np.round(v, 4).tolist()} mean {np.mean(v):.4f}" for k, v in g.items())
        )
