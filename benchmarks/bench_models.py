"""Models benchmark, in sections chosen on the command line.

``--ops``: forward+backward of each transformer op at GPT-2-small shapes (B=4, T=1024, d=768,
12 heads of 64, vocabulary 50,257: N = 4096 tokens) against PyTorch CPU, side by side in one run
with interleaved repetitions (the machine is shared and noisy):

* attention: ``ops.attention_forward`` + ``attention_backward`` (flash-style, causal) vs
  ``F.scaled_dot_product_attention(is_causal=True)`` and its autograd backward (torch's CPU default
  is itself a flash kernel keeping the log-sum-exp), and the same call on SDPA's math backend
  (``sdpa_kernel(SDPBackend.MATH)``: the probabilities kept for autograd, T x T per head);
* LM head + cross-entropy (frozen head, the fine-tuning case): ``ops.lm_head_xent_forward(...,
  grad=True)`` (loss and dx in one pass, the Trainer's path) and forward + ``lm_head_xent_backward``
  (recomputing the logits) vs ``F.cross_entropy(x @ w.T, t)`` on materialised logits, backward to x;
* LayerNorm, RMSNorm, GELU-tanh, SwiGLU, RoPE, AdamW: vs ``F.layer_norm``, ``F.rms_norm``,
  ``F.gelu(approximate="tanh")``, ``F.silu(g) * u``, the Hugging Face rotate_half formula in torch,
  and ``torch.optim.AdamW``; their effective bandwidth (the bytes the op must move, read + written,
  over the time) against a memory copy (``numpy.copyto``, 2 x bytes / time) measured in the same run;
  the ops' fresh outputs also against a copy into a fresh array (``src.copy()``: first-touch page
  faults on both sides) and with ``SPARSEFT_HUGEPAGES=0`` (4 KiB-page outputs) side by side.

Peak memory of each call is the growth of the process's resident set (VmHWM after resetting it
through /proc/self/clear_refs, minus VmRSS before the call), the same meter for both libraries; the
script re-executes itself once with glibc's mmap threshold pinned, so freed buffers go back to the
OS and one call's leftovers do not hide the next call's peak.

Targets printed beside the results: attention and the fused head at <= 1x PyTorch's time with
<= 0.25x its peak memory; the norms and activations at >= 70% of the copy bandwidth.

``--load [--dtype F16|F32]``: a ~1 GB F16 (or F32) Llama checkpoint (d=2048, 16 heads / 8 key-value heads, SwiGLU 5632,
vocabulary 32,000; generated in a temporary directory) loaded by ``sparseft.models.from_pretrained``
and by ``transformers.AutoModelForCausalLM.from_pretrained(dtype=float32)``, each in a fresh process:
time and peak RSS (``ru_maxrss``), also as growth over the process's RSS after its imports, against
the loaded model's own bytes (``model.nbytes``; the parameters' bytes for transformers); for F32
also sparseft with ``mmap=False`` (tensors read into new arrays instead of mapped). Target:
sparseft's peak RSS growth <= 1.2x ``model.nbytes`` (no second copy of the model on the way).

Usage: ``python benchmarks/bench_models.py --ops [--reps 3] [--threads N] [--small]
[--parts attention,head,rows,adamw]``; ``--load [--gb 1.0]``
(``--small``: B=1, T=256 and a 8,192 vocabulary, for a quick look; not the reported shapes).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import _timing  # benchmarks/_timing.py (the script's own folder is on sys.path)
import numpy as np

import sparseft
from sparseft import _core
from sparseft.models import ops

#: glibc: allocations from 128 KiB up are mmapped and unmapped on free (no dynamic threshold)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _reexec_with_malloc_env() -> None:
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, **MALLOC_ENV))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_growth(fn: Callable[[], object]) -> int:
    """Bytes the resident set grows to above its level before one call of ``fn`` (result dropped)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def _drop(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` with its result discarded inside the call (so peak_growth sees it freed)."""

    def run() -> None:
        fn()

    return run


def measure(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, tuple[float, int]]:
    """Min seconds (interleaved) and peak RSS growth of each function."""
    times = _timing.interleaved({k: _drop(f) for k, f in fns.items()}, reps)
    out = {}
    for k, f in fns.items():
        peaks = [peak_growth(_drop(f)) for _ in range(2)]
        out[k] = (min(times[k]), min(peaks))
    return out


def take_grads(*ts: object) -> tuple[object, ...]:
    """The tensors' .grad, cleared on them: a torch step's gradients are dropped with its result,
    like sparseft's returned arrays, so neither library's last outputs sit in the baseline RSS."""
    grads = tuple(t.grad for t in ts)  # type: ignore[attr-defined]
    for t in ts:
        t.grad = None  # type: ignore[attr-defined]
    return grads


def _row(name: str, t: float, peak: int, extra: str = "") -> str:
    return f"  {name:<34s} {t * 1e3:9.1f} ms  peak +{peak / 2**20:8.1f} MiB  {extra}"


def section_ops(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(sparseft.get_num_threads())
    if args.small:
        B, T, C, H, V = 1, 256, 768, 12, 8192
    else:
        B, T, C, H, V = 4, 1024, 768, 12, 50257
    D, N, reps = C // H, B * T, args.reps
    rng = np.random.default_rng(0)

    def rnd(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    print(
        f"shapes: B={B} T={T} C={C} heads={H}x{D} V={V} (N={N} tokens); threads: sparseft "
        f"{sparseft.get_num_threads()}, torch {torch.get_num_threads()}; reps {reps}, min time"
    )

    parts = set(args.parts.split(","))
    unknown = parts - set(OPS_PARTS)
    if unknown:
        raise SystemExit(
            f"--parts: expected names among {','.join(OPS_PARTS)}, got {','.join(sorted(unknown))}"
        )
    copy_bw, fresh_bw = _copy_bandwidth(rnd(N, 4 * C), reps)
    if "attention" in parts:
        _attention(rnd, B, H, T, D, reps)
    if "head" in parts:
        _head(rnd, rng, N, C, V, reps)
    if "rows" in parts:
        _row_ops(rnd, B, T, C, H, D, N, reps, copy_bw, fresh_bw)
    if "adamw" in parts:
        _adamw(rnd, reps, copy_bw)


def _copy_bandwidth(src: np.ndarray, reps: int) -> tuple[float, float]:
    """Read+write bytes per second of a memory copy, side by side: ``numpy.copyto`` into a
    preallocated array (the ceiling of the row ops with ``out=``) and ``src.copy()`` into a fresh
    one (first-touch page faults included: the like-for-like reference of the ops' fresh outputs)."""
    dst = np.empty_like(src)
    t = _timing.interleaved({"copy": lambda: np.copyto(dst, src), "fresh": src.copy}, reps)
    tcopy, tfresh = min(t["copy"]), min(t["fresh"])
    copy_bw, fresh_bw = 2 * src.nbytes / tcopy, 2 * src.nbytes / tfresh
    print(
        f"memory copy: {src.nbytes / 2**20:.0f} MiB in {tcopy * 1e3:.1f} ms = {copy_bw / 1e9:.2f} GB/s (read+write); "
        f"into a fresh array (src.copy()): {tfresh * 1e3:.1f} ms = {fresh_bw / 1e9:.2f} GB/s"
    )
    return copy_bw, fresh_bw


def _attention(rnd: Callable[..., np.ndarray], B: int, H: int, T: int, D: int, reps: int) -> None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, do = rnd(B, H, T, D), rnd(B, H, T, D), rnd(B, H, T, D), rnd(B, H, T, D)

    def sft_attn() -> object:
        o, lse = ops.attention_forward(q, k, v)
        return ops.attention_backward(do, q, k, v, o, lse)

    qt, kt, vt = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    dot = torch.tensor(do)

    def torch_attn() -> object:
        F.scaled_dot_product_attention(qt, kt, vt, is_causal=True).backward(dot)
        return take_grads(qt, kt, vt)

    def torch_math() -> object:
        # the same call forced onto SDPA's math backend (the T x T probabilities kept for autograd)
        with sdpa_kernel(SDPBackend.MATH):
            F.scaled_dot_product_attention(qt, kt, vt, is_causal=True).backward(dot)
        return take_grads(qt, kt, vt)

    # the model's path: q, k, v read in place from the (B, T, 3C) qkv output, o written into
    # (B, T, C), dq/dk/dv into one (B, T, 3C) gradient (no head copies, no concatenate)
    C = H * D
    qkv = np.ascontiguousarray(
        np.concatenate([a.transpose(0, 2, 1, 3).reshape(B, T, C) for a in (q, k, v)], -1)
    )
    do_m = np.ascontiguousarray(do.transpose(0, 2, 1, 3))
    views = [qkv[..., i * C : (i + 1) * C].reshape(B, T, H, D) for i in range(3)]

    def sft_model() -> object:
        o = np.empty((B, T, C), np.float32)
        _, lse = ops.attention_forward(*views, layout="bthd", out=o.reshape(B, T, H, D))
        g = np.empty((B, T, 3 * C), np.float32)
        out = tuple(g[..., i * C : (i + 1) * C].reshape(B, T, H, D) for i in range(3))
        ops.attention_backward(do_m, *views, o.reshape(B, T, H, D), lse, layout="bthd", out=out)
        return g

    def sft_copies() -> object:
        # the model op before: head-major copies of q, k, v, o, do and back, then a concatenate
        def heads(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a.reshape(B, T, H, D).transpose(0, 2, 1, 3))

        def merge(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a.transpose(0, 2, 1, 3)).reshape(B, T, C)

        qh, kh, vh = (heads(qkv[..., i * C : (i + 1) * C]) for i in range(3))
        oh, lse = ops.attention_forward(qh, kh, vh)
        o = merge(oh)
        del oh
        qh, kh, vh = (heads(qkv[..., i * C : (i + 1) * C]) for i in range(3))
        gq, gk, gv = ops.attention_backward(heads(do_m), qh, kh, vh, heads(o), lse)
        return np.concatenate([merge(gq), merge(gk), merge(gv)], axis=-1)

    fns = {"sft": sft_attn, "model": sft_model, "copies": sft_copies, "torch": torch_attn, "math": torch_math}
    res = measure(fns, reps)
    (ts, ps), (tmod, pmod), (tt, pt), (tm, pm) = res["sft"], res["model"], res["torch"], res["math"]
    tcp, pcp = res["copies"]
    floor = 4 * (B * H * T * D + B * H * T + 3 * B * H * T * D)  # o + lse + dq + dk + dv
    print("\nattention fwd+bwd (causal):")
    print(_row("sparseft (flash, lse kept)", ts, ps))
    print(_row("sparseft model, in place (now)", tmod, pmod))
    print(_row("sparseft model, copies (before)", tcp, pcp))
    print(_row("torch SDPA (default: flash) + autograd", tt, pt))
    print(_row("torch SDPA math backend + autograd", tm, pm))
    print(
        f"  sparseft vs torch default: time {ts / tt:.2f}x, peak {ps / max(pt, 1):.2f}x; vs math backend: time "
        f"{ts / tm:.2f}x, peak {ps / max(pm, 1):.2f}x   (target <= 1x time, <= 0.25x peak)"
    )
    print(
        f"  model layout vs torch default: time {tmod / tt:.2f}x, peak {pmod / max(pt, 1):.2f}x; vs the copying "
        f"op: time {tmod / tcp:.2f}x, peak {pmod / max(pcp, 1):.2f}x"
    )
    print(
        f"  floor for ANY implementation (bytes of o + lse + dq + dk + dv it must return): {floor / 2**20:.1f} MiB"
        f" = {floor / max(pt, 1):.2f}x torch default's peak ({pt / 2**20:.1f} MiB), {floor / max(pm, 1):.2f}x the"
        f" math backend's ({pm / 2**20:.1f} MiB)"
    )
    print(
        f"  0.25x torch default's peak = {0.25 * pt / 2**20:.1f} MiB < floor {floor / 2**20:.1f} MiB: the peak "
        f"target is {'impossible (blocked)' if 0.25 * pt < floor else 'reachable'}; "
        f"0.25x the math backend's = {0.25 * pm / 2**20:.1f} MiB: sparseft {ps / max(pm, 1):.2f}x "
        f"{'met' if ps <= 0.25 * pm else 'not met'}"
    )


def _head(
    rnd: Callable[..., np.ndarray], rng: np.random.Generator, N: int, C: int, V: int, reps: int
) -> None:
    import torch
    import torch.nn.functional as F

    x, w, tgt = rnd(N, C), rnd(V, C, scale=0.05), rng.integers(0, V, N)

    def sft_fused() -> object:
        return ops.lm_head_xent_forward(x, w, tgt, grad=True)

    def sft_recompute() -> object:
        _, lse = ops.lm_head_xent_forward(x, w, tgt)
        return ops.lm_head_xent_backward(x, w, tgt, lse)

    xt, wt, tt_ = torch.tensor(x, requires_grad=True), torch.tensor(w), torch.tensor(tgt)

    def torch_head() -> object:
        F.cross_entropy(xt @ wt.T, tt_).backward()
        return take_grads(xt)

    res = measure({"fused": sft_fused, "recompute": sft_recompute, "torch": torch_head}, reps)
    tt, pt = res["torch"]
    print("\nLM head + cross-entropy fwd+bwd (frozen head, dx only):")
    for key, label in (
        ("fused", "sparseft fused (loss+dx, 1 pass)"),
        ("recompute", "sparseft fwd + bwd (recompute)"),
    ):
        t, p = res[key]
        print(_row(label, t, p, f"time {t / tt:.2f}x, peak {p / max(pt, 1):.2f}x"))
    print(_row("torch matmul + cross_entropy", tt, pt))
    print("  target: <= 1x time, <= 0.25x peak")


def _row_ops(
    rnd: Callable[..., np.ndarray],
    B: int,
    T: int,
    C: int,
    H: int,
    D: int,
    N: int,
    reps: int,
    copy_bw: float,
    fresh_bw: float,
) -> None:
    import torch
    import torch.nn.functional as F

    print(
        f"\nrow ops fwd+bwd: effective bandwidth = bytes the op must move / time; copy {copy_bw / 1e9:.2f} GB/s "
        f"(target >= 70% of it); fresh copy {fresh_bw / 1e9:.2f} GB/s (before the ops; see below)"
    )
    x, dy, wv, bv = rnd(N, C), rnd(N, C), rnd(C), rnd(C)
    hx, hdy, hu = rnd(N, 4 * C), rnd(N, 4 * C), rnd(N, 4 * C)
    rx = rnd(B, T, H, D)

    def sft_ln() -> object:
        _, m, r = ops.layernorm_forward(x, wv, bv)
        return ops.layernorm_backward(dy, x, wv, m, r)

    def sft_rms() -> object:
        _, r = ops.rmsnorm_forward(x, wv)
        return ops.rmsnorm_backward(dy, x, wv, r)

    def sft_gelu() -> object:
        ops.gelu_forward(hx)
        return ops.gelu_backward(hdy, hx)

    def sft_swiglu() -> object:
        ops.swiglu_forward(hx, hu)
        return ops.swiglu_backward(hdy, hx, hu)

    def sft_rope() -> object:
        ops.rope_forward(rx)
        return ops.rope_backward(rx)

    # the same calls writing into preallocated outputs (out=): no page faults on fresh memory. The
    # buffers are earlier outputs of the ops (as a caller reusing them would have): 64-byte aligned
    yo, dxo = ops.layernorm_forward(x, wv, bv)[0], ops.layernorm_forward(x, wv, bv)[0]
    hyo, hdxo, hdxo2 = ops.gelu_forward(hx), ops.gelu_forward(hx), ops.gelu_forward(hx)
    ryo, rdxo = ops.rope_forward(rx), ops.rope_forward(rx)

    def sft_ln_out() -> object:
        _, m, r = ops.layernorm_forward(x, wv, bv, out=yo)
        return ops.layernorm_backward(dy, x, wv, m, r, out=dxo)

    def sft_rms_out() -> object:
        _, r = ops.rmsnorm_forward(x, wv, out=yo)
        return ops.rmsnorm_backward(dy, x, wv, r, out=dxo)

    def sft_gelu_out() -> object:
        ops.gelu_forward(hx, out=hyo)
        return ops.gelu_backward(hdy, hx, out=hdxo)

    def sft_swiglu_out() -> object:
        ops.swiglu_forward(hx, hu, out=hyo)
        return ops.swiglu_backward(hdy, hx, hu, out=(hdxo, hdxo2))

    def sft_rope_out() -> object:
        ops.rope_forward(rx, out=ryo)
        return ops.rope_backward(rx, out=rdxo)

    xT, wT, bT, dyT = (torch.tensor(a, requires_grad=i < 3) for i, a in enumerate((x, wv, bv, dy)))
    hxT, huT, hdyT = (
        torch.tensor(hx, requires_grad=True),
        torch.tensor(hu, requires_grad=True),
        torch.tensor(hdy),
    )
    rxT = torch.tensor(rx, requires_grad=True)
    inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)[None, :, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1)[None, :, None, :]

    def torch_ln() -> object:
        F.layer_norm(xT, (C,), wT, bT, 1e-5).backward(dyT)
        return take_grads(xT, wT, bT)

    def torch_rms() -> object:
        F.rms_norm(xT, (C,), wT, 1e-6).backward(dyT)
        return take_grads(xT, wT)

    def torch_gelu() -> object:
        F.gelu(hxT, approximate="tanh").backward(hdyT)
        return take_grads(hxT)

    def torch_swiglu() -> object:
        (F.silu(hxT) * huT).backward(hdyT)
        return take_grads(hxT, huT)

    def torch_rope() -> object:
        rot = torch.cat([-rxT[..., D // 2 :], rxT[..., : D // 2]], -1)
        (rxT * cos + rot * sin).backward(rxT.detach())
        return take_grads(rxT)

    nbytes = x.nbytes
    print(
        "  bytes counted = the minimal reads + writes of the big arrays, fwd + bwd: layernorm/rmsnorm "
        "read x, write y; read dy, x, write dx (5 x N*C*4); gelu read x, write y; read dy, x, write dx "
        "(5 x N*4C*4); swiglu read gate, up, write y; read dy, gate, up, write dgate, dup (8 x N*4C*4); "
        "rope read x, write y; read dy, write dx (4 x B*T*H*D*4); adamw read param, grad, m, v, write "
        "param, m, v (7 x P*4). Not counted: w, b, mean, rstd, the cos/sin table (<1%; kept across calls).\n"
        "  'sparseft' allocates its outputs (fresh pages: page faults on first touch; % of copy, then % of "
        "the fresh copy, src.copy()), 'out=' writes into preallocated outputs (% of copy)"
    )
    cases = [
        # name, sparseft fn, sparseft fn with out=, torch fn, bytes moved
        ("layernorm", sft_ln, sft_ln_out, torch_ln, 5 * nbytes),
        ("rmsnorm", sft_rms, sft_rms_out, torch_rms, 5 * nbytes),
        ("gelu (N x 4C)", sft_gelu, sft_gelu_out, torch_gelu, 5 * hx.nbytes),
        ("swiglu (N x 4C)", sft_swiglu, sft_swiglu_out, torch_swiglu, 8 * hx.nbytes),
        ("rope (B,T,H,D)", sft_rope, sft_rope_out, torch_rope, 4 * rx.nbytes),
    ]
    # the fresh-copy references interleaved with the ops (page-fault costs drift with the host's state),
    # at the sizes of the ops' outputs: N x C (norms, RoPE) and N x 4C (activations)
    fns = {
        f"{n}|{lib}": f
        for n, fs, fo, ft, _ in cases
        for lib, f in (("sft", fs), ("4k", _small_pages(fs)), ("out", fo), ("torch", ft))
    }
    fns["fresh|small"], fns["fresh|big"] = x.copy, hx.copy
    res = measure(fns, reps)
    fresh_small = 2 * x.nbytes / res["fresh|small"][0]
    fresh_big = 2 * hx.nbytes / res["fresh|big"][0]
    print(
        f"  fresh copy (src.copy()) interleaved with the ops: {x.nbytes / 2**20:.0f} MiB {fresh_small / 1e9:.2f} "
        f"GB/s (reference of layernorm, rmsnorm, rope), {hx.nbytes / 2**20:.0f} MiB {fresh_big / 1e9:.2f} GB/s "
        "(gelu, swiglu)"
    )
    print(
        "  '4K pages': the same fresh outputs with SPARSEFT_HUGEPAGES=0 (NumPy's buffers, no 2 MiB-aligned "
        "mapping: the allocation before huge-page outputs), % of the fresh copy"
    )
    for name, _, _, _, moved in cases:
        fresh_bw = fresh_big if name.endswith("(N x 4C)") else fresh_small
        ts, ps = res[f"{name}|sft"]
        t4, _ = res[f"{name}|4k"]
        to, _ = res[f"{name}|out"]
        tt, pt = res[f"{name}|torch"]
        print(
            f"  {name:<16s} sparseft {ts * 1e3:7.1f} ms ({moved / ts / 1e9:6.2f} GB/s = "
            f"{moved / ts / copy_bw:4.0%} of copy, {moved / ts / fresh_bw:4.0%} of fresh) peak +{ps / 2**20:6.1f} MiB "
            f"| 4K pages {t4 * 1e3:7.1f} ms ({moved / t4 / fresh_bw:4.0%}) | out= {to * 1e3:7.1f} ms "
            f"({moved / to / copy_bw:4.0%}) | torch {tt * 1e3:7.1f} ms "
            f"({moved / tt / copy_bw:4.0%}) peak +{pt / 2**20:6.1f} MiB | time {ts / tt:.2f}x"
        )


def _small_pages(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with SPARSEFT_HUGEPAGES=0 (sparseft reads it at each allocation)."""

    def run() -> object:
        before = os.environ.get("SPARSEFT_HUGEPAGES")
        os.environ["SPARSEFT_HUGEPAGES"] = "0"
        try:
            return fn()
        finally:
            if before is None:
                del os.environ["SPARSEFT_HUGEPAGES"]
            else:
                os.environ["SPARSEFT_HUGEPAGES"] = before

    return run


def _adamw(rnd: Callable[..., np.ndarray], reps: int, copy_bw: float) -> None:
    import torch

    P = 1 << 24
    p, g, m, vv = rnd(P), rnd(P), np.zeros(P, np.float32), np.zeros(P, np.float32)
    pT = torch.tensor(p.copy(), requires_grad=True)
    pT.grad = torch.tensor(g)
    opt = torch.optim.AdamW([pT], lr=1e-3, weight_decay=0.1)
    step = [0]

    def sft_adamw() -> None:
        step[0] += 1
        ops.adamw_step(p, g, m, vv, 1e-3, 0.9, 0.999, 1e-8, 0.1, step[0])

    res = measure({"sft": sft_adamw, "torch": opt.step}, reps)
    moved = 7 * p.nbytes  # read param, grad, m, v; write param, m, v
    ts, tt = res["sft"][0], res["torch"][0]
    print(
        f"  {'adamw (16M)':<16s} sparseft {ts * 1e3:7.1f} ms ({moved / ts / copy_bw:4.0%} of copy) | torch "
        f"{tt * 1e3:7.1f} ms ({moved / tt / copy_bw:4.0%}) | time {ts / tt:.2f}x"
    )


# ---- load: checkpoint loading, sparseft vs transformers ----

LOAD_CHILD = r"""
import json, resource, sys, time
which, path = sys.argv[1], sys.argv[2]
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
if which.startswith("sparseft"):
    import sparseft.models as M
    base = rss()
    t0 = time.perf_counter()
    model = M.from_pretrained(path, tokenizer=None, mmap=which != "sparseft-nommap")
    dt = time.perf_counter() - t0
    nbytes = model.nbytes
else:
    import torch, transformers
    base = rss()
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    dt = time.perf_counter() - t0
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": dt, "peak": peak, "base": base, "nbytes": nbytes}))
"""

LOAD_WRITER = r"""
import sys, numpy as np
from safetensors.numpy import save_file
import sparseft.models as M
from sparseft.models.transformer import weight_spec
path, cfg = sys.argv[1], M.LlamaConfig(**__import__("json").loads(sys.argv[2]))
dt = np.float16 if sys.argv[3] == "F16" else np.float32
rng = np.random.default_rng(0)
sd = {}
for key, shape, _ in weight_spec(cfg):
    if len(shape) == 1:
        sd[key] = np.ones(shape, dt)
    else:
        sd[key] = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dt)
save_file(sd, path + "/model.safetensors", metadata={"format": "pt"})
open(path + "/config.json", "w").write(__import__("json").dumps(cfg.to_hf()))
"""


def load_config(gb: float) -> dict[str, int | float | bool]:
    """A Llama shape (d=2048, GQA 16/8 heads, SwiGLU 5632, vocab 32000) with enough layers for ~gb GB in F16."""
    d, ff, vocab, kv = 2048, 5632, 32000, 1024
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * ff + 2 * d
    layers = max(1, round((gb * 1e9 / 2 - 2 * vocab * d) / per_layer))
    return dict(
        vocab_size=vocab,
        n_layer=layers,
        n_head=16,
        n_kv_head=8,
        d_model=d,
        d_ff=ff,
        seq_len=2048,
        rope_theta=10000.0,
    )


def section_load(args: argparse.Namespace) -> None:
    """Load a ~``args.gb`` GB F16 Llama checkpoint (generated in a temp dir) with sparseft and with
    transformers, each in a fresh process; print time and peak RSS (total and over the process's
    RSS after its imports) against the loaded model's own bytes."""
    import json
    import subprocess
    import tempfile

    f32 = args.dtype == "F32"
    # an F32 checkpoint of ~gb GB has half the parameters of an F16 one
    cfg = load_config((0.2 if args.small else args.gb) / (2 if f32 else 1))
    with tempfile.TemporaryDirectory(prefix="sft_load_") as d:
        subprocess.run([sys.executable, "-c", LOAD_WRITER, d, json.dumps(cfg), args.dtype], check=True)
        size = os.path.getsize(os.path.join(d, "model.safetensors"))
        print(
            f"checkpoint: Llama {cfg['n_layer']} layers, d={cfg['d_model']}, {args.dtype}, {size / 1e9:.2f} GB"
        )
        rows = {}
        for which in ("sparseft", *(("sparseft-nommap",) if f32 else ()), "transformers"):
            out = subprocess.run(
                [sys.executable, "-c", LOAD_CHILD, which, d], check=True, capture_output=True, text=True
            ).stdout
            rows[which] = json.loads(out.strip().splitlines()[-1])
        print(
            f"{'loader':<16}{'time s':>8}{'model GB':>10}{'peak RSS GB':>13}{'over imports':>14}{'peak/model':>12}"
        )
        for which, r in rows.items():
            grow = r["peak"] - r["base"]
            print(
                f"{which:<16}{r['seconds']:>8.2f}{r['nbytes'] / 1e9:>10.2f}{r['peak'] / 1e9:>13.2f}"
                f"{grow / 1e9:>14.2f}{grow / r['nbytes']:>12.2f}"
            )
        s, t = rows["sparseft"], rows["transformers"]
        ratio = (s["peak"] - s["base"]) / s["nbytes"]
        print(
            f"sparseft/transformers: time {s['seconds'] / t['seconds']:.2f}x, peak RSS over imports "
            f"{(s['peak'] - s['base']) / (t['peak'] - t['base']):.2f}x"
        )
        print(
            f"target: sparseft peak RSS growth <= 1.2x model.nbytes: {ratio:.2f}x {'met' if ratio <= 1.2 else 'NOT met'}"
        )


#: the parts of --ops, in the order they run
OPS_PARTS = ("attention", "head", "rows", "adamw")

SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {"ops": section_ops, "load": section_load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in SECTIONS:
        parser.add_argument(f"--{name}", action="store_true", help=f"run the {name} section")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--small", action="store_true", help="small shapes for a quick look")
    parser.add_argument("--parts", default=",".join(OPS_PARTS), help="--ops: comma-separated parts to run")
    parser.add_argument("--gb", type=float, default=1.0, help="--load: checkpoint size in GB")
    parser.add_argument("--dtype", choices=("F16", "F32"), default="F16", help="--load: stored dtype")
    args = parser.parse_args()
    chosen = [n for n in SECTIONS if getattr(args, n)]
    if not chosen:
        parser.error("choose at least one section: " + ", ".join(f"--{n}" for n in SECTIONS))
    _reexec_with_malloc_env()
    if args.threads:
        sparseft.set_num_threads(args.threads)
    print(_timing.cpu_line())
    print(f"sparseft {sparseft.__version__}, SIMD {_core.build_info()['simd']}")
    for name in chosen:
        print(f"\n== {name} ==")
        SECTIONS[name](args)


if __name__ == "__main__":
    main()
