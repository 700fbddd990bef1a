"""DTR "su" (Sethi-Ullman rebuild order, guaranteed to fit every budget >= its need) against Belady
at budgets where Belady thrashes: seconds and duration relative to computing every node once.

    python benchmarks/bench_dtr_su.py [--time-limit 60]

Each run gets the same C deadline and no computation cap; random_layered_n1000 is read from
../shared/data (skipped where absent), the other graphs are generated.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT_ = Path(__file__).resolve().parent.parent
if str(ROOT_) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT_))

import sparseft as sft  # noqa: E402
from benchmarks._timing import cpu_line  # noqa: E402
from sparseft import _core  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "remat-graphs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per run (C deadline)")
    args = ap.parse_args()
    cases = []
    path = DATA / "random_layered_n1000.json"
    if path.exists():
        cases.append(("random_layered_n1000", sft.Graph.from_json(path), 0.60))
    else:
        print(f"skipped random_layered_n1000: {path} not found")
    cases += [
        ("generated n1000", sft.graphs.random_layered(1000, seed=0), 0.80),
        ("generated n400", sft.graphs.random_layered(400, seed=0), 0.75),
    ]
    print(cpu_line())
    for name, g, f in cases:
        b = int(f * g.peak_memory())
        for h in ("belady", "su"):
            t = time.perf_counter()
            rc, _, _, dur = _core.remat_dtr(
                g.memory, g.duration, g.pred_ptr, g.pred_idx, g.succ_ptr, g.succ_idx, g.order_idx,
                None, b, heuristic=h, lookahead=True, max_computes=10**12, time_limit=args.time_limit,
            )  # fmt: skip
            res = f"duration {dur / g.total_duration:.0f}x" if rc == 0 else f"no schedule (status {rc})"
            print(f"{name:22s} {f:.2f} of peak  {h:7s} {time.perf_counter() - t:6.1f} s  {res}")


if __name__ == "__main__":
    main()
