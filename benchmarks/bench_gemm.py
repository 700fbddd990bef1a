"""Benchmark of the packed SGEMM core (``sparseft._core.matmul``) against NumPy/OpenBLAS and PyTorch.

One run prints, side by side for each size (M x N x K): sparseft GFLOP/s on 1 and 2 threads,
NumPy/OpenBLAS with its default kernels (AVX-512 "SkylakeX" on an AVX-512 CPU), OpenBLAS forced
to its AVX2 "Haswell" kernels (``OPENBLAS_CORETYPE=Haswell``, which only works when set before
NumPy is imported, so it runs in its own process), PyTorch CPU matmul when torch is installed,
the ratios, and sparseft's peak kernel scratch (``_core.scratch_stats()``).

Every library runs in its own worker process (one per thread count for OpenBLAS, whose thread
count is fixed at start), so no library's idle spinning threads or memory state leak into
another's timings. The main process interleaves the workers: each round times every
(library, threads) pair once per size, in a rotating order, after a short pause that lets the
previous library's spinning threads go to sleep. Reported numbers are medians over all timed
calls of all rounds (the machine is shared and noisy); best-of numbers are printed too.

Usage: python benchmarks/bench_gemm.py [--rounds 5] [--sizes 2048x2048x2048,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import _timing  # benchmarks/_timing.py (the script's own folder is on sys.path)

ROOT = pathlib.Path(__file__).resolve().parent.parent

SIZES = [
    (2048, 2048, 2048),
    (4096, 4096, 1024),
    (2048, 2048, 16),  # r-like: a rank-16 product
    (16, 2048, 2048),  # M = r = 16
    (1, 2048, 2048),  # one row (one token)
    (1000, 999, 1001),  # odd sizes: edge tiles everywhere
]
THREADS = (1, 2)
BLOCK_SECONDS = 0.25  # target length of one timed block


# ---- worker side -------------------------------------------------------------------------------


def _worker(kind: str, threads: int) -> None:
    """Serve timing requests on stdin/stdout (one JSON object per line)."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    info: dict[str, Any] = {"kind": kind}
    if kind == "sparseft":
        import sparseft
        from sparseft import _core

        bi = sparseft.build_info()
        info.update(simd=bi["simd"], openmp=bi["openmp"], compiler=bi["compiler"])

        def setup(a: Any, b: Any, t: int) -> Any:
            sparseft.set_num_threads(t)
            return lambda: _core.matmul(a, b)

    elif kind.startswith("numpy"):
        try:
            from threadpoolctl import threadpool_info

            blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
            info.update(
                blas=blas[0].get("internal_api") if blas else None,
                core=blas[0].get("architecture") if blas else None,
                blas_threads=blas[0].get("num_threads") if blas else None,
                blas_version=blas[0].get("version") if blas else None,
            )
        except ImportError:
            info.update(core="unknown (threadpoolctl not installed)")
        info["numpy"] = np.__version__

        def setup(a: Any, b: Any, t: int) -> Any:
            return lambda: a @ b

    elif kind == "torch":
        import torch

        info.update(torch=torch.__version__, mkl=bool(torch.backends.mkl.is_available()))

        def setup(a: Any, b: Any, t: int) -> Any:
            torch.set_num_threads(t)
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            return lambda: torch.matmul(ta, tb)

    else:
        raise SystemExit(f"unknown worker kind {kind}")

    print(json.dumps({"ready": info}), flush=True)
    cache: dict[tuple[int, int, int], tuple[Any, Any]] = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        m, n, k, t = req["m"], req["n"], req["k"], req["threads"]
        if (m, n, k) not in cache:
            cache.clear()
            rng = np.random.default_rng(1234)
            cache[(m, n, k)] = (
                rng.uniform(-1, 1, (m, k)).astype(np.float32),
                rng.uniform(-1, 1, (k, n)).astype(np.float32),
            )
        a, b = cache[(m, n, k)]
        f = setup(a, b, t)
        t0 = time.perf_counter()
        f()  # warm-up (and the estimate of how many calls fit in a block)
        est = max(time.perf_counter() - t0, 1e-6)
        reps = int(min(25, max(2, BLOCK_SECONDS / est)))
        scratch = None
        if kind == "sparseft":
            from sparseft import _core

            _core.reset_scratch_peak()
            base = _core.scratch_stats()["current"]
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        if kind == "sparseft":
            scratch = _core.scratch_stats()["peak"] - base
        print(json.dumps({"times": times, "scratch": scratch}), flush=True)


# ---- orchestrator ---------------------------------------------------------------------------------


class Worker:
    """One worker process speaking the JSON-lines protocol."""

    def __init__(self, name: str, kind: str, threads: int, env: dict[str, str]) -> None:
        self.name, self.threads = name, threads
        full_env = dict(os.environ, **env)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, "--worker-threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=full_env,
            cwd=str(ROOT),
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise RuntimeError(f"worker {name} did not start")
        self.info = json.loads(line)["ready"]

    def time(self, m: int, n: int, k: int, threads: int) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"cmd": "time", "m": m, "n": n, "k": k, "threads": threads}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
        self.proc.wait(timeout=30)


def _core_info() -> dict[str, Any]:
    """build_info() of sparseft in a fresh process (the SIMD path it picks by default)."""
    code = f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); import sparseft; print(json.dumps(sparseft.build_info()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _torch_available() -> bool:
    out = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    return out.returncode == 0


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--sizes", type=str, default=None, help="comma-separated MxNxK list")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even when installed")
    ap.add_argument("--json", type=str, default=None, help="also write the raw results here")
    ap.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker, args.worker_threads)
        return

    sizes = SIZES
    if args.sizes:
        sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",")]  # type: ignore[misc]

    # (column label, worker kind, threads fixed at start?, extra env)
    specs: list[tuple[str, str, int, dict[str, str]]] = []
    for t in THREADS:
        specs.append((f"sft {t}t", "sparseft", t, {}))
    avx2_prev = _core_info().get("simd") == "avx512"
    if avx2_prev:  # our previous path, side by side: the AVX2 micro-kernel
        for t in THREADS:
            specs.append((f"avx2 {t}t", "sparseft", t, {"SPARSEFT_SIMD": "avx2"}))
    for t in THREADS:
        specs.append((f"np {t}t", "numpy", t, {"OPENBLAS_NUM_THREADS": str(t)}))
    for t in THREADS:
        specs.append(
            (f"hsw {t}t", "numpy", t, {"OPENBLAS_NUM_THREADS": str(t), "OPENBLAS_CORETYPE": "Haswell"})
        )
    if not args.no_torch and _torch_available():
        for t in THREADS:
            specs.append((f"torch {t}t", "torch", t, {}))

    # one process per sparseft / torch (threads set per call), one per OpenBLAS thread count
    workers: dict[str, Worker] = {}
    by_label: dict[str, tuple[Worker, int]] = {}
    for label, kind, t, env in specs:
        key = kind + env.get("OPENBLAS_CORETYPE", "") + env.get("OPENBLAS_NUM_THREADS", "")
        key += env.get("SPARSEFT_SIMD", "")
        if key not in workers:
            workers[key] = Worker(label, kind, t, env)
        by_label[label] = (workers[key], t)

    print(f"{_timing.cpu_line()}; Python {platform.python_version()}")
    for key, w in workers.items():
        print(f"  worker {key}: {w.info}")
    hsw = [w.info for k, w in workers.items() if "Haswell" in k]
    if hsw and hsw[0].get("core") != "Haswell":
        print(
            f"  WARNING: OPENBLAS_CORETYPE=Haswell not honoured, OpenBLAS reports core {hsw[0].get('core')}"
        )
    print(f"rounds: {args.rounds} (interleaved); numbers are medians of all timed calls")
    print(f"load average before: {_loadavg()} (the machine is shared: other jobs slow every column)\n")

    labels = [s[0] for s in specs]
    times: dict[tuple[tuple[int, int, int], str], list[float]] = {}
    scratch: dict[tuple[tuple[int, int, int], str], int] = {}
    t_start = time.time()
    for r in range(args.rounds):
        for size in sizes:
            # rotate the order each round so no library always runs right after another
            order = labels[r % len(labels) :] + labels[: r % len(labels)]
            for label in order:
                w, t = by_label[label]
                time.sleep(_timing.SETTLE)  # the previous worker's threads may still be spinning
                res = w.time(*size, t)
                times.setdefault((size, label), []).extend(res["times"])
                if res.get("scratch") is not None:
                    scratch[(size, label)] = max(scratch.get((size, label), 0), res["scratch"])
        print(f"  round {r + 1}/{args.rounds} done ({time.time() - t_start:.0f} s)", file=sys.stderr)
    for w in workers.values():
        w.close()
    print(f"load average after: {_loadavg()}\n")

    def gflops(size: tuple[int, int, int], label: str, best: bool = False) -> float:
        m, n, k = size
        ts = times[(size, label)]
        return 2.0 * m * n * k / (min(ts) if best else statistics.median(ts)) / 1e9

    def name(size: tuple[int, int, int]) -> str:
        return "x".join(str(x) for x in size)

    w0 = max(len(name(s)) for s in sizes) + 2
    for title, best in (("GFLOP/s, median", False), ("GFLOP/s, best of all calls", True)):
        print(title)
        print("size".ljust(w0) + "".join(f"{lab:>10s}" for lab in labels) + f"{'scratch KiB (1t/2t)':>22s}")
        for s in sizes:
            row = name(s).ljust(w0) + "".join(f"{gflops(s, lab, best):10.1f}" for lab in labels)
            sc = "/".join(str(scratch.get((s, f"sft {t}t"), 0) // 1024) for t in THREADS)
            print(row + f"{sc:>22s}")
        print()

    print("ratios of medians: sparseft / other at the same thread count")
    others = [("np", "OpenBLAS default"), ("hsw", "OpenBLAS Haswell"), ("torch", "PyTorch"), ("avx2", "")]
    cols = [(o, t) for o, _ in others for t in THREADS if f"{o} {t}t" in labels]
    print("size".ljust(w0) + "".join(f"{'sft/' + o + ' ' + str(t) + 't':>13s}" for o, t in cols))
    for s in sizes:
        row = name(s).ljust(w0)
        for o, t in cols:
            row += f"{gflops(s, f'sft {t}t') / gflops(s, f'{o} {t}t'):13.2f}"
        print(row)
    print("\n(np = NumPy/OpenBLAS default kernels, hsw = OpenBLAS forced to its AVX2 Haswell kernels,")
    print(" sft = sparseft on its default SIMD path, avx2 = sparseft forced to its AVX2 micro-kernel")
    print(" (SPARSEFT_SIMD=avx2, the previous path); scratch = peak kernel scratch of one sparseft call)")

    if args.json:
        out = {
            "sizes": [list(s) for s in sizes],
            "labels": labels,
            "workers": {k: w.info for k, w in workers.items()},
            "times": {f"{name(s)}|{lab}": times[(s, lab)] for s in sizes for lab in labels},
            "scratch": {f"{name(s)}|{lab}": v for (s, lab), v in scratch.items()},
        }
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
