"""Two or more builds of sparseft's LoRS kernels side by side in one process ("vs our previous path").

Each BUILD is a source tree whose extension is built in place (``python setup.py build_ext
--inplace``), e.g. ``git worktree add /tmp/old <rev>`` then a build there. Every build's
``sparseft/_core*.so`` is loaded into this one process and the calls alternate build by build, so
a noisy machine slows all of them alike. The first build is the reference of the ratios. Before
timing, every build's results are checked against the first (same problem, same inputs; with
``--exact`` they must be bit-identical, the check of a refactor that must not change results).

Printed as measured: min and median milliseconds of ``sparse_forward`` (y = x W'^T) or the fused
``sparse_backward`` (gx and the exact masked dA, dB), effective GFLOP/s (2*nnz*N per product), and
min / min of the first build. With ``--dense`` the same passes run the dense-masked kernels instead
(``lors_forward``; ``lors_backward_input`` plus ``lors_backward_exact``, or ``lors_backward_lors``
with ``--grad lors``), and GFLOP/s counts the dense products (2*out*in*N each).

Usage: python benchmarks/bench_builds.py [--mask 0.1|2:4|...] [--pass fwd|bwd] [--dense]
       [--grad exact|lors] [--seconds 20] [--shape 2048x2048] [--tokens 2048] [--threads 2]
       [--exact] BUILD [BUILD ...]
"""

from __future__ import annotations

import argparse
import glob
import importlib.machinery
import importlib.util
import os
import statistics
import time
from types import ModuleType

import _timing  # benchmarks/_timing.py (the script's own folder is on sys.path)
import numpy as np

import sparseft as sft
from sparseft.formats import CSRBase, NMBase


def load_core(build: str) -> ModuleType:
    """Load ``build``'s compiled ``sparseft._core`` without touching ``sys.modules``."""
    found = sorted(glob.glob(os.path.join(build, "sparseft", "_core*.so")))
    if not found:
        raise SystemExit(f"{build}: no sparseft/_core*.so (build it in place first)")
    loader = importlib.machinery.ExtensionFileLoader("sparseft._core", found[0])
    spec = importlib.util.spec_from_file_location("sparseft._core", found[0], loader=loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def problem(
    mask_spec: str, out: int, inn: int, N: int, r: int
) -> tuple[np.ndarray, np.ndarray, CSRBase | NMBase, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The benchmark problem (seed 0): W, its mask (a density: magnitude-pruned, CSR; "n:m": N:M),
    the base, x (N, in), gy (N, out) and small adapters A (r, in), B (out, r)."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((out, inn)).astype(np.float32)
    if ":" in mask_spec:
        n, m = (int(v) for v in mask_spec.split(":"))
        mask = sft.prune.nm(W, n, m)
        base: CSRBase | NMBase = NMBase.from_dense(W * mask, mask)
    else:
        mask = sft.prune.magnitude(W, 1.0 - float(mask_spec))
        base = CSRBase.from_dense(W * mask, mask)
    x = rng.standard_normal((N, inn)).astype(np.float32)
    gy = rng.standard_normal((N, out)).astype(np.float32)
    A = (rng.standard_normal((r, inn)) * 0.01).astype(np.float32)
    B = (rng.standard_normal((out, r)) * 0.01).astype(np.float32)
    return W, mask, base, x, gy, A, B


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("builds", nargs="+", metavar="BUILD")
    ap.add_argument("--mask", default="0.1", help="a density (CSR, magnitude-pruned) or n:m (N:M)")
    ap.add_argument("--pass", dest="which", choices=["fwd", "bwd"], default="bwd")
    ap.add_argument("--dense", action="store_true", help="time the dense-masked kernels")
    ap.add_argument("--grad", choices=["exact", "lors"], default="exact", help="--dense backward's gradient")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--shape", default="2048x2048", help="OUTxIN")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--exact", action="store_true", help="require bit-identical results of every build (a refactor check)"
    )
    args = ap.parse_args()
    out, inn = (int(v) for v in args.shape.lower().split("x"))
    N, r, s = args.tokens, 16, 2.0
    cores = [load_core(b) for b in args.builds]
    for core in cores:
        core.set_num_threads(args.threads)

    W, mask, base, x, gy, A, B = problem(args.mask, out, inn, N, r)
    t = base._tuple()
    Wm = (W * mask).astype(np.float32)

    def call(core: ModuleType) -> tuple[np.ndarray, ...]:
        if args.dense and args.which == "fwd":
            return (core.lors_forward(x, Wm, mask, A, B, s),)
        if args.dense:
            gx = core.lors_backward_input(gy, Wm, mask, A, B, s)
            if args.grad == "lors":
                return (gx, *core.lors_backward_lors(gy, x, A, B, s))
            return (gx, *core.lors_backward_exact(gy, x, mask, A, B, s))
        if args.which == "fwd":
            return (core.sparse_forward(t, x, A, B, s),)
        return tuple(core.sparse_backward(t, gy, x, A, B, s))

    want = call(cores[0])
    for build, core in zip(args.builds[1:], cores[1:], strict=True):
        for a, b in zip(want, call(core), strict=True):
            if args.exact:
                np.testing.assert_array_equal(b, a, err_msg=f"{build} is not bit-identical to {args.builds[0]}")
            else:
                np.testing.assert_allclose(
                    b, a, rtol=1e-3, atol=1e-2, err_msg=f"{build} disagrees with {args.builds[0]}"
                )

    times: list[list[float]] = [[] for _ in cores]
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end:
        for i, core in enumerate(cores):
            t0 = time.perf_counter()
            call(core)
            times[i].append(time.perf_counter() - t0)

    products = 1 if args.which == "fwd" else (3 if args.dense and args.grad == "exact" else 2)
    flop = 2.0 * (out * inn if args.dense else base.nnz) * N * products
    print(_timing.cpu_line())
    print(
        f"sparseft {sft.__version__} simd={sft.build_info()['simd']} threads={args.threads}; "
        f"W {out}x{inn} mask {args.mask} ({'dense ' + args.grad if args.dense else base.format}), "
        f"N={N}, r={r}, {args.which}; "
        f"calls alternate build by build for {args.seconds:g} s"
    )
    print(f"{'build':40s} {'min ms':>8} {'med ms':>8} {'GF/s':>7} {'min/first':>9} {'calls':>6}")
    ref = min(times[0])
    for build, ts in zip(args.builds, times, strict=True):
        print(
            f"{build[-40:]:40s} {min(ts) * 1e3:8.1f} {statistics.median(ts) * 1e3:8.1f} "
            f"{flop / min(ts) / 1e9:7.1f} {min(ts) / ref:9.3f} {len(ts):6d}"
        )


if __name__ == "__main__":
    main()
