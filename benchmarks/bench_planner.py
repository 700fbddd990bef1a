"""Planner benchmark: overhead (TDI %) and time-to-best of every solver, beside the published numbers.

One run, side by side, on the graphs of ../shared/data/remat-graphs/ (Moccasin/Checkmate papers) at
budgets 0.9 and 0.8 of the no-remat peak of graph.order. Published numbers: Moccasin ICML 2023 poster
(16 workers, Gurobi for Checkmate). Checkmate here is the same MILP on HiGHS with the same time limit
as Moccasin.

By default every solver runs in the papers' class (order="given": first computations follow
graph.order), beside the published numbers, and one more column runs Moccasin with order="auto"
(Planner's default: also plans over Graph.low_memory_order and keeps the better schedule) on the
same byte budget.

    python benchmarks/bench_planner.py                  # 120 s per exact solve
    python benchmarks/bench_planner.py --time-limit 60  # shorter
    python benchmarks/bench_planner.py --quick          # 10 s, small graphs only
    python benchmarks/bench_planner.py --order given    # the papers' class only (--order auto: all auto)
    python benchmarks/bench_planner.py --sweep --time-limit 10   # budget sweep, 1.0 down to the bound
    python benchmarks/bench_planner.py --graphs random_layered_n1000 --budgets 0.8 --solvers auto \\
        --order auto --time-limit 600                   # the published long case

The sweep (``--sweep``) plans every graph of the sweep set (the shared random_layered graphs,
generated layered graphs of 400 and 1,000 nodes and a 6-layer transformer training step) at every
budget from 1.0 of the peak down to the feasibility bound in steps of 0.05, with the fast solvers and
"auto", and prints per cell the overhead and the time to the first (for "auto": the best) schedule.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT_ = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT_) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT_))

import numpy as np  # noqa: E402

import sparseft as sft  # noqa: E402
from benchmarks._timing import cpu_line  # noqa: E402
from sparseft import _core  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "remat-graphs"

GRAPHS = [
    ("random_layered_n100", "random_layered_n100.json"),
    ("random_layered_n250", "random_layered_n250.json"),
    ("random_layered_n1000", "random_layered_n1000.json"),
    ("fcn_8_vgg train", "fcn_8_vgg_b32_416x608_train.json"),
    ("VGG16 train", "VGG16_b256_224x224_train.json"),
    ("ResNet50 train", "ResNet50_b256_224x224_train.json"),
    ("MobileNet train", "MobileNet_b512_224x224_train.json"),
]
QUICK = {"random_layered_n100", "fcn_8_vgg train", "VGG16 train"}
DEFAULT = [label for label, _ in GRAPHS if label != "random_layered_n1000"]  # n1000: name it to run it
SWEEP_SOLVERS = ("greedy", "blocks", "dtr", "auto")

# (graph, budget fraction) -> (Checkmate TDI % / s, Moccasin TDI % / s), from the shared README
PUBLISHED = {
    ("random_layered_n250", 0.9): ("0.9 / 685", "0.9 / 55"),
    ("random_layered_n250", 0.8): ("no solution", "4.9 / 640"),
    ("random_layered_n1000", 0.9): ("no solution", "0.7 / 3613"),
    ("random_layered_n1000", 0.8): ("no solution", "3.4 / 3612"),
    ("fcn_8_vgg train", 0.9): ("0.0 / 6.3", "0.0 / 3.1"),
    ("fcn_8_vgg train", 0.8): ("0.1 / 5.6", "0.1 / 3.1"),
    ("ResNet50 train", 0.9): ("0.1 / 434", "0.2 / 65"),
    ("ResNet50 train", 0.8): ("0.3 / 485", "0.3 / 69"),
}


def fmt(plan: sft.Schedule | None, err: str | None = None) -> str:
    if err is not None:
        return err
    assert plan is not None
    if plan.overhead is None:
        return f"{plan.status} ({plan.solve_time:.1f} s)"
    tb = plan.time_to_best if plan.time_to_best is not None else plan.solve_time
    mark = "*" if plan.status == "optimal" else ""
    gap = "" if plan.gap is None else f" g{100 * plan.gap:.2f}"
    return f"{100 * plan.overhead:.3f}{mark} / {tb:.2f}{gap}"


def cut_bounds(g: sft.Graph, frac: float) -> str:
    """The memory-cut lower bound as overhead %: over graph.order ("given") and the least over
    graph.order and Graph.low_memory_order ("auto", the Planner's default orders)."""
    b = int(frac * g.peak_memory())
    out = []
    given = sft.remat.cut_lower_bound(g, b)
    low = g.low_memory_order()
    auto = given
    if g.peak_memory(low) < g.peak_memory():
        other = sft.remat.cut_lower_bound(g, b, order=low)
        auto = other if given is None else given if other is None else min(given, other)
    for lb in (given, auto):
        out.append("infeas." if lb is None else f"{100 * (lb / g.total_duration - 1):.3f}")
    return "/".join(out)


def sim_speed() -> None:
    """Time the C simulator on 10^6 steps of a long chain (compute, free, compute, ...)."""
    n = 500_000
    ptr = np.arange(n + 1, dtype=np.int64) - 1
    ptr[0] = 0
    idx = np.arange(n - 1, dtype=np.int64)
    mem = np.full(n, 3, dtype=np.int64)
    steps = np.empty(2 * n, dtype=np.int64)
    steps[0] = 0
    steps[1::2][: n - 1] = np.arange(1, n)
    steps[2::2][: n - 1] = -1 - np.arange(0, n - 1)
    steps[-1] = -n
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        rc = _core.remat_simulate(steps, mem, mem, ptr, idx)[0]
        best = min(best, time.perf_counter() - t)
        assert rc == 0
    print(f"simulator: 10^6 steps in {1e3 * best:.1f} ms (best of 5)")


def sweep_graphs() -> list[tuple[str, sft.Graph]]:
    out = [(p.stem, sft.Graph.from_json(p)) for p in sorted(DATA.glob("random_layered_n*.json"))]
    out += [(f"generated layered n{n}", sft.graphs.random_layered(n, seed=0)) for n in (400, 1000)]
    out.append(("transformer L6 step", sft.graphs.transformer_graph(6)))
    return out


def sweep(time_limit: float, threads: int, only: set[str] | None = None) -> None:
    """Every budget from 1.0 of the peak down to the feasibility bound, in steps of 0.05 (stops
    after two budgets in a row where no solver finds a schedule)."""
    print(
        f"budget sweep: cells overhead % / seconds to the first schedule (auto: to its best; "
        f"time limit {time_limit:g} s); '-' = no schedule; order='auto'"
    )
    for label, g in sweep_graphs():
        if only and label not in only:
            continue
        peak = g.peak_memory()
        lo, _ = g.min_budget()
        solvers = [s for s in SWEEP_SOLVERS if s != "blocks" or g.has_blocks]
        print(f"{label}: {g.n} nodes, feasibility bound {lo / peak:.3f} of the peak")
        print(f"  {'budget':>6s} " + " ".join(f"{s:>22s}" for s in solvers))
        frac = 1.0
        misses = 0
        while frac * peak >= lo - 1e-9 and misses < 2:
            cells = []
            for s in solvers:
                plan = sft.Planner(
                    g, max(lo, int(frac * peak)), solver=s, time_limit=time_limit, threads=threads
                ).solve()
                if plan.overhead is None:
                    cells.append(f"- ({plan.solve_time:.2f} s)")
                else:
                    who = f" {plan.solver}" if s == "auto" else ""
                    cells.append(f"{100 * plan.overhead:.2f} / {plan.time_to_best or 0.0:.3f}{who}")
            misses = misses + 1 if all(c.startswith("- (") for c in cells) else 0
            print(f"  {frac:6.2f} " + " ".join(f"{c:>22s}" for c in cells), flush=True)
            frac = round(frac - 0.05, 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per Moccasin/Checkmate solve")
    ap.add_argument("--quick", action="store_true", help="10 s limit, small graphs only")
    ap.add_argument("--threads", type=int, default=2, help="CP-SAT workers (default 2)")
    ap.add_argument("--max-copies", type=int, default=2, help="Moccasin's C")
    ap.add_argument("--solvers", default="moccasin,checkmate,chen,greedy,dtr,auto")
    ap.add_argument("--sweep", action="store_true", help="budget sweep with the fast solvers and auto")
    ap.add_argument("--graphs", default="", help="comma-separated subset of graph labels")
    ap.add_argument("--budgets", default="0.9,0.8", help="comma-separated budget fractions")
    ap.add_argument(
        "--order",
        default="both",
        choices=["both", "given", "auto"],
        help='both (default): every solver with order="given" plus a moccasin order="auto" column; '
        "given or auto: every solver with that order only",
    )
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"graphs not found at {DATA}", file=sys.stderr)
        return 1
    tl = 10.0 if args.quick else args.time_limit
    print(cpu_line())
    sim_speed()
    if args.sweep:
        sweep(tl, args.threads, {x.strip() for x in args.graphs.split(",") if x.strip()} or None)
        return 0
    solvers = args.solvers.split(",")
    # columns: (label, solver, order)
    if args.order == "both":
        columns = [(s, s, "given") for s in solvers]
        if "moccasin" in solvers:
            columns.append(("moccasin auto", "moccasin", "auto"))
    else:
        columns = [(s if args.order == "given" else f"{s} {args.order}", s, args.order) for s in solvers]
    print(
        f"sparseft {sft.__version__} planner benchmark: time limit {tl:g} s, {args.threads} CP-SAT workers, "
        f"max_copies={args.max_copies}"
    )
    print(
        "cells: TDI % / time-to-best s (* = proved optimal over the planner's schedule class), "
        "g = gap % to the plan's lower bound; lower bound %: the memory-cut bound as TDI %, order given/auto; "
        'columns without "auto": order="given" (the papers\' class); published: TDI % / s on 16 workers '
        "(Checkmate with Gurobi)"
    )
    header = f"{'graph':22s} {'budget':>6s} " + " ".join(f"{c[0]:>22s}" for c in columns)
    header += f" {'lower bound %':>15s} {'published Checkmate':>20s} {'published Moccasin':>19s}"
    print(header)
    print("-" * len(header))
    for label, fname in GRAPHS:
        if args.quick and label not in QUICK:
            continue
        if args.graphs and label not in args.graphs.split(","):
            continue
        if not args.graphs and label not in DEFAULT:
            continue
        g = sft.Graph.from_json(DATA / fname)
        for frac in [float(x) for x in args.budgets.split(",")]:
            cells = []
            for _, s, order in columns:
                try:
                    plan = sft.Planner(
                        g,
                        frac,
                        solver=s,
                        time_limit=tl,
                        max_copies=args.max_copies,
                        threads=args.threads,
                        order=order,
                    ).solve()
                    cells.append(fmt(plan))
                except ValueError as exc:
                    cells.append(fmt(None, "below min budget" if "minimum" in str(exc) else str(exc)[:22]))
            pub = PUBLISHED.get((label, frac), ("-", "-"))
            print(
                f"{label:22s} {frac:6.1f} "
                + " ".join(f"{c:>22s}" for c in cells)
                + f" {cut_bounds(g, frac):>15s} {pub[0]:>20s} {pub[1]:>19s}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    t0 = time.time()
    rc = main()
    print(f"total {time.time() - t0:.0f} s")
    sys.exit(rc)
