"""``python -m tests.repro.init_sweep [--lr LR] [--steps N]``: the "lors" vs "lora" init gap on the
built-in GPT after Wanda and SparseGPT pruning to 50%, over seeds 0-3 (the figures behind
docs/comparison.md; tests/repro/test_lors_claims.py asserts the lr 3e-3 setting)."""

from __future__ import annotations

import argparse

import numpy as np

import sparseft as sft

from .builtin_gpt import HERE
from .test_lors_claims import init_gaps

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    sft.set_num_threads(1)
    for method in ("wanda", "sparsegpt"):
        g = init_gaps(HERE, method, args.lr, args.steps, (0, 1, 2, 3))
        print(
            f"{method} lr {args.lr:g} {args.steps} steps, gap lora - lors (nats) per seed: "
            + "; ".join(f"{k} {np.round(v, 4).tolist()} mean {np.mean(v):.4f}" for k, v in g.items())
        )
