"""Weight-normalized sparse adapters (sparseft.dora): the z-based math vs the dense float64 reference
and a PEFT-style DoRA in torch, on a NumPy stand-in of a LoRS base format."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sparseft import dora

from . import reference as ref


class NumpyBase:
    """A LoRS base format in plain NumPy (float64 inside, float32 out): the interface sparseft.dora uses."""

    def __init__(self, W: np.ndarray, mask: np.ndarray, fmt: str = "numpy") -> None:
        self.format = fmt
        self._W = W.astype(np.float32)
        self._M = mask.astype(np.uint8)

    def _wp(self, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        return ref.dora_merged(self._W, self._M, A, B, scale)

    def forward(self, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        return (x.astype(np.float64) @ self._wp(A, B, scale).T).astype(np.float32)

    def backward_input(self, gy: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        return (gy.astype(np.float64) @ self._wp(A, B, scale)).astype(np.float32)

    def masked_grad(
        self, gy: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        G = (gy.astype(np.float64).T @ x) * self._M
        return (scale * B.T @ G).astype(np.float32), (scale * G @ A.T).astype(np.float32)

    def merged(self, A: np.ndarray, B: np.ndarray, scale: float) -> NumpyBase:
        return NumpyBase(self._wp(A, B, scale), self._M.astype(bool), self.format)

    def to_dense(self) -> np.ndarray:
        return self._W.copy()

    def mask_dense(self) -> np.ndarray:
        return self._M.astype(bool)


def dora_step(
    base: Any,
    x: np.ndarray,
    gy: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    s: float,
    m: np.ndarray,
    norm_grad: bool,
) -> dict[str, np.ndarray]:
    """One forward + backward composed from sparseft.dora the way LoRSLinear(magnitude=True) does."""
    z = base.forward(x, A, B, s)
    n = dora.row_norms(base, A, B, s)
    c = dora.forward_scales(m, n)
    y = z * c
    grad_m, grad_n = dora.backward_scales(gy, z, m, n, norm_grad)
    gz = gy * c
    gx = base.backward_input(gz, A, B, s)
    dA, dB = base.masked_grad(gz, x, A, B, s)
    if grad_n is not None:
        cA, cB = dora.norm_grad_adapters(base, grad_n, n, A, B, s)
        dA, dB = dA + cA, dB + cB
    return {"y": y, "gx": gx, "dA": dA, "dB": dB, "dm": grad_m}


def _problem(rng: np.random.Generator, N: int, out: int, inn: int, r: int, density: float) -> dict[str, Any]:
    mask = rng.random((out, inn)) < density
    W = (rng.standard_normal((out, inn)) * mask).astype(np.float32)
    return {
        "x": rng.standard_normal((N, inn)).astype(np.float32),
        "gy": rng.standard_normal((N, out)).astype(np.float32),
        "W": W,
        "mask": mask,
        "A": rng.standard_normal((r, inn)).astype(np.float32),
        "B": (rng.standard_normal((out, r)) * 0.3).astype(np.float32),
        "m": rng.uniform(0.5, 2, out).astype(np.float32),
    }


def _close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-4) -> None:
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("fmt", ["dense", "numpy"])
@pytest.mark.parametrize("norm_grad", [True, False])
@pytest.mark.parametrize(
    ("N", "out", "inn", "r", "density"), [(1, 1, 1, 1, 1.0), (5, 7, 9, 2, 0.5), (33, 40, 70, 4, 0.3)]
)
def test_dora_math_matches_dense_reference(
    simd: str,
    rng: np.random.Generator,
    fmt: str,
    norm_grad: bool,
    N: int,
    out: int,
    inn: int,
    r: int,
    density: float,
) -> None:
    p = _problem(rng, N, out, inn, r, density)
    if out > 3:
        p["W"][2] = 0
        p["mask"][2] = False  # a fully pruned output unit: n = 0, finite result
    base = NumpyBase(p["W"], p["mask"], fmt)
    got = dora_step(base, p["x"], p["gy"], p["A"], p["B"], 0.5, p["m"], norm_grad)
    want = ref.dora_layer(p["x"], p["W"], p["mask"], p["A"], p["B"], 0.5, p["m"], None, p["gy"], norm_grad)
    for k in ("y", "gx", "dA", "dB", "dm"):
        assert np.isfinite(got[k]).all(), k
        _close(got[k], want[k])
    if out > 3:
        assert (got["y"][:, 2] == 0).all() and got["dm"][2] == 0 and (got["dB"][2] == 0).all()


@pytest.mark.parametrize("norm_grad", [True, False])
def test_dora_math_matches_peft_style_torch(rng: np.random.Generator, norm_grad: bool) -> None:
    torch = pytest.importorskip("torch")
    p = _problem(rng, 16, 24, 40, 4, 0.5)
    s = 2.0
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in p.items() if k != "mask"}
    for k in ("A", "B", "m", "x"):
        t[k].requires_grad_(True)
    # PEFT's DoRA: W'' = m * W' / ||W'||_row, the norm detached unless norm_grad; here W' is masked
    Wp = t["W"] + s * (t["B"] @ t["A"]) * torch.tensor(p["mask"], dtype=torch.float64)
    norm = Wp.norm(p=2, dim=1, keepdim=True)
    if not norm_grad:
        norm = norm.detach()
    y = t["x"] @ (t["m"][:, None] * Wp / norm).T
    y.backward(t["gy"])
    got = dora_step(
        NumpyBase(p["W"], p["mask"], "dense"), p["x"], p["gy"], p["A"], p["B"], s, p["m"], norm_grad
    )
    _close(got["y"], y.detach().numpy())
    _close(got["gx"], t["x"].grad.numpy())
    _close(got["dA"], t["A"].grad.numpy())
    _close(got["dB"], t["B"].grad.numpy())
    _close(got["dm"], t["m"].grad.numpy())


def test_magnitude_init_keeps_the_output(rng: np.random.Generator) -> None:
    p = _problem(rng, 8, 12, 30, 3, 0.4)
    p["W"][5] = 0  # a zero row: m = 0, c = 0, output 0 = x W_5
    base = NumpyBase(p["W"], p["mask"], "dense")
    m = dora.magnitude_init(base)
    _close(m, np.linalg.norm(p["W"].astype(np.float64), axis=1), rtol=1e-6)
    B0 = np.zeros_like(p["B"])
    z = base.forward(p["x"], p["A"], B0, 1.0)
    y = z * dora.forward_scales(m, dora.row_norms(base, p["A"], B0, 1.0))
    _close(y, p["x"].astype(np.float64) @ p["W"].T.astype(np.float64), rtol=1e-5)


def test_merged_dense_keeps_zeros(rng: np.random.Generator) -> None:
    p = _problem(rng, 1, 10, 20, 2, 0.3)
    p["m"][3] = -1.5  # negative magnitude: zeros must stay +0.0
    base = NumpyBase(p["W"], p["mask"], "dense")
    W2 = dora.merged_dense(base, p["A"], p["B"], 0.7, p["m"])
    want = ref.dora_layer(p["x"], p["W"], p["mask"], p["A"], p["B"], 0.7, p["m"], None, p["gy"])["W2"]
    _close(W2, want)
    assert (W2[~p["mask"]] == 0).all() and not np.signbit(W2[~p["mask"]]).any()
