"""How long NumPy's OpenBLAS threads keep a core busy after a BLAS call (why benchmarks settle).

One run, one process: ``_core.lors_forward`` (N = in = out = 2048, r = 16, the dense-masked LoRS
forward) timed after an idle pause of 0.5 s, then timed right after a NumPy ``x @ W.T`` followed by
pauses of 0 to 0.3 s. Printed as measured: min and median milliseconds over the repetitions (the
kinds alternate) and min / min of the call made 0.3 s after the matmul (settled). The call after
0.5 s of idle is printed too; on this VM it ran slower than the settled one (a longer sleep, a
slower wake-up), so it is not the reference. OpenBLAS busy-waits 2^OPENBLAS_THREAD_TIMEOUT
TSC cycles (default 2^28) after a call; ``--timeout 4`` restarts the script with
``OPENBLAS_THREAD_TIMEOUT=4`` (read when NumPy loads OpenBLAS), which puts its threads to sleep at
once. ``benchmarks/_timing.py`` settles 0.25 s before every timed call because of this.

Usage: python benchmarks/bench_settle.py [--reps 5] [--threads 2] [--timeout N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

import sparseft as sft
from sparseft import _core

PAUSES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=None, help="restart with OPENBLAS_THREAD_TIMEOUT set")
    args = ap.parse_args()
    if args.timeout is not None and os.environ.get("OPENBLAS_THREAD_TIMEOUT") != str(args.timeout):
        env = dict(os.environ, OPENBLAS_THREAD_TIMEOUT=str(args.timeout))
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    sft.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n, r = 2048, 16
    W = rng.standard_normal((n, n)).astype(np.float32)
    mask = sft.prune.magnitude(W, 0.5)
    W = (W * mask).astype(np.float32)
    x = rng.standard_normal((n, n)).astype(np.float32)
    A = (0.01 * rng.standard_normal((r, n))).astype(np.float32)
    B = (0.01 * rng.standard_normal((n, r))).astype(np.float32)

    def call() -> float:
        t0 = time.perf_counter()
        _core.lors_forward(x, W, mask, A, B, 2.0)
        return time.perf_counter() - t0

    call(), x @ W.T  # warm-up
    idle: list[float] = []
    after: dict[float, list[float]] = {p: [] for p in PAUSES}
    for _ in range(args.reps):
        time.sleep(0.5)
        idle.append(call())
        for p in PAUSES:
            x @ W.T
            time.sleep(p)
            after[p].append(call())
            time.sleep(0.5)
    print(
        f"sparseft {sft.__version__} simd={sft.build_info()['simd']} threads={args.threads}; "
        f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT', 'unset')}; "
        f"lors_forward {n}^3, r={r}, {args.reps} reps"
    )
    print(f"{'when':34s} {'min ms':>8} {'med ms':>8} {'min/settled':>11}")
    base = min(after[PAUSES[-1]])
    rows = {"after 0.5 s idle": idle}
    rows.update({f"right after x @ W.T, pause {p:.2f} s": ts for p, ts in after.items()})
    for label, ts in rows.items():
        print(f"{label:34s} {min(ts) * 1e3:8.1f} {statistics.median(ts) * 1e3:8.1f} {min(ts) / base:11.3f}")


if __name__ == "__main__":
    main()
