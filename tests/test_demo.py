"""``python -m sparseft demo`` (README's third command) runs, and its claims hold."""

from __future__ import annotations

import re
import subprocess
import sys

from .conftest import ROOT


def test_demo_quick_runs_and_keeps_sparsity(tmp_path) -> None:
    cmd = [sys.executable, "-m", "sparseft", "demo", "--quick", "--cache-dir", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "base model: trained" in text
    assert "every pruned zero kept: True" in text
    kept = re.search(r"sparsity kept after merge: (\d+) of (\d+) pruned zeros exact", text)
    assert kept and kept.group(1) == kept.group(2) and int(kept.group(2)) > 0, text
    assert re.search(r"plan: \w+ (optimal|feasible), [1-9]\d* recomputations", text), text
    peak = re.search(
        r"measured activation peak ([\d.]+) MiB vs no-budget peak ([\d.]+) MiB \(budget [\d.]+ MiB: within\)",
        text,
    )
    assert peak and float(peak.group(1)) <= 0.5 * float(peak.group(2)) + 0.01, text
    assert "LoRS fine-tuned" in text and "tokens/s" in text
    # the second run loads the cached base model
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "base model: loaded from" in again.stdout, again.stdout + again.stderr


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
