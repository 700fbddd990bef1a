"""Run the benchmarks one after another and print a dated block for ``benchmarks/RESULTS.md``.

Each benchmark runs in its own process, in sequence (never two at once: they measure ratios side by
side and would slow each other). The block starts with the date, the commit and the CPU line
(``_timing.cpu_line()``), then gives every command as run and its output as printed, so an entry
in RESULTS.md always names the command that produced it. ``bench_builds.py`` is not run: it
compares builds the caller names.

Usage: python benchmarks/run_all.py [--quick] [--only lors,sparse,...] [--append]
    --quick   the benchmarks' smoke settings (small shapes, few repetitions): minutes, not an hour
    --only    a comma-separated subset of: gemm, lors, sparse, weightnorm, planner, settle, tiles
    --append  also append the block to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import subprocess
import sys

from _timing import cpu_line

HERE = pathlib.Path(__file__).resolve().parent

#: name -> (full arguments, quick arguments)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "gemm": ([], ["--rounds", "2", "--sizes", "1024x1024x1024,2048x2048x16"]),
    "lors": ([], ["--quick"]),
    "sparse": ([], ["--quick"]),
    "weightnorm": ([], ["--reps", "3"]),
    "planner": ([], ["--quick"]),
    "settle": ([], ["--reps", "3"]),
    "tiles": ([], ["--seconds", "0.1"]),
}


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated subset of " + ", ".join(BENCHMARKS))
    ap.add_argument("--append", action="store_true", help="append the block to benchmarks/RESULTS.md")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        ap.error(f"--only: unknown benchmarks {unknown}; expected some of {list(BENCHMARKS)}")
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    lines = [f"## Run of {today} (commit {_commit()}{', --quick' if args.quick else ''})", "", cpu_line(), ""]
    failed = 0
    for name in names:
        extra = BENCHMARKS[name][1 if args.quick else 0]
        cmd = ["python", f"benchmarks/bench_{name}.py", *extra]
        print(f"running: {' '.join(cmd)}", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, *cmd[1:]], cwd=HERE.parent, capture_output=True, text=True)
        failed += out.returncode != 0
        lines += [
            f"`{' '.join(cmd)}`" + ("" if out.returncode == 0 else f" (exit status {out.returncode})"),
            "",
        ]
        lines += ["```", (out.stdout + out.stderr).rstrip(), "```", ""]
    block = "\n".join(lines)
    print(block)
    if args.append:  # atomically: a failed write leaves RESULTS.md as it was
        path = HERE / "RESULTS.md"
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(path.read_text(encoding="utf-8") + "\n" + block + "\n", encoding="utf-8")
        os.replace(tmp, path)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
