"""Big fresh outputs of the row ops (2 MiB-aligned mappings advised MADV_HUGEPAGE, csrc/bigbuf.c) and
RoPE's cos/sin table kept across calls (csrc/module.c): values against the float64 twins in
tests/reference.py, alignment, writability, the mapping's release, SPARSEFT_HUGEPAGES=0, and the
table never reused for other parameters."""

from __future__ import annotations

import gc
import os
import sys

import numpy as np
import pytest

from sparseft.models import ops
from tests import reference as ref

HUGE = 2 << 20
#: rows x cols of one output past NN_STREAM_MIN_BYTES (8 MiB): the big-output path
BIG = (2100, 1024)


def rnd(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def close(got: object, want: object, rtol: float = 2e-5) -> None:
    g, w = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert g.shape == w.shape
    err = float(np.abs(g - w).max())
    assert err <= rtol * max(1.0, float(np.abs(w).max())), err


def owner(a: np.ndarray) -> object:
    """The object at the end of a's base chain (what owns its memory)."""
    b: object = a
    while isinstance(b, np.ndarray) and b.base is not None:
        b = b.base
    return b


def mapping_of(addr: int) -> tuple[int, int, str] | None:
    """(start, end, VmFlags) of the mapping holding addr in /proc/self/smaps, None when unmapped."""
    found = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                found = (lo, hi) if lo <= addr < hi else None
            elif found is not None and line.startswith("VmFlags:"):
                return found[0], found[1], line.split(":", 1)[1]
    return None


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.path.exists("/proc/self/smaps"),
    reason="needs /proc/self/smaps",
)


@pytest.fixture
def big() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(3)
    return rnd(rng, *BIG), rnd(rng, *BIG), rnd(rng, BIG[1]), rnd(rng, BIG[1])


def test_big_outputs_are_2mib_aligned_correct_and_writable(big: tuple[np.ndarray, ...]) -> None:
    x, dy, w, b = big
    y, m, r = ops.layernorm_forward(x, w, b)
    assert y.ctypes.data % HUGE == 0 and y.flags.writeable and y.flags.c_contiguous
    assert not isinstance(owner(y), np.ndarray)  # the mapping's capsule, not a NumPy buffer
    Y, M, R = ref.layernorm_forward(x, w, b)
    close(y, Y), close(m, M), close(r, R)
    dx = ops.layernorm_backward(dy, x, w, m, r)[0]
    assert dx.ctypes.data % HUGE == 0
    close(dx, ref.layernorm_backward(dy, x, w, m, r)[0], 1e-4)
    # writable to its last element, and independent of every other output
    y[...] = 7.0
    assert float(y[-1, -1]) == 7.0 and not np.shares_memory(y, dx)
    close(dx, ref.layernorm_backward(dy, x, w, m, r)[0], 1e-4)
    # the elementwise ops start their output at the input's offset within 64 bytes
    xs = x.reshape(-1)[3:]  # an input 12 bytes off x's offset within 64 bytes
    g = ops.gelu_forward(xs)
    assert g.ctypes.data % HUGE == xs.ctypes.data % 64
    close(g, ref.gelu_forward(xs))
    rope = ops.rope_forward(x.reshape(1, BIG[0], 8, BIG[1] // 8))
    assert rope.ctypes.data % HUGE == 0
    close(rope, ref.rope_forward(x.reshape(1, BIG[0], 8, BIG[1] // 8)))


@linux_only
def test_big_outputs_are_advised_hugepage_and_unmapped_when_freed(big: tuple[np.ndarray, ...]) -> None:
    x, _, w, b = big
    y = ops.layernorm_forward(x, w, b)[0]
    addr = y.ctypes.data
    got = mapping_of(addr)
    assert got is not None
    lo, hi, flags = got
    assert lo == addr and hi - lo >= y.nbytes
    thp = "/sys/kernel/mm/transparent_hugepage/enabled"
    if os.path.exists(thp) and "[never]" not in open(thp).read():
        assert "hg" in flags.split()  # MADV_HUGEPAGE (the kernel may still back it with small pages)
    # a view keeps the mapping alive; the last reference unmaps it
    v = y[5:9]
    del y
    gc.collect()
    assert mapping_of(addr) is not None
    assert float(v.sum()) == float(v.sum())  # still readable
    del v
    gc.collect()
    after = mapping_of(addr)
    assert after is None or after[0] != lo  # unmapped (or the address reused by a new mapping)


def test_hugepages_off_by_environment(big: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    x, dy, w, b = big
    on = ops.layernorm_forward(x, w, b)
    monkeypatch.setenv("SPARSEFT_HUGEPAGES", "0")
    off = ops.layernorm_forward(x, w, b)
    # NumPy's buffer, still 64-byte aligned for the streaming stores; the same bits
    assert isinstance(owner(off[0]), np.ndarray) and off[0].ctypes.data % 64 == 0
    for a, o in zip(on, off, strict=True):
        np.testing.assert_array_equal(a, o)
    dx_off = ops.layernorm_backward(dy, x, w, off[1], off[2])[0]
    monkeypatch.setenv("SPARSEFT_HUGEPAGES", "1")
    dx_on = ops.layernorm_backward(dy, x, w, on[1], on[2])[0]
    assert not isinstance(owner(dx_on), np.ndarray)
    np.testing.assert_array_equal(dx_on, dx_off)


def test_small_outputs_stay_numpy_arrays() -> None:
    x = np.ones((64, 96), np.float32)
    y = ops.layernorm_forward(x, np.ones(96, np.float32), np.zeros(96, np.float32))[0]
    assert isinstance(owner(y), np.ndarray)


# ---- RoPE's table kept across calls ----------------------------------------------------------------


def test_rope_table_is_never_reused_for_other_parameters() -> None:
    """Calls alternating every parameter the table depends on each match the reference, and a
    repeated call (the kept table) gives the same bits as the first."""
    rng = np.random.default_rng(11)
    x = rnd(rng, 2, 9, 3, 10)
    x2 = rnd(rng, 2, 7, 3, 10)
    x3 = rnd(rng, 2, 9, 3, 12)
    inv = (1.0 / 7.0 ** (np.arange(0, 10, 2) / 10)).astype(np.float32)
    calls = [
        (x, {}),
        (x, {"theta": 500.0}),
        (x, {"offset": 3}),
        (x2, {}),
        (x3, {}),
        (x, {"inv_freq": inv}),
        (x, {"inv_freq": inv * 2}),
        (x, {"inv_freq": inv, "offset": 2}),
    ]
    first = []
    for a, kw in calls:
        y = ops.rope_forward(a, **kw)
        close(y, ref.rope_forward(a, **kw), 1e-5)
        first.append(y)
    for (a, kw), y0 in zip(calls, first, strict=True):
        np.testing.assert_array_equal(ops.rope_forward(a, **kw), y0)
        np.testing.assert_array_equal(ops.rope_forward(a, **kw), y0)  # twice: now from the kept table
        close(ops.rope_backward(a, **kw), ref.rope_forward(a, inverse=True, **kw), 1e-5)


def test_rope_table_follows_inv_freq_changed_in_place() -> None:
    """The table is keyed by the frequencies' values, not the array: mutating it is seen."""
    rng = np.random.default_rng(12)
    x = rnd(rng, 1, 6, 2, 8)
    inv = np.array([1.0, 0.5, 0.25, 0.125], np.float32)
    y1 = ops.rope_forward(x, inv_freq=inv)
    inv[2] = 0.3
    y2 = ops.rope_forward(x, inv_freq=inv)
    close(y2, ref.rope_forward(x, inv_freq=inv), 1e-5)
    assert not np.array_equal(y1, y2)


# ---- the norms' backward in long blocks ------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4100, 8), (1030, 768), (33, 5)])  # blocks of 256, 64 and 32 rows
def test_norm_backward_blocks_match_reference_for_any_thread_count(shape: tuple[int, int]) -> None:
    import sparseft

    rng = np.random.default_rng(13)
    x, dy, w, b = rnd(rng, *shape), rnd(rng, *shape), rnd(rng, shape[1]), rnd(rng, shape[1])
    _, m, r = ops.layernorm_forward(x, w, b)
    _, rr = ops.rmsnorm_forward(x, w)
    want_ln = ref.layernorm_backward(dy, x, w, m, r)
    want_rms = ref.rmsnorm_backward(dy, x, w, rr)
    before = sparseft.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            sparseft.set_num_threads(n)
            runs.append((*ops.layernorm_backward(dy, x, w, m, r), *ops.rmsnorm_backward(dy, x, w, rr)))
    finally:
        sparseft.set_num_threads(before)
    for got, want in zip(runs[0], (*want_ln, *want_rms), strict=True):
        close(got, want, 1e-4)
    for other in runs[1:]:
        for a, o in zip(runs[0], other, strict=True):
            np.testing.assert_array_equal(a, o)
