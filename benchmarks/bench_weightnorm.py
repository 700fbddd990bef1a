"""Weight normalization forward+backward: sparseft vs NumPy, vs torch._weight_norm, vs a memory copy.

One run, everything measured side by side with interleaved repetitions (the machine is shared and
noisy), reporting the minimum and the median of each. For every shape (dim=0, one norm per row):

* sparseft: ``_core.weightnorm_forward`` + ``_core.weightnorm_backward`` (what ``WeightNorm.weight``
  and ``WeightNorm.backward`` run; the Python wrapper adds only shape checks), allocating w and
  grad_v like the others, and "sft(out=)" writing them into preallocated buffers (``out=``);
* NumPy: a vectorised float32 implementation (einsum row dots, broadcasting), the same math;
* torch: ``torch._weight_norm(v, g, 0)`` forward and its autograd backward (float32, CPU, torch's threads);
* copy: ``numpy.copyto`` of a float32 array into a preallocated one (pure read+write bandwidth) and
  ``v.copy()`` (with the allocation and first-touch page faults that every implementation's fresh
  outputs also pay). Forward+backward must move at least 5 arrays of out x in floats (read v, write w;
  read grad_w and v, write grad_v); its effective bandwidth is 5 * bytes / time, compared with the
  copy's 2 * bytes / time.

Then sparse DoRA (``LoRSLinear(magnitude=True)``) forward+backward against the plain LoRS layer
(the overhead of the magnitude), and against PEFT's DoRA math written in torch (dense masked W',
autograd), on a 2048 x 2048 layer at density 0.5, r = 16, 512 tokens.

Usage: ``python benchmarks/bench_weightnorm.py [--reps 7] [--threads N]``.
"""

from __future__ import annotations

import argparse
import tracemalloc
from collections.abc import Callable

import _timing  # benchmarks/_timing.py (the script's own folder is on sys.path)
import numpy as np

import sparseft
from sparseft import _core


def numpy_weightnorm(v: np.ndarray, g: np.ndarray, gw: np.ndarray) -> tuple[np.ndarray, ...]:
    """Vectorised NumPy forward+backward, dim=0, float32 (g: (out, 1))."""
    n = np.sqrt(np.einsum("ij,ij->i", v, v))[:, None]
    a = g / n
    w = v * a
    grad_g = np.einsum("ij,ij->i", gw, v)[:, None] / n
    grad_v = a * gw - (a * grad_g / n) * v
    return w, grad_v, grad_g


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=sparseft.get_num_threads())
    args = parser.parse_args()
    sparseft.set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None  # type: ignore[assignment]
    info = sparseft.build_info()
    print(f"sparseft {info['simd']} path, {info['num_threads']} threads; numpy {np.__version__}", end="")
    print(
        f"; torch {torch.__version__} ({torch.get_num_threads()} threads)"
        if torch
        else "; torch not installed"
    )
    print(_timing.cpu_line())
    print(f"min / median of {args.reps} interleaved repetitions; times in ms\n")

    for out, inn in [(4096, 4096), (16384, 1024)]:
        rng = np.random.default_rng(0)
        v = rng.standard_normal((out, inn), dtype=np.float32)
        g = rng.uniform(0.5, 2, (out, 1)).astype(np.float32)
        gw = rng.standard_normal((out, inn), dtype=np.float32)
        g1 = g.reshape(-1)
        dst = np.empty_like(v)
        nbytes = v.nbytes

        def run_sft(v: np.ndarray = v, g1: np.ndarray = g1, gw: np.ndarray = gw) -> object:
            w = _core.weightnorm_forward(v, g1, 0)
            return w, _core.weightnorm_backward(gw, v, g1, 0)

        wbuf, gvbuf = np.empty_like(v), np.empty_like(v)

        def run_sft_out(
            v: np.ndarray = v,
            g1: np.ndarray = g1,
            gw: np.ndarray = gw,
            wbuf: np.ndarray = wbuf,
            gvbuf: np.ndarray = gvbuf,
        ) -> object:
            w = _core.weightnorm_forward(v, g1, 0, out=wbuf)
            return w, _core.weightnorm_backward(gw, v, g1, 0, out=gvbuf)

        cases: dict[str, Callable[[], object]] = {
            "sparseft": run_sft,
            "sft(out=)": run_sft_out,
            "numpy": lambda v=v, g=g, gw=gw: numpy_weightnorm(v, g, gw),
            "copyto": lambda v=v, dst=dst: np.copyto(dst, v),
            "copy": lambda v=v: v.copy(),
        }
        if torch is not None:
            tv = torch.from_numpy(v).requires_grad_(True)
            tg = torch.from_numpy(g).requires_grad_(True)
            tgw = torch.from_numpy(gw)

            def run_torch(tv: object = tv, tg: object = tg, tgw: object = tgw) -> object:
                w = torch._weight_norm(tv, tg, 0)
                return torch.autograd.grad(w, (tv, tg), tgw)

            cases["torch"] = run_torch

        # correctness of what is timed (float64 reference)
        w_ref = g.astype(np.float64) * v / np.linalg.norm(v.astype(np.float64), axis=1, keepdims=True)
        got = _core.weightnorm_forward(v, g1, 0)
        assert np.abs(got - w_ref).max() <= 1e-5 * np.abs(w_ref).max()

        times = _timing.interleaved(cases, args.reps)
        best = {k: min(t) for k, t in times.items()}
        med = {k: float(np.median(t)) for k, t in times.items()}

        # memory: kernel scratch and NumPy allocations of one call
        _core.reset_scratch_peak()
        base = _core.scratch_stats()["current"]
        tracemalloc.start()
        run_sft()
        _, sft_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        scratch = _core.scratch_stats()["peak"] - base
        tracemalloc.start()
        numpy_weightnorm(v, g, gw)
        _, np_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

        print(f"== {out} x {inn} float32, dim=0: forward + backward ({nbytes / 2**20:.0f} MiB per array)")
        for name in cases:
            moved = (2 if name.startswith("copy") else 5) * nbytes
            print(
                f"  {name:9s} {best[name] * 1e3:8.2f} / {med[name] * 1e3:8.2f} ms"
                f"   {moved / best[name] / 1e9:6.2f} GB/s effective (min time)"
            )
        ceiling_bw = 2 * nbytes / best["copyto"]
        alloc_bw = 2 * nbytes / best["copy"]
        sft_bw = 5 * nbytes / best["sparseft"]
        out_bw = 5 * nbytes / best["sft(out=)"]
        print(
            f"  sparseft vs numpy:  {best['numpy'] / best['sparseft']:.2f}x (min)  {med['numpy'] / med['sparseft']:.2f}x (median)   target >= 2x"
        )
        if "torch" in cases:
            print(
                f"  sparseft vs torch:  {best['torch'] / best['sparseft']:.2f}x (min)  {med['torch'] / med['sparseft']:.2f}x (median)   target >= 1x"
            )
        print(
            f"  bandwidth (min times): sparseft {sft_bw / alloc_bw:.0%} of copy (both allocate outputs); "
            f"sft(out=) {out_bw / ceiling_bw:.0%} of copyto (both preallocated)   target >= 60%"
        )
        print(
            f"  extra memory of one forward+backward: sparseft scratch {scratch} B, outputs "
            f"{sft_peak / 2**20:.0f} MiB; numpy peak {np_peak / 2**20:.0f} MiB\n"
        )
    bench_dora(max(3, args.reps // 2), torch)


def bench_dora(reps: int, torch: object) -> None:
    """Sparse DoRA vs plain LoRS vs PEFT-style DoRA in torch, forward + backward, side by side."""
    out = inn = 2048
    r, N = 16, 512
    rng = np.random.default_rng(0)
    mask = rng.random((out, inn)) < 0.5
    W = (rng.standard_normal((out, inn)) * mask).astype(np.float32)
    x = rng.standard_normal((N, inn)).astype(np.float32)
    gy = rng.standard_normal((N, out)).astype(np.float32)
    B = (0.01 * rng.standard_normal((out, r))).astype(np.float32)
    layers = {
        "LoRS": sparseft.LoRSLinear(W, mask, r=r, format="dense"),
        "DoRA": sparseft.LoRSLinear(W, mask, r=r, format="dense", magnitude=True),
        "DoRA detached": sparseft.LoRSLinear(W, mask, r=r, format="dense", magnitude=True, norm_grad=False),
    }
    cases: dict[str, Callable[[], object]] = {}
    for name, layer in layers.items():
        layer.B[:] = B

        def run(layer: sparseft.LoRSLinear = layer) -> object:
            layer.forward(x)
            return layer.backward(gy)

        cases[name] = run
    if torch is not None:
        import torch as th

        tW, tM = th.from_numpy(W), th.from_numpy(mask.astype(np.float32))
        tA = th.from_numpy(layers["DoRA"].A.copy()).requires_grad_(True)
        tB = th.from_numpy(B.copy()).requires_grad_(True)
        tm = th.from_numpy(layers["DoRA"].magnitude.copy()).requires_grad_(True)
        tx, tgy = th.from_numpy(x).requires_grad_(True), th.from_numpy(gy)

        def run_torch() -> object:
            Wp = tW + (tB @ tA) * tM
            y = th.nn.functional.linear(tx, (tm / Wp.norm(dim=1))[:, None] * Wp)
            return th.autograd.grad(y, (tx, tA, tB, tm), tgy)

        cases["torch PEFT-style"] = run_torch
    times = _timing.interleaved(cases, reps)
    print(f"== sparse DoRA: {out} x {inn}, density 0.5, r={r}, {N} tokens, forward + backward")
    base = min(times["LoRS"])
    for name, t in times.items():
        print(
            f"  {name:17s} {min(t) * 1e3:8.1f} / {float(np.median(t)) * 1e3:8.1f} ms   {min(t) / base:5.2f}x LoRS"
        )
    if "torch PEFT-style" in times:
        print(f"  DoRA vs torch PEFT-style: {min(times['torch PEFT-style']) / min(times['DoRA']):.2f}x (min)")


if __name__ == "__main__":
    main()
