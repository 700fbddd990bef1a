"""Sparse base formats (CSR, N:M) against dense GEMMs of the same shapes, side by side in one run.

For every shape and mask: forward (y = x W'^T) and backward (gx = gy W' plus the exact masked adapter
gradient, fused ``backward`` and the two separate calls) of ``sparseft.formats`` bases, with the
adapter W' = W + s*(B A) ⊙ M recomputed inside the kernels. Printed as measured:

* seconds (min over interleaved repetitions; the machine is shared, so min and median are shown),
* effective GFLOP/s counting 2*nnz*N per sparse product (fwd: 1 product, bwd: 2),
* the ratio to sparseft's dense-masked LoRS path (``DenseBase``, W' rebuilt inside the GEMM) at a
  50% unstructured mask, the reference of the issue's targets (timed again inside every row's
  interleaved repetitions, so both sides of the ratio come from the same minutes), and to
  NumPy/OpenBLAS doing the dense GEMMs of the same shapes (y = x W^T; gx = gy W and G = gy^T x),
* the ratio to torch.sparse CSR (spmm for y and gx, sampled_addmm for G ⊙ M; no adapter) when torch
  is installed,
* kernel scratch peak (``_core.scratch_stats``) and the base's bytes against dense float32,
* the density crossover between dense and CSR (fwd+bwd), used for ``formats.DENSITY_CROSSOVERS``
  (one value per SIMD path: run with SPARSEFT_SIMD=avx2 to measure the AVX2 one).

Usage: python benchmarks/bench_sparse.py [--quick] [--reps 5] [--threads 2] [--shapes 2048x8192]
       [--isa native|avx2]  (avx2: every library on AVX2/FMA kernels, see _timing.AVX2_ENV)
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from collections.abc import Callable

import _timing  # benchmarks/_timing.py (the script's own folder is on sys.path)
import numpy as np

import sparseft as sft
from sparseft import DenseBase, _core
from sparseft.formats import CSRBase, NMBase, density_crossover

try:
    import torch
except ImportError:  # pragma: no cover - optional
    torch = None


def kernels(
    base: CSRBase | NMBase | DenseBase, x: np.ndarray, gy: np.ndarray, A: np.ndarray, B: np.ndarray, s: float
) -> dict[str, Callable[[], object]]:
    """The timed calls of one base: forward, fused backward, and the two separate backward calls."""
    fused = getattr(base, "backward", None)
    return {
        "fwd": lambda: base.forward(x, A, B, s),
        "bwd": (lambda: fused(gy, x, A, B, s))
        if fused is not None
        else (lambda: (base.backward_input(gy, A, B, s), base.masked_grad(gy, x, A, B, s))),
        "bwd_in": lambda: base.backward_input(gy, A, B, s),
        "bwd_g": lambda: base.masked_grad(gy, x, A, B, s),
    }


def fmt(ts: list[float]) -> str:
    return f"{min(ts):8.4f} (med {statistics.median(ts):7.4f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, 2 repetitions (smoke run)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--shapes",
        default=None,
        help="comma-separated OUTxIN weight shapes, e.g. 2048x8192 (default: 2048x2048,8192x2048)",
    )
    ap.add_argument(
        "--isa",
        choices=["native", "avx2"],
        default="native",
        help="avx2: sparseft, OpenBLAS and PyTorch all on AVX2/FMA kernels (an AVX2 machine's ISA)",
    )
    args = ap.parse_args()
    _timing.reexec_with_isa(args.isa)
    sft.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    reps = 2 if args.quick else args.reps
    N = 256 if args.quick else 2048
    shapes = [(256, 256), (512, 256)] if args.quick else [(2048, 2048), (8192, 2048)]
    if args.shapes:
        shapes = [(int(a), int(b)) for a, b in (t.lower().split("x") for t in args.shapes.split(","))]
    r, s = 16, 2.0
    info = sft.build_info()
    print(
        f"sparseft {sft.__version__}: simd={info['simd']} threads={info['num_threads']} openmp={info['openmp']}"
    )
    print(f"torch: {torch.__version__ if torch is not None else 'not installed'}; numpy {np.__version__}")
    print(_timing.isa_line())
    print(_timing.cpu_line())
    print(f"N={N} tokens, r={r}, reps={reps} interleaved; times in seconds: min (median)")
    rng = np.random.default_rng(0)
    summary: dict[tuple[int, int], dict[str, float]] = {}
    for out, inn in shapes:
        print(f"\n=== W (out={out}, in={inn}), x ({N}, {inn}) ===")
        W = rng.standard_normal((out, inn)).astype(np.float32)
        x = rng.standard_normal((N, inn)).astype(np.float32)
        gy = rng.standard_normal((N, out)).astype(np.float32)
        A = (rng.standard_normal((r, inn)) * 0.01).astype(np.float32)
        B = (rng.standard_normal((out, r)) * 0.01).astype(np.float32)
        dense_flop = 2.0 * N * out * inn
        td = _timing.interleaved(
            {"fwd": lambda: x @ W.T, "gx": lambda: gy @ W, "G": lambda: gy.T @ x},  # noqa: B023
            reps,
        )
        t_dense = min(td["fwd"]) + min(td["gx"]) + min(td["G"])
        print(
            f"numpy dense: fwd {fmt(td['fwd'])}  bwd(gx+G) {min(td['gx']) + min(td['G']):8.4f}  "
            f"fwd+bwd {t_dense:.4f}  ({3 * dense_flop / t_dense / 1e9:.1f} GFLOP/s)"
        )
        m50 = rng.random((out, inn)) < 0.5
        dense50 = DenseBase.from_dense(W * m50, m50)
        t50 = _timing.interleaved(kernels(dense50, x, gy, A, B, s), reps)
        t_d50 = min(t50["fwd"]) + min(t50["bwd"])
        print(
            f"sparseft DenseBase 50% (dense-masked LoRS path): fwd {fmt(t50['fwd'])}  bwd {fmt(t50['bwd'])}  "
            f"fwd+bwd {t_d50:.4f}  ({3 * dense_flop / t_d50 / 1e9:.1f} GFLOP/s dense-equivalent)",
            flush=True,
        )
        print(
            f"{'mask':>6} {'fmt':>4} {'fwd s':>26} {'bwd fused s':>26} {'bwd separate s':>15} "
            f"{'GF/s f/b':>11} {'vs d50':>7} {'vs numpy':>8} {'vs torch':>8} {'scratch MiB':>11} {'bytes/dense':>11}"
        )
        rows: dict[str, float] = {}
        for kind in ["1.0", "0.5", "0.3", "0.2", "0.15", "0.1", "0.05", "2:4", "4:8", "1:4", "1:8"]:
            if ":" in kind:
                n, m = map(int, kind.split(":"))
                mask = sft.prune.nm(W, n, m)
                base: CSRBase | NMBase = NMBase.from_dense(W * mask, mask)
            else:
                mask = sft.prune.magnitude(W, 1.0 - float(kind))
                base = CSRBase.from_dense(W * mask, mask)
            nnz = base.nnz
            fns = kernels(base, x, gy, A, B, s)
            if torch is not None:
                Wm = torch.from_numpy(W * mask)
                Wc, WTc = Wm.to_sparse_csr(), Wm.T.contiguous().to_sparse_csr()
                xt, gyt = torch.from_numpy(x), torch.from_numpy(gy)
                xT, gyT = xt.T.contiguous(), gyt.T.contiguous()

                def torch_step(Wc=Wc, WTc=WTc, xT=xT, gyT=gyT, xt=xt) -> object:
                    y = (Wc @ xT).T
                    gx = (WTc @ gyT).T
                    g = torch.sparse.sampled_addmm(Wc, gyT, xt, beta=0.0)
                    return y, gx, g

                fns["torch"] = torch_step
            # the dense-masked reference is timed again inside every row's interleaved run, so the
            # "vs d50" ratio compares calls made in the same minutes of a noisy machine
            d50 = kernels(dense50, x, gy, A, B, s)
            fns["d50_fwd"], fns["d50_bwd"] = d50["fwd"], d50["bwd"]
            _core.reset_scratch_peak()
            base.forward(x, A, B, s)
            base.backward(gy, x, A, B, s)
            scratch = _core.scratch_stats()["peak"] / 2**20
            ts = _timing.interleaved(fns, reps)
            tf, tb = min(ts["fwd"]), min(ts["bwd"])
            tsep = min(ts["bwd_in"]) + min(ts["bwd_g"])
            ratio_np = (tf + tb) / t_dense
            ratio_t = (tf + tb) / min(ts["torch"]) if "torch" in ts else float("nan")
            rows[kind] = (tf + tb) / (min(ts["d50_fwd"]) + min(ts["d50_bwd"]))
            print(
                f"{kind:>6} {base.format:>4} {fmt(ts['fwd'])} {fmt(ts['bwd'])} {tsep:15.4f} "
                f"{2 * nnz * N / tf / 1e9:5.1f}/{4 * nnz * N / tb / 1e9:5.1f} {rows[kind]:7.3f} {ratio_np:8.3f} {ratio_t:8.3f} "
                f"{scratch:11.2f} {base.nbytes / W.nbytes:11.3f}",
                flush=True,
            )
        summary[(out, inn)] = rows
        # crossover: the density where CSR fwd+bwd time equals the dense-masked path's (linear interpolation;
        # the dense path's time does not depend on the density)
        ds = [1.0, 0.5, 0.3, 0.2, 0.15, 0.1, 0.05]
        cross = None
        for hi, lo in itertools.pairwise(ds):
            if rows[str(hi)] >= 1.0 > rows[str(lo)]:
                cross = lo + (hi - lo) * (1.0 - rows[str(lo)]) / (rows[str(hi)] - rows[str(lo)])
                break
        if cross is None:
            cross = 0.0 if rows["0.05"] >= 1.0 else 1.0
        print(
            f"measured dense/CSR crossover (CSR fwd+bwd = DenseBase fwd+bwd): density ~ {cross:.3f} "
            f"(formats.density_crossover() = {density_crossover()} on the {sft.build_info()['simd']} path)"
        )
    key = shapes[0]
    rows = summary[key]
    print(f"\n=== targets at {key}, N={N}, r={r} (fwd+bwd / DenseBase 50% fwd+bwd) ===")
    half = rows["0.5"]
    print(
        f"2:4    fwd+bwd / dense50 = {rows['2:4']:.3f}  (target <= 0.8)  -> {'met' if rows['2:4'] <= 0.8 else 'NOT met'}"
    )
    print(
        f"d=0.1  fwd+bwd / dense50 = {rows['0.1']:.3f}  (target <= 0.35) -> {'met' if rows['0.1'] <= 0.35 else 'NOT met'}"
    )
    print(f"(vs our own CSR at 50%: 2:4 {rows['2:4'] / half:.3f}, d=0.1 {rows['0.1'] / half:.3f})")


if __name__ == "__main__":
    main()
