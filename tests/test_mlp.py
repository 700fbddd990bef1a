"""sft.models.MLP: the protocol ops, gradients against torch autograd / finite differences, state."""

from __future__ import annotations

import numpy as np
import pytest

import sparseft as sft


def _data(rng: np.random.Generator, n: int, d: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, c, n)


def _numeric_loss(model: sft.models.MLP, X: np.ndarray, y: np.ndarray) -> float:
    """Cross-entropy of the model in float64 (reference forward, written from the math)."""
    h = X.astype(np.float64)
    for i, lin in enumerate(model.linears):
        w = lin.wn.weight() if model.weight_norm else lin.weight
        h = h @ w.astype(np.float64).T + lin.bias
        if i < len(model.linears) - 1:
            h = np.maximum(h, 0) if model.activation == "relu" else np.tanh(h)
    h -= h.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(h).sum(axis=1)) - h[np.arange(len(y)), y]))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("sizes", [[5, 3], [7, 6, 4], [3, 9, 1, 2]])
def test_gradients_match_torch(rng: np.random.Generator, activation: str, sizes: list[int]) -> None:
    torch = pytest.importorskip("torch")
    model = sft.models.MLP(sizes, activation=activation, seed=3)
    X, y = _data(rng, 1 if sizes[0] == 3 else 11, sizes[0], sizes[-1])
    loss, grads = model.loss_and_grad(X, y)
    ps = {k: torch.tensor(v.astype(np.float64), requires_grad=True) for k, v in model.parameters().items()}
    h = torch.tensor(X.astype(np.float64))
    n = len(sizes) - 1
    for i in range(n):
        h = h @ ps[f"fc.{i}.weight"].T + ps[f"fc.{i}.bias"]
        if i < n - 1:
            h = torch.relu(h) if activation == "relu" else torch.tanh(h)
    tl = torch.nn.functional.cross_entropy(h, torch.tensor(y))
    tl.backward()
    assert loss == pytest.approx(tl.item(), rel=1e-5)
    for k, p in ps.items():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_weight_norm_gradients_match_finite_differences(rng: np.random.Generator) -> None:
    model = sft.models.MLP([4, 5, 3], weight_norm=True, seed=2)
    X, y = _data(rng, 9, 4, 3)
    model.data_init(X)
    _, grads = model.loss_and_grad(X, y)
    params = model.parameters()
    assert set(params) == {"fc.0.v", "fc.0.g", "fc.0.bias", "fc.1.v", "fc.1.g", "fc.1.bias"}
    for k in ("fc.0.v", "fc.0.g", "fc.1.bias"):
        p = params[k]
        for idx in [(0,) * p.ndim, tuple(s - 1 for s in p.shape)]:
            old = float(p[idx])
            p[idx] = old + 1e-3
            up = _numeric_loss(model, X, y)
            p[idx] = old - 1e-3
            down = _numeric_loss(model, X, y)
            p[idx] = old
            assert grads[k][idx] == pytest.approx((up - down) / 2e-3, rel=2e-2, abs=1e-4)


def test_data_init_standardises_preactivations(rng: np.random.Generator) -> None:
    model = sft.models.MLP([6, 8, 3], weight_norm=True, seed=0)
    X, _ = _data(rng, 200, 6, 3)
    model.data_init(X)
    pre = model.linears[0].forward(X)
    np.testing.assert_allclose(pre.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(pre.std(axis=0), 1, rtol=1e-3)
    with pytest.raises(ValueError, match="weight_norm=False"):
        sft.models.MLP([2, 2]).data_init(X[:, :2])


def test_protocol_ops_are_pure_and_sized(rng: np.random.Generator) -> None:
    model = sft.models.MLP([4, 6, 3], seed=0)
    ops = model.ops()
    assert [op.name for op in ops] == ["fc.0", "act.0", "fc.1", "loss"]
    assert ops[-1].inputs == ("fc.1", "target") and ops[0].inputs == ("input",)
    assert [op.block for op in ops] == [0, 0, 1, None]
    X, y = _data(rng, 5, 4, 3)
    values = {"input": X, "target": y}
    for op in ops:
        values[op.name] = op.forward(*(values[i] for i in op.inputs))
        assert op.out_nbytes(5, 1) == np.asarray(values[op.name]).nbytes
    assert values["loss"].dtype == np.float32 and values["loss"].shape == ()
    g = ops[-1].backward(None, values["fc.1"], y, y=values["loss"])
    assert g[1] is None and ops[-1].grad_nbytes(5, 1) == g[0].nbytes
    assert ops[2].grad_nbytes(5, 1) == ops[2].backward(g[0], values["act.0"], y=values["fc.1"])[0].nbytes
    assert ops[0].backward(np.ones((5, 6), np.float32), X, y=values["fc.0"]) == (None,)
    np.testing.assert_allclose(model.forward(X), values["fc.1"], rtol=1e-6)
    assert model.predict(X).shape == (5,) and 0.0 <= model.accuracy(X, y) <= 1.0


def test_training_learns_and_pruned_zeros_stay(rng: np.random.Generator) -> None:
    centers = rng.standard_normal((3, 8)) * 3
    y = rng.integers(0, 3, 300)
    X = (centers[y] + rng.standard_normal((300, 8))).astype(np.float32)
    model = sft.models.MLP([8, 16, 3], seed=0)
    model.prune(0.5)
    masks = model.masks()
    assert set(masks) == {"fc.0.weight", "fc.1.weight"} and all(m.mean() == 0.5 for m in masks.values())
    before = model.accuracy(X, y)
    for _ in range(100):
        _, grads = model.loss_and_grad(X, y)
        for k, p in model.parameters().items():
            p -= 0.3 * grads[k]
    assert model.accuracy(X, y) > max(0.9, before)
    for k, m in masks.items():
        assert np.all(model.parameters()[k][~m] == 0)


def test_state_dict_round_trip_and_errors(rng: np.random.Generator) -> None:
    a = sft.models.MLP([4, 5, 2], seed=0)
    a.prune(0.4)
    b = sft.models.MLP([4, 5, 2], seed=1)
    sd = a.state_dict()
    assert "fc.0.weight_mask" in sd and "fc.1.bias" in sd
    b.load_state_dict(sd)
    X, _ = _data(rng, 3, 4, 2)
    np.testing.assert_array_equal(a.forward(X), b.forward(X))
    assert b.masks().keys() == a.masks().keys()
    with pytest.raises(ValueError, match=r"missing keys \['fc.1.bias'\]"):
        b.load_state_dict({k: v for k, v in sd.items() if k != "fc.1.bias"})
    with pytest.raises(ValueError, match=r"sd\['fc.0.weight'\]: expected shape \(5, 4\)"):
        b.load_state_dict({**sd, "fc.0.weight": np.zeros((4, 5), np.float32)})
    with pytest.raises(ValueError, match=r"sd\['fc.0.bias'\]: contains NaN"):
        b.load_state_dict({**sd, "fc.0.bias": np.full(5, np.nan, np.float32)})
    np.testing.assert_array_equal(a.forward(X), b.forward(X))  # a failed load changed nothing
    wn = sft.models.MLP([4, 5, 2], weight_norm=True)
    assert "fc.0.parametrizations.weight.original0" in wn.state_dict()
    wn2 = sft.models.MLP([4, 5, 2], weight_norm=True, seed=5)
    wn2.load_state_dict(wn.state_dict())
    np.testing.assert_array_equal(wn.forward(X), wn2.forward(X))


def test_bad_arguments_are_named(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="sizes: expected at least 2"):
        sft.models.MLP([3])
    with pytest.raises(ValueError, match="sizes: expected widths >= 1"):
        sft.models.MLP([3, 0, 2])
    with pytest.raises(TypeError, match="sizes: expected ints"):
        sft.models.MLP([3, 2.5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="activation: expected one of"):
        sft.models.MLP([3, 2], activation="gelu")
    with pytest.raises(ValueError, match="seed: expected an int >= 0"):
        sft.models.MLP([3, 2], seed=-1)
    m = sft.models.MLP([3, 2])
    with pytest.raises(ValueError, match=r"X: expected shape \(N, 3\)"):
        m.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"y: expected shape \(2,\)"):
        m.loss_and_grad(np.zeros((2, 3), np.float32), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"y: expected labels in \[0, 2\)"):
        m.loss_and_grad(np.zeros((2, 3), np.float32), np.array([0, 2]))
    with pytest.raises(TypeError, match="y: expected an integer"):
        m.accuracy(np.zeros((2, 3), np.float32), np.zeros(2))
    with pytest.raises(ValueError, match="X: contains NaN"):
        m.predict(np.full((1, 3), np.nan, np.float32))


def test_to_lors_trains_adapters_on_a_frozen_sparse_base(rng: np.random.Generator) -> None:
    centers = rng.standard_normal((3, 8)) * 3
    y = rng.integers(0, 3, 200)
    X = (centers[y] + rng.standard_normal((200, 8))).astype(np.float32)
    base = sft.models.MLP([8, 12, 3], seed=0)
    base.prune(0.5)
    masks = base.masks()
    lors = base.to_lors(sft.LoRSConfig(r=2, alpha=4))
    assert set(lors.parameters()) == {"fc.0.A", "fc.0.B", "fc.0.bias", "fc.1.A", "fc.1.B", "fc.1.bias"}
    assert [op.name for op in lors.ops()] == [op.name for op in base.ops()]
    np.testing.assert_allclose(lors.forward(X), base.forward(X), rtol=1e-5, atol=1e-6)  # B = 0 at init
    loss0, _ = lors.loss_and_grad(X, y)
    for _ in range(60):
        loss, grads = lors.loss_and_grad(X, y)
        for k, p in lors.parameters().items():
            p -= 0.2 * grads[k]
    assert loss < loss0
    sd = lors.state_dict()
    for k, m in masks.items():
        assert np.all(sd[k][~m] == 0) and not np.array_equal(sd[k], base.state_dict()[k])
    plain = sft.models.MLP([8, 12, 3])
    plain.load_state_dict(sd)  # the merged weights, masks included
    np.testing.assert_allclose(plain.forward(X), lors.forward(X), rtol=1e-4, atol=1e-5)
    assert plain.masks().keys() == masks.keys()
    # a signature between two adapter fine-tunes patches the plain model and keeps every zero
    weights = ["fc.0.weight", "fc.1.weight"]  # the masks (bool) are not signature material
    sig = sft.Signature.extract(base.state_dict(), base.state_dict(), sd, layers=weights)
    p = sft.Patcher(plain)
    p.apply(sig)
    for k, m in masks.items():
        assert np.all(plain.parameters()[k][~m] == 0)
    with pytest.raises(ValueError, match="LoRS layers already"):
        lors.to_lors(sft.LoRSConfig())
    with pytest.raises(TypeError, match=r"config: expected a sparseft\.LoRSConfig"):
        base.to_lors({"r": 2})
    with pytest.raises(ValueError, match="prune before to_lors"):
        lors.prune(0.5)
    with pytest.raises(ValueError, match="merged weights"):
        lors.load_state_dict(sd)
