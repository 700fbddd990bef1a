"""The model-op protocol's reference executor (sparseft.models.graph.run_step)."""

from __future__ import annotations

import numpy as np
import pytest

from sparseft.models.graph import Model, Op, act_nbytes, check_ops, primary, run_step


class Linear(Op):
    def __init__(self, name: str, src: str, W: np.ndarray) -> None:
        super().__init__(name, (src,), block=0)
        self.W = W
        self.gW = np.zeros_like(W)

    def params(self) -> dict[str, np.ndarray]:
        return {"weight": self.W}

    def grads(self) -> dict[str, np.ndarray]:
        return {"weight": self.gW}

    def forward(self, x):
        return primary(x) @ self.W.T

    def backward(self, gy, x, *, y):
        self.gW += gy.T @ primary(x)
        return (gy @ self.W,)


class Tanh(Op):
    # Returns a tuple (y, y**2) to exercise tuple activations: consumers read the primary y.
    def forward(self, x):
        t = np.tanh(primary(x))
        return (t, t * t)

    def backward(self, gy, x, *, y):
        return (gy * (1 - y[1]),)


class Add(Op):
    def forward(self, a, b):
        return primary(a) + primary(b)

    def backward(self, gy, a, b, *, y):
        return (gy, gy)  # the same array twice: run_step must not accumulate in place


class MSE(Op):
    def forward(self, x, t):
        return np.asarray(np.mean((x - t) ** 2), dtype=np.float64)

    def backward(self, gy, x, t, *, y):
        assert gy is None
        return (2 * (x - t) / x.size, None)


class Tiny(Model):
    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self._ops = [
            Linear("fc1", "input", rng.standard_normal((5, 4))),
            Tanh("act", ("fc1",)),
            Linear("fc2", "act", rng.standard_normal((5, 5))),
            Add("res", ("fc2", "act")),  # "act" has two consumers
            Linear("head", "res", rng.standard_normal((3, 5))),
            MSE("loss", ("head", "target")),
        ]

    def ops(self):
        return self._ops


def test_run_step_matches_finite_differences() -> None:
    m = Tiny()
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((7, 4)), rng.standard_normal((7, 3))
    m.zero_grad()
    loss = run_step(m, x, t)
    assert set(m.parameters()) == {"fc1.weight", "fc2.weight", "head.weight"}
    grads = {k: v.copy() for k, v in m.gradients().items()}

    def f() -> float:
        acts = {"input": x, "target": t}
        for op in m.ops():
            acts[op.name] = op.forward(*(acts[i] for i in op.inputs))
        return float(acts["loss"])

    assert loss == pytest.approx(f())
    eps = 1e-6
    for k, p in m.parameters().items():
        num = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + eps
            hi = f()
            p[idx] = old - eps
            lo = f()
            p[idx] = old
            num[idx] = (hi - lo) / (2 * eps)
        np.testing.assert_allclose(grads[k], num, rtol=1e-6, atol=1e-8, err_msg=k)


def test_run_step_accumulates_and_zero_grad_resets() -> None:
    m = Tiny()
    x, t = np.ones((2, 4)), np.zeros((2, 3))
    m.zero_grad()
    run_step(m, x, t)
    g1 = m.gradients()["fc1.weight"].copy()
    run_step(m, x, t)
    np.testing.assert_allclose(m.gradients()["fc1.weight"], 2 * g1)
    m.zero_grad()
    assert not m.gradients()["fc1.weight"].any()


def test_act_nbytes_counts_tuples() -> None:
    a = np.zeros((3, 4), np.float32)
    assert act_nbytes(a) == 48
    assert act_nbytes((a, np.zeros(3, np.float32))) == 60
    assert act_nbytes(None) == 0


def test_check_ops_rejects_bad_lists() -> None:
    m = Tiny()
    ops = m.ops()
    with pytest.raises(ValueError, match="duplicate"):
        check_ops([ops[0], ops[0], ops[-1]])
    with pytest.raises(ValueError, match="not an earlier op"):
        check_ops([ops[1], ops[0]])
    with pytest.raises(ValueError, match="loss"):
        check_ops(ops[:-1])
    with pytest.raises(ValueError, match="at least one"):
        check_ops([])
    with pytest.raises(ValueError, match="name"):
        Tanh("input", ("fc1",))
    with pytest.raises(TypeError, match="inputs"):
        Tanh("x", "fc1")
