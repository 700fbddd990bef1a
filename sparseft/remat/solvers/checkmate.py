"""The Checkmate MILP (Jain et al., MLSys 2020) solved with HiGHS through ``scipy.optimize.milp``.

Frontier-advancing stages: stage ``t`` computes the node at position ``t`` of the topological
order for the first time (``R[t, t] = 1``) and may recompute earlier nodes before it, in order
position. Variables (positions index nodes):

- ``R[t, i]`` (i <= t): node i is computed in stage t;
- ``S[t, i]`` (i < t): node i is kept from stage t - 1 into stage t;
- ``FREE[t, i, k]`` (i an input of k, or i = k): node i is freed right after computing k in
  stage t (allowed only when k is computed, i is not kept into stage t + 1 and no later
  computation of stage t reads i). One inequality per hazard instead of Checkmate's single
  aggregated one lets FREE stay continuous: it is 0 or 1 at every integral R, S;
- ``U[t, k]``: memory right after computing (or skipping) k in stage t, at most the budget.

The objective is the total duration of the recomputations (plus the fixed first computations).
"""

from __future__ import annotations

import time

import numpy as np

from sparseft.remat.graph import Graph
from sparseft.remat.solvers.moccasin import SolverResult


def solve_checkmate(g: Graph, budget: int, *, time_limit: float, t0: float) -> SolverResult:
    """Build and solve the MILP; returns the compute sequence of the best solution found."""
    from scipy.optimize import Bounds, LinearConstraint, milp  # type: ignore[import-untyped,unused-ignore]
    from scipy.sparse import coo_array  # type: ignore[import-untyped,unused-ignore]

    n = g.n
    order = g.order_idx
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    # relabel nodes by position: node i below is order[i]
    mem = g.memory[order].astype(np.float64) / float(budget)
    dur = g.duration[order].astype(np.float64)
    preds = [sorted(int(pos[u]) for u in g._preds[int(order[i])]) for i in range(n)]
    succs = [sorted(int(pos[u]) for u in g._succs[int(order[i])]) for i in range(n)]

    nvar = 0

    def block(count: int) -> int:
        nonlocal nvar
        first = nvar
        nvar += count
        return first

    # variable indices
    r_idx = {}
    for t in range(n):
        for i in range(t + 1):
            r_idx[t, i] = block(1)
    s_idx = {}
    for t in range(1, n):
        for i in range(t):
            s_idx[t, i] = block(1)
    u_idx = {}
    for t in range(n):
        for k in range(t + 1):
            u_idx[t, k] = block(1)
    f_idx = {}
    for t in range(n):
        for k in range(t + 1):
            for i in [*preds[k], k]:
                f_idx[t, i, k] = block(1)

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lo: list[float] = []
    hi: list[float] = []

    def add(terms: list[tuple[int, float]], lower: float, upper: float) -> None:
        row = len(lo)
        for c, v in terms:
            rows.append(row)
            cols.append(c)
            vals.append(v)
        lo.append(lower)
        hi.append(upper)

    inf = np.inf
    for t in range(n):
        # keep only what was computed or kept in the previous stage
        if t + 1 < n:
            for i in range(t + 1):
                terms = [(s_idx[t + 1, i], 1.0), (r_idx[t, i], -1.0)]
                if (t, i) in s_idx:
                    terms.append((s_idx[t, i], -1.0))
                add(terms, -inf, 0.0)
        # a computation needs each input computed earlier in the stage or kept
        for k in range(t + 1):
            for i in preds[k]:
                add([(r_idx[t, k], 1.0), (r_idx[t, i], -1.0), (s_idx[t, i], -1.0)], -inf, 0.0)
        # memory recurrence within the stage
        for k in range(t + 1):
            terms = [(u_idx[t, k], 1.0), (r_idx[t, k], -mem[k])]
            if k == 0:
                terms += [(s_idx[t, i], -mem[i]) for i in range(t)]
            else:
                terms.append((u_idx[t, k - 1], -1.0))
                terms += [(f_idx[t, i, k - 1], mem[i]) for i in [*preds[k - 1], k - 1]]
            add(terms, 0.0, 0.0)
        # a free is allowed only without hazards: k computed, i not kept, no later read in the stage;
        # one row per hazard keeps FREE continuous (it is 0 or 1 whenever R and S are integral)
        for k in range(t + 1):
            for i in [*preds[k], k]:
                f = f_idx[t, i, k]
                add([(f, 1.0), (r_idx[t, k], -1.0)], -inf, 0.0)
                if t + 1 < n and (t + 1, i) in s_idx:
                    add([(f, 1.0), (s_idx[t + 1, i], 1.0)], -inf, 1.0)
                for j in succs[i]:
                    if k < j <= t:
                        add([(f, 1.0), (r_idx[t, j], 1.0)], -inf, 1.0)

    a = coo_array((vals, (rows, cols)), shape=(len(lo), nvar)).tocsr()
    c = np.zeros(nvar)
    lb = np.zeros(nvar)
    ub = np.ones(nvar)
    integrality = np.ones(nvar, dtype=np.uint8)
    for (t, i), j in r_idx.items():
        c[j] = dur[i] if i < t else 0.0
        if i == t:
            lb[j] = 1.0
        elif g._once[int(order[i])]:  # computed exactly once: never in a later stage
            ub[j] = 0.0
    for j in u_idx.values():
        integrality[j] = 0
    for j in f_idx.values():
        integrality[j] = 0
    remaining = max(0.01, float(time_limit) - (time.perf_counter() - t0))
    res = milp(
        c,
        constraints=LinearConstraint(a, np.array(lo), np.array(hi)),
        integrality=integrality,
        bounds=Bounds(lb, ub),
        options={"time_limit": remaining, "disp": False, "mip_rel_gap": 1e-9},
    )
    total = int(g.duration.sum())
    if res.x is None:
        return SolverResult(None, "infeasible" if res.status == 2 else "unknown", None, None)
    x = res.x
    computes = []
    for t in range(n):
        for i in range(t + 1):
            if x[r_idx[t, i]] > 0.5:
                computes.append(int(order[i]))
    bound = getattr(res, "mip_dual_bound", None)
    lower = int(np.ceil(bound - 1e-6)) + total if bound is not None and np.isfinite(bound) else None
    return SolverResult(
        computes=computes,
        status="optimal" if res.status == 0 else "feasible",
        time_to_best=time.perf_counter() - t0,
        lower_bound=lower,
    )
