"""Timing shared by the benchmarks: interleaved repetitions, each timed call after a settle pause.

Why the pause: NumPy's OpenBLAS keeps its worker threads busy-waiting for 2^28 TSC cycles after a
BLAS call returns (about 0.13 s on this 2.1 GHz machine; ``OPENBLAS_THREAD_TIMEOUT`` sets the
exponent), and PyTorch's and our OpenMP threads spin for a shorter while. On two cores, whichever
call comes next shares them with a spinning thread. Measured here with ``_core.lors_forward``
(2048^3, 2 threads) right after ``x @ W.T``: 137 ms with no pause, 115 ms after 0.05 s, 82 ms after
0.1 s, 69 ms after 0.2 s and 68 ms after 0.3 s (67 ms in a run with no NumPy calls). Without the pause
an interleaved run slows whatever follows a NumPy call, so ratios depend on the order of the
functions in the dict.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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
