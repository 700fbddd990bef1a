"""The Patcher: in-place patches that come off bit-exactly in any order, on float32/float16/bfloat16."""

from __future__ import annotations

import numpy as np
import pytest

import sparseft as sft
from sparseft import _core
from tests import reference as ref

DTYPES = ["float32", "float16", "bfloat16"]


def _adversarial(rng: np.random.Generator, n: int, dtype: str) -> np.ndarray:
    """Weights mixing normal values, subnormals, signed zeros, huge and tiny magnitudes (no NaN/inf)."""
    if dtype == "float32":
        pool = np.array(
            [
                0.0,
                -0.0,
                1e-45,
                -1e-45,
                1e-40,
                -3e-39,
                1.17549435e-38,
                3e38,
                -3.4e38,
                1e-30,
                1.0,
                -1.0,
                2.0,
                0.5,
                65504.0,
                16777216.0,
            ],
            np.float32,
        )
        w = rng.standard_normal(n).astype(np.float32) * np.float32(10.0) ** rng.integers(-6, 6, n).astype(
            np.float32
        )
    else:
        pool = np.array([0.0, -0.0, 6e-8, -6e-8, 1e-5, 6.1e-5, 60000.0, -65504.0, 1.0, -2.0, 0.5], np.float32)
        w = rng.standard_normal(n).astype(np.float32) * np.float32(10.0) ** rng.integers(-3, 3, n).astype(
            np.float32
        )
    pick = rng.random(n) < 0.3
    w[pick] = pool[rng.integers(0, len(pool), int(pick.sum()))]
    if dtype == "float16":
        return w.astype(np.float16)
    if dtype == "bfloat16":
        return _bf16_bits(w)
    return w


def _bf16_bits(w: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even (NumPy twin of the C conversion)."""
    u = w.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _as_f64(w: np.ndarray) -> np.ndarray:
    if w.dtype == np.uint16:
        return (w.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return w.astype(np.float64)


def _bits(w: np.ndarray) -> np.ndarray:
    return w.view(np.uint32 if w.dtype == np.float32 else np.uint16).copy()


def _sigs(rng: np.random.Generator, shapes: dict[str, tuple[int, ...]], k: int) -> list:
    out: list = []
    for i in range(k):
        scale = [1e-3, 1.0, 1e-30, 1e3][i % 4]
        s = sft.Signature(
            {
                n: (rng.standard_normal(sh) * scale).astype(np.float32)
                for n, sh in shapes.items()
                if rng.random() < 0.8
            }
            or {next(iter(shapes)): np.ones(shapes[next(iter(shapes))], np.float32)}
        )
        out.append(s.quantize(bits=[8, 4, 2, 1][i % 4], scheme=["linear", "log"][i % 2]) if i % 3 == 2 else s)
    return out


def _canonical(original: dict[str, np.ndarray], entries: list, masks: dict | None) -> dict[str, np.ndarray]:
    """The weights a fresh Patcher gives applying ``entries`` (signature, alpha) in order."""
    w = {k: v.copy() for k, v in original.items()}
    p = sft.Patcher(w, masks=masks)
    for sig, a in entries:
        p.apply(sig, a)
    return w


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_orders_restore_every_bit(simd: str, dtype: str) -> None:
    rng = np.random.default_rng(hash((simd, dtype)) % 2**32)
    shapes = {"a": (37, 11), "b": (129,), "c": (3, 5, 7)}
    original = {k: _adversarial(rng, int(np.prod(s)), dtype).reshape(s) for k, s in shapes.items()}
    masks = {"a": rng.random(shapes["a"]) < 0.6}
    weights = {k: v.copy() for k, v in original.items()}
    p = sft.Patcher(weights, masks=masks)
    sigs = _sigs(rng, shapes, 6)
    for _ in range(25):
        op = rng.choice(["apply", "remove", "rescale"], p=[0.45, 0.35, 0.2])
        try:
            if op == "apply" or not p.active:
                p.apply(sigs[rng.integers(len(sigs))], float(rng.choice([1.0, -0.5, 3.0, 0.0, 1e-3])))
            elif op == "remove":
                p.remove(p.active[rng.integers(len(p.active))])
            else:
                p.rescale(p.active[rng.integers(len(p.active))], float(rng.normal()))
        except ValueError as e:  # a result beyond the weight type's range: refused, nothing changed
            assert "non-finite" in str(e)
        # the state depends only on the active patches, in order
        want = _canonical(original, [(h.signature, h.alpha) for h in p.active], masks)
        for k in weights:
            np.testing.assert_array_equal(_bits(weights[k]), _bits(want[k]))
        np.testing.assert_array_equal(_bits(weights["a"])[~masks["a"]], _bits(original["a"])[~masks["a"]])
    for h in list(p.active)[::-1] if rng.random() < 0.5 else list(p.active):
        p.remove(h)
    for k in weights:
        np.testing.assert_array_equal(_bits(weights[k]), _bits(original[k]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_patch_values_match_reference(rng: np.random.Generator, dtype: str) -> None:
    n = 5003
    w = _adversarial(rng, n, dtype)
    w0 = w.copy()
    s = rng.standard_normal(n).astype(np.float32)
    idx, bits, nonfinite = _core.rws_patch(w, s, 0.25)
    want = ref.rws_patch(_as_f64(w0), s, 0.25)
    got = _as_f64(w)
    # one rounding to the weight type (two for 16-bit: float32, then the type)
    eps = {"float32": 2.0**-24, "float16": 2.0**-11 * 1.01, "bfloat16": 2.0**-8 * 1.01}[dtype]
    tiny = {"float32": 1.5e-45, "float16": 6e-8, "bfloat16": 1e-38}[dtype]
    fin = np.isfinite(want) & (np.abs(want) < {"float32": 3e38, "float16": 65000, "bfloat16": 3e38}[dtype])
    assert np.all(np.abs(got[fin] - want[fin]) <= eps * np.abs(want[fin]) + tiny)
    assert nonfinite == int((~np.isfinite(got)).sum())
    # the record holds exactly the original bits of the positions it names, ascending
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(bits.astype(_bits(w0).dtype), _bits(w0)[idx])
    _core.rws_unpatch(w, s, 0.25, idx, bits)
    np.testing.assert_array_equal(_bits(w), _bits(w0))


def test_undo_is_exact_across_simd_paths_and_threads(rng: np.random.Generator) -> None:
    n = 300_007  # above the kernels' parallel threshold
    w = _adversarial(rng, n, "float32")
    w0 = w.copy()
    s = rng.standard_normal(n).astype(np.float32)
    q = sft.Signature({"w": s}).quantize(4).source("w")
    threads = sft.get_num_threads()
    paths = [p for p in ("avx2", "portable") if p in _core.build_info()["simd_compiled"]]
    try:
        for src in (s, q):
            sft.set_num_threads(2)
            with sft.simd_path(paths[0]):
                rec = _core.rws_patch(w, src, -1.5)
            sft.set_num_threads(1)
            with sft.simd_path(paths[-1]):
                rec1 = _core.rws_patch(w0.copy(), src, -1.5)
                _core.rws_unpatch(w, src, -1.5, rec[0], rec[1])
            np.testing.assert_array_equal(rec[0], rec1[0])  # the record does not depend on the threads
            np.testing.assert_array_equal(_bits(w), _bits(w0))
    finally:
        sft.set_num_threads(threads)


def test_quantized_patch_equals_dequantized_patch(rng: np.random.Generator) -> None:
    w = rng.standard_normal((40, 33)).astype(np.float32)
    sig = sft.Signature({"w": rng.standard_normal((40, 33)).astype(np.float32)})
    for bits in (1, 2, 4, 8):
        q = sig.quantize(bits, scheme="log" if bits % 2 else "linear")
        a, b = {"w": w.copy()}, {"w": w.copy()}
        sft.Patcher(a).apply(q, 0.7)
        sft.Patcher(b).apply(q.dequantize(), 0.7)
        np.testing.assert_array_equal(a["w"], b["w"])


def test_undo_memory_is_a_small_fraction(rng: np.random.Generator) -> None:
    w = {"w": rng.standard_normal(200_000).astype(np.float32)}
    p = sft.Patcher(w)
    h = p.apply(sft.Signature({"w": (rng.standard_normal(200_000) * 1e-2).astype(np.float32)}))
    assert 0 < h.undo_nbytes < 0.05 * w["w"].nbytes
    assert p.undo_nbytes == h.undo_nbytes
    p.remove(h)
    assert h.undo_nbytes == 0 and not h.active and h.alpha == 0.0


def test_overflow_and_nan_are_refused_and_change_nothing(rng: np.random.Generator) -> None:
    w = {"a": np.array([3e38, 1.0, -0.0], np.float32), "b": np.ones(4, np.float32)}
    before = {k: _bits(v) for k, v in w.items()}
    p = sft.Patcher(w)
    h = p.apply(sft.Signature({"b": np.full(4, 0.5, np.float32)}))
    sig = sft.Signature({"b": np.ones(4, np.float32), "a": np.array([1e38, 0, 0], np.float32)})
    with pytest.raises(ValueError, match=r"alpha: patching 'a' with alpha=10.0 gives 1 non-finite weights"):
        p.apply(sig, 10.0)
    assert p.active == [h]
    np.testing.assert_array_equal(w["b"], np.full(4, 1.5, np.float32))
    np.testing.assert_array_equal(_bits(w["a"]), before["a"])
    # a removal whose re-applied patches would overflow is refused too, and changes nothing
    g = p.apply(sft.Signature({"a": np.array([-3e38, 0, 0], np.float32)}))
    k = p.apply(sft.Signature({"a": np.array([3e38, 0, 0], np.float32)}))
    snapshot = _bits(w["a"])
    with pytest.raises(ValueError, match="non-finite"):
        p.remove(g)
    np.testing.assert_array_equal(_bits(w["a"]), snapshot)
    assert p.active == [h, g, k]
    p.restore()
    for key in w:
        np.testing.assert_array_equal(_bits(w[key]), before[key])
    with pytest.raises(ValueError, match="alpha: expected a finite number"):
        p.apply(sig, float("nan"))
    with pytest.raises(ValueError, match=r"tensors\['x'\]: contains NaN"):
        sft.Signature({"x": np.array([np.nan], np.float32)})
    with pytest.raises(ValueError, match=r"weights\['x'\]: contains NaN"):
        sft.Patcher({"x": np.array([np.nan], np.float32)})


def test_bad_arguments_are_named(rng: np.random.Generator) -> None:
    w = {"a": np.zeros((3, 2), np.float32)}
    p = sft.Patcher(w)
    with pytest.raises(ValueError, match=r"sig: tensor 'b' is not among the weights"):
        p.apply(sft.Signature({"b": np.zeros(2, np.float32)}))
    with pytest.raises(ValueError, match=r"sig\['a'\]: expected shape \(3, 2\)"):
        p.apply(sft.Signature({"a": np.zeros((2, 3), np.float32)}))
    with pytest.raises(TypeError, match="sig: expected a Signature"):
        p.apply({"a": np.zeros((3, 2), np.float32)})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"weights\['x'\]: expected dtype float32, float16, bfloat16"):
        sft.Patcher({"x": np.zeros(3)})
    ro = np.zeros(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"weights\['x'\]: expected a writeable array"):
        sft.Patcher({"x": ro})
    sft.Patcher({"x": ro}, copy=True)  # a copy is fine
    with pytest.raises(ValueError, match=r"weights\['x'\]: expected a C-contiguous"):
        sft.Patcher({"x": np.zeros((4, 4), np.float32)[:, ::2]})
    with pytest.raises(ValueError, match=r"masks\['a'\]: expected shape"):
        sft.Patcher(w, masks={"a": np.ones(6, bool)})
    with pytest.raises(ValueError, match="masks: 'q' is not a weight"):
        sft.Patcher(w, masks={"q": np.ones(6, bool)})
    other = sft.Patcher({"a": np.zeros((3, 2), np.float32)})
    h = other.apply(sft.Signature({"a": np.ones((3, 2), np.float32)}))
    with pytest.raises(ValueError, match="handle: not active"):
        p.remove(h)
    with pytest.raises(TypeError, match="handle: expected a Handle"):
        p.rescale(3, 1.0)  # type: ignore[arg-type]
    other.remove(h)
    with pytest.raises(ValueError, match="it was removed"):
        other.remove(h)
    with pytest.raises(ValueError, match=r"alpha: expected a finite number within float32's range"):
        _core.rws_patch(np.zeros(2, np.float32), np.zeros(2, np.float32), 1e39)
    with pytest.raises(ValueError, match=r"index: expected ascending positions"):
        _core.rws_unpatch(
            np.zeros(2, np.float32), np.zeros(2, np.float32), 1.0, np.array([1, 1]), np.zeros(2, np.uint32)
        )


def test_patched_context_copy_and_models(rng: np.random.Generator) -> None:
    original = {"a": rng.standard_normal((5, 4)).astype(np.float32)}
    p = sft.Patcher(original, copy=True)
    sig = sft.Signature({"a": np.ones((5, 4), np.float32)})
    with p.patched(sig, 2.0) as h:
        assert p.active == [h]
        np.testing.assert_allclose(p.weights["a"], original["a"] + 2.0)
    assert p.active == [] and np.array_equal(p.weights["a"], original["a"])
    with pytest.raises(RuntimeError), p.patched(sig):
        raise RuntimeError
    assert p.active == []
    # a pruned model: its masks are honoured, every zero stays
    model = sft.models.MLP([6, 8, 3], seed=1)
    model.prune(0.5)
    zeros = {k: m for k, m in model.masks().items()}
    pm = sft.Patcher(model)
    full = sft.Signature({k: np.ones_like(v) for k, v in model.parameters().items()})
    pm.apply(full)
    for k, m in zeros.items():
        assert np.all(model.parameters()[k][~m] == 0)
    pm.restore()
    # a restricted signature, quantized (its zeros become small values), still keeps them through the masks
    pm.apply(full.restrict(model).quantize(2))
    for k, m in zeros.items():
        assert np.all(model.parameters()[k][~m] == 0)


def test_bfloat16_from_ml_dtypes_when_installed(rng: np.random.Generator) -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    w = rng.standard_normal(17).astype(ml_dtypes.bfloat16)
    before = w.view(np.uint16).copy()
    p = sft.Patcher({"w": w})
    p.apply(sft.Signature({"w": np.ones(17, np.float32)}))
    assert not np.array_equal(w.view(np.uint16), before)
    p.restore()
    np.testing.assert_array_equal(w.view(np.uint16), before)
