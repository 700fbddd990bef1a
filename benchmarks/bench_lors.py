"""LoRS fwd+bwd benchmark: sparseft vs NumPy/OpenBLAS and PyTorch CPU, measured side by side in one run.

For tokens N and (in, out) layers with rank r and several masks, each "step" is one forward and
one backward of the layer (y, gx and the adapter gradients). Printed per grad mode:

- seconds (min over interleaved repetitions) and GFLOP/s on the *dense* FLOP count of the step
  (exact: 3 GEMMs = 6·N·in·out, lors: 2 GEMMs + the thin adapter products), the same count for
  every column so GFLOP/s compare directly;
- ``/np``: ratio to NumPy doing the same dense GEMMs (exact: y = x Wᵀ, gx = gy W, G = gyᵀx;
  lors: only the frozen layer's two GEMMs y = x Wᵀ and gx = gy W, the target's baseline);
- ``/spp``: ratio to a PyTorch SPP/SQFT-style layer, W + s·(B@A)*M under autograd;
- ``/tfn``: ratio to a PyTorch LoRS-style custom autograd Function that saves only x and
  recomputes W' in backward (gradient of the same mode);
- peak extra memory of a step (allocations made during it, outputs included: y, gx, dA, dB):
  sparseft = kernel scratch peak (``_core.scratch_stats``) + NumPy allocations (tracemalloc);
  torch = the profiler's CPU memory timeline of the step (``torch.profiler`` with
  ``profile_memory=True``, ``export_memory_timeline(device="cpu")``), maximum minus first sample.

The machine is shared: repetitions are interleaved across methods and the minimum is shown.
``--isa avx2`` restarts the script with every library capped at AVX2/FMA kernels (``_timing.AVX2_ENV``:
sparseft, OpenBLAS, PyTorch's ATen, oneDNN and MKL), the instruction set of the issue's "2-core AVX2
machine", on an AVX-512 host.
Usage: ``python benchmarks/bench_lors.py [--quick] [--reps 3] [--threads 2] [--shapes 2048x2048,...]
[--isa native|avx2]``.
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import _timing  # benchmarks/_timing.py (the script's own folder is on sys.path)
import numpy as np

import sparseft as sft
from sparseft import _core

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None


# ---- masks ----


def make_mask(rng: np.random.Generator, out: int, in_: int, kind: str) -> np.ndarray:
    """bool (out, in): "2:4" (2 of every 4 consecutive inputs, random) or a random density."""
    if kind == "2:4":
        assert in_ % 4 == 0
        order = np.argsort(rng.random((out, in_ // 4, 4)), axis=2)
        return (order < 2).reshape(out, in_)
    return rng.random((out, in_)) < float(kind)


# ---- timing ----


def interleaved(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Min seconds of each fn over ``reps`` interleaved rounds (``_timing``: a settle pause before
    every timed call, so no library's spinning worker threads slow the next one)."""
    return {k: min(ts) for k, ts in _timing.interleaved(fns, reps).items()}


# ---- memory ----


SCRATCH: dict[str, int] = {}  # kernel scratch peak of the last measured step per grad mode


def sparseft_peak(step: Callable[[], Any], key: str = "") -> int:
    """Kernel scratch peak + NumPy allocation peak (tracemalloc) of one step, in bytes."""
    gc.collect()
    _core.reset_scratch_peak()
    base = _core.scratch_stats()["current"]
    tracemalloc.start()
    try:
        step()
        _, np_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    SCRATCH[key] = int(_core.scratch_stats()["peak"] - base)
    return int(_core.scratch_stats()["peak"] - base + np_peak)


def torch_peak(step: Callable[[], Any]) -> int | None:
    """Peak extra bytes of one torch step: the profiler's CPU memory timeline
    (``export_memory_timeline(device="cpu")``, every category summed), its maximum minus its first
    sample (the tensors that existed before the step)."""
    if torch is None:
        return None
    import json
    import os
    import tempfile
    import warnings

    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        step()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prof.export_memory_timeline(path, device="cpu")
        with open(path) as f:
            _, sizes = json.load(f)
    except Exception:  # the timeline API is deprecated in torch; report "-" rather than fail
        return None
    finally:
        os.unlink(path)
    totals = [sum(s) for s in sizes]
    return int(max(totals) - totals[0]) if totals else None


# ---- the PyTorch peers ----


def torch_steps(
    W: np.ndarray, mask: np.ndarray, A: np.ndarray, B: np.ndarray, s: float, x: np.ndarray, gy: np.ndarray
):
    """(SPP step, LoRS-Function step for "exact", LoRS-Function step for "lors") as closures."""
    tW, tM = torch.from_numpy(W), torch.from_numpy(mask.astype(np.float32))
    tx, tgy = torch.from_numpy(x), torch.from_numpy(gy)
    tA = torch.from_numpy(A.copy()).requires_grad_(True)
    tB = torch.from_numpy(B.copy()).requires_grad_(True)

    def spp() -> None:
        xx = tx.detach().requires_grad_(True)
        y = xx @ (tW + s * (tB @ tA) * tM).T
        y.backward(tgy)
        tA.grad = tB.grad = None

    class LoRSFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, A, B, exact):  # type: ignore[override]
            ctx.save_for_backward(x, A, B)
            ctx.exact = exact
            with torch.no_grad():
                return x @ (tW + s * (B @ A) * tM).T

        @staticmethod
        def backward(ctx, g):  # type: ignore[override]
            x, A, B = ctx.saved_tensors
            Wp = tW + s * (B @ A) * tM  # recompute
            gx = g @ Wp
            del Wp
            if ctx.exact:
                G = (g.T @ x) * tM
                dA, dB = s * (B.T @ G), s * (G @ A.T)
            else:
                dB = s * (g.T @ (x @ A.T))
                dA = s * ((g @ B).T @ x)
            return gx, dA, dB, None

    def fn(exact: bool) -> Callable[[], None]:
        def step() -> None:
            xx = tx.detach().requires_grad_(True)
            y = LoRSFn.apply(xx, tA, tB, exact)
            y.backward(tgy)
            tA.grad = tB.grad = None

        return step

    return spp, fn(True), fn(False)


# ---- main ----


def fmt_mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def run_case(
    rng: np.random.Generator, N: int, in_: int, out: int, r: int, kind: str, reps: int, memory: bool
) -> dict[str, Any]:
    mask = make_mask(rng, out, in_, kind)
    W = (rng.standard_normal((out, in_)).astype(np.float32) * mask).astype(np.float32)
    x = rng.standard_normal((N, in_)).astype(np.float32)
    gy = rng.standard_normal((N, out)).astype(np.float32)
    layers = {g: sft.LoRSLinear(W, mask=mask, r=r, alpha=2 * r, grad=g, seed=1) for g in ("exact", "lors")}
    B = (0.01 * rng.standard_normal((out, r))).astype(np.float32)
    for lay in layers.values():
        lay.B[...] = B
    A, s = layers["exact"].A, layers["exact"].scaling
    fmt = layers["exact"].base.format

    def sft_step(g: str) -> Callable[[], None]:
        lay = layers[g]

        def step() -> None:
            lay.forward(x)
            lay.backward(gy)

        return step

    Wd = W  # dense NumPy baseline with the same values

    def np2() -> None:
        x @ Wd.T
        gy @ Wd

    def np3() -> None:
        x @ Wd.T
        gy @ Wd
        gy.T @ x

    fns: dict[str, Callable[[], Any]] = {
        "exact": sft_step("exact"),
        "lors": sft_step("lors"),
        "np2": np2,
        "np3": np3,
    }
    if torch is not None:
        spp, tfn_exact, tfn_lors = torch_steps(W, mask, A, B, s, x, gy)
        fns.update({"spp": spp, "tfn_exact": tfn_exact, "tfn_lors": tfn_lors})
    t = interleaved(fns, reps)
    mem: dict[str, int | None] = {}
    if memory:
        mem["exact"] = sparseft_peak(fns["exact"], f"{in_}x{out} {kind} exact")
        mem["lors"] = sparseft_peak(fns["lors"], f"{in_}x{out} {kind} lors")
        if torch is not None:
            mem["spp"] = torch_peak(fns["spp"])
            mem["tfn_exact"] = torch_peak(fns["tfn_exact"])
            mem["tfn_lors"] = torch_peak(fns["tfn_lors"])
    return {"t": t, "mem": mem, "format": fmt, "nbytes": layers["exact"].nbytes, "density": mask.mean()}


def gemm_core_ratio(n: int, reps: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    t = interleaved({"core": lambda: _core.matmul(a, b), "numpy": lambda: a @ b}, reps)
    fl = 2.0 * n**3
    return fl / t["core"] / 1e9, fl / t["numpy"] / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (N=256, small layers)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (min is shown)")
    ap.add_argument("--threads", type=int, default=2, help="threads for sparseft and torch")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    ap.add_argument(
        "--shapes", default=None, help="comma-separated INxOUT layers, e.g. 2048x2048 (default: all)"
    )
    ap.add_argument("--kinds", default=None, help="comma-separated masks, e.g. 0.5,0.1 (default: all)")
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
    if args.quick:
        N, r, shapes, kinds = 256, 16, [(256, 256), (256, 512)], ["0.5", "2:4", "0.1"]
    else:
        N, r, shapes, kinds = (
            2048,
            16,
            [(2048, 2048), (2048, 8192), (8192, 2048)],
            ["0.5", "2:4", "0.3", "0.1"],
        )
    if args.kinds:
        kinds = args.kinds.split(",")
    if args.shapes:
        shapes = [(int(a), int(b)) for a, b in (t.split("x") for t in args.shapes.split(","))]
    info = sft.build_info()
    print(
        f"sparseft {sft.__version__}: simd={info['simd']} threads={info['num_threads']} "
        f"openmp={info['openmp']}; numpy {np.__version__}; "
        f"torch {torch.__version__ if torch is not None else 'not installed'}"
    )
    cap = torch.backends.cpu.get_cpu_capability() if torch is not None else "-"
    print(f"{_timing.isa_line()}; torch CPU capability {cap}")
    print(_timing.cpu_line())
    print(f"N={N} r={r}; min of {args.reps} interleaved reps; ratios < 1 mean sparseft is faster / smaller")
    gc_core, gc_np = gemm_core_ratio(512 if args.quick else 2048, args.reps)
    print(
        f"GEMM core {512 if args.quick else 2048}^3: {gc_core:.1f} GFLOP/s vs NumPy {gc_np:.1f} GFLOP/s "
        f"= {gc_core / gc_np:.0%} (target >= 85%)"
    )
    hdr = (
        f"{'in':>5} {'out':>5} {'mask':>4} {'fmt':>5} {'grad':>5} {'sec':>7} {'GF/s':>6} {'/np':>5} "
        f"{'/spp':>5} {'/tfn':>5} {'np s':>6} {'spp s':>6} {'tfn s':>6} {'mem MiB':>8} {'spp MiB':>8} {'tfn MiB':>8}"
    )
    print(hdr)
    rng = np.random.default_rng(0)
    results: dict[tuple[int, int, str], dict[str, Any]] = {}
    for in_, out in shapes:
        for kind in kinds:
            res = run_case(rng, N, in_, out, r, kind, args.reps, not args.no_memory)
            results[(in_, out, kind)] = res
            t, mem = res["t"], res["mem"]
            for g in ("exact", "lors"):
                dense_flops = (6.0 if g == "exact" else 4.0) * N * in_ * out + (
                    0 if g == "exact" else 8.0 * N * r * (in_ + out)
                )
                npt = t["np3"] if g == "exact" else t["np2"]
                spp = t.get("spp")
                tfn = t.get(f"tfn_{g}")
                print(
                    f"{in_:>5} {out:>5} {kind:>4} {res['format']:>5} {g:>5} {t[g]:7.3f} "
                    f"{dense_flops / t[g] / 1e9:6.1f} {t[g] / npt:5.2f} "
                    f"{(t[g] / spp) if spp else float('nan'):5.2f} {(t[g] / tfn) if tfn else float('nan'):5.2f} "
                    f"{npt:6.3f} {spp if spp else float('nan'):6.3f} {tfn if tfn else float('nan'):6.3f} "
                    f"{fmt_mib(mem.get(g)):>8} {fmt_mib(mem.get('spp')):>8} {fmt_mib(mem.get(f'tfn_{g}')):>8}"
                )
            print(
                f"{'':>17} base {res['format']} density {res['density']:.3f}: layer.nbytes {res['nbytes'] / 2**20:.1f} MiB"
            )
    # targets (the list) on the first shape
    in_, out = shapes[0]
    r50 = results[(in_, out, "0.5")]["t"]
    print(f"\ntargets at N={N}, {in_}x{out}, r={r}:")

    def line(name: str, value: float, limit: float) -> None:
        print(f"  {name:<52} {value:6.2f}  (<= {limit:.2f}: {'met' if value <= limit else 'NOT met'})")

    if "spp" in r50:
        line("0.5 unstructured, exact: time / torch SPP", r50["exact"] / r50["spp"], 1.0)
        line("0.5 unstructured, lors:  time / torch SPP", r50["lors"] / r50["spp"], 0.75)
    line("0.5 unstructured, lors:  time / NumPy two frozen GEMMs", r50["lors"] / r50["np2"], 1.1)
    for kind, limit in (("2:4", 0.8), ("0.1", 0.35)):
        if (in_, out, kind) in results:
            res = results[(in_, out, kind)]
            name = f"{kind} exact time / 0.5 unstructured exact time"
            if res["format"] == "dense":
                name = f"{kind} on the dense base (same work as 0.5: noise)"
            line(name, res["t"]["exact"] / r50["exact"], limit)
    print(
        f"  {'GEMM core / NumPy sgemm':<52} {gc_core / gc_np:6.2f}  (>= 0.85: {'met' if gc_core / gc_np >= 0.85 else 'NOT met'})"
    )
    if not args.no_memory:
        for g in ("exact", "lors"):
            sc = SCRATCH.get(f"{in_}x{out} 0.5 {g}")
            if sc is not None:
                # lors: xa and gb (O(N r)); exact: the extra threads' partial dA, dB (gradient-sized)
                nr = 2 * N * r * 4 if g == "lors" else (args.threads - 1) * r * (in_ + out) * 4
                per = (sc - nr) / args.threads / 2**20
                print(
                    f"  {'0.5 ' + g + ': kernel tile scratch per thread, MiB':<52} {per:6.2f}  "
                    f"(<= 1.00: {'met' if per <= 1.0 else 'NOT met'}; measured peak {sc / 2**20:.2f} MiB)"
                )
        bound = _core.lors_scratch_bytes(in_, out, r)
        print(
            f"  kernel scratch bound {bound / 2**20:.2f} MiB ({args.threads} threads; G tiles + GEMM panels + "
            "O(r (in+out)) partials, independent of out x in); the memory columns include the step's "
            "outputs y, gx, dA, dB"
        )


if __name__ == "__main__":
    main()
