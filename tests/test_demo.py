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


def test_demo_negative_seed_is_a_usage_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sparseft", "demo", "--seed", "-1"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 2 and "argument --seed: expected an int >= 0, got -1" in out.stderr
    assert "Traceback" not in out.stderr


def test_demo_run_checks_its_seed() -> None:
    import pytest

    from sparseft import demo

    with pytest.raises(ValueError, match="seed: expected an int >= 0, got -3"):
        demo.run(seed=-3)
    with pytest.raises(TypeError, match="seed: expected an int >= 0, got float"):
        demo.run(seed=1.5)  # type: ignore[arg-type]
