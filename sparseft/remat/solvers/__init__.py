"""The Planner's exact and heuristic solvers (each returns a ``SolverResult``)."""
