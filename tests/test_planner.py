"""sft.Planner / sft.Schedule: every solver valid and within budget, exact solvers agree with each
other and with a brute force, honest statuses, validation messages, real graphs."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparseft as sft
from sparseft import _core

from . import reference as ref

SOLVERS = ["moccasin", "checkmate", "chen", "greedy", "dtr", "auto", "none"]


def preds_of(g: sft.Graph) -> list[list[int]]:
    return [[int(u) for u in g.pred_idx[g.pred_ptr[v] : g.pred_ptr[v + 1]]] for v in range(g.n)]


def check_schedule(g: sft.Graph, plan: sft.Schedule) -> None:
    """Independent check of a returned schedule with the Python reference simulator."""
    assert plan.status in ("optimal", "feasible", "infeasible", "unknown")
    if plan.status in ("infeasible", "unknown"):
        assert plan.steps == [] and plan.peak_memory is None
        return
    codes = [g.index(v) if op == "compute" else -1 - g.index(v) for op, v in plan.steps]
    peak, dur, prof = ref.remat_simulate(codes, g.memory.tolist(), g.duration.tolist(), preds_of(g))
    assert peak == plan.peak_memory <= plan.budget
    assert dur == plan.duration >= g.total_duration
    assert plan.overhead == pytest.approx(dur / g.total_duration - 1)
    assert plan.memory_profile().tolist() == prof
    if plan.lower_bound is not None:
        assert plan.lower_bound <= plan.duration


def assert_soft_start_plans(g: sft.Graph) -> None:
    """At 0.75 of the no-remat peak the heuristics find nothing; Moccasin's soft-capacity start must
    still return a valid in-budget schedule with a lower bound."""
    b = int(0.75 * g.peak_memory())
    assert sft.Planner(g, b, solver="greedy", order="given").solve().status == "infeasible"
    plan = sft.Planner(g, b, solver="moccasin", time_limit=20, threads=2, order="given").solve()
    check_schedule(g, plan)
    assert plan.status in ("feasible", "optimal") and plan.peak_memory <= b
    assert plan.lower_bound is not None and plan.lower_bound <= plan.duration


def random_dag(rng: np.random.Generator, n: int, p: float = 0.35) -> sft.Graph:
    edges = [(u, v) for v in range(1, n) for u in range(v) if rng.random() < p]
    mem = rng.integers(1, 20, size=n).tolist()
    dur = rng.integers(1, 20, size=n).tolist()
    return sft.Graph(list(range(n)), edges, mem, dur)


def budgets(g: sft.Graph) -> list[int]:
    lo, _ = g.min_budget()
    hi = g.peak_memory()
    return sorted({lo, (lo + hi) // 2, hi})


# ------------------------------------------------------------------ correctness of every solver
@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_valid_and_within_budget(solver: str) -> None:
    rng = np.random.default_rng(7)
    graphs = [
        sft.graphs.training_graph(6, seed=1),
        random_dag(rng, 12),
        sft.graphs.random_layered(30, seed=2),
    ]
    seen_feasible = 0
    for g in graphs:
        for b in budgets(g):
            plan = sft.Planner(g, b, solver=solver, time_limit=5, threads=1, max_copies=3).solve()
            check_schedule(g, plan)
            seen_feasible += plan.status in ("optimal", "feasible")
            if solver == "none":  # order="auto": the lower of the two orders' peaks
                assert (plan.status == "optimal") == (b >= g.peak_memory(g.low_memory_order()))
    assert seen_feasible >= 3  # each solver meets at least the no-remat budgets


@st.composite
def tiny_case(draw):
    n = draw(st.integers(2, 8))
    edges = [(u, v) for v in range(1, n) for u in range(v) if draw(st.integers(0, 2)) == 0]
    # connect every node to an earlier one, so recomputation chains appear
    for v in range(1, n):
        if not any(e[1] == v for e in edges):
            edges.append((draw(st.integers(0, v - 1)), v))
    mem = draw(st.lists(st.integers(1, 9), min_size=n, max_size=n))
    dur = draw(st.lists(st.integers(1, 9), min_size=n, max_size=n))
    g = sft.Graph(list(range(n)), edges, mem, dur)
    lo, _ = g.min_budget()
    b = draw(st.integers(lo, max(lo, g.peak_memory())))
    return g, b


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_case())
def test_exact_solvers_equal_brute_force_on_tiny_graphs(case) -> None:
    g, b = case
    args = (g.memory.tolist(), g.duration.tolist(), preds_of(g), g.order_idx.tolist(), b)
    best = ref.remat_brute_force(*args)  # over the stage schedules of the order (the exact class)
    general = ref.remat_brute_force_general(*args)  # over every schedule following the order
    # min_budget is a lower bound only: a budget above it may still admit no schedule at all
    assert (general is None and best is None) or (general is not None and (best is None or general <= best))
    for solver in ("moccasin", "checkmate"):
        plan = sft.Planner(
            g, b, solver=solver, time_limit=20, threads=1, max_copies=g.n, order="given"
        ).solve()
        check_schedule(g, plan)
        if general is None:
            assert plan.duration is None and plan.status in ("infeasible", "unknown"), plan
            continue
        if plan.duration is not None:
            # the bound holds for every schedule; "optimal" means the schedule attains it
            assert plan.lower_bound is not None and plan.lower_bound <= general <= plan.duration
            assert (plan.status == "optimal") == (plan.duration == plan.lower_bound), plan
        if best is None:
            # no stage schedule of this order fits; the heuristic fallbacks (DTR) plan general
            # schedules, so one within the budget (re-checked above) is "feasible", or "optimal"
            # only where the cut bound proves it
            assert plan.status in ("infeasible", "unknown") or (plan.steps and plan.peak_memory <= b), plan
        elif solver == "checkmate":
            assert plan.status == "optimal" and plan.duration == best and plan.lower_bound == best
        else:
            # Moccasin proves its class optimum; its multi-start (DTR, general schedules) may beat it
            assert plan.duration is not None and plan.duration <= best, plan
    greedy = sft.Planner(g, b, solver="greedy", order="given").solve()
    check_schedule(g, greedy)
    if greedy.duration is not None:
        assert general is not None and greedy.duration >= general


def test_brute_force_finds_recomputation() -> None:
    # a training chain under a tight budget needs recomputation: the exact answer is > total
    g = sft.graphs.training_graph(3, memory=[5, 5, 5], duration=[1, 1, 1])
    lo, _ = g.min_budget()
    best = ref.remat_brute_force(
        g.memory.tolist(), g.duration.tolist(), preds_of(g), g.order_idx.tolist(), lo
    )
    assert best is not None and best > g.total_duration
    plan = sft.Planner(g, lo, solver="moccasin", max_copies=4, threads=1, order="given").solve()
    assert plan.duration == best and plan.recomputations > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_moccasin_equals_checkmate_on_small_graphs(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    cases = [sft.graphs.training_graph(5 + 2 * seed, seed=seed), random_dag(rng, 10 + 4 * seed, p=0.2)]
    for g in cases:
        assert g.n <= 30
        lo, _ = g.min_budget()
        hi = g.peak_memory()
        for b in ((lo + hi) // 2, (lo + 3 * hi) // 4):
            # the same order for both (the papers' fixed-order class)
            mo = sft.Planner(
                g, b, solver="moccasin", time_limit=20, threads=2, max_copies=4, order="given"
            ).solve()
            cm = sft.Planner(g, b, solver="checkmate", time_limit=20, order="given").solve()
            check_schedule(g, mo)
            check_schedule(g, cm)
            if mo.status == "optimal" and cm.status == "optimal":
                assert mo.duration == cm.duration
            else:  # both must at least finish on these sizes
                pytest.fail(f"not both optimal: moccasin {mo.status}, checkmate {cm.status}")


# ------------------------------------------------------------------ statuses and honesty
def test_infeasible_for_the_class_is_reported_not_over_budget() -> None:
    # min_budget is only a lower bound: computing d needs c (kept for e) + b + d = 7 > 6
    g = sft.Graph(list("abcde"), [("a", "c"), ("b", "d"), ("c", "e"), ("d", "e")], [5, 5, 1, 1, 1], [1] * 5)
    lo, _ = g.min_budget()
    assert lo == 6
    best = ref.remat_brute_force(
        g.memory.tolist(), g.duration.tolist(), preds_of(g), g.order_idx.tolist(), lo
    )
    assert best is None
    for solver in ("moccasin", "checkmate", "greedy", "chen", "none"):
        plan = sft.Planner(g, lo, solver=solver, time_limit=5, max_copies=4, threads=1, order="given").solve()
        check_schedule(g, plan)
        assert plan.status in ("infeasible", "unknown"), solver
    # one unit more is enough, and the exact solvers prove it optimal
    best7 = ref.remat_brute_force(
        g.memory.tolist(), g.duration.tolist(), preds_of(g), g.order_idx.tolist(), 7
    )
    assert best7 is not None
    for solver in ("moccasin", "checkmate"):
        plan = sft.Planner(g, 7, solver=solver, time_limit=5, max_copies=4, threads=1, order="given").solve()
        check_schedule(g, plan)
        assert plan.status == "optimal" and plan.duration == best7


def test_time_limit_without_solution_is_unknown() -> None:
    g = sft.graphs.random_layered(120, seed=5)
    b = max(g.min_budget()[0], int(0.85 * g.peak_memory()))
    plan = sft.Planner(g, b, solver="checkmate", time_limit=0.5).solve()
    check_schedule(g, plan)
    assert plan.status in ("unknown", "feasible")
    assert plan.solve_time < 30


def test_moccasin_never_worse_than_greedy_and_reports_times() -> None:
    g = sft.graphs.random_layered(40, seed=11)
    b = max(g.min_budget()[0], int(0.8 * g.peak_memory()))
    gr = sft.Planner(g, b, solver="greedy").solve()
    mo = sft.Planner(g, b, solver="moccasin", time_limit=5, threads=2).solve()
    check_schedule(g, gr)
    check_schedule(g, mo)
    if gr.duration is not None:
        assert mo.duration is not None and mo.duration <= gr.duration
    assert mo.time_to_best is not None and 0 <= mo.time_to_best <= mo.solve_time + 1e-6


def test_moccasin_finds_a_schedule_where_the_heuristics_fail() -> None:
    # at this tight budget the heuristics find nothing; Moccasin's soft-capacity start (the
    # no-remat schedule or a looser heuristic schedule, then the peak shaved to the budget)
    # must still return a valid in-budget schedule
    assert_soft_start_plans(sft.graphs.random_layered(30, seed=2))


@pytest.mark.parametrize("lns_only", [False, True])
def test_soft_start_stops_at_the_first_in_budget_schedule(lns_only: bool) -> None:
    # the soft phase with stop_at_budget hands back an in-budget schedule that fits max_copies,
    # which the plain model then takes as its hint
    from sparseft.remat.solvers.moccasin import hint_copies, solve_moccasin

    g = sft.graphs.random_layered(30, seed=2)
    b = int(0.75 * g.peak_memory())
    res = solve_moccasin(
        g,
        b,
        time_limit=20,
        max_copies=2,
        threads=2,
        seed=0,
        hint=g.order_idx.tolist(),
        t0=time.perf_counter(),
        soft=True,
        stop_at_budget=True,
        lns_only=lns_only,
    )
    assert res.status in ("feasible", "optimal") and res.computes is not None
    codes = _core.remat_compact(np.array(res.computes, dtype=np.int64), g.pred_ptr, g.pred_idx, g.n)
    peak, dur = sft.simulate(g, codes)
    assert peak <= b and dur > g.total_duration
    pos = np.empty(g.n, dtype=np.int64)
    pos[g.order_idx] = np.arange(g.n)
    copies = hint_copies(res.computes, g, pos)
    assert copies is not None and max(len(c) for c in copies) <= 2


def test_moccasin_soft_start_through_lns_alone(monkeypatch) -> None:
    # with no time for the full portfolio, the soft start goes straight to LNS alone; the
    # result must still be a valid in-budget schedule, never worse than the start it restarts from
    from sparseft.remat import planner

    monkeypatch.setattr(planner, "_EXACT_SLICE", 0.0)
    g = sft.graphs.random_layered(30, seed=2)
    b = int(0.75 * g.peak_memory())
    plan = sft.Planner(g, b, solver="moccasin", time_limit=20, threads=2, order="given").solve()
    check_schedule(g, plan)
    assert plan.status in ("feasible", "optimal") and plan.peak_memory <= b


def test_moccasin_complete_hint_is_a_solution() -> None:
    # every variable is hinted: fixing them all to the hint must leave a feasible model whose
    # objective is the hint's recomputation cost
    from sparseft.remat.solvers.moccasin import hint_copies, solve_moccasin

    for seed in range(3):
        g = sft.graphs.random_layered(40, seed=seed)
        b = max(g.min_budget()[0], int(0.9 * g.peak_memory()))
        hint = sft.Planner(g, b, solver="greedy", order="given").solve()
        assert hint.duration is not None
        pos = np.empty(g.n, dtype=np.int64)
        pos[g.order_idx] = np.arange(g.n)
        copies = hint_copies(hint.codes.tolist(), g, pos)
        assert copies is not None
        res = solve_moccasin(
            g,
            b,
            hint=hint.codes.tolist(),
            time_limit=10,
            max_copies=max(len(c) for c in copies),
            threads=1,
            seed=0,
            t0=time.perf_counter(),
            params={"fix_variables_to_their_hinted_value": True},
        )
        assert res.status == "optimal" and res.lower_bound == hint.duration


@pytest.mark.parametrize("seed", range(4))
def test_soft_moccasin_on_tiny_graphs_equals_brute_force_at_tight_budgets(seed: int) -> None:
    # the soft model (used when no heuristic schedule fits) is exact on tiny graphs
    from sparseft.remat.solvers.moccasin import solve_moccasin

    g = sft.graphs.random_layered(7, seed=seed)
    lo, _ = g.min_budget()
    for b in sorted({lo, lo + 1, (lo + g.peak_memory()) // 2}):
        best = ref.remat_brute_force(
            g.memory.tolist(), g.duration.tolist(), preds_of(g), g.order_idx.tolist(), b
        )
        res = solve_moccasin(
            g,
            b,
            time_limit=10,
            max_copies=6,
            threads=1,
            seed=0,
            hint=g.order_idx.tolist(),
            t0=time.perf_counter(),
            soft=True,
        )
        if best is None:
            assert res.computes is None and res.status == "infeasible"
            continue
        assert res.status == "optimal" and res.computes is not None
        codes = _core.remat_compact(np.array(res.computes, dtype=np.int64), g.pred_ptr, g.pred_idx, g.n)
        peak, dur = sft.simulate(g, codes)
        assert peak <= b and dur == best


# ------------------------------------------------------------------ validation
def test_budget_forms() -> None:
    g = sft.graphs.training_graph(4, memory=[10, 10, 10, 10], duration=[1, 1, 1, 1])
    peak = g.peak_memory()
    assert sft.Planner(g, 1.0, solver="none").budget == peak
    assert sft.Planner(g, 0.9, solver="none").budget == int(0.9 * peak)
    assert sft.Planner(g, np.int64(peak), solver="none").budget == peak
    lo, node = g.min_budget()
    with pytest.raises(
        ValueError,
        match=rf"budget {lo - 1} is below the minimum feasible budget {lo} \(computing node '{node}'",
    ):
        sft.Planner(g, lo - 1)
    with pytest.raises(
        ValueError, match=r"budget as a float must be a fraction in \(0, 1\] of the no-remat peak, got 1.5"
    ):
        sft.Planner(g, 1.5)
    with pytest.raises(ValueError, match=r"budget as a float must be a fraction in \(0, 1\]"):
        sft.Planner(g, 0.0)
    with pytest.raises(ValueError, match=r"budget must be a positive amount of memory, got -3"):
        sft.Planner(g, -3)
    with pytest.raises(TypeError, match=r"budget must be an int \(memory units\) or a float .* got bool"):
        sft.Planner(g, True)
    with pytest.raises(TypeError, match=r"got str"):
        sft.Planner(g, "64MiB")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            {"solver": "gurobi"},
            ValueError,
            r"solver must be one of 'moccasin', 'checkmate', 'chen', 'greedy', 'blocks', 'dtr', 'auto', 'none'; got 'gurobi'",
        ),
        ({"time_limit": 0}, ValueError, r"time_limit must be a positive number of seconds, got 0"),
        (
            {"time_limit": float("nan")},
            ValueError,
            r"time_limit must be a positive number of seconds, got nan",
        ),
        ({"time_limit": "1"}, TypeError, r"time_limit must be a number of seconds, got str"),
        ({"max_copies": 0}, ValueError, r"max_copies must be an int >= 1, got 0"),
        ({"max_copies": 1.5}, TypeError, r"max_copies must be an int >= 1, got float"),
        ({"threads": 0}, ValueError, r"threads must be None or an int >= 1, got 0"),
        ({"seed": "x"}, TypeError, r"seed must be an int, got str"),
        (
            {"seed": 2**40},
            ValueError,
            r"seed must be an int in \[-2\*\*31, 2\*\*31 - 1\] .* got 1099511627776",
        ),
        ({"seed": -(2**31) - 1}, ValueError, r"seed must be an int in \[-2\*\*31, 2\*\*31 - 1\]"),
        ({"seed": np.uint64(2**63)}, ValueError, r"seed must be an int in \[-2\*\*31, 2\*\*31 - 1\]"),
        ({"threads": 2**31}, ValueError, r"threads must be None or an int <= 2\*\*31 - 1 .* got 2147483648"),
        ({"order": "best"}, ValueError, r"order must be one of 'given', 'auto'; got 'best'"),
    ],
)
def test_planner_argument_errors(kwargs: dict, exc: type, match: str) -> None:
    g = sft.graphs.training_graph(3, seed=0)
    with pytest.raises(exc, match=match):
        sft.Planner(g, 1.0, **kwargs)


def test_budget_beyond_int64_is_no_constraint() -> None:
    # a budget no int64 holds is clamped to 2**63 - 1: no schedule holds more than the sum of
    # memory (< 2**62), so it is no constraint, and every solver takes it
    g = sft.graphs.random_layered(12, 0)
    for solver in SOLVERS:
        plan = sft.Planner(g, 2**70, solver=solver, time_limit=2).solve()
        assert plan.budget == 2**63 - 1 and plan.status in ("optimal", "feasible"), solver
        assert plan.recomputations == 0
        check_schedule(g, plan)
    assert sft.Planner(g, np.uint64(2**64 - 1), solver="none").budget == 2**63 - 1
    assert sft.Planner(g, 2**63 - 1, solver="none").budget == 2**63 - 1


def test_seed_at_the_int32_limits_reaches_cp_sat() -> None:
    g = sft.graphs.random_layered(12, 0)
    for seed in (-(2**31), 2**31 - 1):
        plan = sft.Planner(
            g, 0.8, solver="moccasin", time_limit=3, seed=seed, threads=1, order="given"
        ).solve()
        check_schedule(g, plan)
        assert plan.status in ("optimal", "feasible")


def test_moccasin_huge_max_copies_builds_only_the_copies_that_fit() -> None:
    # after its first computation a node can be recomputed at most once per later stage: a huge
    # max_copies gives the same model as one copy per stage (it used to build 10**7 intervals)
    g = sft.graphs.random_layered(12, 0)
    t = time.perf_counter()
    huge = sft.Planner(
        g, 0.8, solver="moccasin", time_limit=10, max_copies=10**7, threads=1, order="given"
    ).solve()
    assert time.perf_counter() - t < 60
    check_schedule(g, huge)
    per_stage = sft.Planner(
        g, 0.8, solver="moccasin", time_limit=10, max_copies=g.n, threads=1, order="given"
    )
    ref_plan = per_stage.solve()
    assert huge.status == ref_plan.status == "optimal" and huge.duration == ref_plan.duration


def test_moccasin_soft_start_with_costs_near_int64() -> None:
    # the same graph as test_moccasin_finds_a_schedule_where_the_heuristics_fail, costs scaled by
    # 2**44 (sums near 2**61): the soft model's weighted objective would overflow CP-SAT's int64
    # checks (the model was rejected and solve() said "unknown"); the scaled plan is the same
    g0 = sft.graphs.random_layered(30, seed=2)
    k = 2**44
    g = sft.Graph(
        g0.nodes, g0.edges, [int(m) * k for m in g0.memory], [int(d) * k for d in g0.duration], order=g0.order
    )
    assert_soft_start_plans(g)


def test_planner_graph_type_error() -> None:
    with pytest.raises(TypeError, match=r"graph must be a sparseft.Graph, got dict"):
        sft.Planner({}, 1.0)  # type: ignore[arg-type]


# ------------------------------------------------------------------ order="auto"
@settings(max_examples=30, deadline=None)
@given(st.integers(8, 60), st.integers(0, 10_000))
def test_low_memory_order_is_topological_and_never_higher(n: int, seed: int) -> None:
    g = sft.graphs.random_layered(n, seed=seed)
    order = g.low_memory_order()
    g2 = g.with_order(order)  # raises unless topological and complete
    assert g2.order == order and g2.nodes == g.nodes and g2.edges == g.edges
    assert g.peak_memory(order) <= g.peak_memory()
    # greedy by memory growth: reference recomputation of that order's peak
    assert g2.peak_memory() == g.peak_memory(order)


def two_chains() -> sft.Graph:
    # given order interleaves two chains whose heads are big: their outputs overlap (peak 20 + 1);
    # finishing one chain first never holds both (peak 11)
    return sft.Graph(
        ["a", "b", "c", "d"],
        [("a", "b"), ("c", "d")],
        memory=[10, 1, 10, 1],
        duration=[1, 1, 1, 1],
        order=["a", "c", "b", "d"],
    )


@pytest.mark.parametrize("solver", SOLVERS)
def test_order_auto_needs_no_recomputation_where_a_better_order_fits(solver: str) -> None:
    g = two_chains()
    assert g.peak_memory() == 21 and g.low_memory_order() == ["a", "b", "c", "d"]
    given_plan = sft.Planner(g, 11, solver=solver, time_limit=5, threads=1, order="given").solve()
    auto = sft.Planner(g, 11, solver=solver, time_limit=5, threads=1).solve()  # the default
    check_schedule(g, given_plan)
    check_schedule(g, auto)
    # in the given order both heads would be live at once: recompute one, or fail
    assert given_plan.duration is None or given_plan.duration > g.total_duration
    assert auto.duration == g.total_duration and auto.peak_memory == 11
    # fractions stay relative to the peak of g.order
    assert sft.Planner(g, 0.6, solver=solver, order="auto").budget == 12


@st.composite
def tiny_case_two_orders(draw):
    """A tiny graph whose low_memory_order differs from (and peaks lower than) its order."""
    g, b = draw(tiny_case())
    # shuffle the given order among topological orders: a random ready node at every step
    n = g.n
    preds = preds_of(g)
    done: set[int] = set()
    order = []
    while len(order) < n:
        ready = [v for v in range(n) if v not in done and all(u in done for u in preds[v])]
        v = ready[draw(st.integers(0, len(ready) - 1))]
        order.append(v)
        done.add(v)
    g = g.with_order(order)
    lo, _ = g.min_budget()
    b = draw(st.integers(lo, max(lo, g.peak_memory())))
    return g, b


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_case_two_orders())
def test_order_auto_never_worse_than_given_on_tiny_graphs(case) -> None:
    g, b = case
    low = [g.index(v) for v in g.low_memory_order()]
    args = (g.memory.tolist(), g.duration.tolist(), preds_of(g))
    best_given = ref.remat_brute_force(*args, g.order_idx.tolist(), b)
    best_low = ref.remat_brute_force(*args, low, b)
    found = [d for d in (best_given, best_low) if d is not None]
    for solver in SOLVERS:
        kw = {"time_limit": 20, "threads": 1, "max_copies": g.n}
        given_plan = sft.Planner(g, b, solver=solver, order="given", **kw).solve()
        auto = sft.Planner(g, b, solver=solver, **kw).solve()  # order="auto" is the default
        check_schedule(g, given_plan)
        check_schedule(g, auto)
        if given_plan.duration is not None:
            assert auto.duration is not None and auto.duration <= given_plan.duration, solver
        if solver in ("moccasin", "checkmate"):
            # exact over both orders' classes: the better of the two brute forces
            if found:
                assert auto.status == "optimal" and auto.duration == min(found), solver
                assert auto.lower_bound is not None and auto.lower_bound <= auto.duration
            else:
                # no stage schedule fits either order: only a general (DTR fallback) schedule, re-checked above
                assert auto.status in ("infeasible", "unknown") or (
                    auto.status == "feasible" and auto.steps and auto.peak_memory <= b
                ), solver


def test_order_auto_every_solver_valid_on_random_layered() -> None:
    g = sft.graphs.random_layered(40, seed=5)
    for solver in SOLVERS:
        for b in budgets(g):
            plan = sft.Planner(g, b, solver=solver, time_limit=3, threads=1, order="auto").solve()
            check_schedule(g, plan)


# ------------------------------------------------------------------ Schedule I/O
def test_schedule_json_profile_and_plot(tmp_path, monkeypatch) -> None:
    g = sft.graphs.training_graph(5, seed=3)
    plan = sft.Planner(g, (g.min_budget()[0] + g.peak_memory()) // 2, solver="greedy").solve()
    check_schedule(g, plan)
    path = tmp_path / "plan.json"
    d = plan.to_json(path)
    assert json.loads(path.read_text()) == d
    assert d["steps"][0] == ["compute", "f0"] and d["peak_memory"] == plan.peak_memory
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
    prof = plan.memory_profile()
    assert prof.shape == (len(plan.steps),) and prof.max() == plan.peak_memory
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    ax = plan.plot()
    assert ax.get_title().startswith("greedy")
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"Schedule.plot needs matplotlib: pip install matplotlib"):
        plan.plot()


def test_core_planner_entry_points_agree_with_simulator() -> None:
    g = sft.graphs.random_layered(50, seed=9)
    b = max(g.min_budget()[0], int(0.8 * g.peak_memory()))
    rc, steps, peak, dur = _core.remat_greedy(
        g.memory, g.duration, g.pred_ptr, g.pred_idx, g.succ_ptr, g.succ_idx, g.order_idx, b
    )
    if rc == 0:
        assert sft.simulate(g, steps) == (peak, dur)
        assert peak <= b
    rc2, _, peak2, dur2 = _core.remat_plan_stages(
        g.memory,
        g.duration,
        g.pred_ptr,
        g.pred_idx,
        g.succ_ptr,
        g.succ_idx,
        g.order_idx,
        None,
        1 << 60,
        1.0,
        1.0,
    )
    assert rc2 == 0 and dur2 == g.total_duration and peak2 == g.peak_memory()


# ------------------------------------------------------------------ real graphs
def test_real_graphs(shared_data) -> None:
    folder = shared_data / "remat-graphs"
    if not (folder / "fcn_8_vgg_b32_416x608_train.json").is_file():
        pytest.skip(f"remat graphs not present in {folder}")
    g = sft.Graph.from_json(folder / "fcn_8_vgg_b32_416x608_train.json")
    # the papers' class (order="given"), to compare with the published numbers
    gr = sft.Planner(g, 0.9, solver="greedy", order="given").solve()
    mo = sft.Planner(g, 0.9, solver="moccasin", time_limit=10, threads=2, order="given").solve()
    ch = sft.Planner(g, 0.9, solver="chen", order="given").solve()
    for plan in (gr, mo, ch):
        check_schedule(g, plan)
        assert plan.status in ("optimal", "feasible")
    assert mo.duration <= gr.duration <= ch.duration
    assert mo.overhead < 0.001  # published: 0.0 % (Moccasin, ICML 2023)
    r = sft.Graph.from_json(folder / "random_layered_n100.json")
    plan = sft.Planner(r, 0.9, solver="moccasin", time_limit=10, threads=2, order="given").solve()
    check_schedule(r, plan)
    assert plan.overhead is not None and plan.overhead < 0.02
    auto = sft.Planner(r, 0.9, solver="moccasin", time_limit=10, threads=2).solve()
    check_schedule(r, auto)
    assert auto.duration is not None and auto.duration <= plan.duration


def test_planner_type_errors_and_to_json_paths(tmp_path: object) -> None:
    import pathlib

    g = sft.graphs.random_layered(12, 0)
    with pytest.raises(TypeError, match="solver must be a str"):
        sft.Planner(g, 1.0, solver=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="order must be a str"):
        sft.Planner(g, 1.0, order=None)  # type: ignore[arg-type]
    plan = sft.Planner(g, 1.0, solver="none").solve()
    d = pathlib.Path(str(tmp_path))
    with pytest.raises(TypeError, match=r"path: expected a str or os\.PathLike, got bytes"):
        plan.to_json(str(d / "p.json").encode())  # type: ignore[arg-type]
    with pytest.raises(IsADirectoryError, match="path: expected a file path, got the directory"):
        plan.to_json(d)
    assert list(d.iterdir()) == []  # nothing left behind
    plan.to_json(d / "p.json")
    assert json.loads((d / "p.json").read_text())["steps"] == [list(s) for s in plan.to_json()["steps"]]


# ------------------------------------------------------------------ once and block
def computes_per_node(plan: sft.Schedule) -> dict:
    counts: dict = {}
    for op, v in plan.steps:
        if op == "compute":
            counts[v] = counts.get(v, 0) + 1
    return counts


def with_once(g: sft.Graph, once: list[bool], block: list | None = None) -> sft.Graph:
    return sft.Graph(
        g.nodes,
        g.edges,
        g.memory.tolist(),
        g.duration.tolist(),
        order=g.order,
        backward=g.backward.tolist(),
        once=once,
        block=block,
    )


def test_simulate_rejects_a_once_node_computed_twice() -> None:
    g = sft.Graph(list("abc"), [("a", "b"), ("b", "c")], [1, 1, 1], [1, 1, 1], once={"b": True})
    twice = [("compute", "a"), ("compute", "b"), ("free", "b"), ("compute", "b"), ("compute", "c")]
    with pytest.raises(
        ValueError, match=r"steps\[3\] computes node 'b' a second time \(first at steps\[1\]\)"
    ):
        sft.simulate(g, twice)
    # the same schedule is valid where b may be recomputed, and a once node computed once is fine
    plain = sft.Graph(list("abc"), [("a", "b"), ("b", "c")], [1, 1, 1], [1, 1, 1])
    assert sft.simulate(plain, twice) == (3, 4)
    twice_a = [("compute", "a"), ("free", "a"), ("compute", "a"), ("compute", "b"), ("compute", "c")]
    assert sft.simulate(g, twice_a) == (3, 4)


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_computes_once_nodes_exactly_once(solver: str) -> None:
    rng = np.random.default_rng(11)
    base = [sft.graphs.training_graph(6, seed=3), random_dag(rng, 12), sft.graphs.random_layered(30, seed=5)]
    found = 0
    for g0 in base:
        # the backward nodes (or a random third of the nodes) must run exactly once
        once = g0.backward.tolist() if g0.backward.any() else (rng.random(g0.n) < 0.33).tolist()
        g = with_once(g0, once)
        for b in budgets(g):
            plan = sft.Planner(g, b, solver=solver, time_limit=3, threads=1, max_copies=3).solve()
            check_schedule(g, plan)
            if plan.steps:
                found += 1
                counts = computes_per_node(plan)
                assert all(counts[v] == 1 for v, o in zip(g.nodes, once, strict=True) if o)
    assert found >= 3


def test_exact_solvers_with_once_equal_brute_force_over_once_respecting_schedules() -> None:
    # a chain whose middle node is once: at the tight budget the optimum recomputes only the others
    g0 = sft.graphs.training_graph(4, memory=[10, 10, 10, 10], duration=[1, 2, 3, 4])
    g = with_once(g0, [v in ("f2", "b1") for v in g0.nodes])
    for b in budgets(g):
        mc = sft.Planner(
            g, b, solver="moccasin", time_limit=10, threads=1, max_copies=3, order="given"
        ).solve()
        ck = sft.Planner(g, b, solver="checkmate", time_limit=10, order="given").solve()
        check_schedule(g, mc)
        check_schedule(g, ck)
        assert mc.status == ck.status
        if mc.status == "optimal":
            assert mc.duration == ck.duration
            assert computes_per_node(mc)["f2"] == 1


def test_blocks_solver_checkpoints_block_inputs_and_recomputes_internals() -> None:
    g = sft.graphs.transformer_graph(3, batch=2, seq=16, d_model=32, n_heads=2, vocab=17)
    plan = sft.Planner(g, 1.0, solver="blocks", threads=1).solve()
    check_schedule(g, plan)
    assert plan.status == "feasible" and plan.solver == "blocks"
    counts = computes_per_node(plan)
    once = {v for v, o in zip(g.nodes, g.once.tolist(), strict=True) if o}
    for v in g.nodes:
        if v.endswith(".backward") or v in ("embed", "ln_f", "loss") or v.endswith("add_2"):
            assert counts[v] == 1, v  # checkpoints (block outputs), backward and once nodes: once
        else:
            assert counts[v] == 2, v  # a block's internals: recomputed once for its backward
    assert once <= {v for v in g.nodes if counts[v] == 1}
    assert plan.peak_memory < g.peak_memory()
    # at the blocks schedule's own peak it is still found; moccasin is never worse (it is a hint)
    at_peak = sft.Planner(g, plan.peak_memory, solver="blocks").solve()
    assert at_peak.status == "feasible" and at_peak.duration == plan.duration
    mc = sft.Planner(g, plan.peak_memory, solver="moccasin", time_limit=3, threads=1).solve()
    check_schedule(g, mc)
    assert mc.status in ("feasible", "optimal") and mc.duration <= plan.duration


def test_blocks_solver_needs_blocks() -> None:
    with pytest.raises(ValueError, match=r'solver "blocks" needs a graph whose nodes carry block indices'):
        sft.Planner(sft.graphs.training_graph(3), 1.0, solver="blocks")


def test_transformer_step_at_half_the_peak() -> None:
    g = sft.graphs.transformer_graph(6)
    plan = sft.Planner(g, 0.5, solver="moccasin", time_limit=5, threads=2).solve()
    check_schedule(g, plan)
    assert plan.status in ("feasible", "optimal") and plan.peak_memory <= g.peak_memory() // 2
    counts = computes_per_node(plan)
    assert all(counts[v] == 1 for v, o in zip(g.nodes, g.once.tolist(), strict=True) if o)


# ------------------------------------------------------------------ DTR, auto, tight budgets
@st.composite
def dtr_case(draw):
    n = draw(st.integers(1, 14))
    edges = [(u, v) for v in range(1, n) for u in range(v) if draw(st.integers(0, 3)) == 0]
    mem = draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))
    dur = draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))
    once = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    g = sft.Graph(list(range(n)), edges, mem, dur, once=once if draw(st.booleans()) else None)
    lo, _ = g.min_budget()
    b = draw(st.integers(lo, max(lo, g.peak_memory())))
    keep = draw(st.lists(st.booleans(), min_size=n, max_size=n)) if draw(st.booleans()) else None
    return (
        g,
        b,
        draw(st.sampled_from(["full", "eq", "belady", "cone", "largest", "su"])),
        draw(st.booleans()),
        keep,
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtr_case())
def test_dtr_equals_the_python_reference_of_its_eviction_rule(case) -> None:
    g, b, heuristic, lookahead, keep = case
    once = g.once if g.once.any() else None
    keep_arr = None if keep is None else np.array(keep, dtype=bool)
    rc, steps, peak, dur = _core.remat_dtr(
        g.memory,
        g.duration,
        g.pred_ptr,
        g.pred_idx,
        g.succ_ptr,
        g.succ_idx,
        g.order_idx,
        once,
        b,
        heuristic=heuristic,
        lookahead=lookahead,
        keep=keep_arr,
    )
    want = ref.remat_dtr(
        g.memory.tolist(),
        g.duration.tolist(),
        preds_of(g),
        g.order_idx.tolist(),
        b,
        None if once is None else once.tolist(),
        heuristic,
        lookahead,
        keep,
    )
    if want is None:
        assert rc == 7 and steps is None
        return
    assert rc == 0 and steps.tolist() == want[0] and (peak, dur) == want[1:]
    # the schedule itself is valid, within budget, and computes once nodes once
    rpeak, rdur, _ = ref.remat_simulate(steps.tolist(), g.memory.tolist(), g.duration.tolist(), preds_of(g))
    assert (rpeak, rdur) == (peak, dur) and peak <= b
    assert sft.simulate(g, [("compute", c) if c >= 0 else ("free", -1 - c) for c in steps.tolist()]) == (
        peak,
        dur,
    )


def test_dtr_evicts_by_its_rule_on_a_hand_checked_graph() -> None:
    # a -> b -> c -> d and a -> d: at budget 3 (units of 1) computing c must evict one of a, b;
    # b (one user left, already read) is the stalest of the two but a is read by d: h picks b? No:
    # both staleness 1; cost(a) = 1 + 1, cost(b) = 1 + 1 + (c resident) -> tie broken by index: a.
    g = sft.Graph(list("abcd"), [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d")], [1, 1, 1, 1], [1, 1, 1, 1])
    rc, steps, peak, dur = _core.remat_dtr(
        g.memory, g.duration, g.pred_ptr, g.pred_idx, g.succ_ptr, g.succ_idx, g.order_idx, None, 3
    )
    assert rc == 0 and peak <= 3
    want = ref.remat_dtr([1] * 4, [1] * 4, preds_of(g), g.order_idx.tolist(), 3)
    assert steps.tolist() == want[0]
    # at the no-remat peak (3: a, b, c resident... b freed after c) nothing is recomputed
    assert dur == want[2] >= 4


def check_budgets(g: sft.Graph, solver: str, fractions: list[float], time_limit: float) -> list[float]:
    """Plan at each fraction of the peak that is not below the feasibility bound; return those where a
    schedule was found (every schedule checked by the reference simulator, statuses honest)."""
    peak = g.peak_memory()
    lo, _ = g.min_budget()
    found = []
    for frac in fractions:
        if frac * peak < lo:
            continue
        plan = sft.Planner(g, int(frac * peak), solver=solver, time_limit=time_limit, threads=1).solve()
        check_schedule(g, plan)
        assert plan.status in ("feasible", "optimal") or (plan.status == "infeasible" and plan.steps == [])
        if plan.steps:
            found.append(frac)
    return found


@pytest.mark.parametrize(("n", "seed"), [(50, 0), (200, 1), (700, 2), (2000, 3)])
def test_dtr_valid_at_budgets_from_the_peak_to_the_bound_on_random_graphs(n: int, seed: int) -> None:
    g = sft.graphs.random_layered(n, seed=seed)
    fine = [round(1.0 - 0.05 * k, 2) for k in range(20)]
    found = check_budgets(g, "dtr", fine if n <= 200 else [1.0, 0.95, 0.9, 0.7, 0.5, 0.3], 5)
    # below the peak DTR recomputes; where it gives up the status says so ("infeasible", no steps)
    assert found[:2] == [1.0, 0.95]


def test_auto_reports_the_solver_that_found_its_schedule() -> None:
    g = sft.graphs.transformer_graph(3, batch=2, seq=16, d_model=32, n_heads=2, vocab=17)
    plan = sft.Planner(g, 0.4, solver="auto", time_limit=2, threads=1).solve()
    check_schedule(g, plan)
    assert plan.status in ("feasible", "optimal") and plan.solver in ("greedy", "blocks", "dtr", "moccasin")
    # it is the best of what each heuristic alone finds
    for solver in ("greedy", "blocks", "dtr"):
        alone = sft.Planner(g, 0.4, solver=solver).solve()
        if alone.duration is not None:
            assert plan.duration <= alone.duration
    fits = sft.Planner(g, 1.0, solver="auto", time_limit=2, threads=1).solve()
    assert fits.solver == "none" and fits.status == "optimal"


def test_moccasin_falls_back_to_dtr_where_nothing_else_fits(monkeypatch) -> None:
    # the stage heuristics find nothing and CP-SAT has no time: DTR's schedule is returned, never
    # "unknown" with no steps
    g = sft.graphs.transformer_graph(2, batch=2, seq=16, d_model=32, n_heads=2, vocab=17)
    b = int(0.6 * g.peak_memory())
    dtr = sft.Planner(g, b, solver="dtr", order="given").solve()
    assert dtr.steps
    monkeypatch.setattr(sft.Planner, "_greedy", lambda self: (None, 0))
    monkeypatch.setattr(sft.Planner, "_blocks", lambda self: (None, 0))
    monkeypatch.setattr("sparseft.remat.solvers.moccasin.solve_moccasin", lambda *a, **k: _unknown())
    plan = sft.Planner(g, b, solver="moccasin", time_limit=1, threads=1, order="given").solve()
    check_schedule(g, plan)
    # DTR's schedule, after the drop/delay local search (solvers/polish.py): never longer
    assert plan.status in ("feasible", "optimal") and plan.duration <= dtr.duration
    auto = sft.Planner(g, b, solver="auto", time_limit=1, threads=1, order="given").solve()
    assert auto.solver == "dtr" and auto.duration == plan.duration


def _unknown():
    from sparseft.remat.solvers.moccasin import SolverResult

    return SolverResult(None, "unknown", None, None)


def test_budget_below_the_bound_names_the_bound() -> None:
    g = sft.graphs.random_layered(40, seed=0)
    lo, node = g.min_budget()
    with pytest.raises(
        ValueError, match=rf"budget {lo - 1} is below the minimum feasible budget {lo} .*{node!r}"
    ):
        sft.Planner(g, lo - 1, solver="dtr")


@pytest.mark.parametrize(("n", "seed"), [(50, 4), (300, 5), (2000, 6)])
def test_dtr_belady_valid_from_the_peak_down_until_it_gives_up(n: int, seed: int) -> None:
    # every Belady schedule is re-checked by the simulator (C and the reference) and within budget;
    # once it gives up (rc 7, no steps) it is not asked for tighter budgets
    g = sft.graphs.random_layered(n, seed=seed)
    peak = g.peak_memory()
    lo, _ = g.min_budget()
    reached = []
    fracs = [f for f in (round(1.0 - 0.05 * k, 2) for k in range(20)) if int(f * peak) >= lo]
    if n > 1000:  # keep the test short: a run that gives up takes seconds on 2,000 nodes
        fracs = [f for f in fracs if f >= 0.8]
    for frac in fracs:
        b = int(frac * peak)
        rc, steps, p, d = _core.remat_dtr(
            g.memory,
            g.duration,
            g.pred_ptr,
            g.pred_idx,
            g.succ_ptr,
            g.succ_idx,
            g.order_idx,
            None,
            b,
            heuristic="belady",
        )
        if rc != 0:
            assert rc == 7 and steps is None
            break
        codes = steps.tolist()
        assert sft.simulate(g, [("compute", c) if c >= 0 else ("free", -1 - c) for c in codes]) == (p, d)
        assert p <= b and d >= g.total_duration
        if n <= 300:
            rp, rd, _ = ref.remat_simulate(codes, g.memory.tolist(), g.duration.tolist(), preds_of(g))
            assert (rp, rd) == (p, d)
        reached.append(frac)
    assert reached[:3] == fracs[:3]  # it gets at least 0.1 of the peak below the peak


def test_dtr_schedule_in_stage_form_hints_moccasin() -> None:
    # Belady computes the nodes for the first time in the planning order, so its schedule rewritten
    # with each stage's recomputations in order position is a stage schedule Moccasin takes as a hint
    from sparseft.remat.solvers.moccasin import hint_copies

    g = sft.graphs.random_layered(200, seed=1)
    b = max(g.min_budget()[0], int(0.85 * g.peak_memory()))
    planner = sft.Planner(g, b, solver="moccasin", order="given", max_copies=4, time_limit=2, threads=1)
    codes, _ = planner._dtr()
    assert codes is not None
    staged = planner._as_stage(codes)
    assert staged is not None
    steps, sdur = staged
    peak, d = sft.simulate(
        g, [("compute", g.nodes[c]) if c >= 0 else ("free", g.nodes[-1 - c]) for c in steps.tolist()]
    )
    assert peak <= b and d == sdur
    pos = np.empty(g.n, dtype=np.int64)
    pos[g.order_idx] = np.arange(g.n)
    copies = hint_copies(steps.tolist(), g, pos)
    assert copies is not None and max(len(c) for c in copies) <= 4
    # and Moccasin's answer is never worse than that hint
    plan = planner.solve()
    check_schedule(g, plan)
    assert plan.duration <= sdur


# ------------------------------------------------------------------ tight budgets (issue 20, part 2)
def _dtr_args(g: sft.Graph) -> tuple:
    return (g.memory, g.duration, g.pred_ptr, g.pred_idx, g.succ_ptr, g.succ_idx, g.order_idx)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 40), st.integers(0, 2**31 - 1), st.sampled_from([0, 1, 3]))
def test_dtr_su_fits_every_budget_down_to_its_need(n: int, seed: int, slack: int) -> None:
    # "su" holds only its frames' finished inputs, so without once nodes it stays within any budget
    # >= the largest Sethi-Ullman need (tests/reference.py), however little it keeps resident
    rng = np.random.default_rng(seed)
    g = random_dag(rng, n, p=float(rng.uniform(0.05, 0.5)))
    need = ref.remat_su_need(g.memory.tolist(), preds_of(g), g.order_idx.tolist())
    b = max(need) + slack
    rc, steps, peak, dur = _core.remat_dtr(
        *_dtr_args(g), None, b, heuristic="su", lookahead=True, max_computes=2**40, time_limit=60.0
    )
    assert rc == 0, (rc, b)
    assert ref.remat_simulate(steps.tolist(), g.memory.tolist(), g.duration.tolist(), preds_of(g))[:2] == (
        peak,
        dur,
    )
    assert peak <= b


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.integers(0, 2**31 - 1), st.floats(0.0, 0.6), st.sampled_from(["given", "low"]))
def test_core_su_need_equals_the_reference(n: int, seed: int, p: float, which: str) -> None:
    # n = 1, graphs with no edges (p = 0) and dense ones; over the given and the low-memory order
    rng = np.random.default_rng(seed)
    g = random_dag(rng, n, p=p)
    if which == "low":
        g = g.with_order(g.low_memory_order())
    order = g.order_idx.copy()
    got = _core.remat_su_need(g.memory, g.pred_ptr, g.pred_idx, g.order_idx)
    assert got.dtype == np.int64 and got.shape == (n,)
    assert got.tolist() == ref.remat_su_need(g.memory.tolist(), preds_of(g), g.order_idx.tolist())
    assert np.array_equal(g.order_idx, order)  # input untouched


def test_core_su_need_by_hand_and_zero_memory() -> None:
    # 0 -> 2 <- 1, 2 -> 3: P(2) = max(P(1)=5, 5 + P(0)=3 -> 8, 5 + 3 + 1 = 9) = 9 (1 first: P - m
    # ties at 0, stable), P(3) = max(P(2) = 9, 1 + 2) = 9
    g = sft.Graph([0, 1, 2, 3], [(0, 2), (1, 2), (2, 3)], [3, 5, 1, 2], [1] * 4)
    order = np.array([0, 1, 2, 3], dtype=np.int64)
    assert _core.remat_su_need(g.memory, g.pred_ptr, g.pred_idx, order).tolist() == [3, 5, 9, 9]
    z = np.zeros(4, dtype=np.int64)
    assert _core.remat_su_need(z, g.pred_ptr, g.pred_idx, order).tolist() == [0, 0, 0, 0]


def test_core_su_need_bad_arguments() -> None:
    g = sft.Graph([0, 1, 2], [(0, 1), (1, 2)], [1, 2, 3], [1] * 3)
    m, pp, pi, o = g.memory, g.pred_ptr, g.pred_idx, g.order_idx
    with pytest.raises(ValueError, match="order"):
        _core.remat_su_need(m, pp, pi, np.array([1, 0, 2], dtype=np.int64))  # 1 before its input 0
    with pytest.raises(ValueError, match="order"):
        _core.remat_su_need(m, pp, pi, np.array([0, 0, 2], dtype=np.int64))  # not a permutation
    with pytest.raises(ValueError, match="order"):
        _core.remat_su_need(m, pp, pi, np.array([0, 1], dtype=np.int64))
    with pytest.raises(ValueError, match="memory"):
        _core.remat_su_need(np.array([1, -2, 3], dtype=np.int64), pp, pi, o)
    with pytest.raises(TypeError, match="memory"):
        _core.remat_su_need(m.astype(np.float64), pp, pi, o)
    with pytest.raises(TypeError, match="order"):
        _core.remat_su_need(m, pp, pi, o.astype(np.int32))
    with pytest.raises(ValueError, match="pred_idx"):
        _core.remat_su_need(m, pp, np.array([0, 7], dtype=np.int64), o)


def test_dtr_solver_runs_su_first_where_it_is_sure_to_fit(monkeypatch) -> None:
    # at the largest su need of a random layered graph Belady, cone and eq thrash past their cap;
    # with "su" taken out of the variant list the Planner must still run it first (it fits) and
    # return its schedule, re-checked by the reference simulator
    g = sft.graphs.random_layered(200, seed=2)
    b = int(_core.remat_su_need(g.memory, g.pred_ptr, g.pred_idx, g.order_idx).max())
    for h in ("belady", "cone", "eq"):
        assert _core.remat_dtr(*_dtr_args(g), None, b, heuristic=h, lookahead=True)[0] == 7
    monkeypatch.setattr("sparseft.remat.planner._DTR_VARIANTS", (("belady", True), ("eq", True)))
    plan = sft.Planner(g, b, solver="dtr", order="given", time_limit=30).solve()
    assert plan.status == "feasible" and plan.steps is not None
    check_schedule(g, plan)
    # one unit below the need su is not sure to fit and is not run, and nothing else fits: the
    # heuristic solver's "infeasible" (found none), with no steps
    plan = sft.Planner(g, b - 1, solver="dtr", order="given", time_limit=5).solve()
    assert plan.status == "infeasible" and not plan.steps


def test_dtr_gives_up_at_its_computation_cap_and_its_deadline() -> None:
    # a budget where Belady thrashes on a random layered graph: a small cap gives up (rc 7), a
    # tiny deadline with no cap gives up with rc 10 (REMAT_ETIME), never a schedule over budget
    g = sft.graphs.random_layered(400, seed=0)
    b = int(0.5 * g.peak_memory())
    rc, steps, _, _ = _core.remat_dtr(*_dtr_args(g), None, b, heuristic="belady", max_computes=g.n)
    assert rc == 7 and steps is None
    rc, steps, _, _ = _core.remat_dtr(
        *_dtr_args(g), None, b, heuristic="cone", max_computes=2**62, time_limit=1e-6
    )
    assert rc == 10 and steps is None


@pytest.mark.parametrize("heuristic", ["belady", "cone", "eq", "su"])
def test_dtr_long_schedule_past_the_first_buffer_equals_the_reference(heuristic: str) -> None:
    # schedules longer than the first output buffer (4 n + 16 steps): the run counts its steps,
    # the module runs it once more with room for them, and the result is the reference's
    g = sft.graphs.training_graph(20, memory=[10] * 20, duration=[1] * 20)
    lo, _ = g.min_budget()
    for b in (lo + 20, lo + 10, lo):
        rc, steps, p, d = _core.remat_dtr(*_dtr_args(g), None, b, heuristic=heuristic, lookahead=True)
        want = ref.remat_dtr(
            g.memory.tolist(),
            g.duration.tolist(),
            preds_of(g),
            g.order_idx.tolist(),
            b,
            None,
            heuristic,
            True,
        )
        if want is None:
            assert rc == 7 and steps is None
            continue
        assert rc == 0 and steps.tolist() == want[0] and (p, d) == want[1:] and p <= b
        if len(steps) > 4 * g.n + 16:
            return
    pytest.fail("no schedule longer than the first buffer: pick a tighter case")


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"keep": np.zeros(3, dtype=bool)}, ValueError, "keep"),
        ({"keep": np.zeros(4, dtype=np.int64)}, TypeError, "keep"),
        ({"keep": [True] * 4}, TypeError, "keep"),
        ({"max_computes": -1}, ValueError, "max_computes"),
        ({"time_limit": -1.0}, ValueError, "time_limit"),
        ({"time_limit": float("nan")}, ValueError, "time_limit"),
        ({"heuristic": "bogus"}, ValueError, "'largest' or 'su'"),
    ],
)
def test_dtr_bad_arguments(kwargs: dict, exc: type, match: str) -> None:
    g = sft.graphs.training_graph(2)
    with pytest.raises(exc, match=match):
        _core.remat_dtr(*_dtr_args(g), None, g.peak_memory(), **kwargs)


def test_auto_at_tight_budgets_valid_or_honest_and_within_its_limit_on_random_graphs() -> None:
    # from the peak down towards the bound: every schedule re-checked, "unknown" only without steps
    for n, seed in ((50, 7), (300, 8)):
        g = sft.graphs.random_layered(n, seed=seed)
        peak, (lo, _) = g.peak_memory(), g.min_budget()
        for frac in (0.9, 0.7, 0.55):
            if frac * peak < lo:
                continue
            plan = sft.Planner(g, int(frac * peak), solver="auto", time_limit=1, threads=1).solve()
            check_schedule(g, plan)
            assert (plan.status in ("feasible", "optimal")) == bool(plan.steps)
