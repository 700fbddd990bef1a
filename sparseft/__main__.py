"""Command line: ``python -m sparseft demo`` runs the main job on built-in defaults."""

from __future__ import annotations

import argparse
import sys

from sparseft import demo


def _seed(text: str) -> int:
    """An argparse type: a non-negative int (NumPy's default_rng takes no negative seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="python -m sparseft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the main job on built-in defaults")
    p_demo.add_argument("--seed", type=_seed, default=0, help="random seed, an int >= 0 (default 0)")
    p_demo.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    sub.add_parser("info", help="print how the C core was built")
    args = parser.parse_args(argv)
    if args.command == "info":
        import sparseft

        for key, value in sparseft.build_info().items():
            print(f"{key}: {value}")
        return 0
    return demo.run(seed=args.seed, quick=args.quick, out=sys.stdout)


if __name__ == "__main__":
    raise SystemExit(main())
