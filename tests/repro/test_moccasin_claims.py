"""Moccasin (ICML 2023) at small scale: against the Checkmate MILP on the papers' graphs, and the
Trainer executing a plan at the peak it predicts. Graphs from ../shared/data/remat-graphs
(skipped where absent). See docs/comparison.md."""

from __future__ import annotations

import pathlib
import time

import pytest

import sparseft as sft
from sparseft.models import GPT, GPTConfig

from .conftest import BATCH, CFG, SEQ, corpus_split

pytestmark = pytest.mark.repro


def _graph(shared_data: pathlib.Path, name: str) -> sft.Graph:
    return sft.Graph.from_json(shared_data / "remat-graphs" / f"{name}.json")


def _solve(g: sft.Graph, solver: str, budget: float, limit: float) -> tuple[sft.Schedule, float]:
    t0 = time.perf_counter()
    plan = sft.Planner(g, budget, solver=solver, time_limit=limit, order="given").solve()
    return plan, time.perf_counter() - t0


def _check(g: sft.Graph, plan: sft.Schedule) -> None:
    peak, dur = sft.simulate(g, plan.steps)[:2]
    assert peak <= plan.budget and dur == plan.duration


MILP_LIMIT = 60.0  # seconds of HiGHS after the warm start: enough to prove the n100 optimum on a quiet host


@pytest.mark.parametrize(
    ("name", "budget"), [("random_layered_n100", 0.9), ("VGG16_b256_224x224_train", 0.9)]
)
def test_moccasin_reaches_the_checkmate_optimum(shared_data: pathlib.Path, name: str, budget: float) -> None:
    """Moccasin proves its own optimum (duration = its lower bound); the Checkmate MILP, warm
    started from Moccasin's schedule (highspy MIP start), finds nothing better and either proves
    the same optimum or stops at the time limit with a proved gap, which is printed and bounded.

    VGG16_b256_224x224_train is the smallest real training graph (the *_test graphs are chains
    whose smallest feasible budget is their peak: nothing to plan). On random_layered_n100 HiGHS
    proves the optimum in about 34 s on a quiet host; on a loaded one it may stop at the limit
    with a proved gap (docs/comparison.md)."""
    pytest.importorskip("highspy")
    from .milp_warm import checkmate_warm

    g = _graph(shared_data, name)
    moc, t_moc = _solve(g, "moccasin", budget, 20)
    assert moc.status == "optimal" and moc.duration == moc.lower_bound
    _check(g, moc)
    cm, rec = checkmate_warm(g, budget, moc, MILP_LIMIT)
    assert cm.steps and cm.duration is not None and moc.duration is not None
    _check(g, cm)
    gap = (moc.duration - rec["lower_bound"]) / moc.duration
    print(
        f"\n{name} at {budget}: moccasin {moc.status} TDI {100 * moc.overhead:.2f}% in {t_moc:.1f} s; checkmate "
        f"MILP warm-started from it: {rec['status']} after {rec['seconds']:.1f} s, recompute cost {rec['primal']:g} "
        f"(start {rec['start_cost']}), proved bound {rec['dual']:g}; optimum within {100 * gap:.3f}% of "
        f"moccasin's duration"
    )
    assert rec["primal"] == rec["start_cost"]  # the MIP start was taken as the incumbent
    assert cm.duration == moc.duration  # the MILP found nothing better than moccasin
    if cm.status == "optimal":
        assert gap == 0.0
    else:
        assert gap <= 0.01  # a loaded host may stop HiGHS before its proof (docs/comparison.md)


def test_moccasin_as_good_as_checkmate_much_sooner_n250(shared_data: pathlib.Path) -> None:
    g = _graph(shared_data, "random_layered_n250")
    moc, t_moc = _solve(g, "moccasin", 0.9, 10)
    cm, t_cm = _solve(g, "checkmate", 0.9, 20)
    t_moc_best = moc.time_to_best if moc.time_to_best is not None else t_moc
    t_cm_best = cm.time_to_best if cm.time_to_best is not None else t_cm
    print(
        f"\nrandom_layered_n250 at 0.9: moccasin {moc.status} TDI {100 * moc.overhead:.2f}% best at "
        f"{t_moc_best:.1f} s; checkmate {cm.status} "
        f"{'TDI %.2f%%' % (100 * cm.overhead) if cm.steps else 'no schedule'} after {t_cm_best:.1f} s"
    )
    assert moc.steps
    _check(g, moc)
    if cm.steps:
        assert moc.duration <= cm.duration
    assert t_moc_best < 0.5 * t_cm_best


def test_trainer_executes_the_planned_peak() -> None:
    sft.set_num_threads(1)
    model = GPT.random(GPTConfig(**CFG), seed=0)
    sft.sparsify(model, sparsity=0.5, method="magnitude")
    trainer = sft.Trainer(model, adapter=sft.LoRSConfig(r=4), memory_budget=0.5, seed=0, plan_time_limit=5)
    trainer.fit(corpus_split()[0], steps=3, batch_size=BATCH, seq_len=SEQ, progress=False)
    plan = trainer.plan
    assert plan is not None and plan.steps
    measured = trainer.peak_activation_bytes
    print(f"\nplanned peak {plan.peak_memory:,} B, executed peak {measured:,} B, budget {plan.budget:,} B")
    assert abs(measured - plan.peak_memory) <= 0.10 * plan.peak_memory
    assert measured <= plan.budget
