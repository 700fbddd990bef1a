"""Signatures: extraction, arithmetic, merges, quantization and files, against tests/reference.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseft as sft
from sparseft import _core
from tests import reference as ref

SHAPES = [(1,), (7,), (1, 5), (13, 17), (3, 4, 5), (70_001,)]


def _triple(rng: np.random.Generator, shapes: dict[str, tuple[int, ...]], scale: float = 0.01):
    pre = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    clean = {k: v + scale * rng.standard_normal(v.shape).astype(np.float32) for k, v in pre.items()}
    robust = {k: v + scale * rng.standard_normal(v.shape).astype(np.float32) for k, v in pre.items()}
    return pre, clean, robust


def _sig(rng: np.random.Generator, shapes: dict[str, tuple[int, ...]]) -> sft.Signature:
    return sft.Signature({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()})


# ---- extraction ----


@pytest.mark.parametrize("shape", SHAPES)
def test_extract_matches_float64_reference(rng: np.random.Generator, shape: tuple[int, ...]) -> None:
    pre, clean, robust = _triple(rng, {"w": shape})
    sig = sft.Signature.extract(pre, clean, robust)
    want, dr, dd = ref.rws_extract(pre["w"], clean["w"], robust["w"])
    np.testing.assert_allclose(sig["w"], want, rtol=1e-5, atol=1e-7)
    assert sig.coefficients["w"] == pytest.approx(dr / dd, rel=1e-9)
    # the signature is orthogonal to the clean direction
    d = (clean["w"].astype(np.float64) - pre["w"]).ravel()
    s64 = sig["w"].astype(np.float64).ravel()
    assert abs(d @ s64) <= 1e-5 * np.linalg.norm(d) * np.linalg.norm(s64) + 1e-12


def test_extract_threaded_equals_naive_bitwise(rng: np.random.Generator) -> None:
    pre, clean, robust = _triple(rng, {"w": (300_001,)})
    a = _core.rws_extract(pre["w"], clean["w"], robust["w"])
    b = _core.rws_extract(pre["w"], clean["w"], robust["w"], naive=True)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-9)
    assert a[1] == pytest.approx(b[1], rel=1e-12) and a[2] == pytest.approx(b[2], rel=1e-12)


def test_extract_zero_clean_direction_gives_r(rng: np.random.Generator) -> None:
    pre, _, robust = _triple(rng, {"w": (5, 3)})
    sig = sft.Signature.extract(pre, pre, robust)
    np.testing.assert_array_equal(sig["w"], robust["w"] - pre["w"])
    assert sig.coefficients["w"] == 0.0


def test_extract_layers_shallow_and_float16_bf16_inputs(rng: np.random.Generator) -> None:
    shapes = {"a.weight": (4, 3), "a.bias": (4,), "b.weight": (2, 4), "c.weight": (1, 2)}
    pre, clean, robust = _triple(rng, shapes)
    assert sft.Signature.extract(pre, clean, robust, shallow=2).keys() == ["a.weight", "a.bias", "b.weight"]
    assert sft.Signature.extract(pre, clean, robust, layers=["b", "a.bias"]).keys() == ["a.bias", "b.weight"]
    half = {k: v.astype(np.float16) for k, v in robust.items()}
    s = sft.Signature.extract(pre, clean, half)
    assert s["a.weight"].dtype == np.float32
    # a model works like a dict of its parameters
    m = sft.models.MLP([3, 4, 2], seed=0)
    sig = sft.Signature.extract(m, m.parameters(), m.state_dict(), shallow=1)
    assert sig.keys() == ["fc.0.weight", "fc.0.bias"] and sig.norm() == 0.0


def test_extract_refuses_bad_inputs(rng: np.random.Generator) -> None:
    pre, clean, robust = _triple(rng, {"a": (3, 2), "b": (4,)})
    with pytest.raises(ValueError, match=r"clean: tensor 'b' is absent"):
        sft.Signature.extract(pre, {"a": clean["a"]}, robust, layers=["a", "b"])
    with pytest.raises(ValueError, match=r"robust: tensor 'x' is absent from pretrained"):
        sft.Signature.extract(pre, clean, {**robust, "x": robust["a"]})
    with pytest.raises(ValueError, match=r"robust\['a'\]: expected shape \(3, 2\)"):
        sft.Signature.extract(pre, clean, {**robust, "a": robust["a"].ravel()})
    with pytest.raises(TypeError, match=r"clean\['b'\]: expected a floating-point array, got dtype int64"):
        sft.Signature.extract(pre, {**clean, "b": np.arange(4)}, robust)
    bad = robust["a"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"robust\['a'\]: contains NaN"):
        sft.Signature.extract(pre, clean, {**robust, "a": bad})
    with pytest.raises(ValueError, match=r"shallow: expected 1 <= shallow <= 2"):
        sft.Signature.extract(pre, clean, robust, shallow=3)
    with pytest.raises(ValueError, match=r"layers: 'zz' is neither"):
        sft.Signature.extract(pre, clean, robust, layers=["zz"])
    with pytest.raises(TypeError, match=r"pretrained: expected a dict"):
        sft.Signature.extract([1], clean, robust)
    with pytest.raises(ValueError, match=r"float64 values beyond float32"):
        sft.Signature.extract({"a": np.full((3, 2), 1e300)}, clean, robust, layers=["a"])


def test_inputs_are_not_modified(rng: np.random.Generator) -> None:
    pre, clean, robust = _triple(rng, {"a": (6, 5)})
    copies = [{k: v.copy() for k, v in d.items()} for d in (pre, clean, robust)]
    sig = sft.Signature.extract(pre, clean, robust)
    sig.quantize(4).dequantize()
    for d, c in zip((pre, clean, robust), copies, strict=True):
        np.testing.assert_array_equal(d["a"], c["a"])
    assert not sig["a"].flags.writeable


# ---- arithmetic ----


def test_arithmetic_matches_numpy(rng: np.random.Generator) -> None:
    a = _sig(rng, {"x": (4, 3), "y": (5,)})
    b = _sig(rng, {"x": (4, 3), "z": (2,)})
    np.testing.assert_array_equal((a * 2.5)["x"], a["x"] * np.float32(2.5))
    np.testing.assert_array_equal((0.5 * a)["y"], a["y"] * np.float32(0.5))
    np.testing.assert_array_equal((-a)["x"], -a["x"])
    s = a + b
    assert s.keys() == ["x", "y", "z"]
    np.testing.assert_array_equal(s["x"], a["x"] + b["x"])
    np.testing.assert_array_equal(s["z"], b["z"])
    np.testing.assert_array_equal((a - b)["z"], -b["z"])
    np.testing.assert_array_equal(sum([a, b, a])["x"], (a + b + a)["x"])
    flat = np.concatenate([a["x"].ravel(), a["y"]]).astype(np.float64)
    assert a.norm() == pytest.approx(np.linalg.norm(flat), rel=1e-12)
    assert a.norm(per_layer=True)["y"] == pytest.approx(np.linalg.norm(a["y"].astype(np.float64)))
    cx = float(a["x"].ravel().astype(np.float64) @ b["x"].ravel()) / (
        np.linalg.norm(a["x"].astype(np.float64)) * np.linalg.norm(b["x"].astype(np.float64))
    )
    assert a.cosine(b, per_layer=True) == pytest.approx({"x": cx})
    assert a.cosine(a) == pytest.approx(1.0)
    assert (a * 0).cosine(a) == 0.0


def test_arithmetic_refuses_bad_operands(rng: np.random.Generator) -> None:
    a = _sig(rng, {"x": (4, 3)})
    with pytest.raises(ValueError, match=r"other\['x'\]: expected shape \(4, 3\)"):
        a + _sig(rng, {"x": (3, 4)})
    with pytest.raises(ValueError, match="alpha: expected a finite number"):
        a * float("nan")
    with pytest.raises(TypeError, match="alpha: expected a real number"):
        a * "2"
    with pytest.raises(ValueError, match="overflows float32"):
        sft.Signature({"x": np.full(3, 3e38, np.float32)}) * 10.0
    with pytest.raises(ValueError, match=r"tensors\['x'\]: contains NaN"):
        sft.Signature({"x": np.array([np.inf], np.float32)})
    with pytest.raises(TypeError, match="other: expected a Signature"):
        a.cosine({"x": a["x"]})  # type: ignore[arg-type]


def test_restrict_keeps_sparsity(rng: np.random.Generator) -> None:
    a = _sig(rng, {"w": (6, 5), "b": (6,)})
    mask = rng.random((6, 5)) < 0.4
    r = a.restrict({"w": mask})
    np.testing.assert_array_equal(r["w"], np.where(mask, a["w"], 0))
    np.testing.assert_array_equal(r["b"], a["b"])
    with pytest.raises(ValueError, match=r"masks\['w'\]: expected shape \(6, 5\)"):
        a.restrict({"w": mask.T})
    with pytest.raises(TypeError, match=r"masks\['w'\]: expected a bool"):
        a.restrict({"w": mask.astype(np.uint8)})


# ---- merges ----


def test_merge_sum_ties_dare_match_references(rng: np.random.Generator) -> None:
    sigs = [_sig(rng, {"w": (7, 5), "b": (3,)}) for _ in range(3)]
    sigs[1] = sft.Signature({"w": sigs[1]["w"]})  # a tensor missing from one signature counts as 0
    s = sft.rws.merge(sigs, "sum", weights=[1.0, 0.5, 2.0])
    np.testing.assert_allclose(s["w"], sigs[0]["w"] + 0.5 * sigs[1]["w"] + 2 * sigs[2]["w"], rtol=1e-6)
    for density in (0.1, 0.3, 1.0):
        t = sft.rws.merge(sigs, "ties", density=density)
        for k in ("w", "b"):
            taus = [x[k] if k in x else np.zeros(x.shapes.get(k, sigs[0][k].shape), np.float32) for x in sigs]
            np.testing.assert_allclose(t[k], ref.merge_ties(taus, density), rtol=1e-6, atol=1e-7)
    d = sft.rws.merge(sigs, "dare", density=0.3, seed=7)
    gen = np.random.default_rng(7)
    for k in ("w", "b"):
        taus = [x[k] if k in x else np.zeros(sigs[0][k].shape, np.float32) for x in sigs]
        keeps = gen.random((3, *sigs[0][k].shape)) < 0.3
        np.testing.assert_allclose(d[k], ref.merge_dare(taus, 0.3, list(keeps)), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(sft.rws.merge(sigs, "dare", density=0.3, seed=7)["w"], d["w"])


def test_dare_is_unbiased(rng: np.random.Generator) -> None:
    a = _sig(rng, {"w": (200, 100)})
    m = np.mean([sft.rws.merge([a], "dare", density=0.5, seed=s)["w"] for s in range(40)], axis=0)
    assert np.abs(m - a["w"]).mean() < 0.2 * np.abs(a["w"]).mean()


def test_merge_refuses_bad_arguments(rng: np.random.Generator) -> None:
    a = _sig(rng, {"w": (3, 2)})
    with pytest.raises(ValueError, match="method: expected one of"):
        sft.rws.merge([a], "mean")
    with pytest.raises(ValueError, match=r"density: expected a float in \(0, 1\]"):
        sft.rws.merge([a], "ties", density=0)
    with pytest.raises(ValueError, match="density: 'sum' keeps everything"):
        sft.rws.merge([a], "sum", density=0.5)
    with pytest.raises(ValueError, match="sigs: expected at least one"):
        sft.rws.merge([], "sum")
    with pytest.raises(TypeError, match=r"sigs\[1\]: expected a Signature"):
        sft.rws.merge([a, a.quantize(8)], "sum")  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"sigs\[1\]\['w'\]: expected shape"):
        sft.rws.merge([a, _sig(rng, {"w": (2, 3)})])
    with pytest.raises(ValueError, match="weights: expected 1 values"):
        sft.rws.merge([a], weights=[1.0, 2.0])


# ---- quantization ----


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("scheme", ["linear", "log"])
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_quantize_packed_sizes_and_reference(
    rng: np.random.Generator, bits: int, scheme: str, granularity: str
) -> None:
    shapes = {"w": (9, 13), "b": (5,), "t": (2, 3, 4)}
    sig = _sig(rng, shapes)
    q = sig.quantize(bits=bits, granularity=granularity, scheme=scheme)
    deq = q.dequantize()
    nbytes = 0
    for k, shape in shapes.items():
        codes, params, group = q.packed(k)
        n = math.prod(shape)
        assert codes.nbytes == math.ceil(n * bits / 8)
        groups = shape[0] if granularity == "channel" and len(shape) > 1 else 1
        assert params.shape == (groups, 2) and group * groups == n
        nbytes += codes.nbytes + params.nbytes
        want = ref.rws_dequantize(codes, params, n, group, bits, scheme)
        np.testing.assert_allclose(deq[k].ravel(), want, rtol=1e-5, atol=1e-6)
        # error bounds per group
        x = sig[k].ravel().astype(np.float64)
        for g in range(groups):
            xs, ds = x[g * group : (g + 1) * group], deq[k].ravel()[g * group : (g + 1) * group]
            if scheme == "linear":
                step = (xs.max() - xs.min()) / (2**bits - 1)
                assert np.abs(ds - xs).max() <= 0.5 * step * (1 + 1e-5) + 1e-6
            elif bits >= 4:
                lo = float(params[g, 0])
                ratio = (float(params[g, 1]) / lo) ** (1 / (2 ** (bits - 1) - 3))
                big = np.abs(xs) >= lo
                assert np.all(np.abs(ds[big] - xs[big]) <= np.abs(xs[big]) * (ratio - 1) + 1e-6)
                assert np.all(np.sign(ds[ds != 0]) == np.sign(xs[ds != 0]))
    assert q.nbytes == nbytes
    assert q.errors["w"]["rel_l2"] == pytest.approx(
        np.linalg.norm(deq["w"].astype(np.float64) - sig["w"]) / np.linalg.norm(sig["w"].astype(np.float64)),
        rel=1e-6,
    )


def test_quantize_8bit_is_close_and_4bit_packs_eight_to_one(rng: np.random.Generator) -> None:
    sig = _sig(rng, {"w": (64, 1000)})
    q8, q4 = sig.quantize(8), sig.quantize(4, granularity="tensor")
    assert q8.errors["w"]["rel_l2"] < 0.01
    assert q4.nbytes == 64 * 1000 // 2 + 8
    assert sig.nbytes / q4.nbytes > 7.9


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-(2.0**100), 2.0**100, width=32), min_size=1, max_size=40),
    st.sampled_from([1, 2, 4, 8]),
    st.sampled_from(["linear", "log"]),
)
def test_quantize_hypothesis_matches_reference(values: list[float], bits: int, scheme: str) -> None:
    x = np.array(values, np.float32)
    q = sft.Signature({"x": x}).quantize(bits, "tensor", scheme)
    codes, params, group = q.packed("x")
    got = q.dequantize()["x"]
    want = ref.rws_dequantize(codes, params, x.size, group, bits, scheme)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-30)
    if scheme == "linear":
        assert np.abs(got.astype(np.float64) - x).max() <= 0.5 * float(params[0, 1]) * (1 + 1e-5) + 1e-30


def test_quantize_refuses_bad_arguments(rng: np.random.Generator) -> None:
    sig = _sig(rng, {"w": (3, 2)})
    with pytest.raises(ValueError, match=r"bits: expected one of \(1, 2, 4, 8\), got 3"):
        sig.quantize(3)
    with pytest.raises(ValueError, match="granularity: expected one of"):
        sig.quantize(4, granularity="row")
    with pytest.raises(ValueError, match="scheme: expected one of"):
        sig.quantize(4, scheme="nf4")
    with pytest.raises(ValueError, match="range does not fit float32"):
        sft.Signature({"w": np.array([-3e38, 3e38], np.float32)}).quantize(1)
    with pytest.raises(ValueError, match=r"codes: expected axis 0 of length 1"):
        _core.rws_dequantize(np.zeros(5, np.uint8), np.zeros((1, 2), np.float32), 2, 2, 4, 0)


# ---- files ----


def test_save_load_round_trip(tmp_path, rng: np.random.Generator) -> None:
    pre, clean, robust = _triple(rng, {"a.weight": (6, 4), "a.bias": (6,), "z": (3, 2, 2)})
    sig = sft.Signature.extract(pre, clean, robust)
    sig.save(tmp_path / "s.safetensors")
    back = sft.Signature.load(tmp_path / "s.safetensors")
    assert isinstance(back, sft.Signature) and back.keys() == sig.keys()
    for k in sig:
        np.testing.assert_array_equal(back[k], sig[k])
    assert back.coefficients == pytest.approx(sig.coefficients)
    q = sig.quantize(2, scheme="log")
    q.save(str(tmp_path / "q.safetensors"))
    qb = sft.Signature.load(tmp_path / "q.safetensors")
    assert isinstance(qb, sft.QuantizedSignature)
    assert (qb.bits, qb.scheme, qb.granularity, qb.keys(), qb.shapes) == (
        2,
        "log",
        "channel",
        q.keys(),
        q.shapes,
    )
    for k in q.keys():
        np.testing.assert_array_equal(qb.dequantize()[k], q.dequantize()[k])
    assert qb.errors == q.errors  # JSON round-trips floats exactly
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_corrupt_files_are_named_value_errors(tmp_path, rng: np.random.Generator) -> None:
    sig = _sig(rng, {"w": (8, 8)})
    path = tmp_path / "s.safetensors"
    sig.quantize(4).save(path)
    data = path.read_bytes()
    cases = {
        "trunc": data[: len(data) - 10],
        "tiny": data[:5],
        "header": data[:20],
        "flip": data[:-3] + bytes([data[-3] ^ 1]) + data[-2:],
        "garbage": b"\xff" * 64,
    }
    for name, blob in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(blob)
        with pytest.raises(ValueError, match=str(p).replace("\\", "\\\\")):
            sft.Signature.load(p)
    # valid safetensors, but the metadata was edited (bits 4 -> 8): the checksum refuses it
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save

    from sparseft.rws import io

    _, meta = io.read_safetensors(path)
    meta["bits"] = "8"
    (tmp_path / "meta.safetensors").write_bytes(st_save(st_load(data), metadata=meta))
    with pytest.raises(ValueError, match="checksum mismatch"):
        sft.Signature.load(tmp_path / "meta.safetensors")
    (tmp_path / "foreign.safetensors").write_bytes(st_save({"w": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match="not a sparseft signature file"):
        sft.Signature.load(tmp_path / "foreign.safetensors")
    with pytest.raises(TypeError, match="path: expected a str"):
        sig.save(3)


def test_failed_write_keeps_the_old_file(tmp_path, rng: np.random.Generator, monkeypatch) -> None:
    sig = _sig(rng, {"w": (4, 4)})
    path = tmp_path / "s.safetensors"
    sig.save(path)
    before = path.read_bytes()
    import os

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        (sig * 2).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_dequantize_is_the_same_on_every_simd_path(rng: np.random.Generator, simd: str, bits: int) -> None:
    """The 4-bit AVX-512 lane-permute decode gives the portable loop's values (odd groups, odd starts)."""
    for n, group in ((1_000_003, 1000), (77, 77), (4099, 33)):
        x = rng.standard_normal(n).astype(np.float32)
        codes, params, stats = _core.rws_quantize(x, group, bits, 0)
        got = _core.rws_dequantize(codes, params, n, group, bits, 0)
        want = ref.rws_dequantize(codes, params, n, group, bits, "linear")
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        err = got.astype(np.float64) - x
        assert stats[0] == pytest.approx(float(err @ err), rel=1e-9)
        assert stats[1] == pytest.approx(float(np.abs(err).max()), rel=1e-9)
