"""Rematerialization planning: choose what to keep and what to recompute under a memory budget.

See docs/planner.md for the memory model. Every planner here except DTR plans over "stage"
schedules of a topological order (the class of Checkmate and Moccasin): the first computation of
every node follows that order, and before each first computation some earlier nodes may be
recomputed, in order position; DTR's schedules are general. Frees happen right after a copy's last
read. With ``order="given"`` the order is
:attr:`Graph.order` (the papers' class); with ``order="auto"`` (the default) the planner also plans
over :meth:`Graph.low_memory_order` and returns the better schedule. Every schedule returned is
checked by the C simulator before it is returned.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np

from sparseft import _core
from sparseft.remat.bounds import budget_units, cut_lower_bound
from sparseft.remat.graph import Graph, atomic_write_json

__all__ = ["SOLVERS", "Planner", "Schedule", "simulate"]

SOLVERS = ("moccasin", "checkmate", "chen", "greedy", "blocks", "dtr", "auto", "none")
# DTR variants the "dtr" solver runs, the cheapest first (each takes milliseconds where it succeeds;
# one that thrashes can take seconds, so later variants start only within the time limit)
# "belady" first: eviction by next use (issue 20), the variant that reaches the tightest budgets
# "cone" (Belady's eviction, missing ancestors rematerialized as one cone in order position) next,
# then "largest" (Belady, a frame's costliest missing input first), then "su" (inputs rebuilt in
# Sethi-Ullman order of their from-scratch need, each held once back: it fits every budget down to
# that need's maximum, where the others thrash, at the price of much recomputation)
_DTR_VARIANTS = (
    ("belady", True),
    ("cone", True),
    ("largest", True),
    ("su", True),
    ("eq", True),
    ("full", True),
    ("eq", False),
    ("full", False),
)
# a DTR run gets at most this share of the time left (one that thrashes stops at its time limit)
_DTR_RUN_SHARE = 1.0 / 3.0
# where "su" is sure to fit the budget (Planner._su_fits), it runs first with this share of the
# time left and no computation cap (only the deadline stops it)
_SU_SHARE = 0.5
_UNCAPPED = 1 << 62
# checkpointed Belady (issue 20): checkpoint every k-th level of the longest-path depth; the
# checkpoints are evicted only when nothing else can go, which bounds the ancestor cones that
# rematerializations rebuild. Tried when plain DTR fails or recomputes a lot, within the time limit.
_CHECKPOINT_LEVELS = (6, 4, 8, 12, 3, 16)
# run the checkpointed variants too when the best DTR schedule's overhead is above this
_CHECKPOINT_OVERHEAD = 0.5
ORDERS = ("given", "auto")
# with order="auto" and two orders to plan over: the share of the time limit for the first
# (the lower-peak order); the given order gets the rest
_FIRST_ORDER_SHARE = 2.0 / 3.0
# seconds of the full CP-SAT portfolio on Moccasin's soft start before it switches to LNS alone
_EXACT_SLICE = 5.0
# seconds at most for each local-search pass over a schedule (drop/delay moves, solvers/polish.py)
_POLISH_SECONDS = 10.0
# Moccasin's multi-start before CP-SAT: Belady at budgets 0%, 1%, ... (at most this many) below the
# budget, each polished at the budget, within this share of the order's time
_MULTISTART_STARTS = 31
_MULTISTART_SHARE = 0.3
_INT32_MAX = 2**31 - 1  # CP-SAT's random_seed and num_workers are int32
_INT64_MAX = 2**63 - 1

_STATUS_TEXT = {
    1: "names a node that is not in the graph",
    2: "computes a node whose input is not resident",
    3: "computes a node that is already resident",
    4: "frees a node that is not resident",
    5: "never computes a node",
}


def _encode(graph: Graph, steps: Any) -> np.ndarray:
    """Steps [("compute"|"free", node), ...] -> int64 codes (v, or -1 - v for a free)."""
    if isinstance(steps, np.ndarray) and steps.dtype == np.int64:
        return np.ascontiguousarray(steps)
    if isinstance(steps, (str, bytes)):
        raise TypeError('steps must be a list of ("compute" | "free", node) pairs, got a string')
    if not isinstance(steps, Iterable):
        raise TypeError(
            f'steps must be a list of ("compute" | "free", node) pairs, got {type(steps).__name__}'
        )
    codes = []
    for k, st in enumerate(steps):
        try:
            op, node = st
        except (TypeError, ValueError):
            raise TypeError(f'steps[{k}] must be a ("compute" | "free", node) pair, got {st!r}') from None
        if not isinstance(op, str) or op not in ("compute", "free"):
            raise ValueError(f'steps[{k}]: operation must be "compute" or "free", got {op!r}')
        if isinstance(node, (bool, np.bool_)):  # True == 1, but bools are never node ids
            raise TypeError(f"steps[{k}]: node must be a node id (an int or str), got bool {node!r}")
        try:
            v = graph.index(node)
        except ValueError:
            raise ValueError(f"steps[{k}] names node {node!r}, which is not in the graph") from None
        codes.append(v if op == "compute" else -1 - v)
    return np.array(codes, dtype=np.int64)


def simulate(graph: Graph, steps: Any) -> tuple[int, int]:
    """Check a schedule and return its ``(peak_memory, duration)``.

    Parameters
    ----------
    graph : Graph
    steps : list of ("compute" | "free", node)
        The schedule. Computing a node needs all its inputs resident and the node not
        resident; freeing needs the node resident; every node must be computed at least once,
        and a node the graph marks ``once`` exactly once.

    Returns
    -------
    (int, int)
        Peak memory (the largest step memory) and total duration of the computations.

    Raises
    ------
    TypeError
        If ``steps`` is not a sequence of (operation, node) pairs, or names a node by a bool.
    ValueError
        If the schedule is invalid; the message names the step and the node. Also if its total
        duration does not fit in int64 (only possible with many recomputations).
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a sparseft.Graph, got {type(graph).__name__}")
    codes = _encode(graph, steps)
    peak, dur, _ = _sim(graph, codes, profile=False)
    return peak, dur


def _sim(graph: Graph, codes: np.ndarray, *, profile: bool) -> tuple[int, int, np.ndarray | None]:
    # the peak is at most the sum of memory (< 2**62, see Graph); the duration sum in the C
    # simulator would overflow int64 (undefined behaviour in C) only with many recomputations:
    # check it exactly first (node codes out of range are left for the simulator to report)
    if len(codes) * graph._max_duration >= 2**63:
        computes = codes[(codes >= 0) & (codes < graph.n)]
        counts = np.bincount(computes, minlength=graph.n).tolist()
        total = sum(c * d for c, d in zip(counts, graph.duration.tolist(), strict=True))
        if total >= 2**63:
            raise ValueError(f"steps: the total duration of the computations, {total}, does not fit in int64")
    rc, peak, dur, bad_step, bad_node, prof = _core.remat_simulate(
        codes, graph.memory, graph.duration, graph.pred_ptr, graph.pred_idx, profile=profile
    )
    if rc != 0:
        nodes = graph.nodes
        what = _STATUS_TEXT.get(rc, f"is invalid (code {rc})")
        if rc == 1:
            raise ValueError(f"steps[{bad_step}] {what} (index {bad_node})")
        if rc == 5:
            raise ValueError(f"steps {what}: {nodes[bad_node]!r}")
        step = int(codes[bad_step])
        v = step if step >= 0 else -1 - step
        extra = f" (missing input {nodes[bad_node]!r})" if rc == 2 else ""
        raise ValueError(
            f"steps[{bad_step}] ({'compute' if step >= 0 else 'free'} {nodes[v]!r}) {what}{extra}"
        )
    if graph._has_once:
        _check_once(graph, codes)
    return int(peak), int(dur), prof


def _check_once(graph: Graph, codes: np.ndarray) -> None:
    """Raise ValueError naming the step and node if a schedule computes a ``once`` node twice."""
    computes = codes[codes >= 0]
    counts = np.bincount(computes, minlength=graph.n)
    twice = np.nonzero((counts > 1) & graph._once)[0]
    if len(twice):
        v = int(twice[0])
        steps = np.nonzero(codes == v)[0]
        raise ValueError(
            f"steps[{int(steps[1])}] computes node {graph.nodes[v]!r} a second time (first at "
            f"steps[{int(steps[0])}]), but the graph marks it once: it must be computed exactly once"
        )


class Schedule:
    """A rematerialization schedule and what it costs.

    Attributes
    ----------
    steps : list of ("compute" | "free", node)
        The schedule; empty when no schedule within the budget was found.
    peak_memory : int or None
        Largest step memory (None without a schedule).
    duration : int or None
        Sum of the durations of all computations (None without a schedule).
    overhead : float or None
        ``duration / graph.total_duration - 1`` (the "TDI"; 0.0 means no recomputation).
    status : str
        "optimal" (proved optimal over the planner's schedule class: the stage schedules of
        its planning order(s), see ``Planner(order=...)``; for "moccasin", among schedules
        computing each node at most ``max_copies`` times), "feasible" (within budget,
        not proved optimal), "infeasible" (proved impossible for that class, or the heuristic
        could not meet the budget) or "unknown" (the time ran out before any schedule).
    solver : str
        The solver that produced it (for ``Planner(solver="auto")``: the one whose schedule won,
        e.g. "moccasin", "dtr", "greedy", "blocks" or "none").
    budget : int
        The memory budget in the graph's memory unit.
    solve_time : float
        Seconds spent in :meth:`Planner.solve`.
    time_to_best : float or None
        Seconds from the start of :meth:`Planner.solve` until this schedule was found.
    lower_bound : int or None
        A lower bound on the duration of every schedule of the class searched: for every solver
        at least the memory-cut bound (:func:`sparseft.remat.cut_lower_bound`, valid for every
        schedule whose first computations follow the planning order, DTR's general schedules
        included), raised to the exact solver's proved bound when the schedule lies in that
        solver's class (for "moccasin", at most ``max_copies`` computations per node); with
        ``order="auto"`` the least over the planning orders. None when no schedule of any
        planning order's class fits the budget (``status`` is then "infeasible").
    gap : float or None
        ``(duration - lower_bound) / lower_bound``: how far from optimal the schedule can be.
    """

    def __init__(
        self,
        graph: Graph,
        codes: np.ndarray | None,
        *,
        status: str,
        solver: str,
        budget: int,
        solve_time: float = 0.0,
        time_to_best: float | None = None,
        lower_bound: int | None = None,
    ) -> None:
        self.graph = graph
        self.status = status
        self.solver = solver
        self.budget = int(budget)
        self.solve_time = float(solve_time)
        self.time_to_best = time_to_best
        self.lower_bound = lower_bound
        self._codes = np.zeros(0, dtype=np.int64) if codes is None else np.asarray(codes, dtype=np.int64)
        self.peak_memory: int | None = None
        self.duration: int | None = None
        self.overhead: float | None = None
        if codes is not None:
            peak, dur, _ = _sim(graph, self._codes, profile=False)
            self.peak_memory = peak
            self.duration = dur
            total = graph.total_duration
            self.overhead = dur / total - 1.0 if total > 0 else 0.0
        nodes = graph.nodes
        self.steps: list[tuple[str, Hashable]] = [
            ("compute", nodes[c]) if c >= 0 else ("free", nodes[-1 - c]) for c in self._codes.tolist()
        ]

    @property
    def codes(self) -> np.ndarray:
        """The steps as int64 codes: node index to compute, ``-1 - index`` to free."""
        return self._codes.copy()

    @property
    def gap(self) -> float | None:
        """``(duration - lower_bound) / lower_bound``, the most the schedule can be above the
        optimum of the class, relative to the bound (0.0 when proved optimal); None without a
        schedule or a bound."""
        if self.duration is None or self.lower_bound is None:
            return None
        if self.lower_bound <= 0:
            return 0.0 if self.duration <= self.lower_bound else math.inf
        return (self.duration - self.lower_bound) / self.lower_bound

    @property
    def recomputations(self) -> int:
        """Number of computations beyond the first of each node."""
        return int(np.count_nonzero(self._codes >= 0)) - (self.graph.n if self.steps else 0)

    def memory_profile(self) -> np.ndarray:
        """Memory after each step (for a computation: during it), int64, one entry per step."""
        if len(self._codes) == 0:
            return np.zeros(0, dtype=np.int64)
        _, _, prof = _sim(self.graph, self._codes, profile=True)
        assert prof is not None
        return prof

    def to_json(self, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The schedule as a JSON-ready dict; also written atomically to ``path`` if given.

        Parameters
        ----------
        path : str or os.PathLike, optional
            Destination file (written to a temporary file, then renamed over it).

        Returns
        -------
        dict
            Keys ``steps`` (list of ["compute" | "free", node]), ``peak_memory``, ``duration``,
            ``overhead``, ``status``, ``solver``, ``budget``, ``solve_time``, ``time_to_best``,
            ``lower_bound``, ``graph`` (its name).
        """
        out = {
            "graph": self.graph.name,
            "solver": self.solver,
            "status": self.status,
            "budget": self.budget,
            "peak_memory": self.peak_memory,
            "duration": self.duration,
            "overhead": self.overhead,
            "solve_time": self.solve_time,
            "time_to_best": self.time_to_best,
            "lower_bound": self.lower_bound,
            "steps": [[op, _jsonable(v)] for op, v in self.steps],
        }
        if path is not None:
            atomic_write_json(path, out)
        return out

    def plot(self, ax: Any = None) -> Any:
        """Plot the memory profile against the budget (needs matplotlib).

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Where to draw; a new figure is created otherwise.

        Returns
        -------
        matplotlib.axes.Axes
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError(
                "Schedule.plot needs matplotlib: pip install matplotlib (or sparseft[plot])"
            ) from None
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 3))
        prof = self.memory_profile()
        ax.step(np.arange(len(prof)), prof, where="post", label="memory")
        ax.axhline(self.budget, color="r", linestyle="--", label="budget")
        ax.set_xlabel("step")
        ax.set_ylabel("memory")
        ov = "n/a" if self.overhead is None else f"{100 * self.overhead:.2f}%"
        ax.set_title(f"{self.solver}: {self.status}, overhead {ov}")
        ax.legend(loc="best")
        return ax

    def __repr__(self) -> str:
        ov = "None" if self.overhead is None else f"{100 * self.overhead:.3f}%"
        return (
            f"<Schedule solver={self.solver!r} status={self.status!r} steps={len(self.steps)} "
            f"peak_memory={self.peak_memory} budget={self.budget} duration={self.duration} overhead={ov}>"
        )


def _jsonable(v: Hashable) -> Any:
    return v.item() if isinstance(v, np.generic) else v


class Planner:
    """Plan which outputs to keep and which to recompute so that peak memory fits a budget.

    Parameters
    ----------
    graph : Graph
        The computation graph.
    budget : int or float
        An ``int`` is a memory budget in the graph's memory unit (e.g. bytes); one above
        2**63 - 1 is no constraint (no schedule holds more than the graph's sum of memory, below
        2**62) and is clamped to 2**63 - 1, so :attr:`Schedule.budget` fits in int64. A ``float`` in
        (0, 1] is a fraction of the no-rematerialization peak of :attr:`Graph.order`
        (``graph.peak_memory()``), rounded down, whatever ``order`` is: the same fraction
        gives the same byte budget under "given" and "auto".
    solver : {"moccasin", "checkmate", "chen", "greedy", "blocks", "dtr", "auto", "none"}
        "moccasin": the CP-SAT model of Bartan et al. (2023), hinted with the best stage-structured
        heuristic schedule, and returning the best heuristic schedule of any kind (greedy, blocks,
        DTR) when it finds nothing better in the time limit
        (when no heuristic schedule fits the budget: a soft-capacity model first shaves an
        over-budget start down to the budget, 5 s with the full CP-SAT portfolio, then with its
        neighbourhood search alone, and the model restarts from the first in-budget schedule);
        "checkmate": the MILP of Jain et al. (2020) with HiGHS (small graphs);
        "chen": sqrt(n) checkpointing on articulation points (Chen et al., 2016), the best
        segment length that fits; "greedy": the best of the C eviction heuristics and an
        interval-splitting peak-shaving heuristic; "blocks": per-block checkpointing (keep each
        block's inputs, recompute a block's internals for its backward; needs a graph with
        ``block`` indices; see :mod:`sparseft.remat.solvers.blocks`), also one of Moccasin's
        hints; "dtr": Dynamic Tensor Rematerialization (Kirisame et al., 2021) in C, general
        (not stage-structured) schedules, the best of its variants (see docs/planner.md);
        "auto": the best schedule any of them finds within the time limit, with
        :attr:`Schedule.solver` naming the solver that found it; "none": no recomputation. Every
        solver computes the nodes the graph marks ``once`` exactly once.
    time_limit : float
        Seconds for the exact solvers (the whole :meth:`solve` call; with ``order="auto"`` and
        two orders to plan over, 2/3 of it goes to the lower-peak order, the rest to
        :attr:`Graph.order`).
    max_copies : int
        Moccasin's C: at most this many computations of one node.
    threads : int, optional
        CP-SAT workers, at most 2**31 - 1 (an int32); default ``min(8, os.cpu_count())``.
    seed : int
        CP-SAT random seed, in [-2**31, 2**31 - 1] (CP-SAT's ``random_seed`` is an int32).
    order : {"auto", "given"}
        The topological order(s) of first computations the solver plans over. A schedule in
        the memory model need not follow :attr:`Graph.order`; both choices give valid schedules
        within the same byte budget.

        - "auto" (default): "the best plan under this budget". The solver plans over
          :meth:`Graph.low_memory_order` when its no-remat peak is lower than that of
          :attr:`Graph.order` (a lower-peak order can need far less recomputation, or none:
          when it fits the budget, its no-recomputation schedule is returned at once, as
          optimal), and then over :attr:`Graph.order` too, and returns the schedule with the
          least duration. It is never worse than "given" when both solves finish (the
          heuristics always do); "optimal" then means optimal over both orders' classes.
        - "given": :attr:`Graph.order` only, the schedule class of the Checkmate and Moccasin
          papers (their published numbers are for this class).

        Fractional budgets are always relative to the peak of :attr:`Graph.order`.

    Raises
    ------
    TypeError
        On arguments of the wrong type.
    ValueError
        On an unknown solver or order, a non-positive time limit, a seed or thread count outside
        int32, and a budget below the minimum any schedule needs (the largest single computation:
        a node's output plus its inputs); the message states that minimum.

    Examples
    --------
    >>> import sparseft as sft
    >>> g = sft.graphs.training_graph(8, memory=[10] * 8, duration=[1] * 8)
    >>> plan = sft.Planner(g, 0.8, solver="moccasin", time_limit=10).solve()
    >>> plan.status, plan.peak_memory <= plan.budget, plan.duration > g.total_duration
    ('optimal', True, True)
    """

    def __init__(
        self,
        graph: Graph,
        budget: int | float,
        solver: str = "moccasin",
        time_limit: float = 60,
        max_copies: int = 2,
        threads: int | None = None,
        seed: int = 0,
        order: str = "auto",
    ) -> None:
        if not isinstance(graph, Graph):
            raise TypeError(f"graph must be a sparseft.Graph, got {type(graph).__name__}")
        if graph.n == 0:
            raise ValueError("graph must have at least one node, got an empty graph")
        if not isinstance(solver, str):
            raise TypeError(
                f"solver must be a str, one of {', '.join(map(repr, SOLVERS))}; got {type(solver).__name__}"
            )
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(map(repr, SOLVERS))}; got {solver!r}")
        if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float, np.integer, np.floating)):
            raise TypeError(f"time_limit must be a number of seconds, got {type(time_limit).__name__}")
        if not (math.isfinite(float(time_limit)) and float(time_limit) > 0):
            raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
        if isinstance(max_copies, bool) or not isinstance(max_copies, (int, np.integer)):
            raise TypeError(f"max_copies must be an int >= 1, got {type(max_copies).__name__}")
        if max_copies < 1:
            raise ValueError(f"max_copies must be an int >= 1, got {max_copies}")
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
                raise TypeError(f"threads must be None or an int >= 1, got {type(threads).__name__}")
            if threads < 1:
                raise ValueError(f"threads must be None or an int >= 1, got {threads}")
            if threads > _INT32_MAX:
                raise ValueError(
                    f"threads must be None or an int <= 2**31 - 1 (CP-SAT's int32), got {threads}"
                )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not -_INT32_MAX - 1 <= seed <= _INT32_MAX:
            raise ValueError(
                f"seed must be an int in [-2**31, 2**31 - 1] (CP-SAT's int32 random_seed), got {seed}"
            )
        if solver == "blocks" and not graph.has_blocks:
            raise ValueError(
                'solver "blocks" needs a graph whose nodes carry block indices (Graph(..., block=...)); '
                "this graph has none"
            )
        if not isinstance(order, str):
            raise TypeError(
                f"order must be a str, one of {', '.join(map(repr, ORDERS))}; got {type(order).__name__}"
            )
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(map(repr, ORDERS))}; got {order!r}")
        self.graph = graph
        self.solver = solver
        self.time_limit = float(time_limit)
        self.max_copies = int(max_copies)
        self.threads = int(threads) if threads is not None else min(8, os.cpu_count() or 1)
        self.seed = int(seed)
        self.no_remat_peak = graph.peak_memory()
        self.budget = self._resolve_budget(budget)
        self.order = order
        # the planning orders: the lower-peak one first ("auto" adds Graph.low_memory_order)
        self._plan_graphs = [graph]
        if order == "auto":
            low = graph.low_memory_order()
            if graph.peak_memory(low) < self.no_remat_peak:
                self._plan_graphs.insert(0, graph.with_order(low))
        self._plan_graph = self._plan_graphs[0]
        self.plan_peak = self._plan_graph.peak_memory()
        self._limit = self.time_limit  # seconds since solve() began that the current order may use
        self._deadline = math.inf  # perf_counter() time by which the current order's solve should end

    def _resolve_budget(self, budget: Any) -> int:
        # no schedule holds more than the sum of memory (< 2**62): a larger budget is no constraint
        value = min(budget_units(budget, self.no_remat_peak), _INT64_MAX)
        need, node = self.graph.min_budget()
        if value < need:
            raise ValueError(
                f"budget {value} is below the minimum feasible budget {need} (computing node {node!r} "
                f"needs its output and all its inputs resident)"
            )
        return value

    # --------------------------------------------------------------- solving
    def solve(self) -> Schedule:
        """Run the solver and return the best schedule found within the budget.

        Returns
        -------
        Schedule
            With ``status`` "optimal", "feasible", "infeasible" or "unknown". Its peak memory
            is never above the budget; without a schedule, ``steps`` is empty.
        """
        t0 = time.perf_counter()
        fn = getattr(self, f"_solve_{self.solver}")
        results: list[_Result] = []
        self._sources: list[str] = []  # with "auto": the solver behind each order's result
        self._dtr_stage: np.ndarray | None = None  # DTR's schedule in stage form (a Moccasin hint)
        cuts: list[int | None] = []  # the memory-cut bound of each planning order
        try:
            for k, pg in enumerate(self._plan_graphs):
                elapsed = time.perf_counter() - t0
                share = 1.0 if k == len(self._plan_graphs) - 1 else _FIRST_ORDER_SHARE
                self._plan_graph, self.plan_peak = pg, pg.peak_memory()
                self._limit = elapsed + max(0.01, share * (self.time_limit - elapsed))
                self._deadline = t0 + self._limit
                cuts.append(cut_lower_bound(pg, self.budget))
                if cuts[-1] is None:  # proved: no schedule of this order's class fits the budget
                    results.append((None, "infeasible", None, None))
                    self._sources.append(self.solver)
                    continue
                results.append(fn(t0))
                if self._recomputes_nothing(results[-1][0]):
                    break  # nothing can be better
        finally:
            self._plan_graph, self._limit = self._plan_graphs[0], self.time_limit
            self.plan_peak = self._plan_graph.peak_memory()
        codes, status, t_best, _ = _best_result(self.graph, results)
        lower = self._lower_bound(results, cuts)
        if codes is None and lower is None:
            status = "infeasible"  # every order's class is proved empty
        elif codes is not None and lower is not None:
            _, dur, _ = _sim(self.graph, codes, profile=False)
            lower = min(lower, dur)  # cannot bind for valid bounds; stay consistent
            # "optimal" exactly when the schedule attains the bound (the proofs of the exact
            # solvers enter through their bound, see _lower_bound)
            status = "optimal" if dur == lower else "feasible"
        solver = self.solver
        if solver == "auto":  # name the solver whose schedule won
            won = next((k for k, r in enumerate(results) if codes is not None and r[0] is codes), None)
            solver = self._sources[won] if won is not None else "auto"
        solve_time = time.perf_counter() - t0
        if codes is not None:
            codes = self._compact(codes)
            peak, _, _ = _sim(self.graph, codes, profile=False)
            if peak > self.budget:  # never hand out a schedule over budget
                codes, status, t_best = None, "unknown", None
        return Schedule(
            self.graph,
            codes,
            status=status,
            solver=solver,
            budget=self.budget,
            solve_time=solve_time,
            time_to_best=t_best,
            lower_bound=lower,
        )

    def _lower_bound(self, results: list[_Result], cuts: list[int | None]) -> int | None:
        """The lower bound of the whole solve: the least over the planning orders of each
        order's bound, which is its memory-cut bound (valid for every schedule whose first
        computations follow the order, general ones included), raised to the exact solver's bound
        when the order's schedule lies in that solver's class (a stage schedule; for Moccasin
        with at most ``max_copies`` computations per node). An order whose class is proved empty
        (by the cut bound, or by the exact solver when it returned no schedule) does not count.
        None when every order's class is proved empty."""
        from sparseft.remat.solvers.moccasin import hint_copies

        exact = self.solver in ("moccasin", "checkmate", "auto")
        best: int | None = None
        for pg, res, cut in zip(self._plan_graphs, results, cuts, strict=False):
            codes, status, _, solver_bound = res
            if cut is None or (codes is None and exact and status == "infeasible"):
                continue
            bound = cut
            if codes is not None and solver_bound is not None and solver_bound > cut:
                if self.solver == "none":
                    bound = solver_bound  # the no-recompute schedule: the total duration
                elif exact:
                    pos = np.empty(pg.n, dtype=np.int64)
                    pos[pg.order_idx] = np.arange(pg.n)
                    copies = hint_copies(codes.tolist(), pg, pos)
                    limit = self.max_copies if self.solver != "checkmate" else pg.n
                    if copies is not None and max(len(c) for c in copies) <= limit:
                        bound = solver_bound
            best = bound if best is None else min(best, bound)
        return best

    def _recomputes_nothing(self, codes: np.ndarray | None) -> bool:
        return codes is not None and int(np.count_nonzero(np.asarray(codes) >= 0)) == self.graph.n

    def _compact(self, codes: np.ndarray) -> np.ndarray:
        g = self.graph
        return _core.remat_compact(np.ascontiguousarray(codes, dtype=np.int64), g.pred_ptr, g.pred_idx, g.n)

    def _greedy(self) -> tuple[np.ndarray | None, int]:
        """Best of the C eviction heuristics and the interval-splitting heuristic (None, 0 if both fail)."""
        from sparseft.remat.solvers.split import split_heuristic

        g = self._plan_graph
        found: list[np.ndarray] = []
        rc, steps, _, _ = _core.remat_greedy(
            g.memory, g.duration, g.pred_ptr, g.pred_idx, g.succ_ptr, g.succ_idx, g.order_idx, self.budget
        )
        if rc == 0 and steps is not None:
            found.append(steps)
        comp = split_heuristic(g, self.budget, time_limit=min(10.0, self._left() / 4))
        if comp is not None:
            found.append(np.array(comp, dtype=np.int64))
        return self._best_within(found)

    def _best_within(self, found: Iterable[np.ndarray]) -> tuple[np.ndarray | None, int]:
        """The compacted schedule of least duration among ``found`` that is valid (``once``
        included) and within the budget; (None, 0) if none is."""
        best: tuple[np.ndarray | None, int] = (None, 0)
        for steps in found:
            try:
                steps = self._compact(steps)
                peak, dur, _ = _sim(self._plan_graph, steps, profile=False)
            except ValueError:  # a heuristic bug or a repeated once node: skip that schedule
                continue
            if peak <= self.budget and (best[0] is None or dur < best[1]):
                best = (steps, dur)
        return best

    def _blocks(self) -> tuple[np.ndarray | None, int]:
        """The best per-block checkpointing schedule within the budget ((None, 0) if none fits)."""
        from sparseft.remat.solvers.blocks import block_schedules

        return self._best_within(block_schedules(self._plan_graph, self.budget))

    def _slack(self) -> float:
        """Seconds below which a step that cannot be interrupted (building the CP-SAT model, the C
        greedy runs) is not started: a tenth of the time limit, at most 1 s."""
        return min(1.0, 0.1 * self.time_limit)

    def _left(self) -> float:
        """Seconds left before the current planning order's deadline (0 when past it)."""
        return max(0.0, self._deadline - time.perf_counter())

    def _run_dtr(
        self,
        heuristic: str,
        lookahead: bool,
        keep: np.ndarray | None = None,
        budget: int | None = None,
        time_limit: float | None = None,
        max_computes: int = 0,
    ) -> np.ndarray | None:
        """One DTR run over the planning order at ``budget`` (default the Planner's), given
        ``time_limit`` seconds (default a share of the time left, at least 10 ms) and at most
        ``max_computes`` computations (0: the C default, a multiple of the node count)."""
        g = self._plan_graph
        if time_limit is None:
            time_limit = max(0.01, _DTR_RUN_SHARE * self._left()) if math.isfinite(self._deadline) else 0.0
        rc, steps, _, _ = _core.remat_dtr(
            g.memory,
            g.duration,
            g.pred_ptr,
            g.pred_idx,
            g.succ_ptr,
            g.succ_idx,
            g.order_idx,
            g._once if g._has_once else None,
            self.budget if budget is None else budget,
            heuristic=heuristic,
            lookahead=lookahead,
            keep=keep,
            max_computes=max_computes,
            time_limit=time_limit,
        )
        return steps if rc == 0 else None

    def _su_fits(self) -> bool:
        """Whether DTR "su" is sure to fit the budget over the planning order: no node is once
        and the budget covers the largest from-scratch need (``_core.remat_su_need``)."""
        g = self._plan_graph
        if g._has_once or g.n == 0:
            return False
        need = _core.remat_su_need(g.memory, g.pred_ptr, g.pred_idx, g.order_idx)
        return self.budget >= int(need.max())

    def _dtr(self) -> tuple[np.ndarray | None, int]:
        """The best DTR schedule within the budget over :data:`_DTR_VARIANTS`, then, when none
        is found or the best recomputes a lot, over Belady with checkpoints
        (:data:`_CHECKPOINT_LEVELS`); every run within the time left ((None, 0) if none)."""
        found = []
        variants: tuple[tuple[str, bool], ...] = _DTR_VARIANTS
        if self._su_fits():
            # "su" is sure to find a schedule (given the time): first, with half the time left and
            # no cap on its recomputations, so that the variants that may thrash cannot starve it
            # (its schedule can be exponentially long: without a deadline, the C default cap)
            if math.isfinite(self._deadline):
                limit, cap = max(0.01, _SU_SHARE * self._left()), _UNCAPPED
            else:
                limit, cap = 0.0, 0
            steps = self._run_dtr("su", True, time_limit=limit, max_computes=cap)
            if steps is not None:
                found.append(steps)
            variants = tuple(v for v in variants if v[0] != "su")
        for k, (heuristic, lookahead) in enumerate(variants):
            if (k > 0 or found) and self._left() <= 0:
                break
            steps = self._run_dtr(heuristic, lookahead)
            if steps is not None:
                found.append(steps)
        best = self._best_within(found)
        total = self.graph.total_duration
        if best[0] is not None and best[1] <= (1.0 + _CHECKPOINT_OVERHEAD) * total:
            return best
        depth = _depth(self._plan_graph)
        for levels in _CHECKPOINT_LEVELS:
            if self._left() <= 0:
                break
            steps = self._run_dtr("belady", True, keep=depth % levels == 0)
            if steps is not None:
                found.append(steps)
        return self._best_within(found)

    def _as_stage(self, codes: np.ndarray) -> tuple[np.ndarray, int] | None:
        """A DTR schedule rewritten as a stage schedule of the planning order: its first
        computations follow the order (DTR computes them so), and the recomputations before each
        are made once each, in order position, with frees after the last read. Returns
        (schedule, duration) when that is within the budget and at most ``max_copies``
        computations per node (Moccasin's class, so it can hint the model), else None."""
        from sparseft.remat.solvers.moccasin import hint_copies

        g = self._plan_graph
        pos = np.empty(g.n, dtype=np.int64)
        pos[g.order_idx] = np.arange(g.n)
        done = np.zeros(g.n, dtype=bool)
        out: list[int] = []
        pending: set[int] = set()
        for c in codes.tolist():
            if c < 0:
                continue
            if done[c]:
                pending.add(c)
                continue
            out.extend(sorted(pending, key=lambda v: int(pos[v])))
            pending.clear()
            out.append(c)
            done[c] = True
        try:
            steps = self._compact(np.array(out, dtype=np.int64))
            peak, dur, _ = _sim(g, steps, profile=False)
        except ValueError:  # recomputes a once node: not a stage schedule of the class
            return None
        copies = hint_copies(steps.tolist(), g, pos)
        if peak > self.budget or copies is None or max(len(c) for c in copies) > self.max_copies:
            return None
        return steps, dur

    def _tight_hint(self) -> np.ndarray:
        """An over-budget start for Moccasin's soft model: the heuristic schedule with the lowest
        peak among budgets between ``budget`` and the no-remat peak that fits ``max_copies``
        (the no-remat schedule if none does)."""
        from sparseft.remat.solvers.moccasin import hint_copies
        from sparseft.remat.solvers.split import split_heuristic

        g = self._plan_graph
        pos = np.empty(g.n, dtype=np.int64)
        pos[g.order_idx] = np.arange(g.n)
        for k in range(1, 8):
            if self._left() <= 0:
                break
            b = self.budget + (self.no_remat_peak - self.budget) * k // 8
            comp = split_heuristic(g, b, time_limit=min(2.0, self._left() / 16))
            if comp is None:
                continue
            copies = hint_copies(comp, g, pos)
            if (
                copies is not None
                and max(len(c) for c in copies) <= self.max_copies
                and all(len(copies[v]) == 1 for v in np.nonzero(g._once)[0].tolist())
            ):
                return np.array(comp, dtype=np.int64)
        return self._compact(g.order_idx.copy())

    def _solve_none(self, t0: float) -> tuple[np.ndarray | None, str, float | None, int | None]:
        if self.plan_peak > self.budget:
            return None, "infeasible", None, None
        return (
            self._plan_graph.order_idx.copy(),
            "optimal",
            time.perf_counter() - t0,
            self.graph.total_duration,
        )

    def _solve_greedy(self, t0: float) -> tuple[np.ndarray | None, str, float | None, int | None]:
        steps, _ = self._greedy()
        if steps is None:
            return None, "infeasible", None, None
        return steps, "feasible", time.perf_counter() - t0, None

    def _solve_dtr(self, t0: float) -> tuple[np.ndarray | None, str, float | None, int | None]:
        steps, _ = self._dtr()
        if steps is None:
            return None, "infeasible", None, None
        return steps, "feasible", time.perf_counter() - t0, None

    def _solve_auto(self, t0: float) -> tuple[np.ndarray | None, str, float | None, int | None]:
        if self.plan_peak <= self.budget:
            self._sources.append("none")
            return self._solve_none(t0)
        res = self._solve_moccasin(t0)
        hint = self._last_hint
        if res[0] is not None and res[0] is hint[0]:
            self._sources.append(hint[2])
        elif res[0] is not None and res[0] is self._dtr_stage:
            self._sources.append("dtr")  # DTR's schedule in stage form, unimproved by the model
        else:
            self._sources.append("moccasin")
        return res

    def _solve_blocks(self, t0: float) -> tuple[np.ndarray | None, str, float | None, int | None]:
        steps, _ = self._blocks()
        if steps is None:
            return None, "infeasible", None, None
        return steps, "feasible", time.perf_counter() - t0, None

    def _solve_chen(self, t0: float) -> tuple[np.ndarray | None, str, float | None, int | None]:
        from sparseft.remat.solvers.blocks import plan_stages

        g = self._plan_graph
        n = g.n
        order = g.order_idx
        pos = np.empty(n, dtype=np.int64)
        pos[order] = np.arange(n)
        cands = chen_candidates(g)
        best: tuple[int, np.ndarray] | None = None
        big = int(g.memory.sum()) + 1
        # segment lengths: sqrt(#candidates) first, then every other length
        k0 = max(1, round(math.sqrt(len(cands))))
        for k in [k0, *[k for k in range(1, len(cands) + 1) if k != k0]]:
            seg_end = np.full(n, n, dtype=np.int64)
            checkpoints = set(cands[k - 1 :: k])
            nxt = n
            # a non-checkpoint forward node is dropped when the next checkpoint is computed
            for t in range(n - 1, -1, -1):
                v = int(order[t])
                if v in checkpoints:
                    nxt = t
                elif not (g._has_backward and g._backward[v]) and not g._once[v]:
                    seg_end[v] = nxt
            steps = plan_stages(g, seg_end, big)
            if steps is None:
                continue
            steps = self._compact(steps)
            peak, dur, _ = _sim(g, steps, profile=False)
            if peak <= self.budget and (best is None or dur < best[0]):
                best = (dur, steps)
            if k == k0 and best is not None:
                break  # the classic sqrt(n) spacing fits
        if best is None:
            return None, "infeasible", None, None
        return best[1], "feasible", time.perf_counter() - t0, None

    def _solve_moccasin(self, t0: float) -> tuple[np.ndarray | None, str, float | None, int | None]:
        from sparseft.remat.solvers.moccasin import solve_moccasin

        if self.plan_peak <= self.budget:  # nothing to recompute: the planning order fits
            return self._solve_none(t0)
        found = self._heuristics()
        self._multistart(found, t0)
        t_found = time.perf_counter() - t0
        # the fallback: the best heuristic schedule of any kind; the model's hint: the best
        # stage-structured one (DTR's general schedules are outside the model's class)
        self._last_hint = min(
            ((c, d, name) for name, (c, d) in found.items()), key=lambda x: x[1], default=(None, 0, "")
        )
        fallback = (
            self._last_hint[0],
            self._last_hint[1],
            t_found if self._last_hint[0] is not None else None,
        )
        stage = [(c, d) for name, (c, d) in found.items() if name != "dtr"]
        if "dtr" in found:  # DTR's schedule as a stage schedule, when it fits the model's class
            staged = self._as_stage(found["dtr"][0])
            if staged is not None:
                self._dtr_stage = staged[0]
                stage.append(staged)
        hint, hint_dur = min(stage, key=lambda x: x[1]) if stage else (None, 0)
        if hint is not None:  # drop the recomputations it does not need (it stays a stage schedule)
            was_dtr = hint is self._dtr_stage
            hint, hint_dur = self._polish(hint, stage=True)
            if was_dtr:
                self._dtr_stage = hint
        if fallback[0] is not None:
            fallback = (*self._polish(fallback[0]), fallback[2])
            self._last_hint = (fallback[0], fallback[1], self._last_hint[2])
        t_found = time.perf_counter() - t0
        t_hint: float | None = t_found
        args: dict[str, Any] = {
            "time_limit": self._limit,
            "max_copies": self.max_copies,
            "threads": self.threads,
            "seed": self.seed,
            "t0": t0,
        }
        if self._left() < self._slack():  # the heuristics used the time: their best schedule, if any
            status = "feasible" if fallback[0] is not None else "unknown"
            return fallback[0], status, fallback[2], None
        if hint is None:
            # no stage schedule within budget known: from an over-budget start (a looser heuristic
            # schedule, or no remat), shave the peak down to the budget first, and stop there
            start = self._tight_hint().tolist()
            # the full portfolio briefly (it settles small graphs, proving infeasibility or optimality) ...
            short = dict(args, time_limit=min(self._limit, time.perf_counter() - t0 + _EXACT_SLICE))
            first = solve_moccasin(
                self._plan_graph, self.budget, hint=start, soft=True, stop_at_budget=True, **short
            )
            if first.status == "unknown" and time.perf_counter() - t0 < self._limit:
                # ... then neighbourhood search alone, which reaches the budget sooner on large graphs
                first = solve_moccasin(
                    self._plan_graph,
                    self.budget,
                    hint=start,
                    soft=True,
                    stop_at_budget=True,
                    lns_only=True,
                    **args,
                )
            if first.computes is None or first.status == "optimal":
                return self._best_of(first, *fallback)
            try:
                hint = self._compact(np.array(first.computes, dtype=np.int64))
                _, hint_dur, _ = _sim(self.graph, hint, profile=False)
            except ValueError:  # never start from an invalid schedule
                return self._best_of(first, *fallback)
            t_hint = first.time_to_best
        # the plain model, hinted with an in-budget schedule
        res = solve_moccasin(self._plan_graph, self.budget, hint=hint.tolist(), **args)
        if fallback[0] is not None and fallback[1] < hint_dur:
            return self._polished(self._best_of(res, *fallback), t0)
        return self._polished(self._best_of(res, hint, hint_dur, t_hint), t0)

    def _multistart(self, found: dict[str, tuple[np.ndarray, int]], t0: float) -> None:
        """Belady (DTR's next-use eviction) at budgets 1%, 2%, ... below the budget, each
        schedule polished at the budget (:mod:`sparseft.remat.solvers.polish`): a tighter start
        leaves the drop and swap moves room to work with. The best, if better than DTR's own,
        replaces ``found["dtr"]``. Uses at most ``_MULTISTART_SHARE`` of the order's time."""
        from sparseft.remat.solvers.polish import polish

        g = self._plan_graph
        now = time.perf_counter()
        deadline = now + _MULTISTART_SHARE * max(0.0, t0 + self._limit - now)
        lo, _ = g.min_budget()
        best = found.get("dtr")
        for k in range(_MULTISTART_STARTS):
            b = int(self.budget * (1.0 - 0.01 * k))
            if b < lo or time.perf_counter() > deadline:
                break
            # a failing run ends at the deadline
            steps = self._run_dtr(
                "belady", True, budget=b, time_limit=max(0.01, deadline - time.perf_counter())
            )
            if steps is None:
                continue
            try:
                steps = self._compact(steps)
                out = polish(g, self.budget, steps, time_limit=max(0.05, deadline - time.perf_counter()))
                peak, dur, _ = _sim(g, out, profile=False)
            except ValueError:  # never keep an invalid schedule
                continue
            if peak <= self.budget and (best is None or dur < best[1]):
                best = (out, dur)
        if best is not None:
            found["dtr"] = best

    def _polish(self, codes: np.ndarray, stage: bool = False) -> tuple[np.ndarray, int]:
        """``codes`` after the drop/delay local search (:mod:`sparseft.remat.solvers.polish`), a
        few seconds at most, and its duration."""
        from sparseft.remat.solvers.polish import polish

        out = polish(
            self._plan_graph,
            self.budget,
            codes,
            time_limit=min(_POLISH_SECONDS, self._limit / 20),
            max_copies=self.max_copies if stage else None,
        )
        _, dur, _ = _sim(self._plan_graph, out, profile=False)
        return out, dur

    def _polished(self, res: _Result, t0: float) -> _Result:
        """A solver's result with its schedule polished; "optimal" stays so only if unchanged."""
        codes, _, _, lower = res
        if codes is None:
            return res
        _, before, _ = _sim(self._plan_graph, codes, profile=False)
        out, dur = self._polish(codes)
        if dur >= before:
            return res
        return out, "feasible", time.perf_counter() - t0, lower

    def _heuristics(self) -> dict[str, tuple[np.ndarray, int]]:
        """The in-budget schedules of the fast heuristics, by solver name ("greedy", "blocks",
        "dtr"): each the best of its variants, as (schedule, duration)."""
        found = {}
        # DTR first: it is the one that reaches tight budgets, and each heuristic gets a share of
        # the time left (the interval splitting in "greedy" a quarter of what DTR leaves)
        for name, fn in (("dtr", self._dtr), ("blocks", self._blocks), ("greedy", self._greedy)):
            if name == "greedy" and self._left() < self._slack():
                break  # its C runs are not time-limited: only with time to spare
            codes, dur = fn()
            if codes is not None:
                found[name] = (codes, dur)
        return found

    def _solve_checkmate(self, t0: float) -> tuple[np.ndarray | None, str, float | None, int | None]:
        from sparseft.remat.solvers.checkmate import solve_checkmate

        if self.plan_peak <= self.budget:  # nothing to recompute: the planning order fits
            return self._solve_none(t0)
        res = solve_checkmate(self._plan_graph, self.budget, time_limit=self._limit, t0=t0)
        return self._best_of(res, None, 0, None)

    def _best_of(
        self, res: Any, hint: np.ndarray | None, hint_dur: int, t_hint: float | None
    ) -> tuple[np.ndarray | None, str, float | None, int | None]:
        codes = None
        if res.computes is not None:
            try:
                codes = self._compact(np.array(res.computes, dtype=np.int64))
                peak, dur, _ = _sim(self.graph, codes, profile=False)
            except ValueError:  # never hand out an invalid schedule
                codes = None
            if codes is not None and peak > self.budget:
                codes = None
        if codes is not None and (hint is None or dur <= hint_dur):
            return codes, res.status, res.time_to_best, res.lower_bound
        if hint is not None:
            # the solver found nothing better than the heuristic schedule (or nothing at all)
            status = "optimal" if res.lower_bound is not None and hint_dur <= res.lower_bound else "feasible"
            return hint, status, t_hint, res.lower_bound
        status = res.status if res.status in ("infeasible", "unknown") else "unknown"
        return None, status, None, res.lower_bound


_Result = tuple[np.ndarray | None, str, float | None, int | None]


def _best_result(graph: Graph, results: list[_Result]) -> _Result:
    """Combine the solves over several planning orders: the schedule with the least duration.

    It is "optimal" only when every order's solve ended "optimal" or "infeasible" (it is then
    optimal over the union of their classes), or when it recomputes nothing. The lower bound is
    the least of the orders' bounds ("infeasible" orders need none); None when one has none.
    """
    if len(results) == 1:
        return results[0]
    best: _Result | None = None
    best_dur = 0
    for res in results:
        if res[0] is None:
            continue
        try:
            _, dur, _ = _sim(graph, res[0], profile=False)
        except ValueError:  # never hand out an invalid schedule
            continue
        if best is None or dur < best_dur:
            best, best_dur = res, dur
    bounds = [r[3] for r in results if r[1] != "infeasible"]
    lower = min(b for b in bounds if b is not None) if bounds and None not in bounds else None
    if best is None:
        status = "infeasible" if all(r[1] == "infeasible" for r in results) else "unknown"
        return None, status, None, lower
    settled = all(r[1] in ("optimal", "infeasible") for r in results) or best_dur == graph.total_duration
    if lower is not None and lower > best_dur:  # cannot happen for exact bounds; stay consistent
        lower = best_dur
    return best[0], "optimal" if settled else "feasible", best[2], lower


def _depth(g: Graph) -> np.ndarray:
    """Longest-path depth of every node from the sources (0 for a source), int64 (n,)."""
    depth = np.zeros(g.n, dtype=np.int64)
    preds = g._preds
    for v in g.order_idx.tolist():
        if preds[v]:
            depth[v] = max(int(depth[u]) for u in preds[v]) + 1
    return depth


def chen_candidates(g: Graph) -> list[int]:
    """Candidate checkpoints for "chen": articulation points of the forward pass, in order.

    A forward node is a candidate when no forward edge jumps over it (every forward edge that
    crosses its position in the order starts at it). Forward nodes are those not flagged
    ``backward`` (all nodes when the graph has no such flags). When fewer than two candidates
    exist, every forward node is one.
    """
    order = g.order_idx.tolist()
    fwd = [v for v in order if not (g._has_backward and g._backward[v])]
    fpos = {v: i for i, v in enumerate(fwd)}
    reach = [max((fpos[s] for s in g._succs[v] if s in fpos), default=i) for i, v in enumerate(fwd)]
    cands = []
    run = -1
    for i, v in enumerate(fwd):
        if run <= i:
            cands.append(v)
        run = max(run, reach[i])
    return cands if len(cands) >= 2 else fwd
