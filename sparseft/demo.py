"""The built-in demo behind ``python -m sparseft demo``.

The main job, on built-in data (scikit-learn's digits when installed, else a synthetic task):

1. train a small dense MLP, prune it (accuracy drops);
2. fine-tune sparsity-preserving LoRS adapters on the frozen pruned weights, merge them and show
   that every pruned zero survived (plain LoRA's merge would fill them in);
3. plan the activation memory of a training graph under a budget with the Moccasin CP-SAT
   planner beside the Chen and greedy heuristics.
"""

from __future__ import annotations

import numbers
import sys
import time
from typing import TextIO

import numpy as np

import sparseft
from sparseft import _core


def _data(rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test split of digits (64 features, 10 classes), or a synthetic stand-in."""
    try:
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y, name = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64), "digits (scikit-learn)"
    except ImportError:
        centers = rng.standard_normal((10, 64)).astype(np.float32)
        y = rng.integers(0, 10, 1800)
        x = (centers[y] + 0.9 * rng.standard_normal((1800, 64))).astype(np.float32)
        name = "synthetic 10-class (install scikit-learn for digits)"
    perm = rng.permutation(len(x))
    cut = int(0.75 * len(x))
    tr, te = perm[:cut], perm[cut:]
    return name, x[tr], y[tr], x[te], y[te]


def _softmax_grad(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and its gradient wrt the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.log(p[np.arange(n), y] + 1e-12).mean())
    p[np.arange(n), y] -= 1.0
    return loss, (p / n).astype(np.float32)


def _accuracy(
    w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, x: np.ndarray, y: np.ndarray
) -> float:
    h = np.maximum(x @ w1.T + b1, 0.0)
    return float(((h @ w2.T + b2).argmax(axis=1) == y).mean())


def _train_dense(x: np.ndarray, y: np.ndarray, hidden: int, steps: int, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """A plain NumPy MLP 64 -> hidden -> 10 trained with SGD + momentum (the 'pretrained' model)."""
    w1 = (rng.standard_normal((hidden, x.shape[1])) / np.sqrt(x.shape[1])).astype(np.float32)
    b1 = np.zeros(hidden, np.float32)
    w2 = (rng.standard_normal((10, hidden)) / np.sqrt(hidden)).astype(np.float32)
    b2 = np.zeros(10, np.float32)
    params = [w1, b1, w2, b2]
    vel = [np.zeros_like(p) for p in params]
    for _ in range(steps):
        idx = rng.integers(0, len(x), 64)
        xb, yb = x[idx], y[idx]
        pre = xb @ w1.T + b1
        h = np.maximum(pre, 0.0)
        _, g = _softmax_grad(h @ w2.T + b2, yb)
        gh = (g @ w2) * (pre > 0)
        grads = [gh.T @ xb, gh.sum(0), g.T @ h, g.sum(0)]
        for p, v, gr in zip(params, vel, grads, strict=True):
            v *= 0.9
            v += gr
            p -= 0.1 * v
    return w1, b1, w2, b2


def _lors_section(rng: np.random.Generator, quick: bool, out: TextIO) -> None:
    name, xtr, ytr, xte, yte = _data(rng)
    hidden, sparsity = (64, 0.8) if quick else (256, 0.9)
    w1, b1, w2, b2 = _train_dense(xtr, ytr, hidden, 300 if quick else 1500, rng)
    print(f"data: {name}, {len(xtr)} train / {len(xte)} test", file=out)
    print(f"dense MLP 64-{hidden}-10: test accuracy {_accuracy(w1, b1, w2, b2, xte, yte):.3f}", file=out)

    # prune both layers by weight magnitude; the pruned model loses accuracy
    masks = [sparseft.prune.magnitude(w, sparsity=sparsity) for w in (w1, w2)]
    p1, p2 = (w * m for w, m in zip((w1, w2), masks, strict=True))
    acc_pruned = _accuracy(p1, b1, p2, b2, xte, yte)
    print(f"pruned to {sparsity:.0%} sparsity: test accuracy {acc_pruned:.3f}", file=out)

    # LoRS adapters on the frozen pruned weights; train A, B and the biases
    l1 = sparseft.LoRSLinear(p1, mask=masks[0], r=8, alpha=16, bias=b1, grad="exact", seed=1)
    l2 = sparseft.LoRSLinear(p2, mask=masks[1], r=8, alpha=16, bias=b2, grad="exact", seed=2)
    layers = [l1, l2]
    lr, steps = 0.05, (200 if quick else 800)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = rng.integers(0, len(xtr), 64)
        pre = l1.forward(xtr[idx])
        h = np.maximum(pre, 0.0)
        loss, g = _softmax_grad(l2.forward(h), ytr[idx])
        for layer in layers:
            layer.zero_grad()
        gh = l2.backward(g) * (pre > 0)
        l1.backward(gh)
        for layer in layers:
            grads = layer.gradients()
            for key, param in layer.parameters().items():
                param -= lr * grads[key]
        if step in (0, steps - 1):
            print(f"  LoRS step {step + 1:4d}: loss {loss:.3f}", file=out)
    dt = time.perf_counter() - t0
    merged = [layer.merged_weight() for layer in layers]
    assert l1.bias is not None and l2.bias is not None  # both layers were built with a bias
    acc_lors = _accuracy(merged[0], l1.bias, merged[1], l2.bias, xte, yte)
    print(f"LoRS fine-tuned ({steps} steps, {dt:.1f} s): test accuracy {acc_lors:.3f}", file=out)
    for i, (m, w) in enumerate(zip(masks, merged, strict=True)):
        kept = bool(np.all(w[~m] == 0))
        lora = (w1, w2)[i] * m + layers[i].scaling * (
            layers[i].B @ layers[i].A
        )  # what plain LoRA would merge
        print(
            f"  layer {i + 1}: merged density {np.count_nonzero(w) / w.size:.3f} (mask {m.mean():.3f}), "
            f"every pruned zero kept: {kept}; a plain LoRA merge would have density "
            f"{np.count_nonzero(lora) / lora.size:.3f}",
            file=out,
        )
        if not kept:
            raise RuntimeError("LoRS merge lost sparsity")


def _planner_section(quick: bool, out: TextIO) -> None:
    g = sparseft.graphs.training_graph(12 if quick else 24, seed=0)
    print(
        f"training graph: {g.n} nodes, no-remat peak {g.peak_memory()}, total duration {g.total_duration}",
        file=out,
    )
    for solver in ("none", "chen", "greedy", "moccasin"):
        budget = 1.0 if solver == "none" else 0.7
        try:
            plan = sparseft.Planner(
                g, budget, solver=solver, time_limit=3 if quick else 10, threads=2
            ).solve()
        except ValueError as err:  # a budget no schedule of this solver can meet
            print(f"  {solver:9s} budget {budget:.0%}: {err}", file=out)
            continue
        print(
            f"  {solver:9s} budget {budget:.0%}: status {plan.status}, peak {plan.peak_memory}, "
            f"overhead {plan.overhead:.1%}, {plan.solve_time:.2f} s",
            file=out,
        )


def _gemm_section(rng: np.random.Generator, n: int, out: TextIO) -> None:
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    timings = {}
    for name, fn in [("numpy", lambda: a @ b), ("sparseft", lambda: _core.matmul(a, b))]:
        fn()
        t0 = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - t0
    gflops = {k: 2 * n**3 / v / 1e9 for k, v in timings.items()}
    print(
        f"GEMM core {n}^3: sparseft {gflops['sparseft']:.1f} GFLOP/s, numpy {gflops['numpy']:.1f} GFLOP/s "
        f"(one run each; see benchmarks/ for measured ratios)",
        file=out,
    )


def run(seed: int = 0, quick: bool = False, out: TextIO | None = None) -> int:
    """Run the demo.

    Parameters
    ----------
    seed : int
        Random seed for every part.
    quick : bool
        Smaller sizes and fewer steps (a smoke test of a few seconds).
    out : file-like, optional
        Where to print (default: standard output).

    Returns
    -------
    int
        Process exit code, 0 on success.

    Raises
    ------
    TypeError, ValueError
        If ``seed`` is not an int >= 0.
    """
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed: expected an int >= 0, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed}")
    out = out or sys.stdout
    info = sparseft.build_info()
    print(
        f"sparseft {sparseft.__version__}: simd={info['simd']} openmp={info['openmp']} "
        f"threads={info['num_threads']}",
        file=out,
    )
    rng = np.random.default_rng(seed)
    print("\n== LoRS: fine-tune a pruned MLP without losing its sparsity", file=out)
    _lors_section(rng, quick, out)
    print("\n== Planner: keep or recompute activations under a memory budget", file=out)
    _planner_section(quick, out)
    print("\n== GEMM core", file=out)
    _gemm_section(rng, 256 if quick else 1024, out)
    return 0
