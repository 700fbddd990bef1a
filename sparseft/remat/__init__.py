"""Rematerialization planning: which activations to keep or recompute under a memory budget.

``graph``      -- :class:`Graph`, a DAG with per-node memory and duration (networkx node-link JSON).
``generators`` -- test graphs (``random_layered``, ``training_graph``); also ``sparseft.graphs``.
``planner``    -- :class:`Planner`, :class:`Schedule` and :func:`simulate`.
``solvers/``   -- Moccasin (CP-SAT), Checkmate (MILP) and the interval-splitting heuristic.
"""

from __future__ import annotations

from sparseft.remat import generators
from sparseft.remat.graph import Graph
from sparseft.remat.planner import Planner, Schedule, simulate

__all__ = ["Graph", "Planner", "Schedule", "generators", "simulate"]
