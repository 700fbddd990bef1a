"""sft.remat.cut_lower_bound / cut_bound: the memory-cut lower bound is never above the true optimum
of its class (brute force over every schedule whose first computations follow the order), hand
cases, the LP/integer relation, the Planner's lower_bound, gap and status, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparseft as sft
from sparseft.remat.bounds import cut_bound, cut_lower_bound

from . import reference as ref


def preds_of(g: sft.Graph) -> list[list[int]]:
    return [[int(u) for u in g.pred_idx[g.pred_ptr[v] : g.pred_ptr[v + 1]]] for v in range(g.n)]


def optimum(g: sft.Graph, budget: int, order: list[int] | None = None) -> int | None:
    """True least duration over the class (brute force), order given as node indices."""
    order = g.order_idx.tolist() if order is None else order
    once = g.once.tolist()
    return ref.remat_brute_force_general(
        g.memory.tolist(), g.duration.tolist(), preds_of(g), order, budget, once=once
    )


def skip_chain() -> sft.Graph:
    """0 -> 1 -> 2 -> 3 -> 4 and 0 -> 4: at budget 9, node 0 must be recomputed for node 4."""
    return sft.Graph(
        range(5),
        [(0, 1), (1, 2), (2, 3), (3, 4), (0, 4)],
        memory=[4, 4, 4, 4, 1],
        duration=[3, 1, 1, 1, 1],
    )


def fractional() -> sft.Graph:
    """a, b (memory 2) live across c (memory 3, no inputs) and read later by e and f: at budget 4
    both must go. The LP relaxation pays half of a (2 + 2 >= 3 at c's cut): value 2.5."""
    return sft.Graph(
        ["a", "b", "c", "e", "f"],
        [("a", "e"), ("b", "f")],
        memory={"a": 2, "b": 2, "c": 3, "e": 1, "f": 1},
        duration={"a": 3, "b": 1, "c": 1, "e": 1, "f": 1},
        order=["a", "b", "c", "e", "f"],
    )


# ------------------------------------------------------------------ hand cases
def test_chain_needs_no_recomputation() -> None:
    g = sft.Graph(range(6), [(i, i + 1) for i in range(5)], memory=[3] * 6, duration=[2] * 6)
    lo, _ = g.min_budget()
    for b in (lo, lo + 1, g.peak_memory()):
        assert cut_lower_bound(g, b) == g.total_duration == optimum(g, b)


def test_skip_edge_bound_is_the_optimum() -> None:
    g = skip_chain()
    assert g.peak_memory() == 12 and g.min_budget()[0] == 9
    assert cut_lower_bound(g, 12) == 7 == optimum(g, 12)
    assert cut_lower_bound(g, 10) == 10 == optimum(g, 10)  # node 0 dropped across 2 and 3
    assert cut_lower_bound(g, 9) == 10 == optimum(g, 9)
    r = cut_bound(g, 9)
    assert (r.rows, r.columns, r.lp_value) == (2, 1, pytest.approx(3.0))
    assert cut_lower_bound(g, 8) is None  # below the feasibility bound: no schedule
    assert optimum(g, 8) is None


def test_diamond_with_a_long_branch() -> None:
    # 0 feeds 1 -> 2 -> 3 -> 5 and, through 4, also 5: 4's output lives across 1..3 in order 0,4,1,2,3,5
    g = sft.Graph(
        range(6),
        [(0, 1), (1, 2), (2, 3), (3, 5), (0, 4), (4, 5)],
        memory=[2, 5, 5, 5, 3, 1],
        duration=[1, 1, 1, 1, 4, 1],
        order=[0, 4, 1, 2, 3, 5],
    )
    opt = {b: optimum(g, b) for b in range(g.min_budget()[0], g.peak_memory() + 1)}
    for b, best in opt.items():
        lb = cut_lower_bound(g, b)
        assert lb is not None and best is not None and lb <= best
    # at 10, node 4 (duration 4) must be dropped across 2 and 3 and recomputed before 5; so must
    # its input 0 (duration 1), which the bound does not see: it counts the dropped outputs, not
    # the inputs their recomputation needs
    assert cut_lower_bound(g, 10) == g.total_duration + 4
    assert opt[10] == g.total_duration + 5


def test_weights_make_the_lp_fractional_and_exact_closes_it() -> None:
    """The constraint matrix has consecutive ones per column but memory coefficients, so it is not
    totally unimodular: the LP value is fractional here, and the integer problem is higher."""
    g = fractional()
    total = g.total_duration
    r = cut_bound(g, 4)
    assert r.lp_value == pytest.approx(2.5)
    assert r.lower_bound == total + 3  # ceil(2.5)
    e = cut_bound(g, 4, exact=True, time_limit=5)
    assert e.integer_value == 4 and e.lower_bound == total + 4
    assert optimum(g, 4) == total + 4


def test_once_nodes_that_must_be_dropped_make_the_class_empty() -> None:
    nodes = list(range(5))
    edges = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 4)]
    g = sft.Graph(nodes, edges, memory=[4, 4, 4, 4, 1], duration=[3, 1, 1, 1, 1], once=[True] + [False] * 4)
    assert cut_lower_bound(g, 9) is None and optimum(g, 9) is None
    assert cut_lower_bound(g, 12) == 7
    for solver in ("greedy", "dtr", "moccasin", "auto", "none"):
        plan = sft.Planner(g, 9, solver=solver, order="given", time_limit=5, threads=1).solve()
        assert plan.status == "infeasible" and plan.steps == [] and plan.lower_bound is None


def test_order_argument() -> None:
    g = sft.Graph(
        range(6),
        [(0, 1), (1, 2), (2, 3), (3, 5), (0, 4), (4, 5)],
        memory=[2, 5, 5, 5, 3, 1],
        duration=[1, 1, 1, 1, 4, 1],
    )
    other = [0, 4, 1, 2, 3, 5]
    for b in (10, 12):
        assert cut_lower_bound(g, b, order=other) == cut_lower_bound(g.with_order(other), b)
        assert cut_lower_bound(g, b, order=other) <= optimum(g, b, other)


def test_fraction_budget_is_relative_to_the_given_order() -> None:
    g = skip_chain()
    assert cut_lower_bound(g, 0.75) == cut_lower_bound(g, 9) == 10
    assert cut_lower_bound(g, 1.0) == g.total_duration


# ------------------------------------------------------------------ never above the optimum
@st.composite
def tiny_cases(draw):
    n = draw(st.integers(2, 7))
    edges = [(u, v) for v in range(1, n) for u in range(v) if draw(st.booleans())]
    mem = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    dur = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    once = draw(st.lists(st.booleans(), min_size=n, max_size=n)) if draw(st.booleans()) else None
    g = sft.Graph(range(n), edges, mem, dur, once=once)
    lo, _ = g.min_budget()
    hi = g.peak_memory()
    b = draw(st.integers(max(1, lo - 1), max(1, hi)))
    return g, b


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_cases())
def test_bound_never_above_the_brute_force_optimum(case) -> None:
    g, b = case
    best = optimum(g, b)
    r = cut_bound(g, b, exact=True, time_limit=5)
    lb = cut_lower_bound(g, b)
    if lb is None:
        assert best is None  # the bound proves the class empty only when it is
        return
    assert lb >= g.total_duration
    assert r.lower_bound is not None and lb <= r.lower_bound
    if r.lp_value is not None:
        assert lb == g.total_duration + max(0, math.ceil(r.lp_value - 1e-6))
        if r.integer_value is not None:
            assert r.integer_value >= r.lp_value - 1e-6
    if best is not None:
        assert r.lower_bound <= best


def test_bound_reaches_the_optimum_on_many_small_graphs() -> None:
    """Not only valid but useful: above the no-recompute duration, and equal to the optimum, on a
    good share of random small graphs at budgets that force recomputation."""
    rng = np.random.default_rng(3)
    above = equal = cases = 0
    for _ in range(60):
        n = int(rng.integers(4, 8))
        edges = [(u, v) for v in range(1, n) for u in range(v) if rng.random() < 0.4]
        g = sft.Graph(range(n), edges, rng.integers(1, 8, n).tolist(), rng.integers(1, 8, n).tolist())
        lo, _ = g.min_budget()
        b = (lo + g.peak_memory()) // 2
        best = optimum(g, b)
        lb = cut_lower_bound(g, b)
        if best is None or best == g.total_duration:
            continue
        cases += 1
        assert lb is not None and lb <= best
        above += lb > g.total_duration
        equal += lb == best
    assert cases >= 10 and above >= cases // 2 and equal >= cases // 4, (cases, above, equal)


# ------------------------------------------------------------------ the Planner
@pytest.mark.parametrize("solver", ["greedy", "dtr", "chen", "none"])
def test_planner_bound_is_below_the_optimum_for_heuristics(solver: str) -> None:
    rng = np.random.default_rng(11)
    for _ in range(12):
        n = int(rng.integers(4, 8))
        edges = [(u, v) for v in range(1, n) for u in range(v) if rng.random() < 0.4]
        g = sft.Graph(range(n), edges, rng.integers(1, 8, n).tolist(), rng.integers(1, 8, n).tolist())
        lo, _ = g.min_budget()
        for b in (lo, (lo + g.peak_memory()) // 2, g.peak_memory()):
            plan = sft.Planner(g, b, solver=solver, order="given", time_limit=5).solve()
            best = optimum(g, b)
            assert plan.lower_bound is not None and plan.lower_bound <= best
            if plan.duration is not None:
                assert plan.lower_bound <= best <= plan.duration
                assert plan.gap == pytest.approx((plan.duration - plan.lower_bound) / plan.lower_bound)
                assert (plan.status == "optimal") == (plan.duration == plan.lower_bound)


def test_planner_reports_optimal_when_a_heuristic_meets_the_bound() -> None:
    g = skip_chain()
    plan = sft.Planner(g, 9, solver="greedy", order="given").solve()
    assert plan.duration == plan.lower_bound == 10
    assert plan.status == "optimal" and plan.gap == 0.0


@pytest.mark.parametrize("order", ["given", "auto"])
def test_planner_exact_solvers_bound_and_gap(order: str) -> None:
    g = sft.graphs.random_layered(40, seed=5)
    for frac in (0.9, 0.8):
        plan = sft.Planner(g, frac, solver="moccasin", order=order, time_limit=5, threads=1).solve()
        assert plan.lower_bound is not None and plan.duration is not None
        cut = min(cut_lower_bound(pg, plan.budget) for pg in [g, g.with_order(g.low_memory_order())])
        assert cut <= plan.lower_bound <= plan.duration
        assert plan.gap is not None and plan.gap >= 0
        assert (plan.status == "optimal") == (plan.gap == 0)


def test_gap_without_a_schedule_is_none() -> None:
    g = skip_chain()
    plan = sft.Planner(g, 9, solver="none", order="given").solve()
    assert plan.status == "infeasible" and plan.gap is None and plan.lower_bound == 10


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs() -> None:
    g = skip_chain()
    with pytest.raises(TypeError, match="graph must be"):
        cut_lower_bound("g", 9)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="budget must be"):
        cut_lower_bound(g, "9")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="budget must be"):
        cut_lower_bound(g, True)
    with pytest.raises(ValueError, match="budget must be a positive"):
        cut_lower_bound(g, 0)
    with pytest.raises(ValueError, match="fraction"):
        cut_lower_bound(g, 1.5)
    with pytest.raises(ValueError, match="fraction"):
        cut_lower_bound(g, float("nan"))
    with pytest.raises(TypeError, match="order must be"):
        cut_lower_bound(g, 9, order="01234")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="topological"):
        cut_lower_bound(g, 9, order=[4, 3, 2, 1, 0])
    with pytest.raises(ValueError, match="all 5 nodes"):
        cut_lower_bound(g, 9, order=[0, 1])
    with pytest.raises(ValueError, match="time_limit"):
        cut_bound(g, 9, time_limit=0)
    with pytest.raises(TypeError, match="time_limit"):
        cut_bound(g, 9, time_limit="1")  # type: ignore[arg-type]


def test_inputs_not_modified_and_public() -> None:
    g = skip_chain()
    before = g.to_json()
    cut_bound(g, 9, exact=True, time_limit=2)
    assert g.to_json() == before
    assert sft.remat.cut_lower_bound is cut_lower_bound


# ------------------------------------------------------------------ the local search (solvers/polish.py)
def test_polish_drops_a_useless_recomputation() -> None:
    from sparseft.remat.solvers.polish import polish

    g = skip_chain()

    def duration(codes: np.ndarray) -> tuple[int, int]:
        codes = sft._core.remat_compact(codes, g.pred_ptr, g.pred_idx, g.n)  # frees after last reads
        return sft.simulate(g, [("compute", c) if c >= 0 else ("free", -1 - c) for c in codes.tolist()])

    once_more = np.array([0, 1, 2, 3, 0, 4], dtype=np.int64)  # node 0 recomputed before 4
    assert duration(polish(g, 9, once_more)) == (9, 10)  # needed at 9: kept
    assert duration(polish(g, 12, once_more)) == (12, 7)  # not needed at 12: dropped
    twice = np.array([0, 1, 2, 0, 3, 0, 4], dtype=np.int64)
    assert duration(polish(g, 9, twice)) == (9, 10)


def test_polish_keeps_schedules_valid_and_never_longer() -> None:
    from sparseft.remat.solvers.moccasin import hint_copies
    from sparseft.remat.solvers.polish import polish

    rng = np.random.default_rng(5)
    improved = 0
    for k in range(12):
        g = sft.graphs.random_layered(int(rng.integers(20, 80)), seed=k)
        for frac in (0.9, 0.75):
            b = int(frac * g.peak_memory())
            if b < g.min_budget()[0]:
                continue
            plan = sft.Planner(g, b, solver="dtr", order="given").solve()
            if plan.duration is None:
                continue
            out = polish(g, b, plan.codes)
            codes = out.tolist()
            peak, dur, _ = ref.remat_simulate(codes, g.memory.tolist(), g.duration.tolist(), preds_of(g))
            assert peak <= b and dur <= plan.duration
            lb = cut_lower_bound(g, b)
            assert lb is not None and lb <= dur
            improved += dur < plan.duration
            pos = np.empty(g.n, dtype=np.int64)
            pos[g.order_idx] = np.arange(g.n)
            if hint_copies(plan.codes.tolist(), g, pos) is not None:  # a stage schedule stays one
                assert hint_copies(codes, g, pos) is not None
    assert improved >= 1
