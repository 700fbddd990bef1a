"""The built-in demo behind ``python -m sparseft demo``.

It runs each part of sparseft that exists on small built-in data and prints what it measured.
"""

from __future__ import annotations

import time
from typing import TextIO

import numpy as np

import sparseft
from sparseft import _core


def _gemm_section(rng: np.random.Generator, n: int, out: TextIO) -> None:
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    timings = {}
    for name, fn in [("numpy", lambda: a @ b), ("sparseft", lambda: _core.matmul(a, b))]:
        fn()
        t0 = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - t0
    err = float(np.abs(_core.matmul(a, b) - a @ b).max())
    gflops = {k: 2 * n**3 / v / 1e9 for k, v in timings.items()}
    print(
        f"GEMM core {n}x{n}x{n}: sparseft {gflops['sparseft']:.1f} GFLOP/s, "
        f"numpy {gflops['numpy']:.1f} GFLOP/s (ratio {gflops['sparseft'] / gflops['numpy']:.2f}), "
        f"max |diff| {err:.2e}",
        file=out,
    )


def run(seed: int = 0, quick: bool = False, out: TextIO | None = None) -> int:
    """Run the demo.

    Parameters
    ----------
    seed : int
        Random seed for every part.
    quick : bool
        Use small sizes (a smoke test that takes a few seconds).
    out : file-like, optional
        Where to print (default: standard output).

    Returns
    -------
    int
        Process exit code, 0 on success.
    """
    import sys

    out = out or sys.stdout
    info = sparseft.build_info()
    print(
        f"sparseft {sparseft.__version__}: simd={info['simd']} openmp={info['openmp']} "
        f"threads={info['num_threads']}",
        file=out,
    )
    rng = np.random.default_rng(seed)
    _gemm_section(rng, 256 if quick else 1024, out)
    return 0
