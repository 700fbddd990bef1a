"""Data-parallel fine-tuning over MPI: bytes communicated per step, step time and scaling.

1. Bytes per step against model size: for GPT shapes with LoRS adapters of rank 16 on every block
   linear, the gradient bytes each rank all-reduces per optimizer step (``DataParallel.bytes_per_step``,
   measured on a 1-rank communicator) against the bytes of the whole model, and the same count
   from the formula 4 · Σ r (in + out) used for the 7B estimate in docs/distributed.md.
2. Step time and scaling on this machine: one global batch (strong scaling) trained on 1, 2 and 4
   ranks launched with ``mpirun``, ``OMP_NUM_THREADS = max(1, cores // P)`` so the cores are not
   oversubscribed (with 4 ranks on 2 cores they are: said in the output). Efficiency at equal
   cores is tokens/s(P) / tokens/s(1); the parallel efficiency per rank is that divided by P when
   every rank would have its own cores.

    python benchmarks/bench_distributed.py [--steps 4] [--ranks 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import cpu_line

R = 16
SHAPES = [(2, 128, 4), (4, 256, 4), (6, 512, 8)]  # (layers, d_model, heads) with byte vocabulary
STEP_SHAPE = (4, 256, 4)
B, T = 8, 128


def _gpt(layers: int, d: int, heads: int) -> Any:
    import sparseft as sft

    return sft.models.GPT.random(
        sft.models.GPTConfig(vocab_size=256, n_layer=layers, n_head=heads, d_model=d, seq_len=T), seed=0
    )


def adapter_numbers(layers: int, d: int, d_ff: int, r: int, shapes: str = "gpt") -> int:
    """Trainable numbers of rank-``r`` LoRS adapters on every block linear: Σ r (in + out)."""
    if shapes == "gpt":  # c_attn (d -> 3d), c_proj (d -> d), c_fc (d -> d_ff), mlp.c_proj (d_ff -> d)
        per = r * ((d + 3 * d) + (d + d) + (d + d_ff) + (d_ff + d))
    else:  # llama: q, k, v, o (d -> d), gate, up (d -> d_ff), down (d_ff -> d)
        per = r * (4 * (d + d) + 2 * (d + d_ff) + (d_ff + d))
    return layers * per


def bytes_table() -> None:
    from mpi4py import MPI

    import sparseft as sft
    from sparseft.distributed import DataParallel

    print("bytes all-reduced per step (each rank) vs model size, LoRS r=16 on every block linear:")
    print(f"{'model':>22} {'model MiB':>10} {'grad KiB/step':>14} {'formula KiB':>12} {'fraction':>9}")
    for layers, d, heads in SHAPES:
        model = _gpt(layers, d, heads)
        total = sum(v.nbytes for v in model.state_dict().values())
        dp = DataParallel(MPI.COMM_SELF)
        tr = sft.Trainer(model, adapter=sft.LoRSConfig(r=R), comm=dp)
        dp.prepare(model.ops(), tr.model.gradients())
        formula = 4 * adapter_numbers(layers, d, 4 * d, R)
        print(
            f"{f'GPT L={layers} d={d}':>22} {total / 2**20:10.2f} {dp.bytes_per_step / 2**10:14.1f} "
            f"{formula / 2**10:12.1f} {dp.bytes_per_step / total:9.4%}"
        )
    n7 = adapter_numbers(32, 4096, 11008, R, "llama")
    print(
        f"Llama-7B shape (32 x 4096, d_ff 11008), r=16: {n7:,} adapter numbers = {4 * n7 / 1e6:.1f} MB per step"
    )


def worker(steps: int) -> None:
    from mpi4py import MPI

    import sparseft as sft
    from sparseft.data import builtin_corpus

    comm = MPI.COMM_WORLD
    tr = sft.Trainer(_gpt(*STEP_SHAPE), adapter=sft.LoRSConfig(r=R), lr=1e-3, seed=0, comm=comm)
    text = builtin_corpus()
    tr.fit(text, steps=1, batch_size=B, seq_len=T, progress=False)  # plan, profile, warm up
    comm.Barrier()
    t0 = time.perf_counter()
    tr.fit(text, steps=1 + steps, batch_size=B, seq_len=T, progress=False)
    comm.Barrier()
    dt = (time.perf_counter() - t0) / steps
    if comm.Get_rank() == 0:
        print(json.dumps({"step_s": dt, "bytes": tr.dp.bytes_per_step, "buckets": tr.dp.n_buckets}))


def scaling(steps: int, ranks: list[int]) -> None:
    exe = shutil.which("mpirun") or shutil.which("mpiexec")
    if exe is None:
        print("no mpirun on PATH: scaling skipped")
        return
    cores = os.cpu_count() or 1
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    extra = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    layers, d, _ = STEP_SHAPE
    print(f"\nstep time, GPT L={layers} d={d} seq {T}, global batch {B}, LoRS r={R}, {steps} timed steps:")
    print(
        f"{'ranks':>5} {'threads/rank':>12} {'step s':>8} {'tokens/s':>9} {'eff. equal cores':>17} {'note':>6}"
    )
    base = None
    for p in ranks:
        threads = max(1, cores // p)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=root)
        out = subprocess.run(
            [
                exe,
                *extra,
                "-n",
                str(p),
                sys.executable,
                os.path.abspath(__file__),
                "--worker",
                "--steps",
                str(steps),
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        if out.returncode != 0:
            print(f"{p:5d} failed: {out.stderr[-500:]}")
            continue
        res = json.loads(out.stdout.strip().splitlines()[-1])
        tps = B * T / res["step_s"]
        base = base or tps
        note = "over" if p * threads > cores else ""
        print(f"{p:5d} {threads:12d} {res['step_s']:8.3f} {tps:9.0f} {tps / base:17.2f} {note:>6}")
    print("(over: more ranks than cores, oversubscribed)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--worker", action="store_true")
    args = ap.parse_args()
    if args.worker:
        worker(args.steps)
        return
    print(cpu_line())
    print("host shared with other jobs: timings are noisy")
    np.set_printoptions(precision=3)
    bytes_table()
    scaling(args.steps, args.ranks)


if __name__ == "__main__":
    main()
