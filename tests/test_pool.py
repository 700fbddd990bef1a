"""The executor's buffer pool: only unreferenced buffers are reused, within the plan's peak, and
whole training steps are bit-identical with and without it."""

from __future__ import annotations

import numpy as np
import pytest

import sparseft as sft
from sparseft.models import GPT, GPTConfig, Llama, LlamaConfig
from sparseft.models.graph import Op, primary
from sparseft.train import ActivationStore, build_step_graph, execute
from sparseft.train.executor import _add
from sparseft.train.pool import ALIGN, STREAM_BYTES, BufferPool
from sparseft.train.stepgraph import block_checkpoint_steps, liveness_steps
from tests.test_executor import F4, Add, Linear, SoftmaxCE, TinyLM, _batch, _grads

KIB = 1024


def _codes(steps):
    return np.array([v if o == "compute" else -1 - v for o, v in steps], dtype=np.int64)


def _full(sg):
    return liveness_steps(sg.graph, [*range(sg.n_ops), *sg.backward_nodes()])


class CheckedStore(ActivationStore):
    """Asserts after every put and free that live + pooled bytes stay within the pool's limit."""

    def _check(self) -> None:
        assert self.pool is not None
        assert self.live + self.pool.pooled <= self.pool.limit, (self.live, self.pool.pooled)

    def put(self, node, value, declared=None, what=""):
        super().put(node, value, declared, what)
        self._check()

    def free(self, node):
        super().free(node)
        self._check()


# ---- the pool on its own ----------------------------------------------------------------------


def test_empty_is_aligned_writeable_and_shaped() -> None:
    pool = BufferPool(1 << 30, min_bytes=0)
    for shape, dt in [((3, 5), np.float32), ((7,), np.float64), ((2, 3, 4), np.int64), ((1,), np.float32)]:
        a = pool.empty(shape, dt)
        assert a.shape == shape and a.dtype == dt
        assert a.flags.c_contiguous and a.flags.writeable
    big = pool.empty((STREAM_BYTES // 4 + 3,))  # from STREAM_BYTES on: 64-byte aligned, as the kernels'
    assert big.ctypes.data % ALIGN == 0 and big.base.nbytes == big.nbytes + ALIGN
    values = [big]
    del big
    assert pool.recycle(values, 0) > 0
    again = pool.empty((STREAM_BYTES // 4 + 3,))  # the same buffer, still aligned
    assert again.ctypes.data % ALIGN == 0 and pool.hits == 1
    assert pool.empty(4).shape == (4,)
    with pytest.raises(ValueError, match="shape"):
        pool.empty((2, -1))


def test_an_unreferenced_buffer_is_reused_and_handed_out_once() -> None:
    pool = BufferPool(1 << 30, min_bytes=0)
    a = pool.empty((64, 32))
    lo = a.ctypes.data
    assert pool.recycle([a], 0) == 0  # we still hold `a`: not taken
    assert len(pool) == 0
    values = [a]
    del a
    assert pool.recycle(values, 0) > 0 and values == []
    assert len(pool) == 1 and pool.pooled >= 64 * 32 * 4
    b = pool.empty((32, 64))  # same bytes, another shape
    assert b.ctypes.data == lo and pool.hits == 1 and len(pool) == 0
    c = pool.empty((32, 64))  # b is in use: c is new memory
    assert not np.shares_memory(b, c) and pool.misses == 2


def test_buffers_held_elsewhere_are_never_pooled() -> None:
    pool = BufferPool(1 << 30, min_bytes=0)
    held = np.ones((50, 50), np.float32)
    view_holder = np.ones((50, 50), np.float32)[1:]  # a live view keeps its base
    twice = np.ones((50, 50), np.float32)
    ro = np.ones((50, 50), np.float32)
    ro.flags.writeable = False
    foreign = np.frombuffer(bytearray(10000), np.float32)  # memory owned by a bytearray
    strided = np.ones((50, 100), np.float32)[:, ::2]
    values = [held, view_holder.base, (twice, twice), ro, foreign, strided]
    assert pool.recycle(values, 0) == 0
    assert len(pool) == 0 and held.sum() == 2500 and view_holder.sum() == 2450


def test_limit_bounds_live_plus_pooled_and_releases_the_oldest() -> None:
    n = 64 * KIB
    pool = BufferPool(3 * (n + ALIGN), min_bytes=0)
    bufs = [pool.empty(n // 4) for _ in range(4)]
    pool.recycle(bufs, 0)  # four fit only three times
    assert len(pool) == 3 and pool.pooled <= pool.limit and pool.released == 1
    pool.reserve(n + ALIGN)  # room for one more buffer's bytes live: two left
    assert len(pool) == 2 and pool.released == 2
    pool.set_limit(0)
    assert len(pool) == 0 and pool.pooled == 0
    keep = BufferPool(2 * n, min_bytes=0)
    assert keep.recycle([np.empty(n // 4, np.float32)], live=2 * n) == 0  # no room next to the live bytes


def test_min_bytes_leaves_small_arrays_to_the_allocator() -> None:
    pool = BufferPool(1 << 30)  # 64 KiB by default
    small = pool.empty(100)
    assert pool.hits == pool.misses == 0
    assert pool.recycle([small], 0) == 0 and len(pool) == 0


@pytest.mark.parametrize(
    "bad, err", [(-1, ValueError), (1.5, TypeError), ("1", TypeError), (True, TypeError)]
)
def test_bad_limits_are_errors(bad, err) -> None:
    with pytest.raises(err, match="limit"):
        BufferPool(bad)
    with pytest.raises(err, match="min_bytes"):
        BufferPool(10, min_bytes=bad)


def test_store_rejects_a_non_pool() -> None:
    with pytest.raises(TypeError, match="pool"):
        ActivationStore(pool={})  # type: ignore[arg-type]


# ---- steps with the pool: bit-identical, within the plan -------------------------------------


@pytest.mark.parametrize("schedule", ["full", "blocks"])
def test_executor_steps_with_a_pool_are_bit_identical(schedule: str) -> None:
    rng = np.random.default_rng(0)
    ref, m = TinyLM(n_layer=4, d=24, h=40, seed=1), TinyLM(n_layer=4, d=24, h=40, seed=1)
    sg_ref, sg = build_step_graph(ref.ops(), 3, 11), build_step_graph(m.ops(), 3, 11)
    steps = _full(sg) if schedule == "full" else block_checkpoint_steps(sg)
    codes = _codes(steps)
    planned = sft.simulate(sg.graph, steps)[0]
    pool = BufferPool(planned, min_bytes=0)  # every array, however small
    store, store_ref = CheckedStore(pool), ActivationStore()
    for _ in range(4):  # the pool carries buffers from one step to the next
        x, y = _batch(rng, B=3, T=11)
        ref.zero_grad()
        m.zero_grad()
        assert execute(sg, codes, x, y, store) == execute(sg_ref, codes, x, y, store_ref)
        g_ref = _grads(ref)
        for k, g in _grads(m).items():
            assert np.array_equal(g, g_ref[k]), k
        assert store.peak == store_ref.peak == planned
    assert pool.hits > 0  # the executor's gradient sums drew from the pool


class Same(Op):
    """Returns its input's array itself (two nodes then hold one buffer)."""

    def __init__(self, name, src, d):
        super().__init__(name, (src,), None)
        self.d = d

    def forward(self, x):
        return primary(x)

    def backward(self, gy, x, *, y):
        return (gy,)

    def out_nbytes(self, b, t):
        return b * t * self.d * F4  # the store counts the array once per node holding it

    grad_nbytes = out_nbytes

    def backward_reads(self):
        return (False, False)


class Stash(Op):
    """tanh, keeping each output in ``self.kept`` (an op that holds what it returned)."""

    takes_alloc = True

    def __init__(self, name, src, d, block):
        super().__init__(name, (src,), block)
        self.d, self.kept = d, []

    def train_forward(self, x, alloc=None):
        out = np.empty(primary(x).shape, np.float32) if alloc is None else alloc(primary(x).shape)
        np.tanh(primary(x), out=out)
        self.kept.append((out, out.copy()))
        return out

    forward = train_forward

    def backward(self, gy, x, *, y, alloc=None):
        return (gy * (1 - y * y),)

    def out_nbytes(self, b, t):
        return b * t * self.d * F4

    def grad_nbytes(self, b, t):
        return b * t * self.d * F4


class Table(Op):
    """Adds rows of a table it owns and returns a view of that table when the input is zero-sized:
    here it returns ``table[:rows]`` reshaped, a view of an array the op holds."""

    def __init__(self, name, src, d, block, rows):
        super().__init__(name, (src,), block)
        self.d = d
        self.table = np.arange(rows * d, dtype=np.float32).reshape(rows, d) / (rows * d)
        self.copy = self.table.copy()

    def forward(self, x):
        x = primary(x)
        return self.table[: x.shape[0] * x.shape[1]].reshape(x.shape)

    def backward(self, gy, x, *, y):
        return (None,)

    def out_nbytes(self, b, t):
        return b * t * self.d * F4

    def grad_nbytes(self, b, t):
        return 0

    def backward_reads(self):
        return (False, False)


class Held(TinyLM):
    """TinyLM whose blocks pass through ops that alias, keep or own what they return."""

    def __init__(self, seed=0):
        super().__init__(n_layer=2, d=16, h=24, seed=seed)
        rng = np.random.default_rng(seed + 7)
        emb = self._ops[0]
        self._ops = [
            emb,
            Same("same", "wte", 16),
            Table("table", "wte", 16, None, rows=64),
            Add("mix", "same", "table", 16, None),
            Linear("fc", "mix", 16, 24, rng, block=0),
            Stash("stash", "fc", 24, block=0),
            Linear("proj", "stash", 24, 16, rng, block=0),
            Add("res", "mix", "proj", 16, 0),
            Linear("head", "res", 16, 256, rng),
            SoftmaxCE("loss", "head", 256),
        ]


def test_buffers_an_op_aliases_keeps_or_owns_are_never_recycled() -> None:
    rng = np.random.default_rng(3)
    ref, m = Held(), Held()
    sg = build_step_graph(m.ops(), 2, 9)
    sg_ref = build_step_graph(ref.ops(), 2, 9)
    codes = _codes(_full(sg))
    pool = BufferPool(sft.simulate(sg.graph, _full(sg))[0], min_bytes=0)
    store = CheckedStore(pool)
    for _ in range(4):
        x, y = _batch(rng, B=2, T=9)
        x0 = x.copy()
        ref.zero_grad()
        m.zero_grad()
        assert execute(sg, codes, x, y, store) == execute(sg_ref, codes, x, y)
        for k, g in _grads(m).items():
            assert np.array_equal(g, _grads(ref)[k]), k
        assert np.array_equal(x, x0)  # the batch is never written
    table = m.ops()[2]
    assert np.array_equal(table.table, table.copy)
    stash = m.ops()[5]
    assert len(stash.kept) == 4
    for out, at_return in stash.kept:  # still what the op returned: nobody reused them
        assert np.array_equal(out, at_return)
    assert pool.hits > 0


def test_an_output_buffer_that_overlaps_an_input_is_caught() -> None:
    from sparseft.models.transformer import _Add, _Norm

    a = np.ones((4, 8, 16), np.float32)
    b = np.full((4, 8, 16), 2.0, np.float32)
    add = _Add("add", "x", "y", 0, 16)
    with pytest.raises(ValueError, match="alloc"):
        add.train_forward(a, b, alloc=lambda shape, dtype=np.float32: a)
    with pytest.raises(ValueError, match="alloc"):
        add.train_forward(a, b, alloc=lambda shape, dtype=np.float32: b.reshape(shape))
    norm = _Norm("ln", "x", 0, np.ones(16, np.float32), np.zeros(16, np.float32), 1e-5)
    with pytest.raises(ValueError, match="out"):
        norm.train_forward(a, alloc=lambda shape, dtype=np.float32: a)
    with pytest.raises(RuntimeError, match="pool"):
        _add(a, b, alloc=lambda shape, dtype=np.float32: a)
    assert (a == 1).all() and (b == 2).all()  # nothing was written
    # the proper path gives the same bits as the plain one
    fresh = BufferPool(1 << 30, min_bytes=0).empty
    assert np.array_equal(add.train_forward(a, b, alloc=fresh), add.forward(a, b))
    assert np.array_equal(_add(a, b, alloc=fresh), a + b)


# ---- the Trainer --------------------------------------------------------------------------------


def _model(kind: str):
    if kind == "gpt":
        m = GPT.random(GPTConfig(vocab_size=256, n_layer=2, n_head=4, d_model=64, seq_len=64), seed=0)
    else:
        cfg = LlamaConfig(vocab_size=256, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_ff=160, seq_len=64)
        m = Llama.random(cfg, seed=0)
    sft.sparsify(m, sparsity=0.5, method="magnitude")
    return m


TEXT = None


def _text():
    global TEXT
    if TEXT is None:
        TEXT = sft.data.builtin_corpus()[:60000]
    return TEXT


@pytest.mark.parametrize(
    "kind, adapter, budget",
    [
        ("gpt", True, None),
        ("gpt", True, 0.5),
        ("llama", True, 0.5),
        ("gpt", False, None),
        ("llama", False, None),
    ],
)
def test_trainer_steps_are_bit_identical_with_and_without_reuse(kind, adapter, budget) -> None:
    runs = {}
    for reuse in (True, False):
        m = _model(kind)
        tr = sft.Trainer(
            m,
            adapter=sft.LoRSConfig(r=4, alpha=8) if adapter else None,
            lr=1e-2,
            memory_budget=budget,
            planner="greedy",
            plan_time_limit=5,
            reuse_buffers=reuse,  # True forces the pool under a recomputing budget too
        )
        tr.fit(_text(), steps=3, batch_size=4, seq_len=64, progress=False)
        runs[reuse] = (tr, m)
    (tr1, m1), (tr0, m0) = runs[True], runs[False]
    assert tr1.history.loss == tr0.history.loss
    p0 = m0.parameters()
    for k, p in m1.parameters().items():
        assert np.array_equal(p, p0[k]), k
    g0 = m0.gradients()
    for k, g in m1.gradients().items():
        assert np.array_equal(g, g0[k]), k
    # the store's peak is the plan's, pool or not (with a budget the plan after the first step
    # depends on measured durations, so the two runs may execute different plans)
    for tr in (tr0, tr1):
        assert tr.history.peak_bytes[-1] == tr.plan.peak_memory
    if budget is None:
        assert tr1.history.peak_bytes == tr0.history.peak_bytes
    else:
        assert max(tr1.history.peak_bytes) <= tr1.plan.budget
        assert tr1.plan.recomputations > 0  # the tight budget recomputes
    assert tr1.reuse_stats["hits"] > 0 and tr0.reuse_stats == {}


def test_trainer_reuse_buffers_must_be_a_bool_or_auto() -> None:
    with pytest.raises(TypeError, match="reuse_buffers"):
        sft.Trainer(TinyLM(), reuse_buffers=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reuse_buffers"):
        sft.Trainer(TinyLM(), reuse_buffers="yes")
    tr = sft.Trainer(TinyLM(), reuse_buffers=False)
    assert tr.config()["reuse_buffers"] is False
    assert sft.Trainer(TinyLM()).config()["reuse_buffers"] == "auto"


def test_auto_reuses_only_when_the_schedule_recomputes_nothing() -> None:
    stats = {}
    for budget in (None, 0.5):
        tr = sft.Trainer(_model("gpt"), adapter=sft.LoRSConfig(r=4), memory_budget=budget, planner="greedy")
        tr.fit(_text(), steps=2, batch_size=4, seq_len=64, progress=False)
        stats[budget] = tr.reuse_stats
        assert (tr.plan.solver == "none") == (budget is None)
    assert stats[None]["hits"] > 0 and stats[0.5] == {}


def test_dense_base_writes_into_a_given_out_with_the_same_bits() -> None:
    from sparseft.formats.dense import DenseBase

    rng = np.random.default_rng(2)
    W = rng.standard_normal((24, 40)).astype(np.float32)
    base = DenseBase.from_dense(W * (W > 0), W > 0)
    x = rng.standard_normal((9, 40)).astype(np.float32)
    gy = rng.standard_normal((9, 24)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    y = np.full((9, 24), np.nan, np.float32)
    assert base.dense_forward(x, bias, out=y) is y
    assert np.array_equal(y, base.dense_forward(x, bias))
    gx = np.full((9, 40), np.nan, np.float32)
    assert base.dense_backward_input(gy, out=gx) is gx
    assert np.array_equal(gx, base.dense_backward_input(gy))
    with pytest.raises(ValueError, match="out"):
        base.dense_backward_input(gy, out=np.empty((9, 41), np.float32))
    with pytest.raises(ValueError, match="out"):
        base.dense_forward(x, out=x[:, :24])  # overlaps x (and is not C-contiguous)
    flat = rng.standard_normal(9 * 40 + 9 * 24).astype(np.float32)
    xs = flat[: 9 * 40].reshape(9, 40)
    with pytest.raises(ValueError, match="shares memory"):  # C-contiguous, overlapping x
        base.dense_forward(xs, out=flat[100 : 100 + 9 * 24].reshape(9, 24))
    with pytest.raises(TypeError, match="out"):
        base.dense_forward(x, out=np.empty((9, 24), np.float64))
