"""The sparse kernels' inner tiles alone against the dense GEMM core: the ceiling of the sparse path.

Compiles ``benchmarks/bench_tiles.c`` (it includes ``csrc/sparse.c``, so the tile kernels are the
extension's own) with the system C compiler and runs it: one thread, one 64-row chunk of one column
block against one 64-token tile, repeated in cache. Printed as measured per SIMD path: GFLOP/s of
the dense GEMM core and of the forward tile, the fused backward tile and its two halves (gx = gy W'
scattered into gx^T; the sampled gradient <gy_i, x_j>), their ratios to the dense core, and the
fwd+bwd step ratio those tile rates alone imply against three dense GEMMs (no W' recompute, no
transposes, no carried sums: no real call can do better). ``bench_sparse.py`` times the real calls.

Usage: python benchmarks/bench_tiles.py [--seconds 0.3] [--cc cc]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile

import _timing  # benchmarks/_timing.py (the script's own folder is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(cc: str, out: str) -> None:
    """Compile bench_tiles.c with the extension's flags (-O3, no -march=native: the SIMD paths are
    chosen at run time, as in the extension); OpenMP when the compiler takes it."""
    src = [os.path.join(ROOT, "benchmarks", "bench_tiles.c")] + [
        os.path.join(ROOT, "csrc", f) for f in ("common.c", "gemm.c")
    ]
    base = [cc, "-O3", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-I", os.path.join(ROOT, "csrc")]
    for extra in (["-fopenmp"], []):
        res = subprocess.run([*base, *extra, *src, "-o", out, "-lm"], capture_output=True, text=True)
        if res.returncode == 0:
            return
    raise SystemExit(f"bench_tiles: compiling failed:\n{res.stderr}")  # the build without OpenMP


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=0.3, help="seconds per measurement (best of 5 rounds)")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"), help="C compiler")
    args = ap.parse_args()
    if shutil.which(args.cc) is None:
        raise SystemExit(f"--cc: compiler {args.cc!r} not found")
    tmp = tempfile.mkdtemp(prefix="sparseft-tiles-")
    try:
        exe = os.path.join(tmp, "bench_tiles")
        build(args.cc, exe)
        print(_timing.cpu_line(), flush=True)
        res = subprocess.run([exe, str(args.seconds)], env=dict(os.environ, OMP_NUM_THREADS="1"))
        if res.returncode != 0:
            raise SystemExit(f"bench_tiles: the program exited with {res.returncode}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
