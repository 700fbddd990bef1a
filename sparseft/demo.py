"""The built-in demo behind ``python -m sparseft demo``: the package's main job, end to end.

1. Train (or load from the cache directory) the built-in GPT: a small byte-level GPT-2 trained on
   the built-in corpus (the text of Python's help topics, shipped with CPython) by
   :data:`BASE_TRAIN` — the recipe of the model the reproductions ship in
   ``tests/repro/builtin_gpt/`` (seed 0 gives those weights bit for bit on the same SIMD path).
2. Prune every block linear to 50% (Wanda when ``sparseft.sparsify`` is available, else magnitude)
   and print the perplexity lost on held-out text.
3. Fine-tune sparsity-preserving LoRS adapters (A from the gradient SVD, ``init="lors"``) under
   a memory budget of half the step's
   no-recompute activation peak: the Planner's schedule is executed (activations freed and
   recomputed as planned). Print the perplexity recovered, the sparsity kept after merging (exact
   count), the measured activation peak beside the no-budget peak, and tokens/s.
"""

from __future__ import annotations

import numbers
import os
import pathlib
import sys
import time
from typing import Any, TextIO

import numpy as np

import sparseft
from sparseft.data import builtin_corpus
from sparseft.models import GPT, GPTConfig, from_pretrained
from sparseft.train import evaluate

#: The built-in GPT: model shape (GPT-2, byte vocabulary) and pretraining recipe.
BASE_CONFIG: dict[str, int] = dict(vocab_size=256, n_layer=2, n_head=2, d_model=64, seq_len=64)
BASE_TRAIN: dict[str, Any] = dict(
    lr=1e-2, warmup=50, schedule="cosine", grad_clip=1.0, steps=2000, batch_size=16, seq_len=64
)
# (model config, pretraining recipe, fine-tuning steps, batch, seq) for the full and the quick run
_SIZES: dict[bool, tuple[dict[str, int], dict[str, Any], int, int, int]] = {
    False: (BASE_CONFIG, BASE_TRAIN, 100, 8, 64),
    True: (
        dict(vocab_size=256, n_layer=2, n_head=2, d_model=32, seq_len=32),
        dict(BASE_TRAIN, steps=30, warmup=2, batch_size=4, seq_len=32),
        8,
        4,
        32,
    ),
}


def train_base_model(
    train: np.ndarray,
    seed: int = 0,
    config: dict[str, int] | None = None,
    recipe: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Train a GPT of ``config`` (default :data:`BASE_CONFIG`) on token ids ``train`` by ``recipe``
    (default :data:`BASE_TRAIN`), initialized and sampled with ``seed``, on one thread (the
    float32 sums then run in one fixed order: the run is reproducible bit for bit).

    Returns
    -------
    (GPT, History)
        The trained model (its base weights in sparse full fine-tuning mode) and the history.
    """
    cfg = BASE_CONFIG if config is None else config
    tr = BASE_TRAIN if recipe is None else recipe
    model = GPT.random(GPTConfig(**cfg), seed=seed)
    trainer = sparseft.Trainer(
        model, lr=tr["lr"], warmup=tr["warmup"], schedule=tr["schedule"], grad_clip=tr["grad_clip"], seed=seed
    )
    threads = sparseft.get_num_threads()
    sparseft.set_num_threads(1)
    try:
        hist = trainer.fit(
            train, steps=tr["steps"], batch_size=tr["batch_size"], seq_len=tr["seq_len"], progress=False
        )
    finally:
        sparseft.set_num_threads(threads)
    return model, hist


def default_cache_dir() -> pathlib.Path:
    """``$SPARSEFT_CACHE`` or ``~/.cache/sparseft``."""
    env = os.environ.get("SPARSEFT_CACHE")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "sparseft"


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def _pruned_zeros(model: Any) -> dict[str, np.ndarray]:
    return {name: ~layer.mask for name, layer in model.linears().items()}


def _prune(model: Any, calib: bytes) -> str:
    """Prune every block linear to 50%: Wanda on ``calib`` where ``sparseft.sparsify`` exists, else magnitude."""
    sparsify = getattr(sparseft, "sparsify", None)
    if sparsify is not None:
        sparsify(model, sparsity=0.5, method="wanda", calib=calib.decode("utf-8", errors="replace"))
        return "wanda"
    for layer in model.linears().values():
        W = layer.base.to_dense()
        Wp = np.where(sparseft.prune.magnitude(W, sparsity=0.5), W, 0).astype(np.float32)
        state = {"lora_A.weight": layer.A, "lora_B.weight": layer.B, "base_layer.weight": Wp}
        layer.load_state_dict({**state, "base_layer.weight_mask": Wp != 0})
    return "magnitude"


def _base_model(cache: pathlib.Path, quick: bool, seed: int, train: np.ndarray, out: TextIO) -> Any:
    cfg, recipe, _, _, _ = _SIZES[quick]
    steps = recipe["steps"]
    name = "demo-gpt-{n_layer}x{d_model}-{seq_len}".format(**cfg) + f"-s{seed}-{steps}-r2"
    path = cache / name
    if (path / "config.json").is_file():
        try:
            model = from_pretrained(path)
            print(f"base model: loaded from {path}", file=out)
            return model
        except ValueError as e:
            print(f"base model: cache unreadable ({e}); training again", file=out)
    t0 = time.perf_counter()
    model, _ = train_base_model(train, seed, cfg, recipe)
    print(
        f"base model: trained {steps} steps on the built-in corpus in {time.perf_counter() - t0:.0f} s "
        f"(one thread), cached in {path}",
        file=out,
    )
    model.save_pretrained(str(path))
    return from_pretrained(path)  # a fresh model: frozen base, no optimizer state


def run(
    seed: int = 0,
    quick: bool = False,
    out: TextIO | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> int:
    """Run the demo and print what it shows; returns the process exit code (0).

    Parameters
    ----------
    seed : int
        Random seed for every part.
    quick : bool
        Smaller sizes and fewer steps (a smoke test).
    out : text stream, optional
        Where to print (default ``sys.stdout``).
    cache_dir : str or os.PathLike, optional
        Where the trained base model is cached (default :func:`default_cache_dir`).

    Raises
    ------
    TypeError, ValueError
        If ``seed`` is not an int >= 0.
    """
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed: expected an int >= 0, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed}")
    out = sys.stdout if out is None else out
    cache = default_cache_dir() if cache_dir is None else pathlib.Path(cache_dir)
    _, _, ft_steps, batch, seq = _SIZES[quick]
    corpus = builtin_corpus()
    cut = int(0.9 * corpus.size)
    train, val = corpus[:cut], corpus[cut:]
    if quick:
        val = val[: 64 * seq]
    print(f"sparseft {sparseft.__version__} demo  (simd: {sparseft.build_info()['simd']})", file=out)
    print(
        f"corpus: pydoc_data.topics, {corpus.size:,} bytes ({cut:,} train / {val.size:,} held out)", file=out
    )

    model = _base_model(cache, quick, int(seed), train, out)

    def ppl(m: Any) -> float:
        return evaluate(m, val, batch_size=batch, seq_len=seq)["perplexity"]

    dense = ppl(model)
    method = _prune(model, train[:4096].astype(np.uint8).tobytes())
    pruned_zeros = _pruned_zeros(model)
    n_zero = int(sum(z.sum() for z in pruned_zeros.values()))
    n_all = int(sum(z.size for z in pruned_zeros.values()))
    pruned = ppl(model)
    print(f"dense perplexity {dense:.3f}", file=out)
    print(
        f"pruned to {100 * n_zero / n_all:.1f}% zeros ({method}): perplexity {pruned:.3f} (lost {pruned - dense:+.3f})",
        file=out,
    )

    adapter = sparseft.LoRSConfig(r=8, alpha=16, init="lors", seed=int(seed))
    trainer = sparseft.Trainer(
        model,
        adapter=adapter,
        lr=1e-2,
        warmup=3,
        memory_budget=0.5,
        seed=int(seed),
        plan_time_limit=2 if quick else 10,
    )
    sg, first = trainer.plan_for(batch, seq)
    no_budget_peak, budget = sg.graph.peak_memory(), first.budget
    t0 = time.perf_counter()
    hist = trainer.fit(train, steps=ft_steps, batch_size=batch, seq_len=seq, progress=False)
    elapsed = time.perf_counter() - t0
    plan = trainer.plan
    assert plan is not None
    tuned = ppl(model)
    print(
        f"budget {_mib(budget)} = half the no-recompute activation peak {_mib(no_budget_peak)}; plan: "
        f"{plan.solver} {plan.status}, {plan.recomputations} recomputations, overhead {100 * (plan.overhead or 0):.1f}%",
        file=out,
    )
    lost = pruned - dense
    share = (pruned - tuned) / lost if lost > 0 else float("nan")
    print(
        f'LoRS fine-tuned {ft_steps} steps ("lors" init): perplexity {tuned:.3f} (recovered {pruned - tuned:+.3f}, '
        f"{100 * share:.0f}% of the loss)",
        file=out,
    )
    merged = trainer.merge()
    kept = 0
    exact = True
    for name, layer in merged.linears().items():
        z = layer.base.to_dense() == 0
        kept += int((z & pruned_zeros[name]).sum())
        exact &= bool(np.array_equal(z, pruned_zeros[name]))
    print(f"sparsity kept after merge: {kept} of {n_zero} pruned zeros exact", file=out)
    print(f"every pruned zero kept: {kept == n_zero and exact}", file=out)
    print(
        f"measured activation peak {_mib(trainer.peak_activation_bytes)} vs no-budget peak {_mib(no_budget_peak)} "
        f"(budget {_mib(budget)}: {'within' if trainer.peak_activation_bytes <= budget else 'OVER'})",
        file=out,
    )
    tps = float(np.median(hist.tokens_per_s[-ft_steps:]))
    print(
        f"fine-tuning: {tps:.0f} tokens/s (median step; {elapsed:.0f} s in all, the one-time plan solve "
        f"{plan.solve_time:.1f} s included)",
        file=out,
    )
    return 0
