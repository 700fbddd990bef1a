"""Lower bounds on the duration of rematerialization schedules: the memory-cut bound.

The class: every schedule whose *first* computation of each node follows a topological order
``pi`` (stage schedules, Moccasin's and Checkmate's class, and DTR's general schedules all are in
it). Memory model as in docs/planner.md.

The argument. At the first computation of ``v_t`` (the node at position ``t`` of ``pi``) the
resident memory is at most the budget ``B`` and holds ``v_t`` and all its inputs. Let ``L_t`` be
the nodes ``u`` computed before ``t`` (``pos(u) < t``), not read by ``v_t``, with a user whose first
computation comes after ``t``; without recomputation they would all be resident, so
``M_t = mem(v_t) + mem(preds(v_t)) + mem(L_t)`` is the no-recomputation memory at ``t`` (its maximum
over ``t`` is the no-recomputation peak). At least ``M_t - B`` of ``L_t``'s memory is not resident
at ``t``. Split the live range of ``u`` at the positions of its users: segments are the open
intervals between consecutive use positions (the first from ``pos(u)``). A ``u`` not resident at a
cut ``t`` inside segment ``s`` is read again at the segment's closing use, so it is recomputed at
least once between ``t`` and that use; recomputations forced in different segments of ``u`` fall in
disjoint windows, so they are distinct. With ``x[u, s] = 1`` when ``u`` is not resident at some cut
of ``s``::

    min  sum dur(u) x[u, s]
    s.t. sum_{(u, s) containing t} min(mem(u), d_t) x[u, s] >= d_t = M_t - B   (every t with d_t > 0)
         x in {0, 1};  x[u, s] = 0 for nodes marked ``once`` (never recomputed)

is at most the recomputation cost of every schedule of the class. (The coefficient ``min(mem(u),
d_t)`` is valid because ``x`` is 0 or 1.) The constraint matrix has consecutive ones in each
column, but its entries are memories, not ones, so it is not totally unimodular: each row is a
covering knapsack and the integer problem is NP-hard in general. Its LP relaxation is solved here
(GLOP) and its value is a lower bound too. The bound returned is computed from the LP's dual
values by weak duality (any non-negative duals give a valid bound), in exact integer-safe
arithmetic, so a solver tolerance cannot make it too high. ``exact=True`` also solves the integer
problem with CP-SAT within a time limit and takes CP-SAT's proved bound when higher.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparseft.remat.graph import Graph

__all__ = ["CutBound", "cut_bound", "cut_lower_bound"]


@dataclass
class CutBound:
    """The memory-cut bound of one budget and order (see :func:`cut_bound`).

    Attributes
    ----------
    lower_bound : int or None
        A lower bound on the duration (total duration plus recomputation) of every schedule of
        the class within the budget; None when no schedule of the class fits the budget.
    lp_value : float or None
        The LP relaxation's optimum (recomputation cost), as solved (floating point); None
        without rows or when infeasible.
    integer_value : int or None
        With ``exact=True``: the integer problem's optimum if CP-SAT proved it, else None.
    rows : int
        Cuts with ``M_t > B`` (constraints).
    columns : int
        Segment variables that cover at least one such cut.
    seconds : float
        Time spent.
    """

    lower_bound: int | None
    lp_value: float | None
    integer_value: int | None
    rows: int
    columns: int
    seconds: float


def _order_index(graph: Graph, order: Sequence[Hashable] | None) -> np.ndarray:
    if order is None:
        return graph.order_idx
    if isinstance(order, (str, bytes)) or not isinstance(order, Sequence):
        raise TypeError(f"order must be None or a sequence of node ids, got {type(order).__name__}")
    return graph.with_order(list(order)).order_idx  # checks it: every node once, topological


def budget_units(budget: Any, peak: int) -> int:
    """``budget`` in memory units: an int as given (> 0), a float in (0, 1] as that fraction of
    ``peak`` rounded down (the Planner's and the bound's reading of a budget)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"budget must be an int (memory units) or a float in (0, 1] (fraction of the no-remat "
            f"peak), got {type(budget).__name__}"
        )
    if isinstance(budget, (float, np.floating)):
        b = float(budget)
        if not (0.0 < b <= 1.0):
            raise ValueError(f"budget as a float must be a fraction in (0, 1] of the no-remat peak, got {b}")
        return math.floor(b * peak)
    value = int(budget)
    if value <= 0:
        raise ValueError(f"budget must be a positive amount of memory, got {value}")
    return value


def _problem(
    graph: Graph, budget: int, oidx: np.ndarray
) -> tuple[np.ndarray, list[tuple[int, int, int]], bool]:
    """The covering problem: demands d_t (> 0 rows only, by position) and the columns
    (node, first cut, last cut) of non-``once`` segments; and whether some cut is uncoverable
    even with every droppable segment dropped (no schedule of the class fits)."""
    n = graph.n
    mem = graph.memory.astype(np.int64)
    pos = np.empty(n, dtype=np.int64)
    pos[oidx] = np.arange(n)
    succs = graph._succs
    preds = graph._preds
    # the no-recompute memory at each cut: v_t, its inputs, and the live set L_t (diff array)
    diff = np.zeros(n + 1, dtype=np.int64)
    segs: list[tuple[int, int, int]] = []
    for u in range(n):
        if not succs[u]:
            continue
        uses = sorted({int(pos[w]) for w in succs[u]})
        prev = int(pos[u])
        for p in uses:
            if p - prev >= 2:  # cuts prev+1 .. p-1
                diff[prev + 1] += mem[u]
                diff[p] -= mem[u]
                segs.append((u, prev + 1, p - 1))
            prev = p
    live = np.cumsum(diff[:n])
    own = np.array([int(mem[v]) + sum(int(mem[u]) for u in preds[v]) for v in oidx.tolist()], dtype=np.int64)
    demand = own + live - int(budget)
    if np.any(own > budget):
        return demand, [], True
    once = graph._once
    cols = [(u, a, b) for (u, a, b) in segs if not once[u]]
    # capacity of each cut if every droppable segment covering it is dropped
    cap = np.zeros(n + 1, dtype=np.int64)
    for u, a, b in cols:
        cap[a] += mem[u]
        cap[b + 1] -= mem[u]
    cap = np.cumsum(cap[:n])
    infeasible = bool(np.any(demand > cap))
    return demand, cols, infeasible


def cut_bound(
    graph: Graph,
    budget: int | float,
    order: Sequence[Hashable] | None = None,
    *,
    exact: bool = False,
    time_limit: float = 10.0,
) -> CutBound:
    """The memory-cut lower bound with its LP details (see :func:`cut_lower_bound`).

    Parameters
    ----------
    graph : Graph
    budget : int or float
        Memory budget (int, in the graph's unit) or a fraction in (0, 1] of ``graph.peak_memory()``
        (the peak of :attr:`Graph.order`, rounded down, as in :class:`Planner`).
    order : sequence of node ids, optional
        The topological order ``pi`` of first computations; default :attr:`Graph.order`.
    exact : bool
        Also solve the integer covering problem with CP-SAT (``time_limit`` seconds) and use its
        proved bound when higher than the LP's.
    time_limit : float
        Seconds for CP-SAT with ``exact``.

    Returns
    -------
    CutBound

    Raises
    ------
    TypeError, ValueError
        On a graph that is not a :class:`Graph`, a budget of the wrong type or not positive (a
        float outside (0, 1]), an order that is not a topological order of all nodes, or a
        non-positive time limit.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a sparseft.Graph, got {type(graph).__name__}")
    if graph.n == 0:
        raise ValueError("graph must have at least one node, got an empty graph")
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float, np.integer, np.floating)):
        raise TypeError(f"time_limit must be a number of seconds, got {type(time_limit).__name__}")
    if not (math.isfinite(float(time_limit)) and float(time_limit) > 0):
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    t0 = time.perf_counter()
    b = budget_units(budget, graph.peak_memory())
    oidx = _order_index(graph, order)
    total = graph.total_duration
    demand, cols, infeasible = _problem(graph, b, oidx)
    if infeasible:
        return CutBound(
            None, None, None, int(np.count_nonzero(demand > 0)), len(cols), time.perf_counter() - t0
        )
    rows_t = np.nonzero(demand > 0)[0]
    if len(rows_t) == 0:
        return CutBound(total, None, None, 0, 0, time.perf_counter() - t0)
    row_of = np.full(graph.n, -1, dtype=np.int64)
    row_of[rows_t] = np.arange(len(rows_t))
    # keep the columns that cover a row: rows inside [a, b] (row_of is -1 outside the rows)
    has = np.concatenate([[0], np.cumsum(demand > 0)])
    cols = [(u, a, e) for (u, a, e) in cols if has[e + 1] > has[a]]
    lp, duals = _solve_lp(graph, demand, rows_t, cols)
    lower_cost = _dual_bound(graph, demand, rows_t, cols, duals)
    integer = None
    if exact:
        ip_bound, integer = _solve_ip(graph, demand, rows_t, cols, time_limit)
        lower_cost = max(lower_cost, ip_bound)
    return CutBound(total + lower_cost, lp, integer, len(rows_t), len(cols), time.perf_counter() - t0)


def cut_lower_bound(graph: Graph, budget: int | float, order: Sequence[Hashable] | None = None) -> int | None:
    """A lower bound on the duration of every schedule whose first computations follow ``order``.

    The memory-cut bound (module docstring, docs/planner.md): at each first computation the
    memory that would be live without recomputation, minus the budget, must have been dropped
    and be recomputed before its next use; the cheapest such set of recomputations, over all
    cuts at once, relaxed to an LP. Valid for every schedule the :class:`Planner` returns over
    that order (stage schedules and DTR's general ones).

    Parameters
    ----------
    graph : Graph
    budget : int or float
        Memory budget (int) or a fraction in (0, 1] of ``graph.peak_memory()`` (rounded down).
    order : sequence of node ids, optional
        The topological order of first computations; default :attr:`Graph.order`.

    Returns
    -------
    int or None
        ``graph.total_duration`` plus the least recomputation cost; None when no schedule of the
        class fits the budget (a node's output and inputs exceed it, or ``once`` nodes, never
        recomputed, keep too much live at some point).

    Raises
    ------
    TypeError, ValueError
        As :func:`cut_bound`.

    Examples
    --------
    >>> import sparseft as sft
    >>> # a chain 0 -> 1 -> 2 -> 3 -> 4 with a skip edge 0 -> 4; no-recompute peak 12
    >>> g = sft.Graph(range(5), [(0, 1), (1, 2), (2, 3), (3, 4), (0, 4)], memory=[4, 4, 4, 4, 1],
    ...               duration=[3, 1, 1, 1, 1])
    >>> sft.remat.cut_lower_bound(g, 12), sft.remat.cut_lower_bound(g, 9)  # 9: recompute node 0
    (7, 10)
    """
    return cut_bound(graph, budget, order).lower_bound


def _solve_lp(
    graph: Graph, demand: np.ndarray, rows_t: np.ndarray, cols: list[tuple[int, int, int]]
) -> tuple[float, np.ndarray]:
    """Solve the LP relaxation with GLOP (rows scaled to right-hand side 1); (value, row duals)."""
    from ortools.linear_solver import pywraplp

    solver = pywraplp.Solver.CreateSolver("GLOP")
    assert solver is not None
    mem = graph.memory
    dur = graph.duration
    inf = solver.infinity()
    cons = [solver.Constraint(1.0, inf) for _ in range(len(rows_t))]
    pos_row = np.full(graph.n, -1, dtype=np.int64)
    pos_row[rows_t] = np.arange(len(rows_t))
    d = demand.astype(np.float64)
    obj = solver.Objective()
    for k, (u, a, b) in enumerate(cols):
        x = solver.NumVar(0.0, 1.0, f"x{k}")
        obj.SetCoefficient(x, float(dur[u]))
        m = float(mem[u])
        for r in pos_row[a : b + 1].tolist():
            if r >= 0:
                t = int(rows_t[r])
                cons[r].SetCoefficient(x, min(1.0, m / d[t]))
    obj.SetMinimization()
    status = solver.Solve()
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return math.nan, np.zeros(len(rows_t))
    duals = np.array([c.dual_value() for c in cons], dtype=np.float64)
    return float(obj.Value()), duals


def _dual_bound(
    graph: Graph,
    demand: np.ndarray,
    rows_t: np.ndarray,
    cols: list[tuple[int, int, int]],
    duals: np.ndarray,
) -> int:
    """Weak duality with any duals y >= 0 of the scaled rows: the recomputation cost is at least
    sum(y) - sum_j max(0, a_j . y - c_j). Returned rounded up to an integer, after a margin for
    the float64 arithmetic (the costs are integers)."""
    y = np.clip(np.nan_to_num(duals, nan=0.0), 0.0, None)
    mem = graph.memory
    dur = graph.duration
    pos_row = np.full(graph.n, -1, dtype=np.int64)
    pos_row[rows_t] = np.arange(len(rows_t))
    d = demand.astype(np.float64)
    value = float(y.sum())
    scale = value
    for u, a, b in cols:
        rs = pos_row[a : b + 1]
        rs = rs[rs >= 0]
        coef = np.minimum(1.0, float(mem[u]) / d[rows_t[rs]])
        s = float(coef @ y[rs])
        scale += s
        value -= max(0.0, s - float(dur[u]))
    margin = 1e-9 * (scale + 1.0)
    return max(0, math.ceil(value - margin))


def _solve_ip(
    graph: Graph,
    demand: np.ndarray,
    rows_t: np.ndarray,
    cols: list[tuple[int, int, int]],
    time_limit: float,
) -> tuple[int, int | None]:
    """The integer covering problem on CP-SAT: (proved bound on its optimum, optimum or None)."""
    from ortools.sat.python import cp_model

    m = cp_model.CpModel()
    mem = graph.memory
    dur = graph.duration
    xs = [m.new_bool_var(f"x{k}") for k in range(len(cols))]
    terms: list[list[tuple[Any, int]]] = [[] for _ in range(len(rows_t))]
    pos_row = np.full(graph.n, -1, dtype=np.int64)
    pos_row[rows_t] = np.arange(len(rows_t))
    for x, (u, a, b) in zip(xs, cols, strict=True):
        for r in pos_row[a : b + 1].tolist():
            if r >= 0:
                terms[r].append((x, min(int(mem[u]), int(demand[rows_t[r]]))))
    for r, tr in enumerate(terms):
        m.add(sum(c * x for x, c in tr) >= int(demand[rows_t[r]]))
    m.minimize(sum(int(dur[u]) * x for x, (u, _, _) in zip(xs, cols, strict=True)))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit)
    solver.parameters.num_workers = 1
    status = solver.solve(m)
    if status == cp_model.OPTIMAL:
        v = round(solver.objective_value)
        return v, v
    if status == cp_model.FEASIBLE:
        return max(0, math.ceil(solver.best_objective_bound - 1e-6)), None
    return 0, None
