"""Guard-page buffers: arrays whose first or last byte touches a page that cannot be accessed, so a
kernel that reads or writes one element past (or before) an array dies with SIGSEGV at once
instead of reading whatever happens to lie there (mmap + mprotect, no compiler support needed)."""

from __future__ import annotations

import ctypes
import mmap

import numpy as np

PAGE = mmap.PAGESIZE
_PROT_NONE = 0
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _protect(addr: int, size: int) -> None:
    if _libc.mprotect(ctypes.c_void_p(addr), ctypes.c_size_t(size), _PROT_NONE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mprotect failed at {addr:#x}")


def guarded(a: np.ndarray, at: str = "end", readonly: bool = False) -> np.ndarray:
    """A C-contiguous copy of ``a`` placed against an inaccessible page.

    Parameters
    ----------
    a : numpy.ndarray
        The values (any dtype, any shape; copied in C order).
    at : {"end", "start"}
        ``"end"``: the byte after the array's last one is unmapped (catches reads and writes past
        the end); ``"start"``: the byte before its first one is (catches reads before the start).
    readonly : bool
        Clear the copy's writeable flag.

    Returns
    -------
    numpy.ndarray
        The copy; it keeps its mapping alive (the mapping is released with the array).
    """
    if at not in ("end", "start"):
        raise ValueError(f"at: expected 'end' or 'start', got {at!r}")
    a = np.asarray(a)
    nbytes = a.nbytes
    data_pages = max(1, -(-nbytes // PAGE))
    mm = mmap.mmap(-1, (data_pages + 1) * PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    anchor = ctypes.c_char.from_buffer(mm)  # an exported buffer: the mapping stays while the array lives
    base = ctypes.addressof(anchor)
    if at == "end":
        _protect(base + data_pages * PAGE, PAGE)
        offset = data_pages * PAGE - nbytes
    else:
        _protect(base, PAGE)
        offset = PAGE
    out = np.frombuffer(mm, dtype=a.dtype, count=a.size, offset=offset).reshape(a.shape)
    del anchor
    out[...] = a
    if readonly:
        out.flags.writeable = False
    return out
