"""Deliberately faulty functions that show the harness can fail (used by test_fuzz_core.py)."""

from __future__ import annotations

import ctypes

import numpy as np


def read_past_end(a: np.ndarray) -> float:
    """Reads the 4 bytes after the array's last element (SIGSEGV against an end guard page)."""
    addr = a.__array_interface__["data"][0] + a.nbytes
    return float(ctypes.c_float.from_address(addr).value)
