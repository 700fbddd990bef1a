"""``python -m sparseft demo`` (README's third command) runs, and its claims hold."""

from __future__ import annotations

import re
import subprocess
import sys

from .conftest import ROOT


def test_demo_quick_runs_and_keeps_sparsity() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sparseft", "demo", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert text.count("every pruned zero kept: True") == 2
    assert re.search(r"moccasin +budget 70%: status (optimal|feasible)", text), text
    assert "LoRS fine-tuned" in text


def test_info_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sparseft", "info"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "simd:" in out.stdout and "openmp:" in out.stdout
