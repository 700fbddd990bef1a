"""Shared fixtures and helpers: the SIMD paths to run kernel tests under, data locations, and ``close``,
the one tolerance-aware comparison of float32 results with float64 references."""

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


def close(
    got: np.ndarray,
    want: np.ndarray,
    mag: np.ndarray | None = None,
    *,
    rtol: float = 1e-4,
    scale: float = 0.0,
    atol: float | None = None,
) -> None:
    """Assert that a float32 result ``got`` matches a float64 reference ``want`` up to the rounding
    of the computation that produced it (a wrong formula misses by far more).

    Parameters
    ----------
    got, want : numpy.ndarray
        The same shape.
    mag : numpy.ndarray, optional
        Per entry, the size of the computation behind it (the same sum over absolute values, where
        float32 rounding grows with it): then ``|got - want| <= rtol·mag + atol`` (atol default 1e-6).
    rtol : float
        Relative tolerance.
    scale : float
        Without ``mag``: the size of terms that may cancel in the result; the absolute tolerance
        is ``rtol·max(max |want|, scale)`` unless ``atol`` is given.
    atol : float, optional
        Absolute tolerance.
    """
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    if mag is not None:
        err = np.abs(got.astype(np.float64) - want)
        bound = rtol * mag + (1e-6 if atol is None else atol)
        assert (err <= bound).all(), f"max err {err.max():.3g}, bound there {bound.flat[np.argmax(err - bound)]:.3g}"
        return
    if atol is None:
        atol = rtol * max(float(np.abs(want).max(initial=0.0)), scale, 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
