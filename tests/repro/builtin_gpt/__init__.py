"""The built-in GPT of the reproductions: a small byte-level GPT-2 trained on the built-in corpus
(``sparseft.data.builtin_corpus``, Python's pydoc_data topics) with a held-out split, shipped here
as ``model.safetensors`` + ``config.json`` (Hugging Face layout) with the exact recipe in
``RECIPE.json``.

The recipe is ``sparseft.demo``'s (:func:`sparseft.demo.train_base_model` at seed 0: the demo
trains and caches the same model). Rebuild (deterministic: one thread, fixed seeds; about 80 s)::

    python -m tests.repro.builtin_gpt            # writes into this directory
    python -m tests.repro.builtin_gpt --out DIR  # or elsewhere

The rebuild is bit-identical on the same corpus (same Python's pydoc_data), the same NumPy and the
same SIMD path (AVX-512 / AVX2 / portable C round float32 sums differently); RECIPE.json records
the corpus digest and the held-out perplexity the shipped weights reach.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
from typing import Any

import numpy as np

from sparseft.demo import BASE_CONFIG, BASE_TRAIN, train_base_model

HERE = pathlib.Path(__file__).resolve().parent
#: Model shape: ~120k parameters, a ~0.5 MB float32 safetensors file (``sparseft.demo.BASE_CONFIG``).
CONFIG: dict[str, int] = dict(BASE_CONFIG)
#: The training recipe (``sparseft.demo.BASE_TRAIN`` at seed 0); see :func:`build`.
TRAIN: dict[str, Any] = dict(init_seed=0, seed=0, **BASE_TRAIN)
HELD_OUT = 2048  # tokens of the held-out split (right after the 90 % training split)
EVAL_SEQ = 32  # window of the held-out perplexity the reproductions use


def corpus_split() -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) byte ids of the built-in corpus: the first 90 % and the next 2,048 tokens."""
    from sparseft.data import builtin_corpus

    c = builtin_corpus()
    cut = int(0.9 * c.size)
    return c[:cut], c[cut : cut + HELD_OUT]


def corpus_digest() -> str:
    """sha256 of the built-in corpus bytes (it comes from the running Python's pydoc_data)."""
    from sparseft.data import builtin_corpus

    return hashlib.sha256(builtin_corpus().astype(np.uint8).tobytes()).hexdigest()


def held_out_perplexity(model: Any) -> float:
    """Perplexity of ``model`` on every non-overlapping EVAL_SEQ window of the held-out split."""
    from sparseft.train import evaluate

    return float(evaluate(model, corpus_split()[1], batch_size=8, seq_len=EVAL_SEQ)["perplexity"])


def build(out: pathlib.Path = HERE, steps: int | None = None) -> dict[str, Any]:
    """Train the built-in GPT by the recipe and write it (and RECIPE.json) into ``out``.

    Returns the recipe record written to RECIPE.json.
    """
    from sparseft._atomic import atomic_path

    tr = dict(TRAIN, steps=TRAIN["steps"] if steps is None else int(steps))
    recipe = {k: v for k, v in tr.items() if k not in ("init_seed", "seed")}
    t0 = time.perf_counter()
    model, hist = train_base_model(corpus_split()[0], seed=tr["seed"], config=CONFIG, recipe=recipe)
    seconds = time.perf_counter() - t0
    out = pathlib.Path(out)
    model.save_pretrained(str(out))
    weights = (out / "model.safetensors").read_bytes()
    record = {
        "what": "byte-level GPT-2 trained on sparseft.data.builtin_corpus() (first 90 %), for tests/repro",
        "rebuild": "python -m tests.repro.builtin_gpt",
        "config": CONFIG,
        "train": tr,
        "threads": 1,
        "corpus_sha256": corpus_digest(),
        "held_out": {"tokens": HELD_OUT, "offset": "int(0.9 * corpus size)", "eval_seq_len": EVAL_SEQ},
        "held_out_perplexity": round(held_out_perplexity(model), 4),
        "final_train_loss_mean_last_50": round(float(np.mean(hist.loss[-50:])), 4),
        "train_seconds": round(seconds, 1),
        "model_sha256": hashlib.sha256(weights).hexdigest(),
    }
    with atomic_path(out / "RECIPE.json") as tmp:
        pathlib.Path(tmp).write_text(json.dumps(record, indent=2) + "\n")
    return record


def recipe() -> dict[str, Any]:
    """The shipped RECIPE.json."""
    return dict(json.loads((HERE / "RECIPE.json").read_text()))
