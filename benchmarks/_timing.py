"""Timing shared by the benchmarks: interleaved repetitions, each timed call after a settle pause.

Why the pause: NumPy's OpenBLAS keeps its worker threads busy-waiting for 2^28 TSC cycles after a
BLAS call returns (about 0.13 s at 2.1 GHz; ``OPENBLAS_THREAD_TIMEOUT`` sets the exponent), and
PyTorch's and our OpenMP threads spin for a shorter while. On two cores, whichever call comes next
shares them with a spinning thread, so without the pause an interleaved run slows whatever follows
a NumPy call and ratios depend on the order of the functions in the dict. The pause (``SETTLE``)
is longer than the busy-wait; ``python benchmarks/bench_settle.py`` measures the slowdown as a
function of the pause (results in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

#: Environment that keeps every library of a benchmark on AVX2/FMA kernels on an AVX-512 machine:
#: sparseft, NumPy's OpenBLAS and PyTorch (ATen kernels, oneDNN, MKL). Each library reads its
#: variable when it loads, so it must be set before the process imports them (``reexec_with_isa``).
AVX2_ENV = {
    "SPARSEFT_SIMD": "avx2",
    "OPENBLAS_CORETYPE": "Haswell",
    "ATEN_CPU_CAPABILITY": "avx2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}


def reexec_with_isa(isa: str) -> None:
    """For ``isa == "avx2"``: restart this script with :data:`AVX2_ENV` set (once; the restarted
    process sees the marker ``SPARSEFT_BENCH_ISA`` and goes on). ``"native"`` does nothing."""
    if isa == "native" or os.environ.get("SPARSEFT_BENCH_ISA") == isa:
        return
    if isa != "avx2":
        raise SystemExit(f"--isa: expected native or avx2, got {isa!r}")
    env = dict(os.environ, **AVX2_ENV, SPARSEFT_BENCH_ISA=isa)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def isa_line() -> str:
    """What the ISA caps in effect are, for a benchmark's header."""
    caps = ", ".join(f"{k}={os.environ[k]}" for k in AVX2_ENV if k in os.environ)
    return f"ISA caps: {caps or 'none (every library on its native path)'}"


def cpu_line() -> str:
    """The host's CPU as /proc/cpuinfo names it (model name, family/model, AVX-512 or not), for a
    benchmark's header: the project's machines change CPU model between sessions (family 6 model
    207 in one, model 167 in the next), and ratios against OpenBLAS or PyTorch move with it."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        return f"CPU: {os.cpu_count()} logical CPUs (no /proc/cpuinfo)"
    avx512 = "avx512f" in info.get("flags", "").split()
    return (
        f"CPU: {info.get('model name', '?')} (family {info.get('cpu family', '?')} model "
        f"{info.get('model', '?')}, {'AVX-512' if avx512 else 'no AVX-512'}), {os.cpu_count()} logical CPUs"
    )


#: Seconds of idle time before each timed call: longer than OpenBLAS's spin (0.13 s) with margin.
SETTLE = 0.25


def timed(fn: Callable[[], object]) -> float:
    """Seconds of one call of ``fn``, started after the settle pause."""
    time.sleep(SETTLE)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    """Seconds of every call: one untimed warm-up each, then ``reps`` rounds taking the fns in turn."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            times[k].append(timed(f))
    return times
