"""``python -m tests.repro.builtin_gpt [--out DIR] [--steps N]``: rebuild the built-in GPT."""

from __future__ import annotations

import argparse
import json
import pathlib

from tests.repro.builtin_gpt import HERE, build

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", type=pathlib.Path, default=HERE, help="output directory (default: the package)")
parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
args = parser.parse_args()
print(json.dumps(build(args.out, args.steps), indent=2))
