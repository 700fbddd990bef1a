"""The Patcher on 100M float32 weights: apply and remove vs NumPy ``w += alpha * s`` and a memory copy.

One run, measured side by side in interleaved rounds (the machine is shared and noisy); minimum and
median per operation:

* copy: ``numpy.copyto`` of the weights into a preallocated array (8 bytes moved per weight);
* numpy: ``w += alpha * s`` (a temporary for alpha * s, then the add: no undo at all);
* apply / remove: ``Patcher.apply(sig, alpha)`` and ``Patcher.remove(handle)`` (fmaf in place, the
  exact-undo check, the record; 12 bytes moved per weight: read w and s, write w);
* apply 4-bit / remove 4-bit: the same from a 4-bit per-channel QuantizedSignature, decoded block by
  block inside the kernel (read w and 0.5 byte of codes, write w).

Effective bandwidth = bytes moved / time, compared with the copy's. Also: quantize/dequantize
throughput, undo-record bytes per applied signature, and the peak resident memory added while
applying the 4-bit signature (no float copy of it: expected ~ the undo record only).

Usage: ``python benchmarks/bench_patcher.py [--n 100000000] [--reps 5] [--threads N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import _timing  # benchmarks/_timing.py (the script's own folder is on sys.path)
import numpy as np

import sparseft


def _hwm_reset() -> bool:
    """Reset the peak resident set size (Linux: /proc/self/clear_refs); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss(field: str) -> int:
    """VmHWM or VmRSS of this process in bytes (0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000_000, help="number of float32 weights")
    ap.add_argument("--rows", type=int, default=10_000, help="rows (channels) of the weight matrix")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        sparseft.set_num_threads(args.threads)
    print(_timing.cpu_line())
    info = sparseft.build_info()
    print(f"sparseft: simd {info['simd']}, {info['num_threads']} threads; n = {args.n:,} float32 weights")
    rng = np.random.default_rng(0)
    shape = (args.rows, args.n // args.rows)
    n = shape[0] * shape[1]
    w = rng.standard_normal(shape, dtype=np.float32)
    s = rng.standard_normal(shape, dtype=np.float32)
    s *= np.float32(1e-2)
    dst = np.empty_like(w)
    sig = sparseft.Signature._own({"w": s})  # adopt the array (no extra 400 MB copy)
    t0 = time.perf_counter()
    q4 = sig.quantize(bits=4, granularity="channel")
    t_quant = time.perf_counter() - t0
    t0 = time.perf_counter()
    deq = q4.dequantize()
    t_deq = time.perf_counter() - t0
    del deq
    patcher = sparseft.Patcher({"w": w})
    alpha = 0.5
    state: dict[str, object] = {}

    def apply() -> None:
        state["h"] = patcher.apply(sig, alpha)

    def remove() -> None:
        patcher.remove(state.pop("h"))  # type: ignore[arg-type]

    def apply_q() -> None:
        state["h"] = patcher.apply(q4, alpha)

    ops = {
        "copy": lambda: np.copyto(dst, w),
        "numpy w += a*s": lambda: np.add(w, np.float32(alpha) * s, out=w),
        "apply": apply,
        "remove": remove,
        "apply 4-bit": apply_q,
        "remove 4-bit": remove,
    }
    bytes_moved = {
        "copy": 8,
        "numpy w += a*s": 20,
        "apply": 12,
        "remove": 12,
        "apply 4-bit": 8.5,
        "remove 4-bit": 8.5,
    }
    times = _timing.interleaved(ops, args.reps)  # apply/remove pairs run in order, so they match
    print(f"{'operation':16s} {'min ms':>9s} {'median ms':>10s} {'GB/s moved':>11s} {'vs copy bw':>11s}")
    copy_bw = 8 * n / min(times["copy"])
    for k, ts in times.items():
        bw = bytes_moved[k] * n / min(ts)
        print(
            f"{k:16s} {1e3 * min(ts):9.1f} {1e3 * statistics.median(ts):10.1f} {bw / 1e9:11.2f} {bw / copy_bw:11.2f}"
        )
    np_t = min(times["numpy w += a*s"])
    print(
        f"apply  vs numpy: {np_t / min(times['apply']):.2f}x faster; remove vs numpy: "
        f"{np_t / min(times['remove']):.2f}x faster (numpy has no undo)"
    )
    print(f"apply 4-bit vs numpy: {np_t / min(times['apply 4-bit']):.2f}x faster")
    h = patcher.apply(sig, alpha)
    print(
        f"undo record, float32 signature: {h.undo_nbytes:,} bytes = {h.undo_nbytes / w.nbytes:.4%} of the "
        f"weights ({h.undo_nbytes / 8:,.0f} positions)"
    )
    patcher.remove(h)
    if _hwm_reset():
        base = _rss("VmRSS")
        h = patcher.apply(q4, alpha)
        extra = _rss("VmHWM") - base
        print(
            f"4-bit apply: peak resident memory added {extra / 2**20:.1f} MiB (signature as floats would be "
            f"{s.nbytes / 2**20:.0f} MiB; undo record {h.undo_nbytes / 2**20:.1f} MiB)"
        )
        patcher.remove(h)
    print(
        f"quantize 4-bit: {n / t_quant / 1e6:.0f} M values/s; dequantize: {n / t_deq / 1e6:.0f} M values/s; "
        f"4-bit signature {q4.nbytes:,} bytes = {q4.nbytes / s.nbytes:.4f} of float32"
    )


if __name__ == "__main__":
    main()
