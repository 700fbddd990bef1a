"""What the fuzz harness knows about every ``sparseft._core`` entry point: how to build a valid
call on random sizes (including 0 and 1), which arguments are integers, flags, scales, outputs
and index structures, which names its error messages may use, and how to check a result against
``tests/reference.py``.

An entry point is registered with ``@entry(...)`` on its builder; ``ENTRIES`` maps names to them.
A builder takes a NumPy generator and returns a ``Call`` (see ``child.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import reference as ref
from .child import Call

F32 = np.float32


@dataclass
class Entry:
    """One ``_core`` entry point as the fuzzer sees it.

    ``build(rng) -> Call``; ``check(call, result)`` raises AssertionError when a successful
    result disagrees with the reference (None: no reference, only "it ran"); ``names``: the
    argument names an error message may start with; ``ints``/``flags``/``scales``: argument
    labels of those kinds ("arg3", "naive", "arg0[1]" for an item of the base tuple)."""

    name: str
    build: Callable[[np.random.Generator], Call]
    check: Callable[[Call, Any], None] | None = None
    names: frozenset[str] = frozenset()
    ints: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    scales: tuple[str, ...] = ()
    sparse: bool = False
    inplace_ok: dict[str, tuple[str, ...]] = field(default_factory=dict)
    free_ndim: tuple[str, ...] = ()
    dtypes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = frozenset(self.names | set(self.flags) | {"trusted"})


ENTRIES: dict[str, Entry] = {}


def entry(name: str, **kw: Any) -> Callable[[Callable[[np.random.Generator], Call]], Callable[..., Call]]:
    """Registers the decorated builder as the fuzz entry for ``_core.<name>``."""

    def deco(build: Callable[[np.random.Generator], Call]) -> Callable[..., Call]:
        ENTRIES[name] = Entry(name, build, **kw)
        return build

    return deco


# ---- helpers ----------------------------------------------------------------------------------


def size(rng: np.random.Generator, hi: int = 13) -> int:
    """A size biased to the edges: 0, 1, odd and a few larger ones."""
    return int(rng.choice([0, 1, 1, 2, 3, 5, 7, 8, 9, int(rng.integers(1, hi + 1)), 17]))


def f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(F32)


def close(got: Any, want: Any, what: str, tol: float = 2e-3) -> None:
    """float32 result against a float64 reference, relative to the reference's magnitude."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != reference {want.shape}"
    if got.size == 0:
        return
    scale = max(1.0, float(np.max(np.abs(want))))
    err = float(np.max(np.abs(got - want)))
    assert err <= tol * scale, f"{what}: max error {err:.3g} against the reference (scale {scale:.3g})"


def value(call: Call, label: str) -> Any:
    """The argument at ``label`` ("arg2", "arg0[5]", "naive"), defaults where not passed."""
    head, _, rest = label.partition("[")
    if head.startswith("arg") and head[3:].isdigit():
        v = call.args[int(head[3:])]
    else:
        v = call.kwargs[head]
    while rest:
        idx, _, rest = rest.partition("]")
        v = v[int(idx)]
        rest = rest.lstrip("[")
    return v


def dense_of_base(base: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(W dense float64, mask bool) of a valid CSR or N:M base tuple."""
    kind, out, inn, n, m, vals, idx, rowptr = base
    W = np.zeros((out, inn))
    M = np.zeros((out, inn), bool)
    if kind == "csr":
        for i in range(out):
            cols = idx[rowptr[i] : rowptr[i + 1]]
            W[i, cols] = vals[rowptr[i] : rowptr[i + 1]]
            M[i, cols] = True
    else:
        for i in range(out):
            cols = (np.arange(idx.shape[1]) // n) * m + idx[i]
            W[i, cols] = vals[i]
            M[i, cols] = True
    return W, M


def random_base(rng: np.random.Generator, kind: str | None = None) -> tuple:
    """A valid CSR or N:M base tuple of random size and density."""
    kind = kind or str(rng.choice(["csr", "nm"]))
    out = size(rng)
    if kind == "csr":
        inn = size(rng)
        M = rng.random((out, inn)) < rng.choice([0.0, 0.2, 0.6, 1.0])
        rows, cols = np.nonzero(M)
        rowptr = np.zeros(out + 1, np.int64)
        np.add.at(rowptr, rows + 1, 1)
        vals = f32(rng, len(rows))
        return ("csr", out, inn, 0, 0, vals, cols.astype(np.int32), np.cumsum(rowptr))
    m = int(rng.choice([1, 2, 4, 8]))
    n = int(rng.integers(0, m + 1))
    groups = int(rng.choice([0, 1, 2, 3]))
    inn = groups * m
    idx = np.zeros((out, groups * n), np.uint8)
    for i in range(out):
        for gr in range(groups):
            idx[i, gr * n : (gr + 1) * n] = np.sort(rng.choice(m, n, replace=False))
    return ("nm", out, inn, n, m, f32(rng, out, groups * n), idx, np.zeros(0, np.int64))


BASE_NAMES = frozenset(
    {"base", "base[0] (kind)", "base[1] (out)", "base[2] (in)", "base[3] (n)", "base[4] (m)", "values", "indices", "rowptr"}
)
BASE_INTS = ("arg0[1]", "arg0[2]", "arg0[3]", "arg0[4]")


# ---- runtime ----------------------------------------------------------------------------------


@entry("set_num_threads", names=frozenset({"n"}), ints=("arg0",))
def _set_num_threads(rng: np.random.Generator) -> Call:
    return Call("set_num_threads", (int(rng.integers(1, 5)),))


@entry("set_simd", names=frozenset({"path"}))
def _set_simd(rng: np.random.Generator) -> Call:
    return Call("set_simd", (str(rng.choice(["portable", "auto"])),))


def _no_arguments(name: str) -> Callable[[np.random.Generator], Call]:
    def build(rng: np.random.Generator) -> Call:
        return Call(name, ())

    return build


for _name in ("build_info", "get_num_threads", "scratch_stats", "reset_scratch_peak"):
    ENTRIES[_name] = Entry(_name, _no_arguments(_name))


@entry("lors_scratch_bytes", names=frozenset({"in_features", "out_features", "r", "in_features, out_features, r"}),
       ints=("arg0", "arg1", "arg2"))
def _lors_scratch_bytes(rng: np.random.Generator) -> Call:
    return Call("lors_scratch_bytes", (size(rng, 4096), size(rng, 4096), size(rng, 64)))


# ---- gemm -------------------------------------------------------------------------------------


def _check_matmul(call: Call, res: Any) -> None:
    a, b = call.args[0], call.args[1]
    close(res, ref.matmul(a, b, bool(call.kwargs.get("trans_a")), bool(call.kwargs.get("trans_b"))), "matmul")


@entry("matmul", check=_check_matmul, names=frozenset({"a", "b"}), flags=("trans_a", "trans_b"))
def _matmul(rng: np.random.Generator) -> Call:
    M, N, K = size(rng), size(rng), size(rng)
    ta, tb = bool(rng.integers(2)), bool(rng.integers(2))
    a = f32(rng, *((K, M) if ta else (M, K)))
    b = f32(rng, *((N, K) if tb else (K, N)))
    return Call("matmul", (a, b), {"trans_a": ta, "trans_b": tb})


def _check_gemm_into(call: Call, res: Any) -> None:
    _, outs = res
    c0, a, b = call.args
    ta, tb = bool(call.kwargs.get("trans_a")), bool(call.kwargs.get("trans_b"))
    alpha, beta = call.kwargs.get("alpha", 1.0), call.kwargs.get("beta", 0.0)
    prod = ref.matmul(a, b, ta, tb)
    want = np.asarray(c0, np.float64).copy()
    want[:, : prod.shape[1]] = beta * want[:, : prod.shape[1]] + alpha * prod
    close(outs["arg0"], want, "gemm_into")


@entry("gemm_into", check=_check_gemm_into, names=frozenset({"a", "b", "c", "alpha", "beta", "c, a", "c, b"}),
       flags=("trans_a", "trans_b", "packb", "naive"), scales=("alpha", "beta"))
def _gemm_into(rng: np.random.Generator) -> Call:
    M, N, K = size(rng), size(rng), size(rng)
    ta, tb, packb, naive = (bool(rng.integers(2)) for _ in range(4))
    a = f32(rng, *((K, M) if ta else (M, K)))
    b = f32(rng, *((N, K) if tb else (K, N)))
    c = f32(rng, M, N + int(rng.integers(0, 3)))
    kw: dict[str, Any] = {"trans_a": ta, "trans_b": tb, "packb": packb, "naive": naive, "beta": float(rng.choice([0.0, 0.5]))}
    if not naive:
        kw["alpha"] = float(rng.choice([1.0, -2.0]))
    return Call("gemm_into", (c, a, b), kw, outputs=frozenset({"arg0"}))


# ---- lors -------------------------------------------------------------------------------------


def _adapter(rng: np.random.Generator, out: int, inn: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r = size(rng, 9)
    W = f32(rng, out, inn)
    M = rng.random((out, inn)) < 0.5
    if rng.integers(2):
        M = M.astype(np.uint8)
    return W, M, f32(rng, r, inn), f32(rng, out, r)


LORS_NAMES = frozenset({"x", "gy", "W", "mask", "A", "B", "scale", "bias"})


def _check_lors_forward(call: Call, res: Any) -> None:
    x, W, M, A, B, s = call.args[:6]
    close(res, ref.lors_forward(x, W, M, A, B, s, call.kwargs.get("bias")), "lors_forward")


@entry("lors_forward", check=_check_lors_forward, names=LORS_NAMES, flags=("check_weights", "naive"), scales=("arg5",))
def _lors_forward(rng: np.random.Generator) -> Call:
    out, inn, N = size(rng), size(rng), size(rng)
    W, M, A, B = _adapter(rng, out, inn)
    kw: dict[str, Any] = {"naive": bool(rng.integers(2))}
    if rng.integers(2):
        kw["bias"] = f32(rng, out)
    return Call("lors_forward", (f32(rng, N, inn), W, M, A, B, float(rng.standard_normal())), kw)


def _check_lors_bi(call: Call, res: Any) -> None:
    gy, W, M, A, B, s = call.args[:6]
    close(res, ref.lors_backward_input(gy, W, M, A, B, s), "lors_backward_input")


@entry("lors_backward_input", check=_check_lors_bi, names=LORS_NAMES, flags=("check_weights", "naive"), scales=("arg5",))
def _lors_backward_input(rng: np.random.Generator) -> Call:
    out, inn, N = size(rng), size(rng), size(rng)
    W, M, A, B = _adapter(rng, out, inn)
    return Call("lors_backward_input", (f32(rng, N, out), W, M, A, B, float(rng.standard_normal())),
                {"naive": bool(rng.integers(2))})


def _check_lors_exact(call: Call, res: Any) -> None:
    gy, x, M, A, B, s = call.args[:6]
    for got, want, what in zip(res, ref.lors_grad_exact(gy, x, M, A, B, s), ("dA", "dB"), strict=True):
        close(got, want, f"lors_backward_exact {what}")


@entry("lors_backward_exact", check=_check_lors_exact, names=LORS_NAMES, flags=("check_finite", "naive"), scales=("arg5",))
def _lors_backward_exact(rng: np.random.Generator) -> Call:
    out, inn, N = size(rng), size(rng), size(rng)
    _, M, A, B = _adapter(rng, out, inn)
    return Call("lors_backward_exact", (f32(rng, N, out), f32(rng, N, inn), M, A, B, float(rng.standard_normal())),
                {"naive": bool(rng.integers(2))})


def _check_lors_lors(call: Call, res: Any) -> None:
    gy, x, A, B, s = call.args[:5]
    for got, want, what in zip(res, ref.lors_grad_lors(gy, x, A, B, s), ("dA", "dB"), strict=True):
        close(got, want, f"lors_backward_lors {what}")


@entry("lors_backward_lors", check=_check_lors_lors, names=LORS_NAMES, flags=("check_finite", "naive"), scales=("arg4",))
def _lors_backward_lors(rng: np.random.Generator) -> Call:
    out, inn, N = size(rng), size(rng), size(rng)
    _, _, A, B = _adapter(rng, out, inn)
    return Call("lors_backward_lors", (f32(rng, N, out), f32(rng, N, inn), A, B, float(rng.standard_normal())),
                {"naive": bool(rng.integers(2))})


def _check_lors_merge(call: Call, res: Any) -> None:
    W, M, A, B, s = call.args[:5]
    close(res, ref.lors_merged_weight(W, M, A, B, s), "lors_merge")


@entry("lors_merge", check=_check_lors_merge, names=LORS_NAMES, flags=("naive",), scales=("arg4",))
def _lors_merge(rng: np.random.Generator) -> Call:
    W, M, A, B = _adapter(rng, size(rng), size(rng))
    return Call("lors_merge", (W, M, A, B, float(rng.standard_normal())), {"naive": bool(rng.integers(2))})


# ---- weightnorm -------------------------------------------------------------------------------


def _wn_g(rng: np.random.Generator, v: np.ndarray, dim: int) -> np.ndarray:
    K = {0: v.shape[0], 1: v.shape[1], -1: 1}[dim]
    return f32(rng, K)


def _g_shaped(g: np.ndarray, dim: int) -> Any:
    return g.reshape(-1, 1) if dim == 0 else g.reshape(1, -1) if dim == 1 else g.reshape(())


def _check_wn_norms(call: Call, res: Any) -> None:
    v, dim = call.args
    close(res, ref.weightnorm_norms(v, None if dim == -1 else int(dim)).reshape(-1), "weightnorm_norms")


@entry("weightnorm_norms", check=_check_wn_norms, names=frozenset({"v", "dim"}), ints=("arg1",))
def _weightnorm_norms(rng: np.random.Generator) -> Call:
    return Call("weightnorm_norms", (f32(rng, size(rng), size(rng)), int(rng.choice([0, 1, -1]))))


def _check_wn_forward(call: Call, res: Any) -> None:
    v, g, dim = call.args[:3]
    result, outs = res if call.outputs else (res, {})
    got = outs.get("out", result)
    close(got, ref.weightnorm_forward(v, _g_shaped(g, int(dim)), None if dim == -1 else int(dim)), "weightnorm_forward")


@entry("weightnorm_forward", check=_check_wn_forward, names=frozenset({"v", "g", "dim", "out", "out, v", "out, g"}),
       ints=("arg2",), inplace_ok={"out": ("arg0",)})
def _weightnorm_forward(rng: np.random.Generator) -> Call:
    v = f32(rng, size(rng), size(rng))
    dim = int(rng.choice([0, 1, -1]))
    kw: dict[str, Any] = {}
    outputs: frozenset[str] = frozenset()
    if rng.integers(2):
        kw["out"] = np.zeros_like(v)
        outputs = frozenset({"out"})
    return Call("weightnorm_forward", (v, _wn_g(rng, v, dim), dim), kw, outputs=outputs)


def _check_wn_backward(call: Call, res: Any) -> None:
    gw, v, g, dim = call.args[:4]
    res, outs = res if call.outputs else (res, {})
    gv, gg = res
    want_v, want_g = ref.weightnorm_backward(gw, v, _g_shaped(g, int(dim)), None if dim == -1 else int(dim))
    close(outs.get("out", gv), want_v, "weightnorm_backward grad_v")
    close(gg, np.reshape(want_g, -1), "weightnorm_backward grad_g")


@entry("weightnorm_backward", check=_check_wn_backward,
       names=frozenset({"grad_w", "v", "g", "dim", "out", "out, v", "out, g", "out, grad_w"}), ints=("arg3",),
       inplace_ok={"out": ("arg0", "arg1")})
def _weightnorm_backward(rng: np.random.Generator) -> Call:
    v = f32(rng, size(rng), size(rng))
    dim = int(rng.choice([0, 1, -1]))
    kw: dict[str, Any] = {}
    outputs: frozenset[str] = frozenset()
    if rng.integers(2):
        kw["out"] = np.zeros_like(v)
        outputs = frozenset({"out"})
    return Call("weightnorm_backward", (f32(rng, *v.shape), v, _wn_g(rng, v, dim), dim), kw, outputs=outputs)


def _check_dora_f(call: Call, res: Any) -> None:
    close(res, ref.dora_rownorm_forward(*call.args), "dora_rownorm_forward")


@entry("dora_rownorm_forward", check=_check_dora_f, names=frozenset({"W", "mask", "A", "B", "scale"}), scales=("arg4",))
def _dora_f(rng: np.random.Generator) -> Call:
    W, M, A, B = _adapter(rng, size(rng), size(rng))
    return Call("dora_rownorm_forward", (W, M, A, B, float(rng.standard_normal())))


def _check_dora_b(call: Call, res: Any) -> None:
    for got, want, what in zip(res, ref.dora_rownorm_backward(*call.args), ("dA", "dB"), strict=True):
        close(got, want, f"dora_rownorm_backward {what}")


@entry("dora_rownorm_backward", check=_check_dora_b,
       names=frozenset({"grad_n", "n", "W", "mask", "A", "B", "scale"}), scales=("arg6",))
def _dora_b(rng: np.random.Generator) -> Call:
    W, M, A, B = _adapter(rng, size(rng), size(rng))
    s = float(rng.standard_normal())
    n = ref.dora_rownorm_forward(W, M, A, B, s).astype(F32)
    return Call("dora_rownorm_backward", (f32(rng, W.shape[0]), n, W, M, A, B, s))


# ---- sparse -----------------------------------------------------------------------------------


def _sparse_operands(rng: np.random.Generator, base: tuple) -> tuple[np.ndarray, np.ndarray]:
    r = size(rng, 9)
    return f32(rng, r, base[2]), f32(rng, base[1], r)


def _check_sparse_forward(call: Call, res: Any) -> None:
    base, x, A, B, s = call.args[:5]
    W, M = dense_of_base(base)
    close(res, ref.sparse_forward(W, M, x, A, B, s), "sparse_forward")


SPARSE_NAMES = BASE_NAMES | {"x", "gy", "A", "B", "scale", "N"}


@entry("sparse_forward", check=_check_sparse_forward, names=SPARSE_NAMES, flags=("naive",), scales=("arg4",),
       ints=BASE_INTS, sparse=True)
def _sparse_forward(rng: np.random.Generator) -> Call:
    base = random_base(rng)
    A, B = _sparse_operands(rng, base)
    return Call("sparse_forward", (base, f32(rng, size(rng, 70), base[2]), A, B, float(rng.standard_normal())),
                {"naive": bool(rng.integers(2))})


def _check_sparse_backward(call: Call, res: Any) -> None:
    base, gy, x, A, B, s = call.args[:6]
    W, M = dense_of_base(base)
    gx, dA, dB = res
    if call.kwargs.get("input_grad", True):
        close(gx, ref.sparse_backward_input(W, M, gy, A, B, s), "sparse_backward gx")
    if call.kwargs.get("weight_grad", True):
        want_a, want_b = ref.sparse_masked_grad(M, gy, x, A, B, s)
        close(dA, want_a, "sparse_backward dA")
        close(dB, want_b, "sparse_backward dB")


@entry("sparse_backward", check=_check_sparse_backward, names=SPARSE_NAMES,
       flags=("input_grad", "weight_grad", "naive"), scales=("arg5",), ints=BASE_INTS, sparse=True)
def _sparse_backward(rng: np.random.Generator) -> Call:
    base = random_base(rng)
    A, B = _sparse_operands(rng, base)
    N = size(rng, 70)
    kw = {"naive": bool(rng.integers(2)), "input_grad": bool(rng.integers(2)), "weight_grad": bool(rng.integers(2))}
    x = f32(rng, N, base[2]) if kw["weight_grad"] else None  # x is not read without weight_grad
    return Call("sparse_backward", (base, f32(rng, N, base[1]), x, A, B, float(rng.standard_normal())), kw)


def _check_sparse_merge(call: Call, res: Any) -> None:
    base, A, B, s = call.args[:4]
    W, M = dense_of_base(base)
    Wp = ref.lors_weight(W, M, A, B, s)
    want = dense_of_base((*base[:5], np.zeros_like(base[5]), *base[6:]))[0]  # shape only
    got = dense_of_base((*base[:5], res, *base[6:]))[0]
    close(got, np.where(M, Wp, want), "sparse_merge")


@entry("sparse_merge", check=_check_sparse_merge, names=SPARSE_NAMES, scales=("arg3",), ints=BASE_INTS, sparse=True)
def _sparse_merge(rng: np.random.Generator) -> Call:
    base = random_base(rng)
    A, B = _sparse_operands(rng, base)
    return Call("sparse_merge", (base, A, B, float(rng.standard_normal())))


def _check_sparse_plan(call: Call, res: Any) -> None:
    assert len(res) == 4 and min(res) > 0, f"sparse_plan: {res}"


@entry("sparse_plan", check=_check_sparse_plan, names=SPARSE_NAMES, ints=(*BASE_INTS, "arg1"), sparse=True)
def _sparse_plan(rng: np.random.Generator) -> Call:
    return Call("sparse_plan", (random_base(rng), int(rng.integers(0, 5000))))


@entry("sparse_check", names=SPARSE_NAMES, ints=BASE_INTS, sparse=True)
def _sparse_check(rng: np.random.Generator) -> Call:
    return Call("sparse_check", (random_base(rng),))


# ---- remat ------------------------------------------------------------------------------------


def random_dag(rng: np.random.Generator) -> dict[str, Any]:
    """A random DAG in topological order 0..n-1: memory, duration, predecessor and successor CSR."""
    n = size(rng, 12)
    preds = [sorted(set(rng.choice(i, int(rng.integers(0, min(i, 3) + 1)), replace=False).tolist())) if i else [] for i in range(n)]
    succs: list[list[int]] = [[] for _ in range(n)]
    for v, ps in enumerate(preds):
        for p in ps:
            succs[p].append(v)

    def csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        ptr = np.zeros(n + 1, np.int64)
        ptr[1:] = np.cumsum([len(x) for x in lists])
        return ptr, np.array([v for x in lists for v in x], np.int64)

    pp, pi = csr(preds)
    sp, si = csr(succs)
    return {
        "memory": rng.integers(0, 100, n).astype(np.int64),
        "duration": rng.integers(0, 10, n).astype(np.int64),
        "pred_ptr": pp,
        "pred_idx": pi,
        "succ_ptr": sp,
        "succ_idx": si,
        "preds": preds,
    }


REMAT_NAMES = frozenset({"steps", "memory", "duration", "pred_ptr", "pred_idx", "succ_ptr", "succ_idx", "order",
                         "seg_end", "budget", "mem_exp", "dist_exp", "n", "pred_ptr/pred_idx", "succ_ptr/succ_idx",
                         "memory/duration", "mem_exp/dist_exp", "once", "heuristic", "lookahead"})


def _check_remat_simulate(call: Call, res: Any) -> None:
    steps, memory, duration = call.args[:3]
    status, peak, dur = res[0], res[1], res[2]
    preds = [call.args[4][call.args[3][v] : call.args[3][v + 1]].tolist() for v in range(len(memory))]
    try:
        want_peak, want_dur, _ = ref.remat_simulate(steps.tolist(), memory.tolist(), duration.tolist(), preds)
    except ValueError:
        assert status != 0, "remat_simulate accepted a schedule the reference rejects"
        return
    assert status == 0 and (peak, dur) == (want_peak, want_dur), f"remat_simulate {res[:3]} != {(0, want_peak, want_dur)}"


@entry("remat_simulate", check=_check_remat_simulate, names=REMAT_NAMES, flags=("profile",))
def _remat_simulate(rng: np.random.Generator) -> Call:
    g = random_dag(rng)
    n = len(g["memory"])
    steps = np.arange(n, dtype=np.int64) if rng.integers(4) else rng.integers(-n - 1, n + 1, size(rng)).astype(np.int64)
    return Call("remat_simulate", (steps, g["memory"], g["duration"], g["pred_ptr"], g["pred_idx"]),
                {"profile": bool(rng.integers(2))})


@entry("remat_compact", names=REMAT_NAMES)
def _remat_compact(rng: np.random.Generator) -> Call:
    g = random_dag(rng)
    n = len(g["memory"])
    return Call("remat_compact", (np.arange(n, dtype=np.int64), g["pred_ptr"], g["pred_idx"], n))


def _check_remat_su_need(call: Call, res: Any) -> None:
    memory, pp, pi, order = call.args
    preds = [pi[pp[v] : pp[v + 1]].tolist() for v in range(len(memory))]
    want = ref.remat_su_need(memory.tolist(), preds, order.tolist())
    assert np.asarray(res).tolist() == want, f"remat_su_need {np.asarray(res).tolist()} != {want}"


@entry("remat_su_need", check=_check_remat_su_need, names=REMAT_NAMES)
def _remat_su_need(rng: np.random.Generator) -> Call:
    g = random_dag(rng)
    n = len(g["memory"])
    return Call("remat_su_need", (g["memory"], g["pred_ptr"], g["pred_idx"], np.arange(n, dtype=np.int64)))


@entry("remat_greedy", names=REMAT_NAMES)
def _remat_greedy(rng: np.random.Generator) -> Call:
    g = random_dag(rng)
    n = len(g["memory"])
    args = (g["memory"], g["duration"], g["pred_ptr"], g["pred_idx"], g["succ_ptr"], g["succ_idx"],
            np.arange(n, dtype=np.int64), int(rng.integers(0, 400)))
    return Call("remat_greedy", args)


@entry("remat_plan_stages", names=REMAT_NAMES)
def _remat_plan_stages(rng: np.random.Generator) -> Call:
    g = random_dag(rng)
    n = len(g["memory"])
    args = (g["memory"], g["duration"], g["pred_ptr"], g["pred_idx"], g["succ_ptr"], g["succ_idx"],
            np.arange(n, dtype=np.int64), None, int(rng.integers(0, 400)), 1.0, 1.0)
    return Call("remat_plan_stages", args)


def _check_remat_dtr(call: Call, res: Any) -> None:
    """A DTR schedule that the kernel returns is valid and within the budget (the reference simulator)."""
    status, steps = res[0], res[1]
    if status != 0 or steps is None:
        return
    memory, duration, pp, pi = call.args[0], call.args[1], call.args[2], call.args[3]
    preds = [pi[pp[v] : pp[v + 1]].tolist() for v in range(len(memory))]
    peak, _, _ = ref.remat_simulate(np.asarray(steps).tolist(), memory.tolist(), duration.tolist(), preds)
    assert peak <= call.args[8], f"remat_dtr: peak {peak} over budget {call.args[8]}"


@entry("remat_dtr", check=_check_remat_dtr, names=REMAT_NAMES, flags=("lookahead",))
def _remat_dtr(rng: np.random.Generator) -> Call:
    g = random_dag(rng)
    n = len(g["memory"])
    once = rng.integers(0, 2, n).astype(np.bool_) if rng.integers(2) else None
    args = (g["memory"], g["duration"], g["pred_ptr"], g["pred_idx"], g["succ_ptr"], g["succ_idx"],
            np.arange(n, dtype=np.int64), once, int(rng.integers(0, 400)))
    kw = {"heuristic": ["full", "eq"][int(rng.integers(2))], "lookahead": bool(rng.integers(2))}
    return Call("remat_dtr", args, kw)


# ---- nn ops -----------------------------------------------------------------------------------


def _rows(rng: np.random.Generator) -> tuple[int, int]:
    return size(rng), size(rng)


def _check_layernorm_f(call: Call, res: Any) -> None:
    x, w, b = call.args[:3]
    if x.shape[1] == 0:  # no columns: mean and rstd are undefined
        assert res[0].shape == x.shape and res[1].shape == res[2].shape == x.shape[:1], "layernorm_forward shapes"
        return
    for got, want, what in zip(res, ref.layernorm_forward(x, w, b, *call.args[3:]), ("y", "mean", "rstd"), strict=True):
        close(got, want, f"layernorm_forward {what}", tol=5e-3)


@entry("layernorm_forward", check=_check_layernorm_f, names=frozenset({"x", "w", "b", "eps"}), scales=("arg3",))
def _layernorm_f(rng: np.random.Generator) -> Call:
    N, C = _rows(rng)
    return Call("layernorm_forward", (f32(rng, N, C), f32(rng, C), f32(rng, C), float(rng.choice([1e-5, 0.5]))))


def _norm_stats(x: np.ndarray, rms: bool) -> tuple[np.ndarray, ...]:
    if rms:
        return (ref.rmsnorm_forward(x, np.ones(x.shape[1]))[1].astype(F32),)
    _, mean, rstd = ref.layernorm_forward(x, np.ones(x.shape[1]), np.zeros(x.shape[1]))
    return mean.astype(F32), rstd.astype(F32)


def _check_layernorm_b(call: Call, res: Any) -> None:
    for got, want, what in zip(res, ref.layernorm_backward(*call.args), ("dx", "dw", "db"), strict=True):
        close(got, want, f"layernorm_backward {what}", tol=5e-3)


@entry("layernorm_backward", check=_check_layernorm_b, names=frozenset({"dy", "x", "w", "mean", "rstd"}))
def _layernorm_b(rng: np.random.Generator) -> Call:
    N, C = _rows(rng)
    x = f32(rng, N, C)
    return Call("layernorm_backward", (f32(rng, N, C), x, f32(rng, C), *_norm_stats(x, False)))


def _check_rmsnorm_f(call: Call, res: Any) -> None:
    x = call.args[0]
    if x.shape[1] == 0:  # no columns: rstd is undefined
        assert res[0].shape == x.shape and res[1].shape == x.shape[:1], "rmsnorm_forward shapes"
        return
    for got, want, what in zip(res, ref.rmsnorm_forward(*call.args), ("y", "rstd"), strict=True):
        close(got, want, f"rmsnorm_forward {what}", tol=5e-3)


@entry("rmsnorm_forward", check=_check_rmsnorm_f, names=frozenset({"x", "w", "eps"}), scales=("arg2",))
def _rmsnorm_f(rng: np.random.Generator) -> Call:
    N, C = _rows(rng)
    return Call("rmsnorm_forward", (f32(rng, N, C), f32(rng, C), float(rng.choice([1e-6, 0.5]))))


def _check_rmsnorm_b(call: Call, res: Any) -> None:
    for got, want, what in zip(res, ref.rmsnorm_backward(*call.args), ("dx", "dw"), strict=True):
        close(got, want, f"rmsnorm_backward {what}", tol=5e-3)


@entry("rmsnorm_backward", check=_check_rmsnorm_b, names=frozenset({"dy", "x", "w", "rstd"}))
def _rmsnorm_b(rng: np.random.Generator) -> Call:
    N, C = _rows(rng)
    x = f32(rng, N, C)
    return Call("rmsnorm_backward", (f32(rng, N, C), x, f32(rng, C), *_norm_stats(x, True)))


def _any_shape(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(size(rng) for _ in range(int(rng.integers(0, 4))))


def _elementwise(name: str, args: tuple[str, ...], want: Callable[..., Any]) -> None:
    """An elementwise op of one-shape float32 arguments, checked against ``want``."""

    def check(call: Call, res: Any) -> None:
        got = res if isinstance(res, tuple) else (res,)
        exp = want(*call.args)
        for k, (g, w) in enumerate(zip(got, exp if isinstance(exp, tuple) else (exp,), strict=True)):
            close(g, w, f"{name} output {k}")

    def build(rng: np.random.Generator) -> Call:
        shape = _any_shape(rng)
        return Call(name, tuple(f32(rng, *shape) for _ in args))

    ENTRIES[name] = Entry(name, build, check, names=frozenset(args),
                          free_ndim=tuple(f"arg{i}" for i in range(len(args))) if len(args) == 1 else ())


_elementwise("gelu_forward", ("x",), ref.gelu_forward)
_elementwise("gelu_backward", ("dy", "x"), ref.gelu_backward)
_elementwise("swiglu_forward", ("gate", "up"), ref.swiglu_forward)
_elementwise("swiglu_backward", ("dy", "gate", "up"), ref.swiglu_backward)


def _check_rope(call: Call, res: Any) -> None:
    x, theta, offset = call.args
    close(res, ref.rope_forward(x, theta, offset, bool(call.kwargs["inverse"]), call.kwargs.get("inv_freq")), "rope")


@entry("rope", check=_check_rope, names=frozenset({"x", "theta", "offset", "inv_freq", "inverse"}),
       ints=("arg2",), flags=("inverse",), scales=("arg1",))
def _rope(rng: np.random.Generator) -> Call:
    B, T, H, D = size(rng, 4), size(rng), size(rng, 4), 2 * size(rng, 6)
    kw: dict[str, Any] = {"inverse": bool(rng.integers(2))}
    if rng.integers(2):
        kw["inv_freq"] = rng.random(D // 2).astype(F32)
    args = (f32(rng, B, T, H, D), float(rng.choice([10000.0, 500000.0])), int(rng.integers(0, 50)))
    return Call("rope", args, kw)


def _check_embedding_f(call: Call, res: Any) -> None:
    ids, wte = call.args
    close(res, np.asarray(wte, np.float64)[ids], "embedding_forward")


@entry("embedding_forward", check=_check_embedding_f, names=frozenset({"ids", "wte"}))
def _embedding_f(rng: np.random.Generator) -> Call:
    V, C = size(rng) + 1, size(rng)
    return Call("embedding_forward", (rng.integers(0, V, (size(rng, 5), size(rng))).astype(np.int64), f32(rng, V, C)))


def _check_embedding_b(call: Call, res: Any) -> None:
    dx, _, V = call.args
    if dx.shape[2] == 0:
        assert res.shape == (V, 0), f"embedding_backward: shape {res.shape}"
        return
    close(res, ref.embedding_backward(*call.args), "embedding_backward")


@entry("embedding_backward", check=_check_embedding_b, names=frozenset({"dx", "ids", "V"}), ints=("arg2",))
def _embedding_b(rng: np.random.Generator) -> Call:
    V, C, B, T = size(rng) + 1, size(rng), size(rng, 5), size(rng)
    return Call("embedding_backward", (f32(rng, B, T, C), rng.integers(0, V, (B, T)).astype(np.int64), V))


def _logits(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    N, K = size(rng), size(rng) + 1
    return f32(rng, N, K), rng.integers(0, K, N).astype(np.int64)


XENT_NAMES = frozenset({"logits", "targets", "lse", "dloss", "x", "w", "chunk", "grad", "need_dw"})


def _check_xent_f(call: Call, res: Any) -> None:
    loss, lse, _ = ref.softmax_xent(*call.args)
    if call.args[0].shape[0]:
        close(res[0], loss, "softmax_xent_forward loss")
    close(res[1], lse, "softmax_xent_forward lse")


@entry("softmax_xent_forward", check=_check_xent_f, names=XENT_NAMES)
def _xent_f(rng: np.random.Generator) -> Call:
    return Call("softmax_xent_forward", _logits(rng))


def _xent_grad(logits: np.ndarray, targets: np.ndarray, lse: np.ndarray, dloss: float) -> np.ndarray:
    """dloss / N * (exp(logits - lse) - onehot(targets)) with the lse given (the kernel's contract)."""
    L = np.asarray(logits, np.float64)
    P = np.exp(L - np.asarray(lse, np.float64)[:, None])
    P[np.arange(L.shape[0]), targets] -= 1.0
    return dloss * P / max(L.shape[0], 1)


def _check_xent_b(call: Call, res: Any) -> None:
    close(res, _xent_grad(*call.args), "softmax_xent_backward")


@entry("softmax_xent_backward", check=_check_xent_b, names=XENT_NAMES, scales=("arg3",))
def _xent_b(rng: np.random.Generator) -> Call:
    L, t = _logits(rng)
    lse = ref.softmax_xent(L, t)[1].astype(F32)
    return Call("softmax_xent_backward", (L, t, lse, float(rng.standard_normal())))


def _head(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    N, C, V = size(rng), size(rng), size(rng) + 1
    return f32(rng, N, C), f32(rng, V, C), rng.integers(0, V, N).astype(np.int64)


def _check_head_f(call: Call, res: Any) -> None:
    x, w, t = call.args[:3]
    loss, lse, dx, dw = ref.lm_head_xent(x, w, t)
    if x.shape[0]:
        close(res[0], loss, "lm_head_xent_forward loss")
    close(res[1], lse, "lm_head_xent_forward lse")
    if call.kwargs.get("grad"):
        close(res[2], dx, "lm_head_xent_forward dx")
        if call.kwargs.get("need_dw"):
            close(res[3], dw, "lm_head_xent_forward dw")


@entry("lm_head_xent_forward", check=_check_head_f, names=XENT_NAMES, ints=("chunk",), flags=("grad", "need_dw"))
def _head_f(rng: np.random.Generator) -> Call:
    kw = {"chunk": int(rng.integers(0, 6)), "grad": bool(rng.integers(2)), "need_dw": bool(rng.integers(2))}
    return Call("lm_head_xent_forward", _head(rng), kw)


def _check_head_b(call: Call, res: Any) -> None:
    x, w, t, lse = (np.asarray(a, np.float64) if a.dtype.kind == "f" else a for a in call.args)
    G = _xent_grad(x @ w.T, t, lse, call.kwargs["dloss"])
    close(res[0], G @ w, "lm_head_xent_backward dx")
    if call.kwargs.get("need_dw"):
        close(res[1], G.T @ x, "lm_head_xent_backward dw")


@entry("lm_head_xent_backward", check=_check_head_b, names=XENT_NAMES, ints=("chunk",), flags=("need_dw",),
       scales=("dloss",))
def _head_b(rng: np.random.Generator) -> Call:
    x, w, t = _head(rng)
    lse = ref.lm_head_xent(x, w, t)[1].astype(F32)
    kw = {"dloss": float(rng.standard_normal()), "need_dw": bool(rng.integers(2)), "chunk": int(rng.integers(0, 6))}
    return Call("lm_head_xent_backward", (x, w, t, lse), kw)


def _check_head_b_into(call: Call, res: Any) -> None:
    dx_got, outs = res
    dw0, x, w, t, lse = (np.asarray(a, np.float64) if a.dtype.kind == "f" else a for a in call.args)
    G = _xent_grad(x @ w.T, t, lse, call.kwargs["dloss"])
    close(dx_got, G @ w, "lm_head_xent_backward_into dx")
    close(outs["arg0"], dw0 + G.T @ x, "lm_head_xent_backward_into dw (accumulated)")


@entry("lm_head_xent_backward_into", check=_check_head_b_into, names=XENT_NAMES | {"dw"}, ints=("chunk",),
       scales=("dloss",))
def _head_b_into(rng: np.random.Generator) -> Call:
    x, w, t = _head(rng)
    lse = ref.lm_head_xent(x, w, t)[1].astype(F32)
    kw = {"dloss": float(rng.standard_normal()), "chunk": int(rng.integers(0, 6))}
    return Call("lm_head_xent_backward_into", (f32(rng, *w.shape), x, w, t, lse), kw, outputs=frozenset({"arg0"}))


def _check_adamw(call: Call, res: Any) -> None:
    _, outs = res
    want = ref.adamw_step(*call.args)
    for lab, w, what in zip(("arg0", "arg2", "arg3"), want, ("param", "m", "v"), strict=True):
        close(outs[lab], w, f"adamw_step {what}")


@entry("adamw_step", check=_check_adamw,
       names=frozenset({"param", "grad", "m", "v", "lr", "beta1", "beta2", "eps", "weight_decay", "step",
                        "param, grad", "param, m", "param, v", "grad, m", "grad, v", "m, v"}),
       ints=("arg9",), scales=("arg4", "arg5", "arg6", "arg7", "arg8"))
def _adamw(rng: np.random.Generator) -> Call:
    shape = _any_shape(rng)
    p, g, m = f32(rng, *shape), f32(rng, *shape), f32(rng, *shape)
    v = f32(rng, *shape)
    np.abs(v, out=v)  # a 0-d array stays an array
    args = (p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, float(rng.choice([0.0, 0.01])), int(rng.integers(1, 100)))
    return Call("adamw_step", args, outputs=frozenset({"arg0", "arg2", "arg3"}))


ATTN_NAMES = frozenset({"do", "q", "k", "v", "o", "lse", "causal", "scale"})


def _qkv(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    B, Hkv, g, T, D = size(rng, 3), int(rng.integers(1, 3)), int(rng.integers(1, 3)), size(rng), size(rng, 9)
    return f32(rng, B, Hkv * g, T, D), f32(rng, B, Hkv, T, D), f32(rng, B, Hkv, T, D)


def _attention_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, scale: float) -> tuple[np.ndarray, ...]:
    """(o, lse) of the reference, or zeros of their shapes when an axis is empty."""
    if q.size and k.size:
        return ref.attention_forward(q, k, v, causal, scale)
    return np.zeros(q.shape), np.zeros(q.shape[:3])


def _check_attn_f(call: Call, res: Any) -> None:
    q, k, v = call.args
    if not (q.size and k.size):
        assert res[0].shape == q.shape and res[1].shape == q.shape[:3], "attention_forward: output shapes"
        return
    o, lse = ref.attention_forward(q, k, v, bool(call.kwargs["causal"]), call.kwargs["scale"])
    close(res[0], o, "attention_forward o")
    close(res[1], lse, "attention_forward lse")


@entry("attention_forward", check=_check_attn_f, names=ATTN_NAMES, flags=("causal",), scales=("scale",))
def _attn_f(rng: np.random.Generator) -> Call:
    q, k, v = _qkv(rng)
    return Call("attention_forward", (q, k, v), {"causal": bool(rng.integers(2)), "scale": float(rng.choice([0.5, -0.3]))})


def _attention_grads(do: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, o: np.ndarray, lse: np.ndarray,
                     causal: bool, scale: float) -> tuple[np.ndarray, ...]:
    """(dq, dk, dv) from the given o and lse as the backward's contract states (FlashAttention-2:
    P = exp(S - lse), dS = P (do v^T - rowsum(do o))), in float64 with the T x T matrices whole."""
    do, q, k, v, o, lse = (np.asarray(a, np.float64) for a in (do, q, k, v, o, lse))
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    g = H // Hkv
    kk, vv = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    S = scale * q @ kk.transpose(0, 1, 3, 2)
    P = np.exp(S - lse[..., None])
    if causal:
        P = np.where(np.tril(np.ones((T, T), bool)), P, 0.0)
    dS = P * (do @ vv.transpose(0, 1, 3, 2) - (do * o).sum(-1, keepdims=True))
    dk = (scale * dS.transpose(0, 1, 3, 2) @ q).reshape(B, Hkv, g, T, D).sum(2)
    dv = (P.transpose(0, 1, 3, 2) @ do).reshape(B, Hkv, g, T, D).sum(2)
    return scale * dS @ kk, dk, dv


def _check_attn_b(call: Call, res: Any) -> None:
    q, k, v = call.args[1:4]
    if not (q.size and k.size):
        assert [r.shape for r in res] == [q.shape, k.shape, v.shape], "attention_backward: output shapes"
        return
    want = _attention_grads(*call.args, bool(call.kwargs["causal"]), call.kwargs["scale"])
    for got, w, what in zip(res, want, ("dq", "dk", "dv"), strict=True):
        close(got, w, f"attention_backward {what}")


@entry("attention_backward", check=_check_attn_b, names=ATTN_NAMES, flags=("causal",), scales=("scale",))
def _attn_b(rng: np.random.Generator) -> Call:
    q, k, v = _qkv(rng)
    causal, scale = bool(rng.integers(2)), float(rng.choice([0.5, -0.3]))
    o, lse = (a.astype(F32) for a in _attention_reference(q, k, v, causal, scale))
    return Call("attention_backward", (f32(rng, *q.shape), q, k, v, o, lse), {"causal": causal, "scale": scale})


# ---- rws --------------------------------------------------------------------------------------


def _check_rws_extract(call: Call, res: Any) -> None:
    sig, dr, dd = ref.rws_extract(*call.args)
    close(res[0], sig, "rws_extract signature")
    close(np.array([res[1], res[2]]), np.array([dr, dd]), "rws_extract dots")


@entry("rws_extract", check=_check_rws_extract, names=frozenset({"pre", "clean", "robust"}), flags=("naive",),
       free_ndim=("arg0", "arg1", "arg2"))
def _rws_extract(rng: np.random.Generator) -> Call:
    shape = _any_shape(rng)
    return Call("rws_extract", tuple(f32(rng, *shape) for _ in range(3)), {"naive": bool(rng.integers(2))})


RWS_NAMES = frozenset({"x", "codes", "params", "n", "group", "bits", "scheme", "w", "source", "alpha", "mask",
                       "index", "w, source", "w, codes", "w, params", "w, mask", "w, index", "w, bits"})


def _packed(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    from sparseft import _core

    group, bits, scheme = int(rng.integers(1, 9)), int(rng.choice([1, 2, 4, 8])), int(rng.integers(2))
    codes, params, _ = _core.rws_quantize(f32(rng, max(n, 1))[:n] if n else f32(rng, 1), group, bits, scheme)
    if n == 0:
        codes, params = codes[:0], params[:0]
    return codes, params, group, bits, scheme


def _check_rws_quantize(call: Call, res: Any) -> None:
    x, group, bits, scheme = call.args
    codes, params, stats = res
    got = ref.rws_dequantize(codes, params, x.size, group, bits, ("linear", "log")[scheme])
    err = got - np.asarray(x, np.float64).ravel()
    close(np.array([stats[0], stats[1]]), np.array([err @ err, np.abs(err).max()]), "rws_quantize stats")


@entry("rws_quantize", check=_check_rws_quantize, names=RWS_NAMES, ints=("arg1", "arg2", "arg3"), free_ndim=("arg0",))
def _rws_quantize(rng: np.random.Generator) -> Call:
    n = size(rng, 40) + 1
    return Call("rws_quantize", (f32(rng, n), int(rng.integers(1, 9)), int(rng.choice([1, 2, 4, 8])), int(rng.integers(2))))


def _check_rws_dequantize(call: Call, res: Any) -> None:
    codes, params, n, group, bits, scheme = call.args
    close(res, ref.rws_dequantize(codes, params, n, group, bits, ("linear", "log")[scheme]), "rws_dequantize")


@entry("rws_dequantize", check=_check_rws_dequantize, names=RWS_NAMES, ints=("arg2", "arg3", "arg4", "arg5"))
def _rws_dequantize(rng: np.random.Generator) -> Call:
    n = size(rng, 40)
    codes, params, group, bits, scheme = _packed(rng, n)
    return Call("rws_dequantize", (codes, params, n, group, bits, scheme))


def _source(rng: np.random.Generator, n: int) -> Any:
    return _packed(rng, n) if rng.integers(2) else f32(rng, n)


def _dense_source(src: Any, n: int) -> np.ndarray:
    if isinstance(src, tuple):
        codes, params, group, bits, scheme = src
        return ref.rws_dequantize(codes, params, n, group, bits, ("linear", "log")[scheme])
    return np.asarray(src, np.float64).ravel()


PATCH_ALPHAS = (0.375, -1.25)  # none of them is one of mutate.GOOD_REALS, so a changed alpha is seen


def _check_rws_patch(call: Call, res: Any) -> None:
    w, src, alpha = call.args
    (index, _, nonfinite), outs = res
    mask = call.kwargs.get("mask")
    want = ref.rws_patch(w.ravel(), _dense_source(src, w.size), alpha, None if mask is None else mask.ravel().astype(bool))
    close(outs["arg0"].ravel(), want, "rws_patch w")
    assert np.all(np.diff(index) > 0) and nonfinite == 0, f"rws_patch record {index}, {nonfinite}"


@entry("rws_patch", check=_check_rws_patch, names=RWS_NAMES, scales=("arg2",), ints=("arg1[2]", "arg1[3]", "arg1[4]"),
       free_ndim=("arg0", "arg1", "mask"), dtypes={"arg0": ("float16", "uint16")})
def _rws_patch(rng: np.random.Generator) -> Call:
    shape = _any_shape(rng)
    n = int(np.prod(shape))
    kw: dict[str, Any] = {}
    if rng.integers(2):
        kw["mask"] = np.asarray(rng.random(shape) < 0.5)
    src = _source(rng, n)
    if isinstance(src, np.ndarray):
        src = src.reshape(shape)
    return Call("rws_patch", (f32(rng, *shape), src, float(rng.choice(PATCH_ALPHAS))), kw, outputs=frozenset({"arg0"}))


def _check_rws_unpatch(call: Call, res: Any) -> None:
    """Patching the restored w again must give the patched w bit for bit (and the same record)."""
    from sparseft import _core

    _, outs = res
    if float(call.args[2]) not in PATCH_ALPHAS:
        return  # undone with another alpha than its patch's: only the contract (no crash) holds
    w = outs["arg0"].copy()
    index, _, _ = _core.rws_patch(w, *call.args[1:3], **call.kwargs)
    assert w.tobytes() == call.args[0].tobytes(), "rws_unpatch: re-patching the restored w differs"
    np.testing.assert_array_equal(index, call.args[3], "rws_unpatch: another record")


@entry("rws_unpatch", check=_check_rws_unpatch, names=RWS_NAMES, scales=("arg2",),
       free_ndim=("arg0", "arg1", "mask"), dtypes={"arg0": ("float16", "uint16")})
def _rws_unpatch(rng: np.random.Generator) -> Call:
    from sparseft import _core

    call = _rws_patch(rng)
    w = call.args[0].copy()
    index, bits, _ = _core.rws_patch(w, *call.args[1:], **call.kwargs)
    return Call("rws_unpatch", (w, call.args[1], call.args[2], index, bits), call.kwargs, outputs=frozenset({"arg0"}))
