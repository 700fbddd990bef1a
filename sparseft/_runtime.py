"""Runtime settings of the C kernels: threads and SIMD path."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sparseft import _core


def build_info() -> dict[str, Any]:
    """Describe how the C core was built and what it runs now.

    Returns
    -------
    dict
        ``compiler`` (str), ``openmp`` (bool), ``simd_compiled`` (list of paths compiled in,
        e.g. ``["portable", "avx2"]``), ``simd`` (the path selected now), ``avx2_supported``
        (what the CPU reports) and ``num_threads`` (threads the kernels use).
    """
    return _core.build_info()


def set_num_threads(n: int) -> None:
    """Set the number of threads the C kernels use (OpenMP).

    Parameters
    ----------
    n : int
        Thread count, at least 1. Results are deterministic for a fixed thread count.

    Raises
    ------
    TypeError
        If ``n`` is not an int.
    ValueError
        If ``n < 1``.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """Return the number of threads the C kernels use."""
    return _core.get_num_threads()


@contextlib.contextmanager
def simd_path(path: str) -> Iterator[None]:
    """Run the enclosed code with the ``"avx2"`` or ``"portable"`` kernels, then restore.

    The path is otherwise chosen once at import: AVX2/FMA when the CPU reports it, unless the
    environment variable ``SPARSEFT_SIMD=portable`` forces the portable C path.

    Parameters
    ----------
    path : {"avx2", "portable"}
        Kernels to use inside the block.

    Raises
    ------
    ValueError
        If the path is unknown or not available on this CPU/build.
    """
    before = _core.build_info()["simd"]
    _core.set_simd(path)
    try:
        yield
    finally:
        _core.set_simd(before)
