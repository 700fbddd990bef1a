"""Trainer.init_lors / LoRSConfig(init="lors") through the Trainer (sparseft/train/lors_init.py).

The estimate G ⊙ M is checked against an independent path: the same batches run through the
model's plain step (``run_step``) in sparse full fine-tuning mode, whose weight gradient is
gyᵀx sampled at the mask (a different code path from the observed adapter backward), and against
a float64 torch autograd of the same loss on one layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import sparseft as sft
from sparseft.data.corpus import TokenData
from sparseft.models import GPT, GPTConfig
from sparseft.models.graph import run_step
from sparseft.train import lors_init

CFG = GPTConfig(vocab_size=64, n_layer=1, n_head=2, d_model=16, seq_len=12)
DATA = np.random.default_rng(5).integers(0, 64, 3000)


def _model(sparsity: float = 0.5) -> Any:
    m = GPT.random(CFG, seed=0)
    sft.sparsify(m, sparsity=sparsity, method="magnitude")
    return m


def _trainer(init: str = "lors", **kw: Any) -> sft.Trainer:
    return sft.Trainer(_model(), adapter=sft.LoRSConfig(r=2, init=init), seed=kw.pop("seed", 3), **kw)


def _reference_grads(batches: int, batch_size: int, seq_len: int, seed: int) -> dict[str, np.ndarray]:
    """Σ over the same calibration batches of the base-mode weight gradient (G at the mask)."""
    m = _model()
    m.train_base(True)
    ds = TokenData(DATA)
    rng = np.random.default_rng([seed, lors_init._CALIB_STREAM])
    out: dict[str, np.ndarray] = {}
    for _ in range(batches):
        x, y = ds.sample(rng, batch_size, seq_len)
        m.zero_grad()
        run_step(m, x, y)
        for name, g in m.gradients().items():
            if name.endswith(".weight") and name[: -len(".weight")] in m.linears():
                key = name[: -len(".weight")]
                out[key] = out.get(key, 0) + g.astype(np.float64)
    return out


@pytest.mark.parametrize("budget", [None, 0.7])
@pytest.mark.parametrize(("batches", "batch_size", "seq_len"), [(1, 1, 12), (3, 4, 7)])
def test_estimate_matches_base_mode_gradient(
    budget: Any, batches: int, batch_size: int, seq_len: int
) -> None:
    sft.set_num_threads(1)
    tr = _trainer(memory_budget=budget)
    G = lors_init.estimate_masked_grads(tr, DATA, batches=batches, batch_size=batch_size, seq_len=seq_len)
    ref = _reference_grads(batches, batch_size, seq_len, seed=3)
    layers = lors_init.adapted_layers(tr.model)
    assert list(G) == list(layers) == list(ref)
    for name, g in G.items():
        assert g.dtype == np.float32 and g.shape == layers[name].mask.shape
        assert not g[~layers[name].mask].any()  # exactly 0 off the mask
        scale = float(np.abs(ref[name]).max())
        np.testing.assert_allclose(g, ref[name], rtol=1e-4, atol=1e-5 * scale, err_msg=name)
    # the estimate leaves no adapter gradient behind and does not move the optimizer
    assert all(not v.any() for v in tr.model.gradients().values())
    assert tr.step == 0 and tr.optimizer.t == 0


def test_estimate_matches_torch_autograd_one_layer() -> None:
    """G of the last MLP projection equals torch's float64 gradient of the mean token loss with
    respect to that weight, taken through the model's own activations (x in, gy out)."""
    torch = pytest.importorskip("torch")
    sft.set_num_threads(1)
    tr = _trainer()
    G = lors_init.estimate_masked_grads(tr, DATA, batches=1, batch_size=2, seq_len=12)
    name = "h.0.mlp.c_proj"
    layer = lors_init.adapted_layers(tr.model)[name]
    seen: dict[str, np.ndarray] = {}
    orig = type(layer).backward

    def spy(gy: np.ndarray, x: np.ndarray | None = None) -> Any:
        seen["x"], seen["gy"] = x.copy(), gy.copy()  # type: ignore[union-attr]
        return orig(layer, gy, x=x)

    layer.backward = spy  # type: ignore[method-assign]
    try:
        lors_init.estimate_masked_grads(tr, DATA, batches=1, batch_size=2, seq_len=12)
    finally:
        del layer.backward
    x = torch.tensor(seen["x"].reshape(-1, layer.in_features), dtype=torch.float64)
    gy = torch.tensor(seen["gy"].reshape(-1, layer.out_features), dtype=torch.float64)
    W = torch.tensor(layer.base.to_dense(), dtype=torch.float64, requires_grad=True)
    (x @ W.T * gy).sum().backward()  # d/dW of <gy, x Wᵀ> is gyᵀ x
    assert W.grad is not None
    want = W.grad.numpy() * layer.mask
    np.testing.assert_allclose(G[name], want, rtol=1e-4, atol=1e-6 * float(np.abs(want).max()))


def test_init_lors_sets_a_from_the_svd_in_place() -> None:
    sft.set_num_threads(1)
    tr = _trainer()
    layers = lors_init.adapted_layers(tr.model)
    before = {n: (L.A, L.B, L.A.copy()) for n, L in layers.items()}
    G = lors_init.estimate_masked_grads(tr, DATA, batches=2, batch_size=4, seq_len=12)
    norms = tr.init_lors(DATA, batches=2, batch_size=4, seq_len=12)
    assert set(norms) == set(layers) and all(v > 0 for v in norms.values())
    for n, L in layers.items():
        A, B, A0 = before[n]
        assert L.A is A and L.B is B  # the optimizer's arrays, updated in place
        assert L.init == "lors" and not B.any() and not np.array_equal(A, A0)
        twin = sft.LoRSLinear(L.base.to_dense(), L.mask, r=L.r, init="lors", init_grad=G[n], seed=L.seed)
        np.testing.assert_array_equal(L.A, twin.A)
        # A spans the top right singular vectors of G ⊙ M
        _, _, vt = np.linalg.svd(G[n].astype(np.float64))
        top = vt[: L.r]
        proj = A.astype(np.float64) @ top.T @ top
        np.testing.assert_allclose(proj, A, atol=1e-3 * float(np.abs(A).max()))


def test_fit_runs_the_init_and_keeps_the_data_order() -> None:
    """fit() with init="lors" initializes first (CALIBRATION_BATCHES batches of its batch shape);
    the calibration draws its own batches, so the first training loss equals the "lora" run's
    (B = 0: both start from the pruned model on the same batch)."""
    sft.set_num_threads(1)
    tr, twin, lora = _trainer("lors"), _trainer("lors"), _trainer("lora")
    twin.init_lors(DATA, batches=lors_init.CALIBRATION_BATCHES, batch_size=4, seq_len=12)
    h = tr.fit(DATA, steps=1, batch_size=4, seq_len=12, progress=False)
    h_lora = lora.fit(DATA, steps=1, batch_size=4, seq_len=12, progress=False)
    assert h.loss[0] == h_lora.loss[0]
    twins = lors_init.adapted_layers(twin.model)
    for n, L in lors_init.adapted_layers(tr.model).items():
        assert L.init == "lors"
        # dA = s·Bᵀ(G ⊙ M) = 0 at B = 0, so the first step leaves A at the init
        np.testing.assert_array_equal(L.A, twins[n].A, err_msg=n)
        assert L.B.any()
    tr.fit(DATA, steps=2, batch_size=4, seq_len=12, progress=False)  # resuming does not re-init
    assert any(not np.array_equal(L.A, twins[n].A) for n, L in lors_init.adapted_layers(tr.model).items())


def test_errors() -> None:
    tr = _trainer()
    with pytest.raises(ValueError, match="batches"):
        tr.init_lors(DATA, batches=0)
    with pytest.raises(TypeError, match="batch_size"):
        tr.init_lors(DATA, batch_size=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seq_len"):
        tr.init_lors(DATA, seq_len=CFG.seq_len + 1)
    with pytest.raises((TypeError, ValueError), match="data"):
        tr.init_lors(np.array([1, 2, 3]), batch_size=4, seq_len=12)  # too short
    with pytest.raises((TypeError, ValueError), match="lors_scale"):
        tr.init_lors(DATA, batch_size=2, seq_len=12, lors_scale="nope")
    assert all(L.init == "lora" for L in lors_init.adapted_layers(tr.model).values())  # nothing changed
    no_adapter = sft.Trainer(_model(), seed=0)
    with pytest.raises(ValueError, match="adapter mode"):
        lors_init.init_lors(no_adapter, DATA, batch_size=2, seq_len=12)
    tr.fit(DATA, steps=1, batch_size=2, seq_len=12, progress=False)
    with pytest.raises(RuntimeError, match="already taken 1 steps"):
        tr.init_lors(DATA, batch_size=2, seq_len=12)
    trained = _trainer("lora")
    trained.fit(DATA, steps=1, batch_size=2, seq_len=12, progress=False)
    trained.step = 0  # as if loaded: B != 0 is refused all the same
    with pytest.raises(RuntimeError, match="B != 0"):
        trained.init_lors(DATA, batch_size=2, seq_len=12)


def test_all_zero_gradient_is_a_clear_error() -> None:
    """A layer whose G ⊙ M is all zero (its whole output gradient vanishes) names the layer."""
    tr = _trainer("lora")
    layers = lors_init.adapted_layers(tr.model)
    name = next(iter(layers))
    orig = lors_init.estimate_masked_grads

    def estimate(*a: Any, **k: Any) -> dict[str, np.ndarray]:
        G = orig(*a, **k)
        G[name][...] = 0.0
        return G

    mp = pytest.MonkeyPatch()
    mp.setattr(lors_init, "estimate_masked_grads", estimate)
    try:
        before = {n: L.A.copy() for n, L in layers.items()}
        with pytest.raises(ValueError, match=f"{name}.*all zero"):
            tr.init_lors(DATA, batch_size=2, seq_len=12)
        for n, L in layers.items():  # no layer changed
            np.testing.assert_array_equal(L.A, before[n])
    finally:
        mp.undo()


@pytest.mark.mpi
def test_every_rank_gets_the_single_process_init(tmp_path: Any) -> None:
    """With ``comm`` (2 ranks, each running both shards of every calibration batch), all ranks
    end with the same A bit for bit, and it is the single process's A up to float32 summation
    order (the ranks sum G over two half batches, the single process over one whole batch)."""
    import os
    import subprocess
    import sys

    from .test_distributed import ROOT, _mpirun

    cmd = _mpirun()
    worker = ROOT / "tests" / "lors_init_mpi_worker.py"
    out = tmp_path / "a.npz"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    p = subprocess.run(
        [*cmd, "-n", "2", sys.executable, str(worker), str(out)],
        capture_output=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )
    assert p.returncode == 0, (p.stdout + p.stderr).decode("utf-8", "replace")[-3000:]
    got = dict(np.load(out))
    digests = got.pop("digests")
    assert len(set(digests.tolist())) == 1 and len(digests) == 2
    from . import lors_init_mpi_worker as w

    threads = sft.get_num_threads()
    sft.set_num_threads(1)
    try:
        ref = w.init(None)
    finally:
        sft.set_num_threads(threads)
    assert set(ref) == set(got)
    for n, a in ref.items():
        np.testing.assert_allclose(got[n], a, rtol=1e-4, atol=1e-6, err_msg=n)


@pytest.mark.parametrize(("fmt", "magnitude"), [("csr", False), ("dense", True), ("auto", True)])
def test_init_on_compressed_bases_and_dora(fmt: str, magnitude: bool) -> None:
    """CSR bases and weight-normalized (DoRA) adapters take the init too, on the targeted
    linears only; G is the same whatever the base format (the model is the same)."""
    sft.set_num_threads(1)
    ref = _trainer()
    G_ref = lors_init.estimate_masked_grads(ref, DATA, batches=1, batch_size=2, seq_len=12)
    cfg = sft.LoRSConfig(r=2, init="lors", format=fmt, magnitude=magnitude, target_modules=("c_fc", "c_proj"))
    tr = sft.Trainer(_model(), adapter=cfg, seed=3)
    G = lors_init.estimate_masked_grads(tr, DATA, batches=1, batch_size=2, seq_len=12)
    assert sorted(G) == ["h.0.attn.c_proj", "h.0.mlp.c_fc", "h.0.mlp.c_proj"]
    for n, g in G.items():
        np.testing.assert_allclose(
            g, G_ref[n], rtol=1e-4, atol=1e-6 * float(np.abs(G_ref[n]).max()), err_msg=n
        )
    tr.fit(DATA, steps=1, batch_size=2, seq_len=12, progress=False)
    layers = lors_init.adapted_layers(tr.model)
    assert all(L.init == "lors" for L in layers.values()) and len(layers) == 3


def test_resume_after_the_init_is_bit_identical(tmp_path: Any) -> None:
    """A checkpoint of an init="lors" run resumes without re-initializing: same losses and
    weights as the uninterrupted run."""
    sft.set_num_threads(1)
    whole = _trainer()
    whole.fit(DATA, steps=4, batch_size=2, seq_len=12, progress=False)
    half = _trainer()
    # the same run (horizon 4 steps: the lr schedule) stopped after step 2
    half.fit(DATA, steps=4, batch_size=2, seq_len=12, progress=False, callbacks=[lambda t, r: r["step"] < 2])
    assert half.step == 2
    half.save(tmp_path / "ck")
    resumed = sft.Trainer.load(tmp_path / "ck")
    resumed.fit(DATA, steps=4, batch_size=2, seq_len=12, progress=False)
    assert resumed.history.loss == whole.history.loss
    for (n, a), b in zip(whole.model.parameters().items(), resumed.model.parameters().values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=n)
