"""House style: ruff for Python, clang-format for C. Skipped where the tools are not installed."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest

from .conftest import ROOT


def test_ruff_clean() -> None:
    pytest.importorskip("ruff")
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_clang_format_clean() -> None:
    exe = shutil.which("clang-format") or shutil.which("clang-format", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("clang-format not installed (pip install clang-format)")
    files = sorted(glob.glob(str(ROOT / "csrc" / "*.[ch]")))
    out = subprocess.run([exe, "--dry-run", "-Werror", *files], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_package_clean() -> None:
    """The package's own type hints hold (the compiled module is checked by stubtest in test_core)."""
    pytest.importorskip("mypy")
    out = subprocess.run([sys.executable, "-m", "mypy", "sparseft"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
