"""The cost of the per-call base check: a forward + backward step of a sparse base with the full
O(nnz) structural check on every call (``trusted=False``) against the check done once
(``_core.sparse_check``) and skipped per call (``trusted=True``), side by side in one run.

Printed as measured: min and median milliseconds of one step (``sparse_forward`` then the fused
``sparse_backward``: gx and the exact masked dA, dB), and min(trusted) / min(checked). The two
variants alternate call by call, so a noisy machine slows both alike; their results are checked
to be identical first.

Usage: python benchmarks/bench_trusted.py [--mask 0.1|2:4] [--shape 2048x2048] [--tokens 2048]
       [--threads 2] [--seconds 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import _timing  # benchmarks/_timing.py (the script's own folder is on sys.path)
import numpy as np
from bench_builds import problem

import sparseft as sft
from sparseft import _core


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mask", default="0.1", help="a density (CSR, magnitude-pruned) or n:m (N:M)")
    ap.add_argument("--shape", default="2048x2048", help="OUTxIN")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    out, inn = (int(v) for v in args.shape.lower().split("x"))
    N, r, s = args.tokens, 16, 2.0
    sft.set_num_threads(args.threads)
    _, _, base, x, gy, A, B = problem(args.mask, out, inn, N, r)
    t = base._tuple()
    _core.sparse_check(t)

    def step(trusted: bool) -> tuple[np.ndarray, ...]:
        y = _core.sparse_forward(t, x, A, B, s, trusted=trusted)
        return (y, *_core.sparse_backward(t, gy, x, A, B, s, trusted=trusted))

    for a, b in zip(step(False), step(True), strict=True):
        np.testing.assert_array_equal(a, b)
    times: dict[bool, list[float]] = {False: [], True: []}
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end:
        for trusted in (False, True):
            t0 = time.perf_counter()
            step(trusted)
            times[trusted].append(time.perf_counter() - t0)

    print(_timing.cpu_line())
    print(
        f"sparseft {sft.__version__} simd={sft.build_info()['simd']} threads={args.threads}; "
        f"W {out}x{inn} mask {args.mask} ({base.format}, nnz {base.nnz}), N={N}, r={r}; "
        f"forward + fused backward, the variants alternate for {args.seconds:g} s"
    )
    print(f"{'base check':28s} {'min ms':>8} {'med ms':>8} {'steps':>6}")
    for trusted, label in ((False, "every call (trusted=False)"), (True, "once (trusted=True)")):
        ts = times[trusted]
        print(f"{label:28s} {min(ts) * 1e3:8.1f} {statistics.median(ts) * 1e3:8.1f} {len(ts):6d}")
    print(f"min(trusted) / min(checked) = {min(times[True]) / min(times[False]):.3f}")


if __name__ == "__main__":
    main()
