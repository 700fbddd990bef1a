"""benchmarks/bench_tiles.c includes csrc/sparse.c and calls its static tile kernels, so a change to
them must keep it compiling: build and run it briefly (skipped without a C compiler)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from .conftest import ROOT


def test_bench_tiles_builds_and_reports() -> None:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) on PATH")
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_tiles.py"), "--seconds", "0.005"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rates = re.findall(r"dense GEMM core 512\^3: ([0-9.]+) GFLOP/s", out.stdout)
    assert rates and all(float(r) > 0 for r in rates), out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if line.split()[:1] in (["2:4"], ["0.5"], ["0.1"])]
    assert len(rows) == 3 * len(rates), out.stdout
    # five rates and ratios, then the step bound: all positive and finite
    assert all(0 < float(v) < 1e5 for row in rows for v in row[2:]), out.stdout


def test_bench_tiles_rejects_a_missing_compiler() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_tiles.py"), "--cc", "no-such-compiler-xyz"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "--cc" in out.stderr
