"""Weight-normalized sparse adapters (sparseft.adapters.dora): the z-based math on every base format and on
the float64 reference base, against the dense float64 reference and a PEFT-style DoRA in torch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import sparseft as sft
from sparseft.adapters import dora

from . import reference as ref
from .conftest import close


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
    """One forward + backward composed from sparseft.adapters.dora the way DoRALinear does."""
    z = base.forward(x, A, B, s)
    n = base.row_norms(A, B, s)
    c = dora.forward_scales(m, n)
    y = z * c
    grad_m, grad_n = dora.backward_scales(gy, z, m, n, norm_grad)
    gz = gy * c
    gx = base.backward_input(gz, A, B, s)
    dA, dB = base.masked_grad(gz, x, A, B, s)
    if grad_n is not None:
        cA, cB = base.norm_grad(grad_n, n, A, B, s)
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


def _base(fmt: str, W: np.ndarray, mask: np.ndarray) -> Any:
    """A base format of sparseft, or the float64 reference base (``"reference"``)."""
    if fmt == "reference":
        return ref.ReferenceBase(W, mask)
    return {"dense": sft.formats.DenseBase, "csr": sft.formats.CSRBase}[fmt].from_dense(W, mask)


@pytest.mark.parametrize("fmt", ["dense", "csr", "reference"])
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
    base = _base(fmt, p["W"], p["mask"])
    got = dora_step(base, p["x"], p["gy"], p["A"], p["B"], 0.5, p["m"], norm_grad)
    want = ref.dora_layer(p["x"], p["W"], p["mask"], p["A"], p["B"], 0.5, p["m"], None, p["gy"], norm_grad)
    # the norm term cancels part of the detached gradient: compare at the size of the terms
    detached = ref.dora_layer(p["x"], p["W"], p["mask"], p["A"], p["B"], 0.5, p["m"], None, p["gy"], False)
    for k in ("y", "gx", "dA", "dB", "dm"):
        assert np.isfinite(got[k]).all(), k
        close(got[k], want[k], scale=float(np.abs(detached[k]).max(initial=0.0)))
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
        _base("dense", p["W"], p["mask"]), p["x"], p["gy"], p["A"], p["B"], s, p["m"], norm_grad
    )
    close(got["y"], y.detach().numpy())
    close(got["gx"], t["x"].grad.numpy())
    close(got["dA"], t["A"].grad.numpy())
    close(got["dB"], t["B"].grad.numpy())
    close(got["dm"], t["m"].grad.numpy())


def test_magnitude_init_keeps_the_output(rng: np.random.Generator) -> None:
    p = _problem(rng, 8, 12, 30, 3, 0.4)
    p["W"][5] = 0  # a zero row: m = 0, c = 0, output 0 = x W_5
    base = _base("dense", p["W"], p["mask"])
    m = dora.magnitude_init(base)
    close(m, np.linalg.norm(p["W"].astype(np.float64), axis=1), rtol=1e-6)
    B0 = np.zeros_like(p["B"])
    z = base.forward(p["x"], p["A"], B0, 1.0)
    y = z * dora.forward_scales(m, base.row_norms(p["A"], B0, 1.0))
    close(y, p["x"].astype(np.float64) @ p["W"].T.astype(np.float64), rtol=1e-5)


def test_merged_dense_keeps_zeros(rng: np.random.Generator) -> None:
    p = _problem(rng, 1, 10, 20, 2, 0.3)
    p["m"][3] = -1.5  # negative magnitude: zeros must stay +0.0
    base = _base("dense", p["W"], p["mask"])
    W2 = dora.merged_dense(base, p["A"], p["B"], 0.7, p["m"])
    want = ref.dora_layer(p["x"], p["W"], p["mask"], p["A"], p["B"], 0.7, p["m"], None, p["gy"])["W2"]
    close(W2, want)
    assert (W2[~p["mask"]] == 0).all() and not np.signbit(W2[~p["mask"]]).any()


# ---- LoRSLinear(magnitude=True) ----

LAYER_CASES = [
    # N, out, in, r, density
    (1, 1, 1, 1, 1.0),
    (4, 1, 9, 1, 0.5),
    (7, 13, 21, 2, 0.5),
    (20, 33, 64, 4, 0.3),
    (3, 6, 10, 2, 0.0),
    (9, 17, 40, 8, 1.0),
]


def _layer(
    rng: np.random.Generator,
    out: int,
    inn: int,
    r: int,
    density: float,
    prune_row: bool = True,
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    import sparseft as sft

    p = _problem(rng, 1, out, inn, r, density)
    if out > 4 and prune_row:
        p["W"][3] = 0
        p["mask"][3] = False  # a fully pruned output unit
    bias = rng.standard_normal(out).astype(np.float32)
    layer = sft.LoRSLinear(p["W"], p["mask"], r=r, alpha=2.0 * r, bias=bias, magnitude=True, **kwargs)
    layer.B[:] = rng.standard_normal(layer.B.shape).astype(np.float32) * 0.3  # leave the B = 0 init
    layer.magnitude[:] *= rng.uniform(0.5, 1.5, out).astype(np.float32)
    return layer, {**p, "bias": bias}


@pytest.mark.parametrize(("N", "out", "inn", "r", "density"), LAYER_CASES)
@pytest.mark.parametrize("norm_grad", [True, False])
def test_lors_magnitude_matches_reference(
    simd: str, rng: np.random.Generator, N: int, out: int, inn: int, r: int, density: float, norm_grad: bool
) -> None:
    layer, p = _layer(rng, out, inn, r, density, norm_grad=norm_grad, format="dense")
    x = rng.standard_normal((N, inn)).astype(np.float32)
    gy = rng.standard_normal((N, out)).astype(np.float32)
    x0, gy0 = x.copy(), gy.copy()
    want = ref.dora_layer(
        x, p["W"], p["mask"], layer.A, layer.B, layer.scaling, layer.magnitude, p["bias"], gy, norm_grad
    )
    # with norm_grad the two terms of dA, dB can cancel (exactly, for a 1 x 1 weight): compare at
    # the size of the first term
    terms = ref.dora_layer(
        x, p["W"], p["mask"], layer.A, layer.B, layer.scaling, layer.magnitude, p["bias"], gy, False
    )
    y = layer.forward(x)
    gx = layer.backward(gy)
    close(y, want["y"])
    close(gx, want["gx"])
    close(layer.grad_A, want["dA"], scale=float(np.abs(terms["dA"]).max(initial=0.0)))
    close(layer.grad_B, want["dB"], scale=float(np.abs(terms["dB"]).max(initial=0.0)))
    close(layer.grad_magnitude, want["dm"])
    close(layer.grad_bias, want["dbias"])
    for a in (y, gx, layer.grad_A, layer.grad_B, layer.grad_magnitude):
        assert np.isfinite(a).all()
    if out > 4:  # the pruned unit: output = bias, zero gradients through it
        np.testing.assert_array_equal(y[:, 3], np.full(N, p["bias"][3], np.float32))
        assert layer.grad_magnitude[3] == 0 and (layer.grad_B[3] == 0).all()
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(gy, gy0)
    # gradients accumulate; leading dimensions are kept
    dm = layer.grad_magnitude.copy()
    layer.forward(x.reshape(1, N, inn))
    layer.backward(gy.reshape(1, N, out))
    close(layer.grad_magnitude, 2 * dm)
    layer.zero_grad()
    assert not layer.grad_magnitude.any()


def test_lors_magnitude_matches_peft_style_torch(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    for norm_grad, prune_row in ((True, False), (False, False), (True, True)):
        layer, p = _layer(rng, 24, 48, 4, 0.5, prune_row=prune_row, norm_grad=norm_grad)
        x = rng.standard_normal((2, 5, 48)).astype(np.float32)
        gy = rng.standard_normal((2, 5, 24)).astype(np.float32)
        tA = torch.tensor(layer.A, dtype=torch.float64, requires_grad=True)
        tB = torch.tensor(layer.B, dtype=torch.float64, requires_grad=True)
        tm = torch.tensor(layer.magnitude, dtype=torch.float64, requires_grad=True)
        tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        M = torch.tensor(p["mask"], dtype=torch.float64)
        # PEFT's DoRA forward (lora/dora.py) with the LoRS mask on the update
        Wp = torch.tensor(p["W"], dtype=torch.float64) + layer.scaling * (tB @ tA) * M
        norm = Wp.norm(p=2, dim=1, keepdim=True)
        norm = norm if norm_grad else norm.detach()
        y = torch.nn.functional.linear(
            tx, (tm[:, None] / norm) * Wp, torch.tensor(p["bias"], dtype=torch.float64)
        )
        if prune_row:  # a fully pruned unit: PEFT-style DoRA gives NaN (0/0), sparseft the bias
            assert torch.isnan(y[..., 3]).all()
            y_ours = layer.forward(x)
            assert np.isfinite(y_ours).all()
            np.testing.assert_array_equal(y_ours[..., 3], np.full((2, 5), p["bias"][3], np.float32))
            continue
        y.backward(torch.tensor(gy, dtype=torch.float64))
        close(layer.forward(x), y.detach().numpy())
        close(layer.backward(gy), tx.grad.numpy())
        close(layer.grad_A, tA.grad.numpy())
        close(layer.grad_B, tB.grad.numpy())
        close(layer.grad_magnitude, tm.grad.numpy())


def test_lors_magnitude_init_keeps_output_and_lors_grad_mode(rng: np.random.Generator) -> None:
    import sparseft as sft

    p = _problem(rng, 1, 30, 50, 4, 0.4)
    plain = sft.LoRSLinear(p["W"], p["mask"], r=4)
    wn = sft.LoRSLinear(p["W"], p["mask"], r=4, magnitude=True)
    close(wn.magnitude, np.linalg.norm(p["W"].astype(np.float64), axis=1), rtol=1e-6)
    x = rng.standard_normal((11, 50)).astype(np.float32)
    np.testing.assert_allclose(wn.forward(x), plain.forward(x), rtol=1e-5, atol=1e-5)
    # grad="lors" changes only dA, dB (the rearranged adapter gradient); gx and grad m are the same
    layer_e, _ = _layer(np.random.default_rng(1), 12, 20, 2, 0.5, grad="exact")
    layer_l, _ = _layer(np.random.default_rng(1), 12, 20, 2, 0.5, grad="lors")
    gy = rng.standard_normal((11, 12)).astype(np.float32)
    x = rng.standard_normal((11, 20)).astype(np.float32)
    np.testing.assert_array_equal(layer_e.forward(x), layer_l.forward(x))
    np.testing.assert_allclose(layer_e.backward(gy), layer_l.backward(gy), rtol=1e-6)
    np.testing.assert_allclose(layer_e.grad_magnitude, layer_l.grad_magnitude, rtol=1e-6)
    assert np.isfinite(layer_l.grad_A).all() and np.isfinite(layer_l.grad_B).all()


def test_lors_magnitude_merge_keeps_zeros_and_unmerge_restores(rng: np.random.Generator) -> None:
    layer, p = _layer(rng, 16, 40, 4, 0.3)
    layer.magnitude[5] = -layer.magnitude[5]  # a negative magnitude: merged zeros must stay +0.0
    x = rng.standard_normal((6, 40)).astype(np.float32)
    y0 = layer.forward(x)
    W2 = layer.merged_weight()
    want = ref.dora_layer(x, p["W"], p["mask"], layer.A, layer.B, layer.scaling, layer.magnitude, None, y0)[
        "W2"
    ]
    close(W2, want)
    assert (W2[~p["mask"]] == 0).all() and not np.signbit(W2[~p["mask"]]).any()
    sd = layer.state_dict()
    layer.merge()
    assert layer.merged
    np.testing.assert_array_equal(layer.merged_weight(), W2)
    np.testing.assert_allclose(layer.forward(x), y0, rtol=1e-5, atol=1e-5)
    layer.backward(np.ones_like(y0))  # merged: runs, magnitude gets no gradient
    assert not layer.grad_magnitude.any()
    sd_merged = layer.state_dict()
    for k in sd:
        np.testing.assert_array_equal(sd_merged[k], sd[k])  # a merged layer reports the unmerged state
    layer.unmerge()
    np.testing.assert_array_equal(layer.forward(x), y0)  # the kept base: bit for bit


def test_lors_magnitude_state_dict_roundtrip(rng: np.random.Generator) -> None:
    import sparseft as sft

    layer, p = _layer(rng, 10, 14, 2, 0.5)
    sd = layer.state_dict()
    assert sd["lora_magnitude_vector"].shape == (10,) and sd["lora_magnitude_vector"].dtype == np.float32
    other = sft.LoRSLinear(p["W"], p["mask"], r=2, alpha=4.0, bias=p["bias"], magnitude=True)
    other.load_state_dict(sd)
    x = rng.standard_normal((3, 14)).astype(np.float32)
    np.testing.assert_array_equal(other.forward(x), layer.forward(x))
    assert set(other.parameters()) == {"A", "B", "bias", "magnitude"}
    assert set(other.gradients()) == set(other.parameters())
    bad = dict(sd, lora_magnitude_vector=np.ones(9, np.float32))
    with pytest.raises(ValueError, match=r"lora_magnitude_vector: expected shape \(10,\), got \(9,\)"):
        other.load_state_dict(bad)
    bad = dict(sd, lora_magnitude_vector=np.full(10, np.nan, np.float32))
    with pytest.raises(ValueError, match=r"lora_magnitude_vector: contains NaN"):
        other.load_state_dict(bad)
    np.testing.assert_array_equal(other.forward(x), layer.forward(x))  # failed loads changed nothing
    plain = sft.LoRSLinear(p["W"], p["mask"], r=2)
    with pytest.raises(ValueError, match=r"unexpected keys \['lora_magnitude_vector'\]"):
        plain.load_state_dict(sd)
    assert "magnitude=True" in repr(layer)


def test_lors_magnitude_config_and_bad_input(rng: np.random.Generator) -> None:
    import sparseft as sft

    p = _problem(rng, 1, 6, 8, 2, 0.5)
    layer = sft.LoRSConfig(r=2, magnitude=True, norm_grad=False).make(p["W"], p["mask"])
    assert layer.magnitude is not None and layer.norm_grad is False
    assert sft.LoRSConfig(r=2).make(p["W"], p["mask"]).magnitude is None
    with pytest.raises(TypeError, match=r"magnitude: expected a bool, got str"):
        sft.LoRSLinear(p["W"], p["mask"], r=2, magnitude="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"norm_grad: expected a bool, got int"):
        sft.LoRSLinear(p["W"], p["mask"], r=2, magnitude=True, norm_grad=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"magnitude: expected a bool, got int"):
        sft.LoRSConfig(magnitude=1)  # type: ignore[arg-type]


def test_lors_magnitude_sgd_lowers_a_regression_loss(rng: np.random.Generator) -> None:
    """A few SGD steps on (A, B, m) reduce the loss towards a dense target (the layer trains)."""
    import sparseft as sft

    p = _problem(rng, 1, 16, 32, 4, 0.5)
    layer = sft.LoRSLinear(p["W"], p["mask"], r=4, magnitude=True)
    target = rng.standard_normal((32, 16)).astype(np.float32) * 0.3
    x = rng.standard_normal((64, 32)).astype(np.float32)
    losses = []
    for _ in range(30):
        err = layer.forward(x) - x @ (p["W"].T + target * p["mask"].T)
        losses.append(float((err**2).mean()))
        layer.zero_grad()
        layer.backward((2 * err / err.size).astype(np.float32))
        for name, param in layer.parameters().items():
            param -= 0.5 * layer.gradients()[name]
    assert losses[-1] < 0.7 * losses[0], losses
    assert np.isfinite(losses).all()


@pytest.mark.parametrize("fmt", ["csr", "nm"])
@pytest.mark.parametrize("norm_grad", [True, False])
def test_lors_magnitude_compressed_formats(
    simd: str, rng: np.random.Generator, fmt: str, norm_grad: bool
) -> None:
    """CSR and N:M bases: row norms from the merged values, the norm term by two SpMMs (no out x in)."""
    import sparseft as sft

    pytest.importorskip("sparseft.formats")
    out, inn, r, N = 19, 48, 4, 7
    W = rng.standard_normal((out, inn)).astype(np.float32)
    mask = sft.prune.nm(W, 2, 4) if fmt == "nm" else rng.random((out, inn)) < 0.2
    if fmt == "csr":
        mask[4] = False  # a fully pruned unit (an N:M mask keeps n per group in every row)
    W = W * mask
    bias = rng.standard_normal(out).astype(np.float32)
    layer = sft.LoRSLinear(
        W, mask, r=r, alpha=8.0, bias=bias, format=fmt, magnitude=True, norm_grad=norm_grad
    )
    assert layer.base.format == fmt
    layer.B[:] = rng.standard_normal(layer.B.shape).astype(np.float32) * 0.3
    layer.magnitude[:] *= rng.uniform(0.5, 1.5, out).astype(np.float32)
    x = rng.standard_normal((N, inn)).astype(np.float32)
    gy = rng.standard_normal((N, out)).astype(np.float32)
    want = ref.dora_layer(x, W, mask, layer.A, layer.B, layer.scaling, layer.magnitude, bias, gy, norm_grad)
    terms = ref.dora_layer(x, W, mask, layer.A, layer.B, layer.scaling, layer.magnitude, bias, gy, False)
    close(layer.forward(x), want["y"])
    close(layer.backward(gy), want["gx"])
    close(layer.grad_A, want["dA"], scale=float(np.abs(terms["dA"]).max()))
    close(layer.grad_B, want["dB"], scale=float(np.abs(terms["dB"]).max()))
    close(layer.grad_magnitude, want["dm"])
    assert np.isfinite(layer.grad_A).all() and np.isfinite(layer.grad_magnitude).all()
    W2 = layer.merged_weight()
    close(W2, want["W2"])
    assert (W2[~mask] == 0).all()
    y0 = layer.forward(x)
    layer.merge()
    assert layer.base.format == fmt
    np.testing.assert_allclose(layer.forward(x), y0, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    np.testing.assert_array_equal(layer.forward(x), y0)


def test_lors_magnitude_nan_is_an_error_and_a_failed_merge_changes_nothing() -> None:
    """NaN in m gave NaN outputs (NaN in A or B raises), and merge() blamed W; a merge that failed
    on NaN in A left the pre-merge base recorded while the layer stayed unmerged."""
    W = np.eye(4, dtype=np.float32)
    layer = sft.LoRSLinear(W, r=1, format="dense", magnitude=True)
    x = np.ones((1, 4), np.float32)
    y0 = layer.forward(x)
    assert layer.magnitude is not None
    layer.magnitude[0] = np.nan
    with pytest.raises(ValueError, match="magnitude: contains NaN or infinity"):
        layer.forward(x)
    with pytest.raises(ValueError, match="magnitude: contains NaN or infinity"):
        layer.merge()
    assert not layer.merged and layer._premerge_base is None
    layer.magnitude[0] = 1.0
    layer.A[0, 0] = np.nan
    with pytest.raises(ValueError):
        layer.merge()
    assert not layer.merged and layer._premerge_base is None
    layer.A[0, 0] = 0.0
    np.testing.assert_array_equal(layer.forward(x), y0)


def test_magnitude_flag_builds_the_dora_variant(rng: np.random.Generator) -> None:
    """LoRSLinear(magnitude=True), LoRSConfig(magnitude=True).make() and DoRALinear build the same layer."""
    p = _problem(rng, 3, 6, 8, 2, 0.5)
    plain = sft.LoRSLinear(p["W"], p["mask"], r=2)
    assert type(plain) is sft.LoRSLinear and plain.magnitude is None and "magnitude" not in plain.parameters()
    layers = [
        sft.LoRSLinear(p["W"], p["mask"], r=2, magnitude=True, norm_grad=False),
        sft.LoRSConfig(r=2, magnitude=True, norm_grad=False).make(p["W"], p["mask"]),
        sft.DoRALinear(p["W"], p["mask"], r=2, norm_grad=False),
        sft.adapters.DoRALinear(p["W"], p["mask"], 2, None, None, "lora", "exact", 0, False, "auto", None, None, None, "lora", True, False),
    ]
    for layer in layers:
        assert type(layer) is sft.DoRALinear and isinstance(layer, sft.LoRSLinear)
        assert layer.norm_grad is False and sorted(layer.parameters()) == ["A", "B", "magnitude"]
        np.testing.assert_array_equal(layer.forward(p["x"]), layers[0].forward(p["x"]))
    with pytest.raises(ValueError, match="magnitude: DoRALinear is the magnitude=True layer"):
        sft.DoRALinear(p["W"], p["mask"], r=2, magnitude=False)
