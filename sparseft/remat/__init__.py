"""Rematerialization planning: which activations to keep or recompute under a memory budget.

``graph``      -- :class:`Graph`, a DAG with per-node memory and duration (networkx node-link JSON).
``generators`` -- test graphs (``random_layered``, ``training_graph``); also ``sparseft.graphs``.
``planner``    -- :class:`Planner`, :class:`Schedule` and :func:`simulate`.
``bounds``     -- :func:`cut_lower_bound`, the memory-cut lower bound on a schedule's duration.
``solvers/``   -- Moccasin (CP-SAT), Checkmate (MILP) and the interval-splitting heuristic.
"""

from __future__ import annotations

from sparseft.remat import generators
from sparseft.remat.bounds import CutBound, cut_bound, cut_lower_bound
from sparseft.remat.graph import Graph
from sparseft.remat.planner import Planner, Schedule, simulate

__all__ = [
    "CutBound",
    "Graph",
    "Planner",
    "Schedule",
    "cut_bound",
    "cut_lower_bound",
    "generators",
    "simulate",
]
