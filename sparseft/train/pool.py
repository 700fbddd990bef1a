"""A pool of freed activation buffers that the step executor hands back to ops as outputs.

A training step frees activations by its schedule and allocates new ones of the same shapes in
the next block (and the next step). A large fresh NumPy array is fresh memory from the system:
every first touch of a page faults and is zeroed by the kernel, a large share of the time of the
memory-bound ops. With a :class:`BufferPool` on its :class:`~sparseft.train.ActivationStore`, the
executor keeps the buffers of freed nodes and ops that take ``alloc=`` (``Op.takes_alloc``) draw
their outputs from it.

Safety rests on two rules:

* **Only garbage is recycled.** When the store frees a node, a buffer enters the pool only if
  nothing else references it: the array that owns the memory (``base`` followed to the end) is a
  plain writeable C-contiguous ``numpy.ndarray`` owning its data, and its reference count shows
  that no view of it, no other store entry, no op and no caller holds it (a buffer an op returned
  twice, kept, or took from the batch or its parameters is left alone). Such a buffer would be
  deallocated at that moment; the pool keeps it instead and hands it out once, to one request.
* **Memory never grows.** The pool holds a buffer only while the store's live bytes plus the pooled
  bytes stay within ``limit`` (the Trainer gives it 80% of the schedule's planned peak, leaving the
  allocator headroom for its own free blocks), and before each compute the executor
  releases pooled buffers until live + pooled + the node's declared output bytes fit too. Released
  buffers go back to the allocator as they would have without a pool.

See ``docs/training.md`` ("Buffer reuse").
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["ALIGN", "STREAM_BYTES", "BufferPool"]

ALIGN = 64
"""Byte alignment of the buffers the pool hands out (the row kernels stream aligned stores)."""

STREAM_BYTES = 8 << 20
"""From this size a new buffer gets ``ALIGN`` spare bytes to start on a 64-byte boundary, as the
row kernels allocate their own outputs (``NN_STREAM_MIN_BYTES`` in ``csrc/nn.h``: they stream their
stores from there); smaller ones are exactly their size, like the kernels', so that a buffer the pool
gives back to the allocator fits the next kernel-allocated array of that size."""

_SLACK = 4096 + ALIGN
"""A pooled buffer serves a request at most this many bytes smaller than itself: the store counts
the request's bytes, so a much larger buffer would hold memory the plan does not see."""


def _refs(items: list[Any], i: int) -> int:
    return sys.getrefcount(items[i])


# the reference count of an object held by one list only, read the way :meth:`BufferPool.keep`
# reads it (so the test does not depend on how an interpreter version counts its own references)
_ALONE = _refs([object()], 0)


def _root(a: np.ndarray) -> Any:
    """The object at the end of ``a``'s ``base`` chain (``a`` itself when it owns its memory)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class BufferPool:
    """Freed activation buffers kept for the next ops' outputs, within a byte limit.

    Parameters
    ----------
    limit : int
        Bytes the store's live activations plus the pooled buffers may reach (at most the
        schedule's planned peak, ``Schedule.peak_memory``); 0 keeps nothing.
    min_bytes : int
        Smaller buffers are neither pooled nor served (the allocator recycles small blocks well).

    Attributes
    ----------
    pooled : int
        Bytes held now.
    hits, misses : int
        Requests served from the pool, and served by a new array.
    reused_bytes : int
        Bytes of the requests served from the pool.
    released : int
        Buffers given back to the allocator to stay within ``limit``.
    """

    def __init__(self, limit: int, min_bytes: int = 1 << 16) -> None:
        self.limit = self._check(limit, "limit")
        self.min_bytes = self._check(min_bytes, "min_bytes")
        self._bufs: list[np.ndarray] = []  # owning uint8/float arrays, oldest first
        self.pooled = 0
        self.hits = self.misses = self.reused_bytes = self.released = 0

    @staticmethod
    def _check(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{name}: expected an int >= 0, got {value}")
        return int(value)

    def set_limit(self, limit: int, live: int = 0) -> None:
        """Change ``limit`` (e.g. a new schedule's peak) and release what no longer fits."""
        self.limit = self._check(limit, "limit")
        self.reserve(live)

    def __len__(self) -> int:
        return len(self._bufs)

    # ---- handing out ----

    def empty(self, shape: int | tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        """An uninitialized C-contiguous writeable array of ``shape`` and ``dtype``: a pooled buffer
        of about its size when one is held (removed from the pool: no other request gets it), else
        a new one; from ``STREAM_BYTES`` on, it starts on a 64-byte boundary.

        Raises
        ------
        ValueError
            If a dimension is negative.
        """
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"shape: expected dimensions >= 0, got {shape}")
        dt = np.dtype(dtype)
        need = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if need < self.min_bytes:
            return np.empty(shape, dt)
        best, best_key = -1, (2, 0)
        for i in range(len(self._bufs) - 1, -1, -1):  # the most recently pooled first
            b = self._bufs[i]
            if not need <= b.nbytes <= need + _SLACK:  # the store counts `need` bytes
                continue
            key = (0 if -b.ctypes.data % ALIGN + need <= b.nbytes else 1, b.nbytes)  # aligned fits first
            if key < best_key:
                best, best_key = i, key
        if best < 0:
            self.misses += 1
            raw = np.empty(need + (ALIGN if need >= STREAM_BYTES else 0), np.uint8)
        else:
            raw = self._bufs.pop(best)
            self.pooled -= raw.nbytes
            self.hits += 1
            self.reused_bytes += need
        off = -raw.ctypes.data % ALIGN
        if off + need > raw.nbytes:
            off = 0
        return raw.reshape(-1).view(np.uint8)[off : off + need].view(dt).reshape(shape)

    # ---- taking back ----

    def candidates(self, value: Any) -> list[np.ndarray]:
        """The distinct owning arrays behind the arrays of an activation (an array or a tuple of
        them) that could be pooled: plain writeable C-contiguous ndarrays owning their memory, of
        at least ``min_bytes``. The caller drops ``value`` and then calls :meth:`keep`."""
        arrays = value if isinstance(value, tuple) else (value,)
        out: list[np.ndarray] = []
        seen: set[int] = set()
        for a in arrays:
            if not isinstance(a, np.ndarray):
                continue
            r = _root(a)
            if (
                type(r) is np.ndarray
                and id(r) not in seen
                and r.flags.owndata
                and r.flags.writeable
                and r.flags.c_contiguous
                and r.nbytes >= self.min_bytes
            ):
                seen.add(id(r))
                out.append(r)
        return out

    def keep(self, roots: list[np.ndarray], live: int) -> int:
        """Pool the arrays of ``roots`` (from :meth:`candidates`) that nothing else references,
        while ``live`` + pooled bytes stay within ``limit``; empties ``roots``. Returns the bytes
        pooled."""
        got = 0
        for i in range(len(roots)):
            if _refs(roots, i) != _ALONE:  # a view, another store entry, an op or a caller holds it
                continue
            r = roots[i]
            if live + self.pooled + r.nbytes > self.limit:
                self.reserve(live + r.nbytes)  # room for the newest buffer: release the oldest
                if live + self.pooled + r.nbytes > self.limit:
                    continue
            self._bufs.append(r)
            self.pooled += r.nbytes
            got += r.nbytes
        roots.clear()
        return got

    def recycle(self, values: list[Any], live: int) -> int:
        """:meth:`candidates` then :meth:`keep` for the activations of ``values``, which is emptied
        (the caller holds them no longer)."""
        found: dict[int, np.ndarray] = {}  # one entry per buffer (two nodes may hold the same)
        while values:
            found.update((id(r), r) for r in self.candidates(values.pop()))
        roots = list(found.values())
        found.clear()
        return self.keep(roots, live)

    # ---- releasing ----

    def reserve(self, need: int) -> None:
        """Release the oldest pooled buffers until ``need`` + pooled bytes fit in ``limit`` (``need``:
        the live bytes plus those about to be allocated)."""
        while self._bufs and need + self.pooled > self.limit:
            self.pooled -= self._bufs.pop(0).nbytes
            self.released += 1

    def release(self, nbytes: int) -> bool:
        """Give one pooled buffer of about ``nbytes`` (as :meth:`empty` would serve) back to the
        allocator, if one is held: an op about to allocate an output of that size itself (a kernel
        without ``out=``) then gets that memory from the allocator instead of new pages, and the
        pool and the allocator do not both hold memory for the same output."""
        for i in range(len(self._bufs) - 1, -1, -1):
            if nbytes <= self._bufs[i].nbytes <= nbytes + _SLACK:
                self.pooled -= self._bufs.pop(i).nbytes
                self.released += 1
                return True
        return False

    def clear(self) -> None:
        """Release every pooled buffer."""
        self.released += len(self._bufs)
        self._bufs.clear()
        self.pooled = 0

    def stats(self) -> dict[str, int]:
        """``{"pooled", "buffers", "hits", "misses", "reused_bytes", "released"}``."""
        return {
            "pooled": self.pooled,
            "buffers": len(self._bufs),
            "hits": self.hits,
            "misses": self.misses,
            "reused_bytes": self.reused_bytes,
            "released": self.released,
        }

    def __repr__(self) -> str:
        return f"BufferPool(limit={self.limit}, pooled={self.pooled}, buffers={len(self._bufs)})"
