"""Command line: ``python -m sparseft demo`` runs the main job on built-in defaults;
``python -m sparseft finetune`` prunes and fine-tunes a Hugging Face checkpoint;
``python -m sparseft rws extract|apply|info`` works on signatures in safetensors files."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

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


def _add_rws_parser(sub: argparse._SubParsersAction) -> None:
    p_rws = sub.add_parser("rws", help="robust weight signatures on safetensors files")
    rws_sub = p_rws.add_subparsers(dest="rws_command", required=True)
    p_ex = rws_sub.add_parser("extract", help="extract a signature from pretrained/clean/robust weights")
    p_ex.add_argument("--pretrained", required=True, help="safetensors file of the pretrained weights")
    p_ex.add_argument("--clean", required=True, help="safetensors file of the clean fine-tune")
    p_ex.add_argument("--robust", required=True, help="safetensors file of the robust fine-tune")
    p_ex.add_argument("-o", "--output", required=True, help="signature file to write")
    p_ex.add_argument("--layers", default=None, help="comma-separated tensor or layer names (default: all)")
    p_ex.add_argument("--shallow", type=int, default=None, help="keep the first k layers")
    p_ex.add_argument("--bits", type=int, choices=(1, 2, 4, 8), default=None, help="store quantized")
    p_ex.add_argument("--scheme", choices=("linear", "log"), default="linear")
    p_ex.add_argument("--granularity", choices=("channel", "tensor"), default="channel")
    p_ap = rws_sub.add_parser("apply", help="write weights + alpha * signature to a new file")
    p_ap.add_argument("weights", help="safetensors file of the weights")
    p_ap.add_argument("signatures", nargs="+", help="signature files, applied in order")
    p_ap.add_argument("-o", "--output", required=True, help="patched weights file to write")
    p_ap.add_argument("--alpha", type=float, default=1.0, help="scale of every signature (default 1)")
    p_in = rws_sub.add_parser("info", help="describe a signature file")
    p_in.add_argument("signature", help="signature file")


def _natural(name: str) -> list[Any]:
    """Sort key: digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _run_rws(args: argparse.Namespace) -> int:
    """The ``rws`` subcommands; bad files and arguments print one line and exit with status 2."""
    from sparseft import rws
    from sparseft.rws import io

    try:
        if args.rws_command == "extract":
            pre, clean, robust = (
                io.read_safetensors(p)[0] for p in (args.pretrained, args.clean, args.robust)
            )
            # a file keeps no model order: layers are taken in natural name order (h.2 before h.10)
            pre = {k: pre[k] for k in sorted(pre, key=_natural)}
            layers = None if args.layers is None else [x for x in args.layers.split(",") if x]
            sig = rws.Signature.extract(pre, clean, robust, layers=layers, shallow=args.shallow)
            out: rws.Signature | rws.QuantizedSignature = sig
            if args.bits is not None:
                out = sig.quantize(args.bits, args.granularity, args.scheme)
            out.save(args.output)
            print(f"wrote {args.output}: {out!r}")
        elif args.rws_command == "apply":
            weights, meta = io.read_safetensors(args.weights)
            patcher = rws.Patcher(weights)
            for path in args.signatures:
                patcher.apply(rws.Signature.load(path), args.alpha)
            io.write_safetensors(args.output, weights, meta)
            print(
                f"wrote {args.output}: {len(args.signatures)} signature(s) applied with alpha {args.alpha:g}"
            )
        else:
            loaded = rws.Signature.load(args.signature)
            print(repr(loaded))
            errors = getattr(loaded, "errors", {})
            norms = loaded.dequantize().norm(per_layer=True)
            assert isinstance(norms, dict)
            for name, shape in loaded.shapes.items():
                extra = f"  rel. error {errors[name]['rel_l2']:.3g}" if name in errors else ""
                print(f"  {name}  {tuple(shape)}  norm {norms[name]:.6g}{extra}")
    except (ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


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
    _add_rws_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "rws":
        return _run_rws(args)
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
