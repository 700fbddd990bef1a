"""The executor's buffer pool against fresh outputs: steady-state training steps side by side.

The benchmark GPT of ``bench_trainer.py`` (6 layers, d=512, byte vocabulary, batch 8 x seq 256,
50% sparse, LoRS r=16), one step schedule (no budget, or the per-block checkpointing schedule
for ``--budget blocks``), the same batch every step. Each configuration runs in its own process,
alternating: one warm-up step, then ``--steps`` steps measured: minor page faults, system and
total CPU time per step (CPU time is steadier than wall time on a shared host), wall time, and
the peak RSS growth over the resident memory before the first step (``/proc/self/clear_refs``
resets the high-water mark; malloc's free lists are trimmed first). The pool's limit is the
Trainer's (``POOL_SHARE`` of the plan's peak).

    python benchmarks/bench_reuse.py [--steps 4] [--rounds 2] [--budget none|blocks]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import cpu_line
from bench_trainer import _baseline, _hwm

L, D, H, V, T, B, R = 6, 512, 8, 256, 256, 8, 16


def worker(reuse: bool, steps: int, budget: str) -> dict[str, Any]:
    import sparseft as sft
    from sparseft.data import builtin_corpus
    from sparseft.models import GPT, GPTConfig
    from sparseft.train.executor import ActivationStore, execute
    from sparseft.train.pool import BufferPool
    from sparseft.train.stepgraph import block_checkpoint_steps, schedule_of
    from sparseft.train.trainer import _pool_limit

    m = GPT.random(GPTConfig(vocab_size=V, n_layer=L, n_head=H, d_model=D, seq_len=T), seed=0)
    sft.sparsify(m, sparsity=0.5, method="magnitude")
    tr = sft.Trainer(m, adapter=sft.LoRSConfig(r=R, alpha=2 * R), lr=1e-3)
    sg, sched = tr.plan_for(B, T)
    if budget == "blocks":
        sched = schedule_of(sg, block_checkpoint_steps(sg), 1 << 62, "blocks", "feasible")
    x, y = tr._dataset(builtin_corpus(), "data").sample(np.random.default_rng(1), B, T)
    pool = BufferPool(_pool_limit(sched)) if reuse else None
    store = ActivationStore(pool)
    base = _baseline()
    losses = [execute(sg, sched.codes, x, y, store)]  # warm-up: the pool fills
    m.zero_grad()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for _ in range(steps):
        losses.append(execute(sg, sched.codes, x, y, store))
        m.zero_grad()
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "faults": (ru1.ru_minflt - ru0.ru_minflt) / steps,
        "sys": (ru1.ru_stime - ru0.ru_stime) / steps,
        "cpu": (ru1.ru_stime - ru0.ru_stime + ru1.ru_utime - ru0.ru_utime) / steps,
        "wall": wall / steps,
        "growth": _hwm() - base,
        "store_peak": store.peak,
        "plan_peak": int(sched.peak_memory or 0),
        "losses": losses,
        "reused": 0 if pool is None else pool.reused_bytes / (steps + 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--budget", choices=("none", "blocks"), default="none")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker == "on", args.steps, args.budget)))
        return
    import sparseft

    print(cpu_line())
    print(
        f"sparseft {sparseft.__version__} ({sparseft.get_num_threads()} threads); load average "
        f"{os.getloadavg()[0]:.1f}; GPT L={L} d={D} batch {B} x seq {T}, 50% sparse, r={R}; schedule "
        f"{args.budget}; {args.steps} steps after one warm-up, per process"
    )
    print(
        f"{'run':10s} {'faults/step':>11s} {'sys s':>6s} {'CPU s':>6s} {'wall s':>7s} {'peak growth':>12s}  store peak"
    )
    res: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for _ in range(args.rounds):
        for kind in ("on", "off"):
            out = subprocess.run(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--worker",
                    kind,
                    "--steps",
                    str(args.steps),
                    "--budget",
                    args.budget,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            res[kind].append(r)
            print(
                f"{'reuse' if kind == 'on' else 'fresh':10s} {r['faults']:11.0f} {r['sys']:6.2f} {r['cpu']:6.2f} "
                f"{r['wall']:7.2f} {r['growth'] / 2**20:8.1f} MiB  {r['store_peak'] / 2**20:.1f} MiB "
                f"(plan {r['plan_peak'] / 2**20:.1f}); reused {r['reused'] / 2**20:.0f} MiB/step"
            )
    on, off = res["on"], res["off"]
    same = all(a["losses"] == b["losses"] for a, b in zip(on, off, strict=True))

    def med(rs: list[dict[str, Any]], k: str) -> float:
        return float(np.median([r[k] for r in rs]))

    print(
        f"reuse / fresh (medians): faults {med(on, 'faults') / med(off, 'faults'):.3f}x, sys time "
        f"{med(on, 'sys') / med(off, 'sys'):.3f}x, CPU time {med(on, 'cpu') / med(off, 'cpu'):.3f}x, wall "
        f"{med(on, 'wall') / med(off, 'wall'):.3f}x, peak growth {med(on, 'growth') / med(off, 'growth'):.3f}x "
        f"({(med(on, 'growth') - med(off, 'growth')) / 2**20:+.1f} MiB); losses identical: {same}"
    )


if __name__ == "__main__":
    main()
