"""Runtime settings of the C kernels: threads and SIMD path."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

from sparseft import _core
from sparseft._validation import check_int

#: Values of the environment variable SPARSEFT_SIMD that the C core understands (a cap on the
#: SIMD path chosen at import).
SIMD_ENV_VALUES = ("portable", "avx2", "avx512")


def _check_simd_env() -> None:
    """Warn once at import when SPARSEFT_SIMD holds a value the C core ignores (a typo)."""
    value = os.environ.get("SPARSEFT_SIMD")
    if value is not None and value not in SIMD_ENV_VALUES:
        warnings.warn(
            f"SPARSEFT_SIMD={value!r} is not one of {', '.join(SIMD_ENV_VALUES)}: ignored, the kernels "
            f"use the best path this CPU supports ({_core.build_info()['simd']!r})",
            RuntimeWarning,
            stacklevel=2,
        )


_check_simd_env()


def build_info() -> dict[str, Any]:
    """Describe how the C core was built and what it runs now.

    Returns
    -------
    dict
        ``compiler`` (str), ``openmp`` (bool), ``simd_compiled`` (list of paths compiled in,
        e.g. ``["portable", "avx2", "avx512"]``), ``simd`` (the path selected now),
        ``avx2_supported`` and ``avx512_supported`` (what the CPU and OS report) and
        ``num_threads`` (threads the kernels use).
    """
    return _core.build_info()


def set_num_threads(n: int) -> None:
    """Set the number of threads the C kernels use (OpenMP).

    Parameters
    ----------
    n : int
        Thread count, from 1 to ``MAX_THREADS``. Results are deterministic for a fixed thread count.

    Raises
    ------
    TypeError
        If ``n`` is not an int.
    ValueError
        If ``n < 1`` or ``n > MAX_THREADS``.
    """
    _core.set_num_threads(check_int(n, "n", 1, MAX_THREADS, what="a thread count"))


#: Most threads set_num_threads accepts (the C core takes an int; thousands of OpenMP threads
#: would only exhaust the process's resources).
MAX_THREADS = 4096


def get_num_threads() -> int:
    """Return the number of threads the C kernels use."""
    return _core.get_num_threads()


@contextlib.contextmanager
def simd_path(path: str) -> Iterator[None]:
    """Run the enclosed code with the ``"avx512"``, ``"avx2"`` or ``"portable"`` kernels, then restore.

    The path is otherwise chosen once at import: the best the CPU reports (``"avx512"`` =
    the AVX2/FMA kernels plus the AVX-512 GEMM micro-kernel and sparse forward segment;
    ``"avx2"``; else ``"portable"``), at most the one named by the environment variable
    ``SPARSEFT_SIMD`` (``portable`` or ``avx2``) when it is set.

    Parameters
    ----------
    path : {"avx512", "avx2", "portable", "auto"}
        Kernels to use inside the block (``"auto"``: the import-time choice).

    Raises
    ------
    ValueError
        If the path is unknown or not available on this CPU/build.
    """
    if not isinstance(path, str):
        raise TypeError(f"path: expected a str, got {type(path).__name__}")
    if "\0" in path:  # the C core reads a C string: "avx2\0x" would pass as "avx2"
        raise ValueError(f"path: expected one of 'avx512', 'avx2', 'portable', 'auto', got {path!r}")
    before = _core.build_info()["simd"]
    _core.set_simd(path)
    try:
        yield
    finally:
        _core.set_simd(before)
