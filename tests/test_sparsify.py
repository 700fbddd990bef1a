"""Whole-model pruning: exact sparsity per layer on tiny GPT-2/Llama, the sequential (block by
block) calibration against a NumPy reference on a stack of LoRS layers, held-out loss of Wanda and
SparseGPT against magnitude, adapters and full fine-tuning kept, failures leave the model as it was,
bad input."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import sparseft as sft
from sparseft.data import builtin_text
from sparseft.models import GPT, GPTConfig, Llama, LlamaConfig, Model, Op, run_step
from sparseft.models.graph import Act, primary
from sparseft.models.sparsify import SparsifyReport

from . import reference as ref

GPT_CFG = GPTConfig(vocab_size=256, n_layer=2, n_head=4, d_model=32, seq_len=32)
LLAMA_CFG = LlamaConfig(vocab_size=256, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=64, seq_len=32)
MAKERS: dict[str, Callable[[], Any]] = {
    "gpt": lambda: GPT.random(GPT_CFG, seed=0),
    "llama": lambda: Llama.random(LLAMA_CFG, seed=0),
}
CALIB = builtin_text()[:60_000]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny layers: one thread avoids OpenMP barrier waits on a loaded machine (results do not
    depend on it)."""
    n = sft.get_num_threads()
    sft.set_num_threads(1)
    yield
    sft.set_num_threads(n)


def _structured(model: Any, seed: int) -> Any:
    """Give a random model weights that compute something: linears N(0, 1.5²/in), embeddings
    N(0, 0.3²), and norm gains spread log-normally, so a few input features of every linear carry
    much larger activations than the rest (the outlier features of trained LLMs that make
    magnitude pruning fail and that Wanda and SparseGPT account for)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in model.state_dict().items():
        if v.ndim == 2 and any(e in k for e in ("wte", "wpe", "embed_tokens", "lm_head")):
            a = rng.standard_normal(v.shape) * (0.09 if "wpe" in k else 0.3)
        elif v.ndim == 2:
            fan_in = v.shape[0] if k.startswith("transformer.") else v.shape[1]  # GPT-2 Conv1D is (in, out)
            a = rng.standard_normal(v.shape) * 1.5 / np.sqrt(fan_in)
        elif k.endswith("weight"):
            a = np.exp(rng.normal(0.0, 0.75, v.shape))
        else:
            a = np.zeros(v.shape)
        out[k] = a.astype(np.float32)
    model.load_state_dict(out)
    return model


def _sample(model: Any, n: int, T: int, seed: int) -> np.ndarray:
    """n sequences of T + 1 tokens sampled from the model itself (temperature 1)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, model.config.vocab_size, (n, 1))
    for _ in range(T):
        logits = model.logits(ids)[:, -1].astype(np.float64)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        nxt = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
    return ids


def _bases(model: Any) -> dict[str, np.ndarray]:
    return {k: layer.base.to_dense() for k, layer in model.linears().items()}


# ---- exact sparsity on GPT-2 and Llama ----


@pytest.mark.parametrize("kind", ["gpt", "llama"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("target", [0.5, (2, 4)])
def test_exact_sparsity_per_layer(kind: str, method: str, target: float | tuple[int, int]) -> None:
    model = _structured(MAKERS[kind](), seed=1)
    layers = model.linears()
    kw: dict[str, Any] = {"nm": target} if isinstance(target, tuple) else {"sparsity": target}
    calib = None if method == "magnitude" else CALIB
    report = sft.sparsify(model, method=method, calib=calib, nsamples=8, **kw)
    assert isinstance(report, SparsifyReport)
    assert [r.name for r in report.layers] == list(layers)
    assert report.overall_sparsity == 0.5
    for r in report.layers:
        layer = model.linears()[r.name]
        assert layer is layers[r.name]  # the same layer objects, rebuilt in place
        mask, W = layer.mask, layer.base.to_dense()
        out, n_in = mask.shape
        assert r.shape == (out, n_in) and r.sparsity == 0.5
        assert (W[~mask] == 0).all()
        if isinstance(target, tuple):
            assert (mask.reshape(out, n_in // 4, 4).sum(axis=2) == 2).all()
        elif method == "sparsegpt":
            assert (~mask).sum() == out * n_in // 2  # exact per layer, rows may differ
        else:
            assert (mask.sum(axis=1) == n_in // 2).all()  # exact per row
        assert (r.error is None) == (calib is None)
    ids = np.arange(20).reshape(2, 10)
    assert np.isfinite(model.logits(ids)).all()


def test_magnitude_ignores_calibration_but_reports_errors() -> None:
    a, b = MAKERS["gpt"](), MAKERS["gpt"]()
    ra = sft.sparsify(a, 0.3)
    rb = sft.sparsify(b, 0.3, calib=CALIB, nsamples=4)
    for k, W in _bases(a).items():
        np.testing.assert_array_equal(W, _bases(b)[k])
    assert ra.mean_error is None and ra.calib_tokens == 0
    assert rb.calib_tokens == 4 * GPT_CFG.seq_len
    assert all(r.error is not None and 0 < r.error < 1 for r in rb.layers)
    text = str(rb)
    assert "method=magnitude" in text and all(r.name in text for r in rb.layers)


# ---- the held-out loss ----


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_heldout_loss_wanda_and_sparsegpt_beat_magnitude(kind: str) -> None:
    """At 50%, calibrated pruning keeps far more of the model than magnitude pruning. The
    held-out text is sampled from the dense model itself (the tiny models are not trained), so its
    loss measures how much of the dense model's function survives; averaged over two seeds."""
    excess: dict[str, list[float]] = {"magnitude": [], "wanda": [], "sparsegpt": []}
    for seed in (0, 1):
        dense = _structured(MAKERS[kind](), seed)
        held = _sample(dense, 12, 31, seed + 100)
        base = dense.loss(held[:, :-1], held[:, 1:])
        for method in excess:
            model = _structured(MAKERS[kind](), seed)
            sft.sparsify(model, 0.5, method=method, calib=CALIB, nsamples=32, batch_size=16, seed=seed)
            excess[method].append(model.loss(held[:, :-1], held[:, 1:]) - base)
    mean = {k: float(np.mean(v)) for k, v in excess.items()}
    assert mean["magnitude"] > 0.5, mean
    assert mean["wanda"] < 0.75 * mean["magnitude"], mean
    assert mean["sparsegpt"] < 0.75 * mean["magnitude"], mean


# ---- block-by-block calibration against a NumPy reference ----


class _Linear(Op):
    def __init__(self, name: str, src: str, block: int, W: np.ndarray) -> None:
        super().__init__(name, (src,), block)
        self.layer = sft.LoRSLinear(W, r=1)

    def forward(self, *xs: Act) -> Act:
        return self.layer.forward(primary(xs[0]), save=False)


class _Relu(Op):
    fail = False

    def forward(self, *xs: Act) -> Act:
        if self.fail:
            raise RuntimeError("relu failed")
        return np.maximum(primary(xs[0]), np.float32(0))


class _MSE(Op):
    def forward(self, *xs: Act) -> Act:
        return np.asarray(np.mean((primary(xs[0]) - primary(xs[1])) ** 2), np.float32)


class _Stack(Model):
    """relu(relu(x W0ᵀ) W1ᵀ) ...: linear l and relu l belong to block l // per_block."""

    def __init__(self, Ws: list[np.ndarray], per_block: int = 1) -> None:
        ops: list[Op] = []
        src = "input"
        for l, W in enumerate(Ws):
            ops += [_Linear(f"l{l}", src, l // per_block, W), _Relu(f"relu{l}", (f"l{l}",), l // per_block)]
            src = f"relu{l}"
        ops.append(_MSE("loss", (src, "target"), None))
        self._ops = ops

    def ops(self) -> list[Op]:
        return self._ops

    def linears(self) -> dict[str, sft.LoRSLinear]:
        return {op.name: op.layer for op in self._ops if isinstance(op, _Linear)}


def _stack(
    rng: np.random.Generator, sizes: tuple[int, ...], per_block: int = 1
) -> tuple[_Stack, list[np.ndarray]]:
    Ws = [(rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32) for i, o in itertools.pairwise(sizes)]
    return _Stack(Ws, per_block), Ws


def _reference_stack(
    Ws: list[np.ndarray], X: np.ndarray, method: str, per_block: int, sequential: bool
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(pruned W, mask, calibration inputs) per layer, in float64: every block calibrated on the
    outputs of the pruned blocks before it; inside a block, each linear on the dense block's
    activations (or, ``sequential``, on those of the block's earlier linears already pruned)."""
    out = []
    h = X.astype(np.float64)
    for b in range(0, len(Ws), per_block):
        dense_inputs, x = [], h
        for W in Ws[b : b + per_block]:
            dense_inputs.append(x)
            x = np.maximum(x @ W.T, 0.0)
        x = h
        for j, W in enumerate(Ws[b : b + per_block]):
            inp = x if sequential else dense_inputs[j]
            if method == "sparsegpt":
                Wr, mr = ref.sparsegpt(W, inp, 0.5, blocksize=8)
            else:
                mr = ref.prune_wanda(W, inp, 0.5)
                Wr = W * mr
            out.append((Wr, mr, inp))
            x = np.maximum(x @ Wr.T, 0.0)
        h = x
    return out


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize(
    ("per_block", "sequential", "batch_size"), [(1, False, 64), (1, False, 5), (2, False, 7), (2, True, 64)]
)
def test_block_by_block_calibration_matches_reference(
    rng: np.random.Generator, method: str, per_block: int, sequential: bool, batch_size: int
) -> None:
    """Each block is pruned on the inputs produced by the already pruned blocks before it."""
    model, Ws = _stack(rng, (12, 16, 8, 12, 4), per_block)
    X = (rng.standard_normal((64, 12)) * np.exp(rng.normal(0, 1, 12))).astype(np.float32)
    X0 = X.copy()
    report = sft.sparsify(
        model, 0.5, method=method, calib=X, batch_size=batch_size, blocksize=8, sequential=sequential
    )
    np.testing.assert_array_equal(X, X0)
    assert report.calib_tokens == 64
    for l, (W, (Wr, mr, inp)) in enumerate(
        zip(Ws, _reference_stack(Ws, X, method, per_block, sequential), strict=True)
    ):
        layer = model.linears()[f"l{l}"]
        np.testing.assert_array_equal(layer.mask, mr)
        np.testing.assert_allclose(layer.base.to_dense(), Wr, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(report.layers[l].error, ref.reconstruction_error(W, Wr, inp), rtol=1e-3)


def test_failure_leaves_the_model_unchanged(rng: np.random.Generator) -> None:
    model, _ = _stack(rng, (8, 8, 8))
    layers, before = model.linears(), _bases(model)
    relu0 = model.ops()[1]
    assert isinstance(relu0, _Relu)
    relu0.fail = True  # fails in the pass that feeds block 1, after block 0 is pruned (on copies)
    X = rng.standard_normal((10, 8)).astype(np.float32)
    with pytest.raises(RuntimeError, match="relu failed"):
        sft.sparsify(model, 0.5, method="sparsegpt", calib=X)
    assert all(model.linears()[k] is layers[k] for k in layers)
    for k, W in _bases(model).items():
        np.testing.assert_array_equal(W, before[k])
        assert layers[k].mask.all()


# ---- adapters and full fine-tuning ----


def test_fresh_adapters_are_kept_and_dora_magnitudes_follow() -> None:
    frozen, adapted = MAKERS["gpt"](), MAKERS["gpt"]()
    names = adapted.add_adapters(sft.LoRSConfig(r=2, magnitude=True), target_modules=["c_attn", "c_fc"])
    A = {k: adapted.linears()[k].A.copy() for k in names}
    sft.sparsify(frozen, 0.5, method="wanda", calib=CALIB, nsamples=4)
    sft.sparsify(adapted, 0.5, method="wanda", calib=CALIB, nsamples=4)
    for k in names:
        layer = adapted.linears()[k]
        np.testing.assert_array_equal(layer.mask, frozen.linears()[k].mask)
        np.testing.assert_array_equal(layer.A, A[k])
        assert not layer.B.any()
        W = layer.base.to_dense().astype(np.float64)
        np.testing.assert_allclose(layer.magnitude, np.linalg.norm(W, axis=1), rtol=1e-6)
    ids = np.arange(24).reshape(2, 12)
    np.testing.assert_allclose(adapted.logits(ids), frozen.logits(ids), rtol=1e-4, atol=1e-5)


def test_trained_adapter_is_refused() -> None:
    model = MAKERS["gpt"]()
    model.add_adapters(sft.LoRSConfig(r=2), target_modules=["c_proj"])
    model.linears()["h.1.mlp.c_proj"].B[0, 0] = 0.5
    before = _bases(model)
    with pytest.raises(ValueError, match=r"'h\.1\.mlp\.c_proj' carries a trained adapter.*merge_adapters"):
        sft.sparsify(model, 0.5)
    for k, W in _bases(model).items():
        np.testing.assert_array_equal(W, before[k])
    model.merge_adapters()  # merged: the merged weights are pruned
    merged = model.linears()["h.1.mlp.c_proj"].base.to_dense()
    sft.sparsify(model, 0.5)
    layer = model.linears()["h.1.mlp.c_proj"]
    np.testing.assert_array_equal(
        layer.base.to_dense(), np.where(sft.prune.magnitude(merged, 0.5), merged, 0)
    )


def test_full_finetuning_mode_trains_the_pruned_values() -> None:
    model = MAKERS["llama"]()
    model.train_base(True)
    sft.sparsify(model, nm=(2, 4))
    ids = np.random.default_rng(0).integers(0, 256, (2, 9))
    model.zero_grad()
    run_step(model, ids[:, :-1], ids[:, 1:])
    params, grads = model.parameters(), model.gradients()
    for name, layer in model.linears().items():
        mask = layer.mask
        assert (mask.reshape(mask.shape[0], -1, 4).sum(axis=2) == 2).all()
        w, g = params[name + ".weight"], grads[name + ".weight"]
        if w.shape == mask.shape:  # a dense base: the pruned zeros stay zero and get no gradient
            assert (w[~mask] == 0).all() and (g[~mask] == 0).all()
        assert g.any()


# ---- calibration input ----


def test_calibration_forms(tmp_path: Any) -> None:
    ids = np.frombuffer(CALIB[:4000].encode(), np.uint8).astype(np.int64)
    runs = {}
    for label, calib, kw in [
        ("text", CALIB[:4000], {}),
        ("ids", ids, {}),
        ("bytes", CALIB[:4000].encode(), {}),
        ("file", tmp_path / "calib.txt", {}),
        ("windows", ids[: 6 * 20].reshape(6, 20), {}),
        ("text-seed", CALIB[:4000], {"seed": 3}),
        ("text-short-windows", CALIB[:4000], {"seq_len": 16}),
    ]:
        (tmp_path / "calib.txt").write_text(CALIB[:4000], encoding="utf-8")
        model = MAKERS["llama"]()
        r = sft.sparsify(model, 0.5, method="wanda", calib=calib, nsamples=5, **kw)
        runs[label] = (r, _bases(model))
    for label in ("ids", "bytes", "file"):
        for k, W in runs[label][1].items():  # the same windows from the same tokens
            np.testing.assert_array_equal(W, runs["text"][1][k])
    assert runs["text"][0].calib_tokens == 5 * 32
    assert runs["windows"][0].calib_tokens == 6 * 20
    assert runs["text-short-windows"][0].calib_tokens == 5 * 16
    assert any(
        not np.array_equal(W, runs["text"][1][k]) for k, W in runs["text-seed"][1].items()
    )  # other windows, other masks


# ---- bad input ----


def test_bad_input() -> None:
    model = MAKERS["gpt"]()
    before = _bases(model)
    cases: list[tuple[type[Exception], str, dict[str, Any]]] = [
        (ValueError, r"sparsity: expected a number in \[0, 1\)", {"sparsity": 1.0}),
        (ValueError, r"sparsity: expected a number in \[0, 1\)", {"sparsity": -0.2}),
        (TypeError, "sparsity", {"sparsity": "0.5"}),
        (ValueError, "sparsity, nm: give one of them", {"sparsity": 0.5, "nm": (2, 4)}),
        (
            ValueError,
            "nm: m = 3 does not divide the input dimension 32 of layer 'h.0.attn.c_attn'",
            {"nm": (1, 3)},
        ),
        (ValueError, r"nm: expected 1 <= n <= m", {"nm": (4, 2)}),
        (TypeError, "nm: expected a pair", {"nm": 2}),
        (ValueError, "method: expected one of", {"method": "obs"}),
        (ValueError, "calib: method='wanda' needs calibration data", {"method": "wanda"}),
        (ValueError, "calib: method='sparsegpt' needs calibration data", {"method": "sparsegpt"}),
        (TypeError, "calib: expected token ids", {"method": "wanda", "calib": 3.5}),
        (TypeError, "calib: expected token ids", {"method": "wanda", "calib": [1, 2, 3]}),
        (TypeError, "calib: expected integer token ids", {"method": "wanda", "calib": np.ones((2, 8))}),
        (
            ValueError,
            "calib: too short, 11 tokens for calibration windows of seq_len = 32",
            {"method": "wanda", "calib": "hello\nworld"},
        ),
        (
            ValueError,
            r"calib: token ids must be in \[0, 256\)",
            {"method": "wanda", "calib": np.full((2, 8), 300)},
        ),
        (
            ValueError,
            r"calib: expected token ids \(samples >= 1, 1 <= seq <= 32\)",
            {"method": "wanda", "calib": np.zeros((2, 40), np.int64)},
        ),
        (
            ValueError,
            "seq_len: expected at most the model's seq_len 32",
            {"method": "wanda", "calib": CALIB, "seq_len": 33},
        ),
        (ValueError, "nsamples: expected an int >= 1", {"method": "wanda", "calib": CALIB, "nsamples": 0}),
        (ValueError, "batch_size: expected an int >= 1", {"batch_size": 0}),
        (TypeError, "seed: expected an int", {"seed": 1.5}),
        (ValueError, "percdamp", {"method": "sparsegpt", "calib": CALIB, "percdamp": 0.0}),
        (ValueError, "blocksize", {"blocksize": 0}),
        (TypeError, "progress: expected a bool", {"progress": 1}),
        (TypeError, "sequential: expected a bool", {"sequential": "yes"}),
    ]
    for exc, match, kw in cases:
        with pytest.raises(exc, match=match):
            sft.sparsify(model, **kw)
    for k, W in _bases(model).items():
        np.testing.assert_array_equal(W, before[k])
        assert model.linears()[k].mask.all()
    with pytest.raises(TypeError, match="model: expected a sparseft model"):
        sft.sparsify({"w": np.ones((2, 2), np.float32)})
    empty = _Stack([])
    with pytest.raises(ValueError, match="model: has no block linears"):
        sft.sparsify(empty)
    stack, _ = _stack(np.random.default_rng(0), (4, 4))
    with pytest.raises(TypeError, match=r"calib: expected a numpy\.ndarray of model inputs"):
        sft.sparsify(stack, method="wanda", calib="some text")


def test_default_window_is_at_most_2048_tokens() -> None:
    model = GPT.random(GPTConfig(vocab_size=256, n_layer=1, n_head=2, d_model=8, seq_len=4096), seed=0)
    report = sft.sparsify(model, 0.5, method="wanda", calib=CALIB, nsamples=1)
    assert report.calib_tokens == 2048


def test_linears_reading_one_input_share_its_factorisation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Llama's q/k/v (and gate/up) read the same activation: one Gram and one Cholesky per input."""
    module = sys.modules["sparseft.sparsegpt"]
    calls = []
    real = module.inverse_hessian_factor
    monkeypatch.setattr(module, "inverse_hessian_factor", lambda H: calls.append(H.shape) or real(H))
    model = MAKERS["llama"]()
    report = sft.sparsify(model, 0.5, method="sparsegpt", calib=CALIB, nsamples=3)
    # per block: input_layernorm (q, k, v), attention (o), post_attention_layernorm (gate, up), SwiGLU (down)
    assert calls == [(32, 32), (32, 32), (32, 32), (64, 64)] * 2
    assert report.calib_tokens == 3 * 32 and len(report.layers) == 14
