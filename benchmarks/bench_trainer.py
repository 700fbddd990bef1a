"""A fine-tuning step of a 50%-sparse GPT: sparseft's Trainer against PyTorch CPU, side by side.

Model: GPT-2 layout, 6 layers, d=512, 8 heads, byte vocabulary (256), seq 256, batch 8; every
block linear pruned to 50% (magnitude) and adapted with rank 16; AdamW on the adapters.

- sparseft: ``Trainer(adapter=LoRSConfig(r=16))`` without a budget, and with a budget of half the
  step's no-recompute activation peak (the Planner's schedule executed; bit-identical results),
  with the default ``reuse_buffers="auto"`` (a buffer pool without a budget, none under it); and
  each the other way (``reuse_buffers=False`` without a budget, ``True`` under it), with the minor
  page faults and system time per step.
- PyTorch, written as a new user would (``F.scaled_dot_product_attention``, ``F.cross_entropy`` on
  materialized logits, ``torch.optim.AdamW``): an SPP/SQFT-style masked adapter
  W + s·(B A) ⊙ M under autograd; the same with ``torch.utils.checkpoint`` around every block; and
  plain LoRA (x Wᵀ + s·(x Aᵀ) Bᵀ, unmasked).
- Dense full fine-tuning of the GPT-2 124M shape (12 layers, d=768, vocab 50,257, B=4, T=64,
  ``adapter=None``, no pruning): tokens/s and GFLOP/s counting 6·params·tokens plus attention,
  against the GEMM core's GFLOP/s at 2048³ measured in the same run.

Each configuration runs in its own process: "peak growth" is the peak resident memory during the
timed steps minus the resident memory after the model, the optimizer and one warm-up step
(``/proc/self/clear_refs`` resets the high-water mark; glibc's free lists are trimmed first).

    python benchmarks/bench_trainer.py [--steps 3] [--skip-dense] [--reuse-rounds 1]
    python benchmarks/bench_trainer.py --only-dense [--steps 5]   # the dense line in detail
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import cpu_line

L, D, H, V, T, B, R = 6, 512, 8, 256, 256, 8, 16
DENSE = dict(n_layer=12, d=768, heads=12, vocab=50257, B=4, T=64)


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _baseline() -> int:
    """Trim malloc's free lists, reset the peak-RSS mark, return the resident bytes now."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _rss()


def _corpus() -> np.ndarray:
    from sparseft.data import builtin_corpus

    return builtin_corpus()


# ---- sparseft workers ------------------------------------------------------------------------


def _sparseft_model(sparse: bool, cfg: dict[str, int] | None = None) -> Any:
    import sparseft as sft
    from sparseft.models import GPT, GPTConfig

    c = cfg or dict(n_layer=L, d=D, heads=H, vocab=V, T=T)
    m = GPT.random(
        GPTConfig(
            vocab_size=c["vocab"], n_layer=c["n_layer"], n_head=c["heads"], d_model=c["d"], seq_len=c["T"]
        ),
        seed=0,
    )
    if sparse:
        sft.sparsify(m, sparsity=0.5, method="magnitude")
    return m


def worker_sparseft(opt: str, steps: int) -> dict[str, Any]:
    import sparseft as sft

    budget, _, flag = opt.partition("-")
    m = _sparseft_model(True)
    tr = sft.Trainer(
        m,
        adapter=sft.LoRSConfig(r=R, alpha=2 * R),
        lr=1e-3,
        memory_budget=None if budget == "none" else 0.5,
        reuse_buffers={"noreuse": False, "reuse": True}.get(flag, "auto"),
    )
    data = _corpus()
    t0 = time.perf_counter()
    tr.fit(data, steps=1, batch_size=B, seq_len=T, progress=False)  # warm-up, plan, profile, re-plan
    first = time.perf_counter() - t0
    base = _baseline()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    tr.fit(data, steps=1 + steps, batch_size=B, seq_len=T, progress=False)
    dt = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    plan = tr.plan
    assert plan is not None
    return {
        "tokens_per_s": steps * B * T / dt,
        "peak_growth": _hwm() - base,
        "store_peak": tr.peak_activation_bytes,
        "plan": f"{plan.solver} {plan.status}, {plan.recomputations} recomputations, "
        f"predicted overhead {100 * (plan.overhead or 0):.1f}%",
        "first_step_s": first,
        "loss": tr.history.loss[-1],
        "minflt_per_step": (ru1.ru_minflt - ru0.ru_minflt) / steps,
        "sys_s_per_step": (ru1.ru_stime - ru0.ru_stime) / steps,
        "cpu_s_per_step": (ru1.ru_stime - ru0.ru_stime + ru1.ru_utime - ru0.ru_utime) / steps,
        "reuse": tr.reuse_stats,
        **(_profile(tr, data) if opt == "none" else {}),
    }


def _profile(tr: Any, data: np.ndarray) -> dict[str, Any]:
    """One step executed with per-node wall times: the share of each op kind, the GFLOP/s of the
    LoRS linears (three GEMM-sized products each: the forward, gx and the masked gradient
    G = gyᵀx ⊙ M that dA and dB read) and the GEMM core's GFLOP/s on the same shapes."""
    from collections import Counter

    from sparseft import _core
    from sparseft.train.executor import ActivationStore, execute
    from sparseft.train.pool import BufferPool
    from sparseft.train.trainer import _pool_limit

    sg, sched = tr.plan_for(B, T)
    x, y = tr._dataset(data, "data").sample(np.random.default_rng(1), B, T)
    store = ActivationStore(BufferPool(_pool_limit(sched)) if tr.reuse_buffers else None)
    execute(sg, sched.codes, x, y, store)  # fills the pool, as the Trainer's steps after the first
    d: dict[int, int] = {}
    time.sleep(0.25)
    t0 = time.perf_counter_ns()
    execute(sg, sched.codes, x, y, store, d)
    step_us = (time.perf_counter_ns() - t0) / 1000
    tr.model.zero_grad()
    kinds: Counter[str] = Counter()
    lin_flops = 0
    shapes: Counter[tuple[int, int]] = Counter()
    for v, us in d.items():
        op = sg.ops[sg.node_op[v]]
        kinds[f"{type(op).__name__.lstrip('_')}.{'fwd' if v < sg.n_ops else 'bwd'}"] += us
        if type(op).__name__ == "LinearOp" and v < sg.n_ops:
            lin_flops += 3 * 2 * B * T * op.in_features * op.out_features
            shapes[(op.out_features, op.in_features)] += 1
    lin_us = sum(us for k, us in kinds.items() if k.startswith("LinearOp"))
    # the GEMM core on the linears' shapes: x (B·T, in) times W^T, the same count of products
    rng = np.random.default_rng(0)
    gemm_s = 0.0
    for (o, i), count in shapes.items():
        a = rng.standard_normal((B * T, i), dtype=np.float32)
        w = rng.standard_normal((o, i), dtype=np.float32)
        _core.matmul(a, w, trans_b=True)
        best = min(_timed(lambda a=a, w=w: _core.matmul(a, w, trans_b=True)) for _ in range(3))
        gemm_s += 3 * count * best
    return {
        "profile_step_s": step_us / 1e6,
        "profile": {k: us / step_us for k, us in kinds.most_common()},
        "executor_overhead": 1 - sum(kinds.values()) / step_us,
        "linear_gflops": lin_flops / (lin_us / 1e6) / 1e9,
        "gemm_gflops_same_shapes": lin_flops / gemm_s / 1e9,
        "linear_share": lin_us / step_us,
        "other_s": (step_us - lin_us) / 1e6,
        "linears_at_gemm_s": gemm_s,
    }


def worker_dense(steps: int) -> dict[str, Any]:
    import sparseft as sft
    from sparseft import _core

    c = DENSE
    m = _sparseft_model(
        False, dict(n_layer=c["n_layer"], d=c["d"], heads=c["heads"], vocab=c["vocab"], T=1024)
    )
    tr = sft.Trainer(m, adapter=None, lr=1e-4)
    n_params = sum(p.size for p in m.parameters().values())  # block linears, biases, norms
    data = _corpus()
    tr.fit(data, steps=1, batch_size=c["B"], seq_len=c["T"], progress=False)
    t0 = time.perf_counter()
    tr.fit(data, steps=1 + steps, batch_size=c["B"], seq_len=c["T"], progress=False)
    dt = time.perf_counter() - t0
    tokens = steps * c["B"] * c["T"]
    # 6 per trainable parameter and token; the tied head (frozen: forward and input gradient, 4 per
    # weight and token); attention's QK^T and PV, forward and backward, over the causal half
    attn = 6 * c["n_layer"] * c["T"] * c["d"] * tokens
    flops = 6 * n_params * tokens + 4 * c["vocab"] * c["d"] * tokens + attn // 2
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    _core.matmul(a, a)
    best = min(_timed(lambda: _core.matmul(a, a)) for _ in range(3))
    return {
        "tokens_per_s": tokens / dt,
        "gflops": flops / dt / 1e9,
        "gemm_gflops": 2 * 2048**3 / best / 1e9,
        "params": n_params,
    }


def _timed(fn: Any) -> float:
    time.sleep(0.25)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---- PyTorch workers -------------------------------------------------------------------------


def worker_torch(kind: str, steps: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    s = 2.0  # alpha / r

    class Linear(torch.nn.Module):
        def __init__(self, din: int, dout: int) -> None:
            super().__init__()
            W = torch.randn(dout, din) * 0.02
            thr = W.abs().flatten().kthvalue(W.numel() // 2).values
            self.register_buffer("M", (W.abs() > thr).float())
            self.register_buffer("W", W * self.M)
            self.register_buffer("b", torch.zeros(dout))
            self.A = torch.nn.Parameter(torch.randn(R, din) / din**0.5)
            self.B = torch.nn.Parameter(torch.zeros(dout, R))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if kind == "lora":
                return F.linear(x, self.W, self.b) + s * F.linear(F.linear(x, self.A), self.B)
            return F.linear(x, self.W + s * (self.B @ self.A) * self.M, self.b)

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(D), torch.nn.LayerNorm(D)
            self.qkv, self.proj = Linear(D, 3 * D), Linear(D, D)
            self.fc, self.out = Linear(D, 4 * D), Linear(4 * D, D)
            for p in [*self.ln1.parameters(), *self.ln2.parameters()]:
                p.requires_grad_(False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)
            q, k, v = (z.view(b, t, H, D // H).transpose(1, 2) for z in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, D)
            x = x + self.proj(a)
            return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = torch.nn.Parameter(torch.randn(V, D) * 0.02, requires_grad=False)
            self.wpe = torch.nn.Parameter(torch.randn(T, D) * 0.02, requires_grad=False)
            self.blocks = torch.nn.ModuleList(Block() for _ in range(L))
            self.lnf = torch.nn.LayerNorm(D)
            for p in self.lnf.parameters():
                p.requires_grad_(False)

        def forward(self, ids: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
            x = self.wte[ids] + self.wpe[: ids.shape[1]]
            for blk in self.blocks:
                x = checkpoint(blk, x, use_reentrant=False) if kind == "spp_ckpt" else blk(x)
            logits = self.lnf(x) @ self.wte.T
            return F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))

    model = GPT()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    data = torch.from_numpy(_corpus())
    gen = torch.Generator().manual_seed(0)

    def step() -> float:
        starts = torch.randint(0, data.numel() - T - 1, (B,), generator=gen)
        w = torch.stack([data[i : i + T + 1] for i in starts.tolist()])
        loss = model(w[:, :-1], w[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    step()
    base = _baseline()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return {"tokens_per_s": steps * B * T / dt, "peak_growth": _hwm() - base}


# ---- orchestration ---------------------------------------------------------------------------


# ---- dense full fine-tuning of the GPT-2 124M shape, in detail (--only-dense) -------------------


def _best_of(fn: Any, reps: int = 3) -> float:
    return min(_timed(fn) for _ in range(reps))


def _gemm_table(N: int, C: int, ff: int, Vh: int) -> list[str]:
    """GFLOP/s of each GEMM shape of the step (N = B*T tokens): the GEMM core vs np.matmul."""
    from sparseft import _core

    rng = np.random.default_rng(0)
    shapes = [  # (label, M, K, N, trans_a, trans_b)
        ("c_attn fwd  x Wt", N, C, 3 * C, False, True),
        ("c_fc fwd", N, C, ff, False, True),
        ("mlp.c_proj fwd", N, ff, C, False, True),
        ("c_attn dx  gy W", N, 3 * C, C, False, False),
        ("c_fc dx", N, ff, C, False, False),
        ("mlp.c_proj dx", N, C, ff, False, False),
        ("c_attn dW  gyT x", 3 * C, N, C, True, False),
        ("c_fc dW", ff, N, C, True, False),
        ("mlp.c_proj dW", C, N, ff, True, False),
        ("head logits", N, C, Vh, False, True),
        ("head dx", N, Vh, C, False, False),
        ("head dW", Vh, N, C, True, False),
        ("square 2048^3", 2048, 2048, 2048, False, False),
    ]
    out = [f"  {'GEMM':18s} {'M x K x N':>18s} {'core GF/s':>10s} {'np.matmul':>10s} {'core/np':>8s}"]
    for label, M, K, Nn, ta, tb in shapes:
        a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        b = rng.standard_normal((Nn, K) if tb else (K, Nn)).astype(np.float32)
        c = np.zeros((M, Nn), np.float32)
        ao, bo = (a.T if ta else a), (b.T if tb else b)
        fl = 2.0 * M * K * Nn
        _core.gemm_into(c, a, b, trans_a=ta, trans_b=tb)
        np.matmul(ao, bo)
        tc, tn = 1e9, 1e9
        for _ in range(3):  # interleaved, each after the settle pause
            tc = min(tc, _timed(functools.partial(_core.gemm_into, c, a, b, trans_a=ta, trans_b=tb)))
            tn = min(tn, _timed(functools.partial(np.matmul, ao, bo)))
        out.append(
            f"  {label:18s} {f'{M}x{K}x{Nn}':>18s} {fl / tc / 1e9:10.1f} {fl / tn / 1e9:10.1f} {tn / tc:8.2f}"
        )
    return out


def worker_dense_profile(steps: int) -> dict[str, Any]:
    """Dense full fine-tuning (every weight: blocks, norms, wte/wpe and the tied head) of the GPT-2
    124M shape: per round one timed step and one GEMM-core 2048^3 product side by side, a per-op
    breakdown of the step, AdamW's share and bandwidth, and the step's GEMM shapes."""
    import collections

    import sparseft as sft
    import sparseft.train.trainer as trainer_mod
    from sparseft import _core

    c = DENSE
    Bb, Tt, C, Lr, Vh = c["B"], c["T"], c["d"], c["n_layer"], c["vocab"]
    m = _sparseft_model(False, dict(n_layer=Lr, d=C, heads=c["heads"], vocab=Vh, T=1024))
    m.train_base(True, embeddings=True)
    tr = sft.Trainer(m, adapter=None, lr=1e-4)
    params = m.parameters()
    n_params = sum(p.size for p in params.values())
    data = _corpus()
    tokens = Bb * Tt
    flops = (6 * n_params + 6 * Lr * Tt * C) * tokens  # 6 per weight and token; causal QK^T, PV fwd+bwd

    acc: dict[str, float] = collections.defaultdict(float)

    def wrap(obj: Any, attr: str, key: str) -> None:
        f = getattr(obj, attr)

        def g(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            r = f(*a, **k)
            acc[key] += time.perf_counter() - t0
            return r

        setattr(obj, attr, g)

    tr.fit(data, steps=1, batch_size=Bb, seq_len=Tt, progress=False)  # warm-up, plan
    for op in m.ops():
        kind = type(op).__name__.lstrip("_")
        if kind == "LinearOp":
            kind = "Linear " + op.name.split(".", 2)[-1]
        wrap(op, "forward", f"{kind} fwd")
        wrap(op, "backward", f"{kind} bwd")
    wrap(tr.optimizer, "step", "AdamW step")
    wrap(m, "zero_grad", "zero_grad")
    clip = trainer_mod.clip_grad_norm

    def timed_clip(*a: Any) -> float:
        t0 = time.perf_counter()
        r = clip(*a)
        acc["grad-norm clip"] += time.perf_counter() - t0
        return r

    trainer_mod.clip_grad_norm = timed_clip  # type: ignore[assignment]
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    _core.matmul(a, a)
    step_t, core_t, np_t = [], [], []
    try:
        for _ in range(steps):
            step_t.append(
                _timed(lambda: tr.fit(data, steps=tr.step + 1, batch_size=Bb, seq_len=Tt, progress=False))
            )
            core_t.append(_timed(lambda: _core.matmul(a, a)))
            np_t.append(_timed(lambda: np.matmul(a, a)))
    finally:
        trainer_mod.clip_grad_norm = clip
    sq = 2 * 2048**3
    ratios = [(flops / s) / (sq / g) for s, g in zip(step_t, core_t, strict=True)]
    mid = float(np.median(step_t))
    opt_bytes = 4 * 7 * n_params  # AdamW reads p, g, m, v and writes p, m, v
    lines = [f"  {'op':28s} {'ms/step':>9s} {'share':>6s}"]
    total = sum(step_t)
    for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {k:28s} {1e3 * v / steps:9.1f} {100 * v / total:5.1f}%")
    lines.append(f"  {'(rest: executor, data)':28s} {1e3 * (total - sum(acc.values())) / steps:9.1f}")
    return {
        "params": n_params,
        "gflop_per_step": flops / 1e9,
        "step_s": step_t,
        "core_gflops": [sq / t / 1e9 for t in core_t],
        "np_gflops": [sq / t / 1e9 for t in np_t],
        "ratios": ratios,
        "median_tokens_per_s": tokens / mid,
        "best_tokens_per_s": tokens / min(step_t),
        "adamw_ms": 1e3 * acc["AdamW step"] / steps,
        "adamw_gbs": opt_bytes / (acc["AdamW step"] / steps) / 1e9,
        "adamw_gb": opt_bytes / 1e9,
        "breakdown": lines,
        "gemms": _gemm_table(tokens, C, 4 * C, Vh),
        "loss": tr.history.loss[-1],
    }


def main_dense(steps: int) -> None:
    """``--only-dense``: the dense full fine-tuning report (one worker process)."""
    import sparseft

    print(cpu_line())
    print(
        f"sparseft {sparseft.__version__} (simd {sparseft.build_info()['simd']}, {sparseft.get_num_threads()} "
        f"threads); load average {os.getloadavg()[0]:.1f}"
    )
    c = DENSE
    print(
        f"dense full fine-tuning, GPT-2 124M shape (L={c['n_layer']} d={c['d']} vocab={c['vocab']}), "
        f"B={c['B']} T={c['T']}, every weight trained (tied head), AdamW; {steps} rounds of "
        "(one step, one GEMM-core 2048^3, one np.matmul 2048^3)"
    )
    r = _run(["--worker", "dense_profile:", "--steps", str(steps)])
    if "error" in r:
        print(f"failed: {r['error']}")
        return
    print(
        f"trainable parameters {r['params']:,}; {r['gflop_per_step']:.1f} GFLOP per step (6*params*tokens + attention)"
    )
    for i, (s, g, n, q) in enumerate(
        zip(r["step_s"], r["core_gflops"], r["np_gflops"], r["ratios"], strict=True)
    ):
        print(
            f"round {i}: step {s:.3f} s = {c['B'] * c['T'] / s:.0f} tokens/s, {r['gflop_per_step'] / s:.1f} GFLOP/s; "
            f"GEMM core 2048^3 {g:.1f} GFLOP/s, np.matmul {n:.1f}; step/core {q:.2f}x"
        )
    med = float(np.median(r["ratios"]))
    print(
        f"median: {r['median_tokens_per_s']:.0f} tokens/s (best {r['best_tokens_per_s']:.0f}), step at "
        f"{med:.2f}x the GEMM core's 2048^3 GFLOP/s (target >= 0.6x: {'met' if med >= 0.6 else 'not met'}); "
        "llm.c reference 94 tokens/s"
    )
    print(f"AdamW: {r['adamw_ms']:.0f} ms/step moving {r['adamw_gb']:.2f} GB = {r['adamw_gbs']:.1f} GB/s")
    print("per-op breakdown (wall time inside each op, summed over the timed steps):")
    print("\n".join(r["breakdown"]))
    print("the step's GEMM shapes (best of 3, interleaved):")
    print("\n".join(r["gemms"]))


def _reuse_report(res: dict[str, Any], names: list[str], steps: int, rounds: int) -> None:
    """Buffer reuse against fresh outputs: the rows above, plus ``rounds - 1`` more alternating
    pairs per budget; ratios of tokens/s and peak growth within each pair, and their medians."""
    # the default ("auto") pools without a budget and not under the recomputing one
    pairs = {"none": [(res[names[0]], res[names[3]])], "half": [(res[names[2]], res[names[1]])]}
    for _ in range(rounds - 1):
        for b in ("half", "none"):
            on = _run(["--worker", f"sparseft:{b}-reuse", "--steps", str(steps)])
            off = _run(["--worker", f"sparseft:{b}-noreuse", "--steps", str(steps)])
            if "error" not in on and "error" not in off:
                pairs[b].append((on, off))
    for b, label in (("none", "no budget"), ("half", "budget 0.5x")):
        sp = [on["tokens_per_s"] / off["tokens_per_s"] for on, off in pairs[b]]
        gr = [on["peak_growth"] / max(off["peak_growth"], 1) for on, off in pairs[b]]
        fl = [(on["minflt_per_step"], off["minflt_per_step"]) for on, off in pairs[b]]
        st = [(on["store_peak"], off["store_peak"]) for on, off in pairs[b]]
        hits = [on["reuse"].get("reused_bytes", 0) / 2**20 / steps for on, _ in pairs[b]]
        print(
            f"reuse_buffers, {label}: tokens/s with/without {', '.join(f'{x:.3f}' for x in sp)} "
            f"(median {float(np.median(sp)):.3f}x); peak growth with/without "
            f"{', '.join(f'{x:.2f}' for x in gr)}; minor faults per step "
            f"{', '.join(f'{a:.0f} vs {c:.0f}' for a, c in fl)}; store peak "
            f"{', '.join(f'{a / 2**20:.1f} vs {c / 2**20:.1f} MiB' for a, c in st)}; "
            f"reused {', '.join(f'{h:.0f}' for h in hits)} MiB per step"
        )


def _run(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    ap.add_argument("--skip-dense", action="store_true", help="skip the GPT-2 124M dense line")
    ap.add_argument(
        "--reuse-rounds",
        type=int,
        default=1,
        help="rounds of the buffer-reuse comparison (each runs the with/without pair alternately)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument(
        "--only-dense",
        action="store_true",
        help="only the dense GPT-2 124M full fine-tuning report, in detail",
    )
    args = ap.parse_args()
    if args.only_dense and not args.worker:
        main_dense(args.steps)
        return
    if args.worker:
        kind, _, opt = args.worker.partition(":")
        if kind == "sparseft":
            res = worker_sparseft(opt, args.steps)
        elif kind == "dense":
            res = worker_dense(args.steps)
        elif kind == "dense_profile":
            res = worker_dense_profile(args.steps)
        else:
            res = worker_torch(opt, args.steps)
        print(json.dumps(res))
        return
    import torch

    import sparseft

    print(cpu_line())
    print(
        f"sparseft {sparseft.__version__} (simd {sparseft.build_info()['simd']}, {sparseft.get_num_threads()} threads), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"GPT L={L} d={D} heads={H} vocab={V}, batch {B} x seq {T}, 50% sparse, r={R}; {args.steps} timed steps"
    )
    rows = [
        ("sparseft LoRS, no budget", ["--worker", "sparseft:none"]),
        ("sparseft LoRS, budget 0.5x peak", ["--worker", "sparseft:half"]),
        ("  same, reuse_buffers=True", ["--worker", "sparseft:half-reuse"]),
        ("  no budget, reuse_buffers=False", ["--worker", "sparseft:none-noreuse"]),
        ("torch SPP-style masked adapter", ["--worker", "torch:spp"]),
        ("torch SPP-style + checkpoint/block", ["--worker", "torch:spp_ckpt"]),
        ("torch plain LoRA (unmasked)", ["--worker", "torch:lora"]),
    ]
    res = {}
    print(f"{'configuration':38s} {'tokens/s':>9s} {'peak growth':>12s}  notes")
    for name, a in rows:
        r = _run([*a, "--steps", str(args.steps)])
        res[name] = r
        if "error" in r:
            print(f"{name:38s} failed: {r['error']}")
            continue
        note = ""
        if "plan" in r:
            note = (
                f"store peak {r['store_peak'] / 2**20:.1f} MiB; {r['plan']}; first step {r['first_step_s']:.1f} s; "
                f"per step {r['minflt_per_step']:.0f} minor faults, sys {r['sys_s_per_step']:.2f} s of "
                f"{r['cpu_s_per_step']:.2f} s CPU"
            )
        print(f"{name:38s} {r['tokens_per_s']:9.0f} {r['peak_growth'] / 2**20:9.1f} MiB  {note}")
        if "profile" in r:
            shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["profile"].items() if v >= 0.005)
            print(
                f"  profile of one step ({r['profile_step_s']:.2f} s): {shares}; executor overhead "
                f"{100 * r['executor_overhead']:.1f}%"
            )
            print(
                f"  LoRS linears: {100 * r['linear_share']:.0f}% of the step at {r['linear_gflops']:.0f} GFLOP/s "
                f"(3 GEMM-sized products each); the GEMM core on the same shapes {r['gemm_gflops_same_shapes']:.0f} "
                f"GFLOP/s"
            )
    ok = all("error" not in r for r in res.values())
    if ok:
        _reuse_report(res, [rows[k][0] for k in range(4)], args.steps, args.reuse_rounds)
        sp0, sp1 = res[rows[0][0]], res[rows[1][0]]
        spp, ck = res[rows[4][0]], res[rows[5][0]]
        print(
            f"target no budget >= 2x SPP tokens/s at <= 0.6x its growth: "
            f"{sp0['tokens_per_s'] / spp['tokens_per_s']:.2f}x tokens/s, "
            f"{sp0['peak_growth'] / spp['peak_growth']:.2f}x growth"
        )
        if "profile" in sp0:
            # the step cannot beat its linears' arithmetic at the GEMM core's rate
            cap0 = B * T / sp0["linears_at_gemm_s"]
            cap1 = B * T / (sp0["linears_at_gemm_s"] + sp0["other_s"])
            print(
                f"arithmetic cap: linears alone at the GEMM core's rate {cap0:.0f} tokens/s = "
                f"{cap0 / spp['tokens_per_s']:.2f}x SPP; plus the rest of the step as measured "
                f"{cap1:.0f} tokens/s = {cap1 / spp['tokens_per_s']:.2f}x SPP"
            )
        print(
            f"target budget <= 15% slower than no budget: {100 * (1 - sp1['tokens_per_s'] / sp0['tokens_per_s']):.1f}% "
            f"slower; vs checkpointed torch: {sp1['tokens_per_s'] / ck['tokens_per_s']:.2f}x tokens/s (>= 2x), "
            f"{sp1['peak_growth'] / ck['peak_growth']:.2f}x growth (<= 1x)"
        )
    if not args.skip_dense:
        r = _run(["--worker", "dense:", "--steps", "2"])
        if "error" in r:
            print(f"dense GPT-2 124M full fine-tuning failed: {r['error']}")
        else:
            print(
                f"dense GPT-2 124M shape full fine-tuning B=4 T=64: {r['tokens_per_s']:.0f} tokens/s, "
                f"{r['gflops']:.1f} GFLOP/s = {r['gflops'] / r['gemm_gflops']:.2f}x the GEMM core at 2048^3 "
                f"({r['gemm_gflops']:.1f} GFLOP/s); target >= 0.6x; llm.c reference 94 tokens/s"
            )


if __name__ == "__main__":
    main()
