"""Shared fixtures: the SIMD paths to run kernel tests under, data locations, torch availability."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np
import pytest

import sparseft
from sparseft import _core

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def _available_paths() -> list[str]:
    info = _core.build_info()
    paths = ["portable"]
    if "avx2" in info["simd_compiled"] and info["avx2_supported"]:
        paths.append("avx2")
    if "avx512" in info["simd_compiled"] and info["avx512_supported"]:
        paths.append("avx512")
    return paths


SIMD_PATHS = _available_paths()


@pytest.fixture(params=SIMD_PATHS)
def simd(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per SIMD path this machine can execute (portable C, AVX2/FMA, AVX-512)."""
    with sparseft.simd_path(request.param):
        yield request.param


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator, so failures reproduce."""
    return np.random.default_rng(12345)


@pytest.fixture
def shared_data() -> pathlib.Path:
    """``../shared/data`` beside the repository; skips the test where it is absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (only present in the project's workspace)")
    return SHARED_DATA
