"""The Checkmate MILP (``Planner(solver="checkmate")``) solved by highspy with a warm start.

``sparseft.remat.solvers.checkmate`` builds the MILP and hands it to ``scipy.optimize.milp``,
which takes no starting solution. Here that call is routed, for one solve, to highspy, given
the integer part (R, S) of a schedule as a MIP start: HiGHS then starts from that incumbent and
spends its time on the dual bound, so a run that stops at the time limit reports the gap it
proved above the schedule's cost. The variable layout (R[t, i] for i <= t, then S[t, i] for
i < t, in row-major order) is checked against the objective before it is used.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import types
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

import sparseft as sft


@contextlib.contextmanager
def _quiet_stdout_fd() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null (HiGHS prints its banner from C on construction)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def stage_start(g: sft.Graph, steps: Sequence[tuple[str, Any]]) -> tuple[np.ndarray, int]:
    """Indices of the R and S variables that are 1 for ``steps`` (a schedule that computes the
    nodes for the first time in ``g``'s order), and the number of R and S variables.

    Stage t ends with the first computation of the node at order position t; R[t, i] = 1 when
    the node at position i is computed in stage t, S[t, i] = 1 when it is resident as stage t
    starts.
    """
    n = g.n
    pos = {int(v): i for i, v in enumerate(g.order_idx)}
    s0 = n * (n + 1) // 2
    ones: set[int] = set()
    resident: set[int] = set()
    first: set[int] = set()
    started: set[int] = set()
    for op, v in steps:
        v = int(v)
        if op == "free":
            resident.discard(v)
            continue
        t = len(first)
        if t not in started:
            started.add(t)
            if t >= 1:
                ones.update(s0 + (t - 1) * t // 2 + pos[u] for u in resident)
        if v not in first:
            if pos[v] != t:
                raise ValueError(
                    f"steps: node {v} is first computed at stage {t}, its order position is {pos[v]}"
                )
            first.add(v)
        ones.add(t * (t + 1) // 2 + pos[v])
        resident.add(v)
    return np.array(sorted(ones), np.int64), s0 + n * (n - 1) // 2


def _check_layout(g: sft.Graph, c: np.ndarray, lb: np.ndarray) -> None:
    """The R block is where stage_start puts it: c[R[t, i]] = duration of position i for i < t,
    0 with lower bound 1 on the diagonal."""
    order = np.asarray(g.order_idx)
    dur = g.duration[order].astype(np.float64)
    for t in range(g.n):
        base = t * (t + 1) // 2
        if not (np.array_equal(c[base : base + t], dur[:t]) and c[base + t] == 0.0 and lb[base + t] == 1.0):
            raise AssertionError(
                f"the checkmate MILP's variable layout changed (stage {t}); update stage_start"
            )


def checkmate_warm(
    g: sft.Graph, budget: float, start: sft.Schedule, time_limit: float
) -> tuple[sft.Schedule, dict[str, Any]]:
    """``Planner(g, budget, solver="checkmate", order="given")`` solved by highspy from ``start``.

    Returns the plan and a record: ``start_cost`` and ``primal`` (recomputation cost of the start
    and of HiGHS's incumbent), ``dual`` (its proved lower bound on that cost), ``gap``
    ((primal - dual) / primal), ``status`` and ``seconds``; ``lower_bound`` on the schedule's
    total duration. HiGHS prints nothing.
    """
    import highspy
    import scipy.optimize

    ones, n_int = stage_start(g, start.steps)
    total = int(g.duration.sum())
    record: dict[str, Any] = {"start_cost": int(start.duration or 0) - total}

    def milp(c: Any, constraints: Any, integrality: Any, bounds: Any, options: Any) -> Any:
        c = np.asarray(c, np.float64)
        lb, ub = np.asarray(bounds.lb, np.float64), np.asarray(bounds.ub, np.float64)
        _check_layout(g, c, lb)
        with _quiet_stdout_fd():
            h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", float(options["time_limit"]))
        h.setOptionValue("mip_rel_gap", float(options["mip_rel_gap"]))
        a = constraints.A.tocsc()
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = len(c), a.shape[0]
        lp.col_cost_, lp.col_lower_, lp.col_upper_ = c, lb, ub
        lp.row_lower_ = np.where(np.isinf(constraints.lb), -highspy.kHighsInf, constraints.lb)
        lp.row_upper_ = np.where(np.isinf(constraints.ub), highspy.kHighsInf, constraints.ub)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
        lp.integrality_ = [
            highspy.HighsVarType.kInteger if k else highspy.HighsVarType.kContinuous for k in integrality
        ]
        h.passModel(lp)
        x0 = np.zeros(n_int)
        x0[ones] = 1.0
        h.setSolution(n_int, np.arange(n_int, dtype=np.int32), x0)  # R, S; HiGHS completes U, FREE
        t0 = time.perf_counter()
        h.run()
        info, ms = h.getInfo(), h.getModelStatus()
        record.update(
            seconds=time.perf_counter() - t0,
            status=h.modelStatusToString(ms),
            primal=float(info.objective_function_value),
            dual=float(info.mip_dual_bound),
            gap=float(info.mip_gap),
        )
        x = np.array(h.getSolution().col_value) if info.primal_solution_status == 2 else None
        code = (
            0
            if ms == highspy.HighsModelStatus.kOptimal
            else 2
            if ms == highspy.HighsModelStatus.kInfeasible
            else 1
        )
        return types.SimpleNamespace(x=x, status=code, mip_dual_bound=info.mip_dual_bound)

    orig = scipy.optimize.milp
    scipy.optimize.milp = milp
    try:
        plan = sft.Planner(g, budget, solver="checkmate", time_limit=time_limit, order="given").solve()
    finally:
        scipy.optimize.milp = orig
    record["lower_bound"] = total + int(np.ceil(record["dual"] - 1e-6)) if "dual" in record else None
    return plan, record
