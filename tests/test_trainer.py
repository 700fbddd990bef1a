"""The Trainer on protocol models: budgets executed bit-identically, resume, checkpoints, bad input."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest

import sparseft as sft
from sparseft.data import builtin_corpus
from sparseft.train import lr_at, parse_bytes

from .test_executor import TinyLM, TinyMLP

TEXT = builtin_corpus()[:20000]


def _params(model) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in model.parameters().items()}


def test_fit_learns_and_records_history() -> None:
    m = TinyLM(n_layer=2)
    tr = sft.Trainer(m, lr=3e-2, warmup=2, seed=1)
    h = tr.fit(TEXT, steps=30, batch_size=4, seq_len=16, progress=False)
    assert h.step == list(range(1, 31)) and tr.step == 30
    assert np.mean(h.loss[-5:]) < np.mean(h.loss[:5]) - 0.5
    assert h.lr[0] == pytest.approx(3e-2 / 2) and h.lr[1] == pytest.approx(3e-2)
    assert h.lr[-1] < h.lr[2]  # cosine decay
    assert all(p > 0 for p in h.peak_bytes) and all(t > 0 for t in h.tokens_per_s)
    assert tr.plan is not None and tr.plan.solver == "none" and tr.plan.recomputations == 0
    assert tr.peak_activation_bytes == tr.plan.peak_memory
    ev = tr.evaluate(builtin_corpus()[20000:24000], batch_size=4, seq_len=16)
    assert ev["perplexity"] == pytest.approx(math.exp(ev["loss"]))
    assert ev["loss"] < math.log(256)


def test_budget_is_executed_bit_identically_and_peak_within_it() -> None:
    runs = {}
    for budget in (None, 0.5):
        m = TinyLM(n_layer=4, d=16, h=48)
        tr = sft.Trainer(m, lr=1e-2, memory_budget=budget, seed=3, plan_time_limit=5)
        h = tr.fit(TEXT, steps=4, batch_size=3, seq_len=8, progress=False)
        runs[budget] = (h.loss, _params(m), tr)
    loss0, p0, tr0 = runs[None]
    loss1, p1, tr1 = runs[0.5]
    assert loss0 == loss1
    for k in p0:
        assert np.array_equal(p0[k], p1[k]), k
    assert tr1.plan is not None and tr1.plan.recomputations > 0
    assert tr1.peak_activation_bytes <= tr1.plan.budget <= 0.5 * tr0.peak_activation_bytes
    assert tr1.peak_activation_bytes == tr1.plan.peak_memory  # the store measures what was planned
    # one solve per shape: a second fit reuses the cached plan
    plan = tr1.plan
    tr1.fit(TEXT, steps=5, batch_size=3, seq_len=8, progress=False)
    assert tr1.plan is plan


def test_budget_in_bytes_and_below_minimum() -> None:
    m = TinyLM(n_layer=2)
    sg, _ = sft.Trainer(m, seed=0).plan_for(2, 4)
    need, _ = sg.graph.min_budget()
    tr = sft.Trainer(TinyLM(n_layer=2), memory_budget=need - 1)
    with pytest.raises(ValueError, match=rf"below the minimum {need} bytes"):
        tr.fit(TEXT, steps=3, batch_size=2, seq_len=4, progress=False)
    assert tr.step == 0 and len(tr.history) == 0
    tr = sft.Trainer(TinyLM(n_layer=2), memory_budget=f"{need + 64}B", plan_time_limit=5)
    tr.fit(TEXT, steps=1, batch_size=2, seq_len=4, progress=False)
    assert tr.peak_activation_bytes <= need + 64


def test_resume_is_bit_identical(tmp_path: pathlib.Path) -> None:
    kw = dict(lr=1e-2, warmup=2, weight_decay=0.1, seed=7, memory_budget=0.8, plan_time_limit=5)
    m = TinyLM(n_layer=2)
    full = sft.Trainer(m, **kw)
    full.fit(TEXT, steps=6, batch_size=2, seq_len=8, progress=False)

    m2 = TinyLM(n_layer=2)
    part = sft.Trainer(m2, **kw)
    part.fit(TEXT, steps=6, batch_size=2, seq_len=8, progress=False, callbacks=[lambda t, r: r["step"] < 3])
    assert part.step == 3
    part.save(tmp_path / "ckpt")
    part.save(tmp_path / "ckpt")  # overwriting an existing checkpoint is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    resumed = sft.Trainer.load(tmp_path / "ckpt", model=TinyLM(n_layer=2, seed=99))
    assert resumed.step == 3
    resumed.fit(TEXT, steps=6, batch_size=2, seq_len=8, progress=False)
    assert resumed.history.loss == full.history.loss
    for k, v in full.model.parameters().items():
        assert np.array_equal(v, resumed.model.parameters()[k]), k


def test_corrupt_and_truncated_checkpoints(tmp_path: pathlib.Path) -> None:
    tr = sft.Trainer(TinyMLP(), lr=1e-2)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 8)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    tr.fit((X, y), steps=2, batch_size=4, progress=False)
    good = tmp_path / "good"
    tr.save(good)
    assert sft.Trainer.load(good, model=TinyMLP()).step == 2

    import shutil

    def copy(name: str) -> pathlib.Path:
        d = tmp_path / name
        shutil.copytree(good, d)
        return d

    d = copy("trunc")
    data = (d / "state.npz").read_bytes()
    (d / "state.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"state\.npz.*truncated"):
        sft.Trainer.load(d, model=TinyMLP())
    d = copy("flip")
    data = bytearray((d / "state.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "state.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"state\.npz.*SHA-256"):
        sft.Trainer.load(d, model=TinyMLP())
    d = copy("json")
    (d / "trainer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"trainer\.json.*corrupt"):
        sft.Trainer.load(d, model=TinyMLP())
    d = copy("state")
    doc = json.loads((d / "trainer.json").read_text())
    doc["history"] = {"nonsense": [1]}
    (d / "trainer.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"trainer\.json.*bad trainer state"):
        sft.Trainer.load(d, model=TinyMLP())
    del doc["step"]
    (d / "trainer.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"trainer\.json.*missing entry"):
        sft.Trainer.load(d, model=TinyMLP())
    d = copy("missing")
    (d / "model.npz").unlink()
    with pytest.raises(ValueError, match=r"model\.npz.*missing"):
        sft.Trainer.load(d, model=TinyMLP())
    with pytest.raises(ValueError, match="not a sparseft checkpoint"):
        sft.Trainer.load(tmp_path / "nowhere", model=TinyMLP())
    with pytest.raises(ValueError, match=r"fc2.weight: expected shape \(4, 16\)"):
        sft.Trainer.load(good, model=TinyMLP(hidden=16, classes=4))  # different head: other shapes
    # a failed save leaves the old checkpoint in place
    doc = json.loads((good / "trainer.json").read_text())
    tr.history.loss.append(object())  # type: ignore[arg-type]  # not JSON-serializable
    with pytest.raises(TypeError):
        tr.save(good)
    assert json.loads((good / "trainer.json").read_text()) == doc
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_mlp_arrays_and_accuracy() -> None:
    rng = np.random.default_rng(5)
    centers = 3 * rng.standard_normal((3, 8))
    y = rng.integers(0, 3, 300)
    X = (centers[y] + rng.standard_normal((300, 8))).astype(np.float32)
    tr = sft.Trainer(TinyMLP(), lr=3e-2, seed=0)
    before = tr.evaluate((X, y), batch_size=64)["accuracy"]
    h = tr.fit((X, y), steps=60, batch_size=32, progress=False, eval_data=(X, y), eval_every=20)
    assert h.eval_step == [20, 40, 60]
    after = tr.evaluate((X, y), batch_size=64)
    assert after["accuracy"] > max(0.9, before)
    assert h.eval_metric[-1] == pytest.approx(after["accuracy"])


def test_accumulate_averages_micro_batches() -> None:
    m = TinyLM(n_layer=1)
    tr = sft.Trainer(m, lr=1e-2, accumulate=3, grad_clip=None)
    tr.fit(TEXT, steps=2, batch_size=2, seq_len=4, progress=False)
    assert len(tr.history) == 2 and tr.optimizer.t == 2


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"lr": 0.0}, ValueError, "lr: expected a finite number > 0"),
        ({"lr": "1e-3"}, TypeError, "lr: expected a number"),
        ({"schedule": "step"}, ValueError, "schedule: expected one of"),
        ({"warmup": -1}, ValueError, "warmup: expected an int >= 0"),
        ({"accumulate": 0}, ValueError, "accumulate: expected an int >= 1"),
        ({"grad_clip": -1.0}, ValueError, "grad_clip"),
        ({"memory_budget": "lots"}, ValueError, "memory_budget: expected a size like"),
        ({"memory_budget": 1.5}, ValueError, r"memory_budget: a float is a fraction"),
        ({"memory_budget": 0}, ValueError, "memory_budget: expected a positive"),
        ({"memory_budget": [1]}, TypeError, "memory_budget"),
        ({"planner": "magic"}, ValueError, "planner: expected one of"),
        ({"adapter": "lors"}, TypeError, "adapter: expected a sparseft.LoRSConfig"),
        ({"adapter": sft.LoRSConfig(r=2)}, TypeError, "adapter: TinyLM has no add_adapters"),
        ({"seed": -1}, ValueError, "seed: expected an int >= 0"),
    ],
)
def test_bad_configs(kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        sft.Trainer(TinyLM(n_layer=1), **kwargs)


def test_bad_model() -> None:
    with pytest.raises(TypeError, match=r"model: expected a sparseft\.models\.graph\.Model"):
        sft.Trainer(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "exc", "match"),
    [
        (b"", ValueError, "data: no tokens"),
        ("", ValueError, "data: no tokens"),
        (b"short", ValueError, "data: too short, 5 tokens for windows of seq_len"),
        (np.array([1.5, 2.5]), TypeError, "data: expected an integer array"),
        (np.zeros((2, 30), np.int64), ValueError, "data: expected a 1-D array"),
        (np.full(100, 300), ValueError, r"data: token ids must be in \[0, 256\)"),
        (12, TypeError, "data: expected token ids"),
        ((np.zeros((3, 8)),), ValueError, "expected an"),
    ],
)
def test_bad_data_fails_before_the_first_step(data, exc, match) -> None:
    m = TinyLM(n_layer=1)
    before = _params(m)
    tr = sft.Trainer(m)
    with pytest.raises(exc, match=match):
        tr.fit(data, steps=2, batch_size=2, seq_len=8, progress=False)
    assert tr.step == 0
    for k, v in m.parameters().items():
        assert np.array_equal(v, before[k])


def test_bad_fit_args() -> None:
    tr = sft.Trainer(TinyLM(n_layer=1))
    with pytest.raises(ValueError, match="steps: expected an int >= 1"):
        tr.fit(TEXT, steps=0, progress=False)
    with pytest.raises(TypeError, match="batch_size: expected an int"):
        tr.fit(TEXT, steps=1, batch_size=2.0, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eval_every: expected an int >= 1"):
        tr.fit(TEXT, steps=1, eval_every=0, progress=False)
    with pytest.raises(TypeError, match="callbacks: expected callables"):
        tr.fit(TEXT, steps=1, callbacks=[3], progress=False)  # type: ignore[list-item]


def test_text_file_data(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "corpus.txt"
    f.write_text("hello sparse world\n" * 20, encoding="utf-8")
    tr = sft.Trainer(TinyLM(n_layer=1))
    tr.fit(str(f), steps=1, batch_size=2, seq_len=8, progress=False)
    tr.fit(f, steps=2, batch_size=2, seq_len=8, progress=False)
    assert tr.step == 2
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"\xff\xfe caf\xe9" * 10)
    with pytest.raises(ValueError, match="cannot read text file"):
        tr.fit(bad, steps=3, progress=False)


def test_lr_schedules_and_parse_bytes() -> None:
    assert [lr_at(s, 1.0, 10, 2, "constant") for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_at(2, 1.0, 10, 2, "cosine") == 1.0 and lr_at(10, 1.0, 10, 2, "cosine") == pytest.approx(0.0)
    assert lr_at(6, 1.0, 10, 2, "linear") == pytest.approx(0.5)
    assert parse_bytes("64MiB") == 64 * 2**20 and parse_bytes("1.5 GB") == 1_500_000_000
    assert parse_bytes(1000) == 1000 and parse_bytes(0.5) == 0.5
    assert parse_bytes("0.5") == 0.5 and parse_bytes("50%") == 0.5 and parse_bytes("4096") == 4096
    with pytest.raises(ValueError, match="fraction of the no-recompute peak must be in"):
        parse_bytes("150%")


def test_plan_for_before_fit_still_replans_with_the_profile() -> None:
    tr = sft.Trainer(TinyLM(n_layer=4, d=16, h=48), memory_budget=0.5, seed=3, plan_time_limit=5)
    _, first = tr.plan_for(3, 8)
    assert first.solver == "blocks"  # no profile yet: per-block checkpointing where it fits
    tr.fit(TEXT, steps=1, batch_size=3, seq_len=8, progress=False)
    assert tr.plan is not first and tr.plan.duration is not None and tr.plan.duration > tr.plan.graph.n


def test_lors_config_target_modules_choose_the_adapted_linears() -> None:
    """LoRSConfig(target_modules=...) adapts only the named linears of a model the Trainer wraps."""
    import sparseft as sft

    cfg = sft.models.GPTConfig(vocab_size=32, n_layer=2, n_head=2, d_model=16, seq_len=8)
    model = sft.models.GPT.random(cfg, seed=0)
    trainer = sft.Trainer(model, adapter=sft.LoRSConfig(r=2, target_modules=("c_attn",)))
    names = {k.rsplit(".", 1)[0] for k in trainer.model.parameters()}
    assert names and all(n.endswith("c_attn") for n in names), names
    with pytest.raises(TypeError, match="target_modules"):
        sft.LoRSConfig(target_modules="c_attn")
    with pytest.raises(ValueError, match="target_modules"):
        sft.LoRSConfig(target_modules=())
