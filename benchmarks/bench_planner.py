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
from sparseft import _core  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "remat-graphs"

GRAPHS = [
    ("random_layered_n100", "random_layered_n100.json"),
    ("random_layered_n250", "random_layered_n250.json"),
    ("fcn_8_vgg train", "fcn_8_vgg_b32_416x608_train.json"),
    ("VGG16 train", "VGG16_b256_224x224_train.json"),
    ("ResNet50 train", "ResNet50_b256_224x224_train.json"),
    ("MobileNet train", "MobileNet_b512_224x224_train.json"),
]
QUICK = {"random_layered_n100", "fcn_8_vgg train", "VGG16 train"}

# (graph, budget fraction) -> (Checkmate TDI % / s, Moccasin TDI % / s), from the shared README
PUBLISHED = {
    ("random_layered_n250", 0.9): ("0.9 / 685", "0.9 / 55"),
    ("random_layered_n250", 0.8): ("no solution", "4.9 / 640"),
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
    return f"{100 * plan.overhead:.3f}{mark} / {tb:.2f}"


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per Moccasin/Checkmate solve")
    ap.add_argument("--quick", action="store_true", help="10 s limit, small graphs only")
    ap.add_argument("--threads", type=int, default=2, help="CP-SAT workers (default 2)")
    ap.add_argument("--max-copies", type=int, default=2, help="Moccasin's C")
    ap.add_argument("--solvers", default="moccasin,checkmate,chen,greedy")
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
    sim_speed()
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
        "cells: TDI % / time-to-best s (* = proved optimal over the planner's schedule class); "
        'columns without "auto": order="given" (the papers\' class); published: TDI % / s on 16 workers '
        "(Checkmate with Gurobi)"
    )
    header = f"{'graph':22s} {'budget':>6s} " + " ".join(f"{c[0]:>22s}" for c in columns)
    header += f" {'published Checkmate':>20s} {'published Moccasin':>19s}"
    print(header)
    print("-" * len(header))
    for label, fname in GRAPHS:
        if args.quick and label not in QUICK:
            continue
        if args.graphs and label not in args.graphs.split(","):
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
                + f" {pub[0]:>20s} {pub[1]:>19s}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    t0 = time.time()
    rc = main()
    print(f"total {time.time() - t0:.0f} s")
    sys.exit(rc)
