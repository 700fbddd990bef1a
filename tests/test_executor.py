"""The step graph and its executor: schedules run literally, bit-identical to run_step, store accounting."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import sparseft as sft
from sparseft.models.graph import Model, Op, primary, run_step
from sparseft.train import ActivationStore, block_checkpoint_steps, build_step_graph, execute
from sparseft.train.stepgraph import check_once, liveness_steps

F4 = 4


class Embed(Op):
    """Token embedding, trainable table (V, d)."""

    def __init__(self, name: str, V: int, d: int, rng: np.random.Generator) -> None:
        super().__init__(name, ("input",), None)
        self.W = (0.5 * rng.standard_normal((V, d))).astype(np.float32)
        self.gW = np.zeros_like(self.W)
        self.d = d

    def params(self):
        return {"weight": self.W}

    def grads(self):
        return {"weight": self.gW}

    def forward(self, ids):
        return self.W[ids]

    def backward(self, gy, ids, *, y):
        np.add.at(self.gW, ids.reshape(-1), gy.reshape(-1, self.d))
        return (None,)

    def out_nbytes(self, b, t):
        return b * t * self.d * F4

    def grad_nbytes(self, b, t):
        return 0


class Linear(Op):
    def __init__(self, name, src, din, dout, rng, block=None, trainable=True):
        super().__init__(name, (src,), block)
        self.W = (rng.standard_normal((dout, din)) / np.sqrt(din)).astype(np.float32)
        self.b = np.zeros(dout, np.float32)
        self.gW, self.gb = np.zeros_like(self.W), np.zeros_like(self.b)
        self.din, self.dout, self.trainable = din, dout, trainable

    def params(self):
        return {"weight": self.W, "bias": self.b} if self.trainable else {}

    def grads(self):
        return {"weight": self.gW, "bias": self.gb} if self.trainable else {}

    def forward(self, x):
        return primary(x) @ self.W.T + self.b

    def backward(self, gy, x, *, y):
        x2 = primary(x).reshape(-1, self.din)
        g2 = gy.reshape(-1, self.dout)
        if self.trainable:
            self.gW += g2.T @ x2
            self.gb += g2.sum(0)
        return ((g2 @ self.W).reshape(primary(x).shape),)

    def _rows(self, b, t):
        return b * t

    def out_nbytes(self, b, t):
        return self._rows(b, t) * self.dout * F4

    def grad_nbytes(self, b, t):
        return self._rows(b, t) * self.din * F4


class Tanh(Op):
    """Returns (y, 1 - y^2): the second array is what the backward needs (counted in the store)."""

    def __init__(self, name, src, d, block):
        super().__init__(name, (src,), block)
        self.d = d

    def forward(self, x):
        t = np.tanh(primary(x))
        return (t, 1 - t * t)

    def backward(self, gy, x, *, y):
        return (gy * y[1],)

    def out_nbytes(self, b, t):
        return 2 * b * t * self.d * F4

    def grad_nbytes(self, b, t):
        return b * t * self.d * F4


class Add(Op):
    def __init__(self, name, a, b, d, block):
        super().__init__(name, (a, b), block)
        self.d = d

    def forward(self, a, b):
        return primary(a) + primary(b)

    def backward(self, gy, a, b, *, y):
        return (gy, gy)

    def out_nbytes(self, b, t):
        return b * t * self.d * F4

    def grad_nbytes(self, b, t):
        return 2 * b * t * self.d * F4


class SoftmaxCE(Op):
    """Mean cross-entropy of logits (..., C) against integer targets (...)."""

    def __init__(self, name, src, C):
        super().__init__(name, (src, "target"), None)
        self.C = C

    def _p(self, z):
        z = z.reshape(-1, self.C)
        p = np.exp(z - z.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)

    def forward(self, z, t):
        p = self._p(primary(z))
        return np.asarray(-np.log(p[np.arange(len(p)), t.reshape(-1)]).mean(), dtype=np.float32)

    def backward(self, gy, z, t, *, y):
        assert gy is None
        p = self._p(primary(z))
        p[np.arange(len(p)), t.reshape(-1)] -= 1
        return ((p / len(p)).astype(np.float32).reshape(primary(z).shape), None)

    def out_nbytes(self, b, t):
        return F4

    def grad_nbytes(self, b, t):
        return b * t * self.C * F4


def _load(model: Model, sd: dict[str, np.ndarray]) -> None:
    params = model.parameters()
    for k, v in params.items():
        if sd[k].shape != v.shape:
            raise ValueError(f"{k}: expected shape {v.shape}, got {sd[k].shape}")
    for k, v in params.items():
        v[...] = sd[k]


class TinyLM(Model):
    """Embedding, ``n_layer`` residual tanh-MLP blocks, a linear head and cross-entropy (byte vocab)."""

    def __init__(self, n_layer=3, d=16, h=32, V=256, seed=0, frozen_embedding=False):
        rng = np.random.default_rng(seed)
        self.vocab_size = V
        ops: list[Op] = [Embed("wte", V, d, rng)]
        if frozen_embedding:
            ops[0].params = lambda: {}  # type: ignore[method-assign]
            ops[0].grads = lambda: {}  # type: ignore[method-assign]
        x = "wte"
        for i in range(n_layer):
            ops += [
                Linear(f"h.{i}.fc", x, d, h, rng, block=i),
                Tanh(f"h.{i}.act", f"h.{i}.fc", h, block=i),
                Linear(f"h.{i}.proj", f"h.{i}.act", h, d, rng, block=i),
                Add(f"h.{i}.res", x, f"h.{i}.proj", d, block=i),
            ]
            x = f"h.{i}.res"
        ops += [Linear("head", x, d, V, rng), SoftmaxCE("loss", "head", V)]
        self._ops = ops

    def ops(self):
        return self._ops

    def state_dict(self):
        return {f"{k}": v.copy() for k, v in self.parameters().items()}

    def load_state_dict(self, sd, strict=True):
        _load(self, sd)


class TinyMLP(Model):
    """Classifier for (X, y) data: two tanh layers and softmax cross-entropy."""

    def __init__(self, features=8, hidden=16, classes=3, seed=0):
        rng = np.random.default_rng(seed)
        self._ops = [
            Linear("fc1", "input", features, hidden, rng, block=0),
            Tanh("act1", "fc1", hidden, block=0),
            Linear("fc2", "act1", hidden, classes, rng),
            SoftmaxCE("loss", "fc2", classes),
        ]

    def ops(self):
        return self._ops

    def state_dict(self):
        return {k: v.copy() for k, v in self.parameters().items()}

    def load_state_dict(self, sd, strict=True):
        _load(self, sd)


def _batch(rng, B=3, T=5, V=256):
    ids = rng.integers(0, V, (B, T + 1))
    return ids[:, :-1].copy(), ids[:, 1:].copy()


def _grads(model):
    return {k: g.copy() for k, g in model.gradients().items()}


@pytest.mark.parametrize("frozen", [False, True])
def test_unbudgeted_schedule_matches_run_step_bit_for_bit(frozen: bool) -> None:
    rng = np.random.default_rng(0)
    x, y = _batch(rng)
    m = TinyLM(frozen_embedding=frozen)
    loss_ref = run_step(m, x, y)
    g_ref = _grads(m)
    m.zero_grad()
    sg = build_step_graph(m.ops(), 3, 5)
    steps = liveness_steps(sg.graph, [*range(sg.n_ops), *sg.backward_nodes()])
    codes = np.array([v if o == "compute" else -1 - v for o, v in steps], dtype=np.int64)
    loss = execute(sg, codes, x, y)
    assert loss == loss_ref
    for k, g in _grads(m).items():
        assert np.array_equal(g, g_ref[k]), k
    # with a frozen embedding its backward node does not exist
    assert (sg.bwd_node[0] is None) == frozen


def test_block_checkpointing_recomputes_and_stays_bit_identical() -> None:
    rng = np.random.default_rng(1)
    x, y = _batch(rng, B=2, T=7)
    m = TinyLM(n_layer=4)
    run_step(m, x, y)
    g_ref = _grads(m)
    m.zero_grad()
    sg = build_step_graph(m.ops(), 2, 7)
    full = sft.simulate(sg.graph, liveness_steps(sg.graph, [*range(sg.n_ops), *sg.backward_nodes()]))[0]
    steps = block_checkpoint_steps(sg)
    check_once(sg, steps)
    peak, _ = sft.simulate(sg.graph, steps)
    assert peak < full
    n_compute = sum(o == "compute" for o, _ in steps)
    assert n_compute > sg.graph.n  # something is recomputed
    store = ActivationStore()
    codes = np.array([v if o == "compute" else -1 - v for o, v in steps], dtype=np.int64)
    execute(sg, codes, x, y, store)
    assert store.peak == peak  # the store's count is the simulator's, byte for byte
    for k, g in _grads(m).items():
        assert np.array_equal(g, g_ref[k]), k


def test_store_counts_what_is_declared() -> None:
    rng = np.random.default_rng(2)
    x, y = _batch(rng, B=4, T=3)
    m = TinyLM(n_layer=2)
    sg = build_step_graph(m.ops(), 4, 3)
    steps = liveness_steps(sg.graph, [*range(sg.n_ops), *sg.backward_nodes()])
    peak, _ = sft.simulate(sg.graph, steps)
    store = ActivationStore()
    codes = np.array([v if o == "compute" else -1 - v for o, v in steps], dtype=np.int64)
    execute(sg, codes, x, y, store)
    assert store.peak == peak == sg.graph.peak_memory()
    assert store.live == 0


def test_check_once_rejects_a_recomputed_gradient_accumulation() -> None:
    m = TinyLM(n_layer=1)
    sg = build_step_graph(m.ops(), 1, 2)
    b = sg.once[0]
    with pytest.raises(ValueError, match="exactly once"):
        check_once(sg, [("compute", v) for v in range(sg.graph.n)] + [("free", b), ("compute", b)])


def test_model_without_parameters_is_rejected() -> None:
    m = TinyMLP()
    for op in m.ops():
        op.trainable = False  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="no op has trainable parameters"):
        build_step_graph(m.ops(), 2, 1)


def test_tracemalloc_agrees_with_the_store() -> None:
    """The store's peak is the bytes of resident outputs; tracemalloc sees them plus temporaries."""
    rng = np.random.default_rng(3)
    x, y = _batch(rng, B=8, T=32)
    m = TinyLM(n_layer=4, d=64, h=128)
    sg = build_step_graph(m.ops(), 8, 32)
    results = {}
    for name, steps in (
        ("full", liveness_steps(sg.graph, [*range(sg.n_ops), *sg.backward_nodes()])),
        ("blocks", block_checkpoint_steps(sg)),
    ):
        codes = np.array([v if o == "compute" else -1 - v for o, v in steps], dtype=np.int64)
        store = ActivationStore()
        execute(sg, codes, x, y, store)  # warm-up (first-call allocations)
        store = ActivationStore()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        execute(sg, codes, x, y, store)
        traced = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        results[name] = (store.peak, traced)
        assert traced >= store.peak
        # temporaries of one op (a few activations) at most on top of the store
        assert traced <= store.peak + 6 * 8 * 32 * 256 * 4
    assert results["blocks"][0] < results["full"][0]
    assert results["blocks"][1] < results["full"][1]


def _gpt_step(cfg_kw: dict, B: int, T: int, r: int = 4) -> tuple[ActivationStore, int]:
    from sparseft.models import GPT, GPTConfig

    m = GPT.random(GPTConfig(**cfg_kw), seed=0)
    m.add_adapters(sft.LoRSConfig(r=r))
    sg = build_step_graph(m.ops(), B, T)
    steps = liveness_steps(sg.graph, [*range(sg.n_ops), *sg.backward_nodes()])
    codes = np.array([v if o == "compute" else -1 - v for o, v in steps], dtype=np.int64)
    ids = np.random.default_rng(0).integers(0, cfg_kw["vocab_size"], (B, T + 1))
    store = ActivationStore()
    execute(sg, codes, ids[:, :-1].copy(), ids[:, 1:].copy(), store)
    return store, sft.simulate(sg.graph, steps)[0]


def test_no_logits_buffer_and_no_attention_matrix_in_the_store() -> None:
    """A GPT step keeps neither (tokens x vocab) logits nor a (T x T) matrix per head: the largest
    stored activation is far below both, and the measured peak is the one planned from shapes."""
    B, T, V, H = 1, 128, 2048, 8
    store, planned = _gpt_step(dict(vocab_size=V, n_layer=2, n_head=H, d_model=64, seq_len=T), B, T)
    assert store.peak == planned
    assert store.largest < B * T * V * 4 // 4  # a logits buffer would be 1 MiB; the largest is 128 KiB
    assert store.largest < B * H * T * T * 4 // 2  # per-head attention probabilities: 512 KiB


def test_no_out_by_in_buffer_per_adapted_layer() -> None:
    """Adapters add no (out x in) activation: the whole step's peak stays below one such buffer."""
    store, planned = _gpt_step(dict(vocab_size=256, n_layer=2, n_head=4, d_model=256, seq_len=2), 1, 2, r=16)
    smallest_weight = 256 * 256 * 4  # attn.c_proj: the smallest adapted (out, in)
    assert store.peak == planned
    assert store.peak < smallest_weight


class LeanAdd(Add):
    """A residual add that declares it reads nothing in its backward (and checks it gets nothing)."""

    def backward(self, gy, a, b, *, y):
        assert a is None and b is None and y is None
        return (gy, gy)

    def backward_reads(self):
        return (False, False, False)


class LeanLinear(Linear):
    """A linear whose backward reads its input but never its output."""

    def backward(self, gy, x, *, y):
        assert y is None
        return super().backward(gy, x, y=y)

    def backward_reads(self):
        return (True, False)


def _lean(m: TinyLM) -> TinyLM:
    """The same model (same arrays) with ops that declare what their backward reads."""
    lean = TinyLM.__new__(TinyLM)
    lean.vocab_size = m.vocab_size
    ops = []
    for op in m.ops():
        if type(op) is Add:
            new: Op = LeanAdd.__new__(LeanAdd)
        elif type(op) is Linear:
            new = LeanLinear.__new__(LeanLinear)
        else:
            new = op
        if new is not op:
            new.__dict__.update(op.__dict__)
        ops.append(new)
    lean._ops = ops
    return lean


def test_backward_reads_frees_unread_activations_and_stays_bit_identical() -> None:
    rng = np.random.default_rng(4)
    x, y = _batch(rng, B=4, T=6)
    m = TinyLM(n_layer=3)
    loss_ref = run_step(m, x, y)
    g_ref = _grads(m)
    peaks = {}
    for name, model in (("all", m), ("lean", _lean(m))):
        model.zero_grad()
        sg = build_step_graph(model.ops(), 4, 6)
        steps = liveness_steps(sg.graph, [*range(sg.n_ops), *sg.backward_nodes()])
        planned = sft.simulate(sg.graph, steps)[0]
        codes = np.array([v if o == "compute" else -1 - v for o, v in steps], dtype=np.int64)
        store = ActivationStore()
        assert execute(sg, codes, x, y, store) == loss_ref
        assert store.peak == planned
        for k, g in _grads(model).items():
            assert np.array_equal(g, g_ref[k]), k
        peaks[name] = planned
        if name == "lean":
            # the proj outputs (read by the add's forward only) are freed right after it
            proj = [i for i, op in enumerate(sg.ops) if op.name.endswith(".proj")]
            for i in proj:
                assert i not in sg.graph.predecessors(sg.bwd_node[i])
    assert peaks["lean"] < peaks["all"]


def test_budgeted_schedule_with_backward_reads_is_bit_identical() -> None:
    rng = np.random.default_rng(5)
    x, y = _batch(rng, B=2, T=7)
    ref = TinyLM(n_layer=4)
    run_step(ref, x, y)
    g_ref = _grads(ref)
    ref.zero_grad()
    m = _lean(ref)  # the same arrays
    sg = build_step_graph(m.ops(), 2, 7)
    steps = block_checkpoint_steps(sg)
    check_once(sg, steps)
    store = ActivationStore()
    codes = np.array([v if o == "compute" else -1 - v for o, v in steps], dtype=np.int64)
    execute(sg, codes, x, y, store)
    assert store.peak == sft.simulate(sg.graph, steps)[0]
    for k, g in _grads(m).items():
        assert np.array_equal(g, g_ref[k]), k


@pytest.mark.parametrize("bad", [(True,), [True, False], (True, 1), "tf"])
def test_bad_backward_reads_is_a_value_error(bad) -> None:
    m = TinyLM(n_layer=1)
    m.ops()[1].backward_reads = lambda: bad  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="backward_reads"):
        build_step_graph(m.ops(), 1, 2)


def test_gpt_step_frees_what_no_backward_reads() -> None:
    """In a GPT step the projections' outputs (read by a residual add's forward only) are freed
    right after that forward, and the head's training forward leaves its input to nobody's backward."""
    from sparseft.models import GPT, GPTConfig

    m = GPT.random(GPTConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, seq_len=8), seed=0)
    m.add_adapters(sft.LoRSConfig(r=2))
    sg = build_step_graph(m.ops(), 2, 8)
    g = sg.graph
    for i, op in enumerate(sg.ops):
        if op.name.endswith("c_proj"):
            # only forwards read it: freed right after its last forward reader
            assert all(sg.is_forward(s) for s in g.successors(i)), op.name
    head = sg.n_ops - 1
    assert sg.reads[head] == (False, True, True)
    assert g.memory[head] == sg.ops[head].out_nbytes(2, 8) + sg.ops[head].grad_nbytes(2, 8)


def test_head_training_forward_matches_forward_then_backward() -> None:
    """_HeadLoss.train_forward's dx (one pass over the logits) equals forward + backward's."""
    from sparseft.models import GPT, GPTConfig

    m = GPT.random(GPTConfig(vocab_size=97, n_layer=1, n_head=2, d_model=24, seq_len=9), seed=1)
    head = m.ops()[-1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 9, 24)).astype(np.float32)
    t = rng.integers(0, 97, (3, 9))
    y_ref = head.forward(x, t)
    (dx_ref, none) = head.backward(None, x, t, y=y_ref)
    y = head.train_forward(x, t)
    assert len(y) == 3 and y[0] == y_ref[0] and np.array_equal(y[1], y_ref[1])
    (dx, none2) = head.backward(None, None, t, y=y)
    assert none is None and none2 is None
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-7)
    (dx2, _) = head.backward(np.float32(0.5), None, t, y=y)
    np.testing.assert_allclose(dx2, 0.5 * dx_ref, rtol=1e-5, atol=1e-7)


def test_typical_durations_are_the_median_of_each_kind() -> None:
    from sparseft.train.stepgraph import typical_durations

    m = TinyLM(n_layer=5)
    sg = build_step_graph(m.ops(), 2, 3)
    rng = np.random.default_rng(0)
    measured = {v: int(rng.integers(1, 1000)) for v in range(sg.graph.n)}
    typ = typical_durations(sg, measured)
    assert set(typ) == set(measured)
    fc = [sg.ops.index(op) for op in sg.ops if op.name.endswith(".fc")]
    # the same layer of every block is one kind: one value, the median of their measurements
    assert {typ[i] for i in fc} == {int(np.median([measured[i] for i in fc]))}
    bwd = [sg.bwd_node[i] for i in fc]
    assert {typ[v] for v in bwd} == {int(np.median([measured[v] for v in bwd]))}
    # different kinds keep their own: the head (d -> V) is not a block's fc (d -> h)
    head = sg.n_ops - 2
    assert typ[head] == measured[head]
    # one outlier among identical blocks does not move the typical value
    measured2 = {**measured, **{i: 100 for i in fc}}
    measured2[fc[2]] = 10**6
    assert typical_durations(sg, measured2)[fc[2]] == 100
    assert typical_durations(sg, {}) == {}


def test_head_with_a_weight_gradient_keeps_the_plain_training_path() -> None:
    """A head that accumulates its own weight gradient (``gw``) needs x in its backward: its
    training forward is the plain forward and its backward reads everything."""
    from sparseft.models import GPT, GPTConfig

    m = GPT.random(GPTConfig(vocab_size=31, n_layer=1, n_head=2, d_model=16, seq_len=5), seed=2)
    head = m.ops()[-1]
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    t = np.random.default_rng(1).integers(0, 31, (2, 5))
    assert len(head.train_forward(x, t)) == 3
    head.gw = np.zeros_like(head.w)
    try:
        y = head.train_forward(x, t)
        assert len(y) == 2 and head.backward_reads() == (True, True, True)
        assert head.train_out_nbytes(2, 5) == head.out_nbytes(2, 5)
    finally:
        head.gw = None
