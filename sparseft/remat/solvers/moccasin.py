"""The Moccasin constraint-programming model (Bartan et al., ICML 2023), solved with OR-tools CP-SAT.

Written from the paper's description: every node gets up to ``C`` retention intervals (the
copies of its output), each with an integer start (when the copy is computed) and end (when it
is freed) and a presence literal; the first interval is mandatory; a cumulative constraint keeps
the memory of the live intervals under the budget; a precedence constraint makes some live copy
of each input cover every computation; the objective is the total compute duration.

Time grid. The first computation of the node at position ``p`` of the topological order happens
in stage ``p``; recomputations happen inside later stages, before that stage's first computation,
in order position. The computation of the node at position ``p`` in stage ``t`` gets time
``t * n + p``, so one integer line orders every event. An interval ``[start, end)`` holds the copy
from its computation to just after its last read, which is exactly the memory that an eager-free
schedule holds: the cumulative constraint at the time of a computation equals that step's memory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparseft.remat.graph import Graph

# CP-SAT rejects a model whose objective could exceed int64 ("possible integer overflow"); stay
# well below that with the soft model's weighted objective
_OBJECTIVE_LIMIT = 2**62


@dataclass
class SolverResult:
    """Raw outcome of a solver: compute sequence (node indices) or None, and solver facts."""

    computes: list[int] | None
    status: str
    time_to_best: float | None
    lower_bound: int | None


def hint_copies(steps: Sequence[int], g: Graph, pos: np.ndarray) -> list[list[tuple[int, int]]] | None:
    """Per node, per copy: (start_time, last_read_time + 1) of a stage-structured schedule.

    Returns None when ``steps`` (node indices, frees as ``-1 - v``) does not follow the stage
    structure: first computations in order, recomputations before each stage's first
    computation, in increasing order position.
    """
    n = g.n
    res: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    live: dict[int, int] = {}
    stage = 0
    last_pos = -1
    for s in steps:
        if s < 0:
            live.pop(-1 - int(s), None)
            continue
        v = int(s)
        p = int(pos[v])
        if not res[v]:
            if p != stage:
                return None
            t, stage, last_pos = p, p + 1, -1
        else:
            if p >= stage or p <= last_pos:
                return None
            t, last_pos = stage, p
        tau = t * n + p
        for u in g._preds[v]:
            k = live[u]
            res[u][k] = (res[u][k][0], tau + 1)
        res[v].append((tau, tau + 1))
        live[v] = len(res[v]) - 1
    return res


def _peak_of(copies: list[list[tuple[int, int]]], mem: np.ndarray) -> int:
    """Largest memory of live copies [start, end) at any time."""
    ev: dict[int, int] = {}
    for v, cs in enumerate(copies):
        for s0, e0 in cs:
            ev[s0] = ev.get(s0, 0) + int(mem[v])
            ev[e0] = ev.get(e0, 0) - int(mem[v])
    cur = peak = 0
    for t in sorted(ev):
        cur += ev[t]
        peak = max(peak, cur)
    return peak


@dataclass
class _Model:
    """A built CP-SAT model and the variables a hint and a decoder need: per node, per copy, the
    start (an int or affine expression), end, presence, stage and size; ``reads[(u, j, v, i)]``:
    copy j of u feeds copy i of v; ``cap``: the capacity variable of the soft model (else None)
    and ``weight`` its objective weight."""

    model: Any
    n: int
    pos: np.ndarray
    starts: list[list[Any]]
    ends: list[list[Any]]
    present: list[list[Any]]
    stages: list[list[Any]]
    sizes: list[list[Any]]
    reads: dict[tuple[int, int, int, int], Any]
    cap: Any
    weight: int


def build_model(g: Graph, budget: int, *, max_copies: int, soft: bool) -> _Model:
    """The CP-SAT model (see :func:`solve_moccasin` for ``soft``): copies, precedence, memory."""
    from ortools.sat.python import cp_model

    n = g.n
    order = g.order_idx
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    mem = g.memory
    dur = g.duration
    preds = g._preds
    succs = g._succs
    m = cp_model.CpModel()

    starts: list[list[Any]] = []  # affine expressions or ints
    ends: list[list[Any]] = []
    present: list[list[Any]] = []
    stages: list[list[Any]] = []
    sizes: list[list[Any]] = []
    reads: dict[tuple[int, int, int, int], Any] = {}  # (u, j, v, i) -> copy j of u feeds copy i of v
    intervals: list[Any] = []
    demands: list[int] = []
    cost_terms: list[Any] = []
    cost_coefs: list[int] = []
    # the last stage that can read v: the latest first computation among its descendants
    # (a recomputation of a successor is only useful for a first computation further down)
    last_read = np.full(n, -1, dtype=np.int64)
    for v in order[::-1].tolist():
        for s in succs[v]:
            last_read[v] = max(last_read[v], pos[s], last_read[s])
    # the copies of every node
    for v in range(n):
        p = int(pos[v])
        tau0 = p * (n + 1)
        last_stage = int(last_read[v])
        last_end = last_stage * (n + 1) + 1 if succs[v] else tau0 + 1
        # copies after the first are computed in distinct stages p + 1 .. last_stage: no more fit
        ncopy = min(max_copies, last_stage - p + 1) if last_stage >= p + 1 else 1
        if g._once[v]:  # computed exactly once: no recomputation copies
            ncopy = 1
        sv: list[Any] = []
        ev: list[Any] = []
        pv: list[Any] = []
        tv_: list[Any] = []
        zv: list[Any] = []
        for i in range(ncopy):
            if i == 0:
                start: Any = tau0
                lit: Any = True
                st: Any = None
                end = m.new_int_var(tau0 + 1, last_end, f"e_{v}_0")
                size = m.new_int_var(1, last_end - tau0, f"z_{v}_0")
                iv = m.new_interval_var(tau0, size, end, f"iv_{v}_0")
            else:
                st = m.new_int_var(p + 1, last_stage, f"t_{v}_{i}")
                start = st * n + p
                lit = m.new_bool_var(f"p_{v}_{i}")
                end = m.new_int_var((p + 1) * n + p + 1, last_end, f"e_{v}_{i}")
                size = m.new_int_var(1, last_end - tau0, f"z_{v}_{i}")
                iv = m.new_optional_interval_var(start, size, end, lit, f"iv_{v}_{i}")
                # copies come one after the other; copy i needs copy i - 1
                m.add_implication(lit, pv[i - 1])
                m.add(start >= ev[i - 1]).only_enforce_if(lit)
                cost_terms.append(lit)
                cost_coefs.append(int(dur[v]))
            sv.append(start)
            ev.append(end)
            pv.append(lit)
            tv_.append(st)
            zv.append(size)
            intervals.append(iv)
            demands.append(int(mem[v]))
        starts.append(sv)
        ends.append(ev)
        present.append(pv)
        stages.append(tv_)
        sizes.append(zv)

    # precedence: every computation of v is covered by a live copy of each input u
    for v in range(n):
        for i, tv in enumerate(starts[v]):
            lit_v = present[v][i]
            for u in preds[v]:
                if len(starts[u]) == 1:
                    c = m.add(ends[u][0] >= tv + 1)
                    if i > 0:
                        c.only_enforce_if(lit_v)
                    continue
                zs = []
                for j in range(len(starts[u])):
                    z = m.new_bool_var(f"c_{u}_{j}_{v}_{i}")
                    zs.append(z)
                    reads[(u, j, v, i)] = z
                    if j > 0:
                        m.add_implication(z, present[u][j])
                        m.add(starts[u][j] <= tv).only_enforce_if(z)
                    m.add(ends[u][j] >= tv + 1).only_enforce_if(z)
                if i == 0:
                    m.add_bool_or(zs)
                else:
                    m.add_bool_or(zs).only_enforce_if(lit_v)

    # memory: the live copies never exceed the budget
    recompute = sum(c * x for c, x in zip(cost_coefs, cost_terms, strict=True)) if cost_terms else 0
    cap: Any = None
    weight = 0
    if soft:
        cap_max = max(int(budget), int(mem.sum()))
        cap = m.new_int_var(int(budget), cap_max, "cap")
        m.add_cumulative(intervals, demands, cap)
        weight = int(sum(cost_coefs)) + 1
        if weight * (cap_max - int(budget) + 1) < _OBJECTIVE_LIMIT:
            m.minimize(weight * (cap - int(budget)) + recompute)
        else:  # the weighted objective would overflow CP-SAT's int64 checks: the peak alone
            m.minimize(cap - int(budget))
            weight = 0  # the objective bound says nothing about the recomputation cost
    else:
        m.add_cumulative(intervals, demands, int(budget))
        m.minimize(recompute)
    return _Model(m, n, pos, starts, ends, present, stages, sizes, reads, cap, weight)


def add_hint(mo: _Model, g: Graph, budget: int, hint: Sequence[int] | None, *, complete_hint: bool) -> None:
    """Hint the model with a stage-structured schedule (node indices), when it fits the copy limit;
    with ``complete_hint`` every variable, so that CP-SAT takes it as a solution at once."""
    if hint is None:
        return
    n, pos, mem = mo.n, mo.pos, g.memory
    starts, ends, present, stages, sizes = mo.starts, mo.ends, mo.present, mo.stages, mo.sizes
    copies = hint_copies(hint, g, pos)
    if copies is None or any(len(copies[v]) > len(starts[v]) for v in range(n)):
        return
    for v in range(n):
        for i in range(len(starts[v])):
            if i < len(copies[v]):
                s0, e0 = copies[v][i]
                mo.model.add_hint(ends[v][i], e0)
                if complete_hint:
                    mo.model.add_hint(sizes[v][i], e0 - s0)
                if i > 0:
                    mo.model.add_hint(present[v][i], True)
                    mo.model.add_hint(stages[v][i], s0 // n)
            else:
                mo.model.add_hint(present[v][i], False)
                mo.model.add_hint(stages[v][i], int(pos[v]) + 1)
                mo.model.add_hint(ends[v][i], (int(pos[v]) + 1) * n + int(pos[v]) + 1)
                if complete_hint:
                    mo.model.add_hint(sizes[v][i], 1)
    if complete_hint:
        # which copy of each input every computation reads: the one live at that time
        for (u, j, v, i), z in mo.reads.items():
            live = False
            if i < len(copies[v]) and j < len(copies[u]):
                tv = copies[v][i][0]
                live = copies[u][j][0] <= tv < copies[u][j][1]
            mo.model.add_hint(z, live)
    if mo.cap is not None:
        mo.model.add_hint(mo.cap, max(int(budget), _peak_of(copies, mem)))


def decode(mo: _Model, value: Any, boolean_value: Any) -> list[int]:
    """The compute sequence (node indices, in time order) of a solution read by ``value``."""
    events = []
    for v in range(mo.n):
        for i in range(len(mo.starts[v])):
            if i == 0 or boolean_value(mo.present[v][i]):
                t_v = int(mo.starts[v][0]) if i == 0 else int(value(mo.stages[v][i])) * mo.n + int(mo.pos[v])
                events.append((t_v, v))
    events.sort()
    return [v for _, v in events]


def solve_moccasin(
    g: Graph,
    budget: int,
    *,
    time_limit: float,
    max_copies: int,
    threads: int,
    seed: int,
    hint: Sequence[int] | None,
    t0: float,
    soft: bool = False,
    stop_at_budget: bool = False,
    lns_only: bool = False,
    params: dict[str, Any] | None = None,
    trace: list[tuple[float, float]] | None = None,
    complete_hint: bool = True,
) -> SolverResult:
    """Build (:func:`build_model`), hint (:func:`add_hint`) and solve the CP-SAT model, and decode
    (:func:`decode`) the best solution; ``hint`` is a stage-structured schedule (node indices).

    With ``soft`` (used when no schedule within the budget is known, e.g. the hint is the
    no-remat schedule), the memory capacity is a variable ``cap`` in [budget, sum of memory] and
    the objective is ``W * (cap - budget) + recomputation cost`` with ``W`` above any
    recomputation cost: the hint is then a feasible solution, and the search shaves the peak
    down to the budget (lexicographically first) before it lowers the duration. When that
    objective could overflow int64 (memory and duration near 2**62 in total), it is
    ``cap - budget`` alone, and the lower bound returned is the total duration. Only solutions
    with ``cap == budget`` are returned. With ``stop_at_budget`` as well, the search stops at
    the first solution within the budget and returns it (status "feasible"): the caller then
    restarts the plain model from it, whose search is faster than the weighted one.
    ``lns_only`` runs CP-SAT's large-neighbourhood search alone (``use_lns_only``): on large
    graphs it reaches a budget from an over-budget start several times sooner, but it proves
    nothing (no infeasibility, no optimality).
    ``params``: further CP-SAT parameters (name -> value), set last. ``trace``: if given, gets
    ``(seconds since t0, objective)`` appended for every improving in-budget solution.
    ``complete_hint``: hint every variable (also the interval sizes and which copy of each
    input each computation reads), so that CP-SAT takes the hint as a solution at once instead
    of searching for a completion of a partial one.
    """
    from ortools.sat.python import cp_model

    mo = build_model(g, budget, max_copies=max_copies, soft=soft)
    add_hint(mo, g, budget, hint, complete_hint=complete_hint)
    m, cap, weight, dur = mo.model, mo.cap, mo.weight, g.duration

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.01, float(time_limit) - (time.perf_counter() - t0))
    solver.parameters.num_workers = int(threads)
    solver.parameters.random_seed = int(seed)
    solver.parameters.use_lns_only = bool(lns_only)
    for key, val in (params or {}).items():
        setattr(solver.parameters, key, val)

    def computes(value: Any, boolean_value: Any) -> list[int]:
        return decode(mo, value, boolean_value)

    class _Cb(cp_model.CpSolverSolutionCallback):
        def __init__(self) -> None:
            super().__init__()
            self.best: float | None = None
            self.t_best: float | None = None
            self.first: list[int] | None = None  # with stop_at_budget: the first in-budget solution

        def on_solution_callback(self) -> None:
            obj = self.objective_value
            if cap is not None and self.value(cap) > budget:
                return  # over budget: not a schedule yet
            if self.best is None or obj < self.best:
                self.best = obj
                self.t_best = time.perf_counter() - t0
                if trace is not None:
                    trace.append((self.t_best, obj))
            if stop_at_budget and cap is not None and self.first is None:
                self.first = computes(self.value, self.boolean_value)
                self.stop_search()

    cb = _Cb()
    status = solver.solve(m, cb)
    total = int(dur.sum())
    # with the peak-only soft objective, "optimal" says nothing about the duration
    proved = status == cp_model.OPTIMAL and (cap is None or weight > 0)
    if cb.first is not None and not proved:
        return SolverResult(cb.first, "feasible", cb.t_best, None)
    if cap is not None and status in (cp_model.OPTIMAL, cp_model.FEASIBLE) and solver.value(cap) > budget:
        # the search never reached the budget (proved impossible when optimal)
        return SolverResult(None, "infeasible" if status == cp_model.OPTIMAL else "unknown", None, None)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        bound = solver.best_objective_bound
        if cap is not None:  # the bound on W * (cap - budget) + cost is a bound on the cost alone only at 0
            bound = bound if bound < weight else 0.0
        lb = int(np.ceil(bound - 1e-6)) + total
        return SolverResult(
            computes=computes(solver.value, solver.boolean_value),
            status="optimal" if proved else "feasible",
            time_to_best=cb.t_best,
            lower_bound=lb,
        )
    if status == cp_model.INFEASIBLE:
        return SolverResult(None, "infeasible", None, None)
    return SolverResult(None, "unknown", None, None)
