"""Command line: ``python -m sparseft demo`` runs the main job on built-in defaults;
``python -m sparseft finetune`` prunes and fine-tunes a Hugging Face checkpoint."""

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


def _count(text: str) -> int:
    """An argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    """An argparse type: a float in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="python -m sparseft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the main job on built-in defaults")
    p_demo.add_argument("--seed", type=_seed, default=0, help="random seed, an int >= 0 (default 0)")
    p_demo.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    p_demo.add_argument("--cache-dir", default=None, help="where the trained base model is cached")
    p_ft = sub.add_parser("finetune", help="prune a Hugging Face GPT-2/Llama and fine-tune LoRS adapters")
    p_ft.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    p_ft.add_argument("--data", required=True, help="UTF-8 text file (last 10%% held out)")
    p_ft.add_argument("--out", required=True, help="directory for the merged sparse model")
    p_ft.add_argument(
        "--sparsity", type=_fraction, default=0.5, help="fraction pruned (default 0.5; 0: none)"
    )
    p_ft.add_argument("--method", choices=("magnitude", "wanda", "sparsegpt"), default="wanda")
    p_ft.add_argument("--budget", default=None, help="activation memory budget, e.g. 64MiB (default: none)")
    p_ft.add_argument("--steps", type=_count, default=100)
    p_ft.add_argument("--r", type=_count, default=8, help="adapter rank")
    p_ft.add_argument("--alpha", type=float, default=16.0)
    p_ft.add_argument("--lr", type=float, default=1e-3)
    p_ft.add_argument("--batch-size", type=_count, default=8)
    p_ft.add_argument("--seq-len", type=_count, default=128)
    p_ft.add_argument("--seed", type=_seed, default=0)
    p_ft.add_argument("--no-progress", action="store_true")
    sub.add_parser("info", help="print how the C core was built")
    args = parser.parse_args(argv)
    if args.command == "info":
        import sparseft

        for key, value in sparseft.build_info().items():
            print(f"{key}: {value}")
        return 0
    if args.command == "finetune":
        from sparseft.train.finetune import finetune

        try:
            return finetune(
                args.model,
                args.data,
                args.out,
                sparsity=args.sparsity,
                method=args.method,
                budget=args.budget,
                steps=args.steps,
                r=args.r,
                alpha=args.alpha,
                lr=args.lr,
                batch_size=args.batch_size,
                seq_len=args.seq_len,
                seed=args.seed,
                progress=not args.no_progress,
            )
        except (TypeError, ValueError) as e:
            print(f"finetune: error: {e}", file=sys.stderr)
            return 2
    return demo.run(seed=args.seed, quick=args.quick, out=sys.stdout, cache_dir=args.cache_dir)


if __name__ == "__main__":
    raise SystemExit(main())
