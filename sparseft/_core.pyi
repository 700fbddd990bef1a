"""Type stub of the C extension sparseft._core (checked by mypy.stubtest in the tests)."""

from typing import Any

import numpy as np
import numpy.typing as npt

def build_info() -> dict[str, Any]: ...
def set_num_threads(n: int, /) -> None: ...
def get_num_threads() -> int: ...
def set_simd(path: str, /) -> None: ...
def scratch_stats() -> dict[str, int]: ...
def reset_scratch_peak() -> None: ...
def gemm_into(
    c: npt.NDArray[np.float32],
    a: npt.NDArray[np.float32],
    b: npt.NDArray[np.float32],
    trans_a: bool = ...,
    trans_b: bool = ...,
    alpha: float = ...,
    beta: float = ...,
    packb: bool = ...,
    naive: bool = ...,
) -> None: ...
def matmul(
    a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], trans_a: bool = ..., trans_b: bool = ...
) -> npt.NDArray[np.float32]: ...

# ---- lors ----
def lors_forward(
    x: npt.NDArray[np.float32],
    W: npt.NDArray[np.float32],
    mask: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    A: npt.NDArray[np.float32],
    B: npt.NDArray[np.float32],
    scale: float,
    bias: npt.NDArray[np.float32] | None = ...,
    check_weights: bool = ...,
    naive: bool = ...,
) -> npt.NDArray[np.float32]: ...
def lors_backward_input(
    gy: npt.NDArray[np.float32],
    W: npt.NDArray[np.float32],
    mask: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    A: npt.NDArray[np.float32],
    B: npt.NDArray[np.float32],
    scale: float,
    check_weights: bool = ...,
    naive: bool = ...,
) -> npt.NDArray[np.float32]: ...
def lors_backward_exact(
    gy: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32],
    mask: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    A: npt.NDArray[np.float32],
    B: npt.NDArray[np.float32],
    scale: float,
    check_finite: bool = ...,
    naive: bool = ...,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def lors_backward_lors(
    gy: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32],
    A: npt.NDArray[np.float32],
    B: npt.NDArray[np.float32],
    scale: float,
    check_finite: bool = ...,
    naive: bool = ...,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def lors_merge(
    W: npt.NDArray[np.float32],
    mask: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    A: npt.NDArray[np.float32],
    B: npt.NDArray[np.float32],
    scale: float,
    naive: bool = ...,
) -> npt.NDArray[np.float32]: ...
def lors_scratch_bytes(in_features: int, out_features: int, r: int, /) -> int: ...

# ---- weightnorm ----
def weightnorm_norms(v: npt.NDArray[np.float32], dim: int, /) -> npt.NDArray[np.float32]: ...
def weightnorm_forward(
    v: npt.NDArray[np.float32],
    g: npt.NDArray[np.float32],
    dim: int,
    out: npt.NDArray[np.float32] | None = ...,
) -> npt.NDArray[np.float32]: ...
def weightnorm_backward(
    grad_w: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32],
    g: npt.NDArray[np.float32],
    dim: int,
    out: npt.NDArray[np.float32] | None = ...,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def dora_rownorm_forward(
    W: npt.NDArray[np.float32],
    mask: npt.NDArray[np.bool_] | npt.NDArray[np.uint8],
    A: npt.NDArray[np.float32],
    B: npt.NDArray[np.float32],
    scale: float,
    /,
) -> npt.NDArray[np.float32]: ...
def dora_rownorm_backward(
    grad_n: npt.NDArray[np.float32],
    n: npt.NDArray[np.float32],
    W: npt.NDArray[np.float32],
    mask: npt.NDArray[np.bool_] | npt.NDArray[np.uint8],
    A: npt.NDArray[np.float32],
    B: npt.NDArray[np.float32],
    scale: float,
    /,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...

# ---- remat ----
def remat_simulate(
    steps: npt.NDArray[np.int64],
    memory: npt.NDArray[np.int64],
    duration: npt.NDArray[np.int64],
    pred_ptr: npt.NDArray[np.int64],
    pred_idx: npt.NDArray[np.int64],
    profile: bool = ...,
) -> tuple[int, int, int, int, int, npt.NDArray[np.int64] | None]: ...
def remat_compact(
    steps: npt.NDArray[np.int64], pred_ptr: npt.NDArray[np.int64], pred_idx: npt.NDArray[np.int64], n: int
) -> npt.NDArray[np.int64]: ...
def remat_su_need(
    memory: npt.NDArray[np.int64],
    pred_ptr: npt.NDArray[np.int64],
    pred_idx: npt.NDArray[np.int64],
    order: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]: ...
def remat_plan_stages(
    memory: npt.NDArray[np.int64],
    duration: npt.NDArray[np.int64],
    pred_ptr: npt.NDArray[np.int64],
    pred_idx: npt.NDArray[np.int64],
    succ_ptr: npt.NDArray[np.int64],
    succ_idx: npt.NDArray[np.int64],
    order: npt.NDArray[np.int64],
    seg_end: npt.NDArray[np.int64] | None,
    budget: int,
    mem_exp: float,
    dist_exp: float,
) -> tuple[int, npt.NDArray[np.int64] | None, int, int]: ...
def remat_greedy(
    memory: npt.NDArray[np.int64],
    duration: npt.NDArray[np.int64],
    pred_ptr: npt.NDArray[np.int64],
    pred_idx: npt.NDArray[np.int64],
    succ_ptr: npt.NDArray[np.int64],
    succ_idx: npt.NDArray[np.int64],
    order: npt.NDArray[np.int64],
    budget: int,
) -> tuple[int, npt.NDArray[np.int64] | None, int, int]: ...

# ---- sparse ----
def sparse_forward(
    base: tuple[Any, ...],
    x: npt.NDArray[np.float32],
    A: npt.NDArray[np.float32],
    B: npt.NDArray[np.float32],
    scale: float,
    naive: bool = ...,
    trusted: bool = ...,
) -> npt.NDArray[np.float32]: ...
def sparse_backward(
    base: tuple[Any, ...],
    gy: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32] | None,
    A: npt.NDArray[np.float32],
    B: npt.NDArray[np.float32],
    scale: float,
    input_grad: bool = ...,
    weight_grad: bool = ...,
    naive: bool = ...,
    trusted: bool = ...,
) -> tuple[
    npt.NDArray[np.float32] | None, npt.NDArray[np.float32] | None, npt.NDArray[np.float32] | None
]: ...
def sparse_merge(
    base: tuple[Any, ...],
    A: npt.NDArray[np.float32],
    B: npt.NDArray[np.float32],
    scale: float,
    trusted: bool = ...,
) -> npt.NDArray[np.float32]: ...
def sparse_plan(base: tuple[Any, ...], N: int, /, *, trusted: bool = ...) -> tuple[int, int, int, int]: ...

# ---- sparse: checked once ----
def sparse_check(base: tuple[Any, ...], /) -> None: ...

# ---- rws ----
def rws_extract(
    pre: npt.NDArray[np.float32],
    clean: npt.NDArray[np.float32],
    robust: npt.NDArray[np.float32],
    naive: bool = ...,
) -> tuple[npt.NDArray[np.float32], float, float]: ...
def rws_quantize(
    x: npt.NDArray[np.float32], group: int, bits: int, scheme: int, /
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], tuple[float, float, float]]: ...
def rws_dequantize(
    codes: npt.NDArray[np.uint8], params: npt.NDArray[np.float32], n: int, group: int, bits: int, scheme: int, /
) -> npt.NDArray[np.float32]: ...
def rws_patch(
    w: npt.NDArray[Any],
    source: npt.NDArray[np.float32] | tuple[Any, ...],
    alpha: float,
    mask: npt.NDArray[Any] | None = ...,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32], int]: ...
def rws_unpatch(
    w: npt.NDArray[Any],
    source: npt.NDArray[np.float32] | tuple[Any, ...],
    alpha: float,
    index: npt.NDArray[np.int64],
    bits: npt.NDArray[np.uint32],
    mask: npt.NDArray[Any] | None = ...,
) -> None: ...

# ---- nn ops ----
def layernorm_forward(
    x: npt.NDArray[np.float32],
    w: npt.NDArray[np.float32],
    b: npt.NDArray[np.float32],
    eps: float = ...,
    out: npt.NDArray[np.float32] | None = ...,
    /,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def layernorm_backward(
    dy: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32],
    w: npt.NDArray[np.float32],
    mean: npt.NDArray[np.float32],
    rstd: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32] | None = ...,
    /,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def rmsnorm_forward(
    x: npt.NDArray[np.float32], w: npt.NDArray[np.float32], eps: float = ..., out: npt.NDArray[np.float32] | None = ..., /
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def rmsnorm_backward(
    dy: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32],
    w: npt.NDArray[np.float32],
    rstd: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32] | None = ...,
    /,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def gelu_forward(
    x: npt.NDArray[np.float32], out: npt.NDArray[np.float32] | None = ..., /
) -> npt.NDArray[np.float32]: ...
def gelu_backward(
    dy: npt.NDArray[np.float32], x: npt.NDArray[np.float32], out: npt.NDArray[np.float32] | None = ..., /
) -> npt.NDArray[np.float32]: ...
def swiglu_forward(
    gate: npt.NDArray[np.float32], up: npt.NDArray[np.float32], out: npt.NDArray[np.float32] | None = ..., /
) -> npt.NDArray[np.float32]: ...
def swiglu_backward(
    dy: npt.NDArray[np.float32],
    gate: npt.NDArray[np.float32],
    up: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32] | None = ...,
    out2: npt.NDArray[np.float32] | None = ...,
    /,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def rope(
    x: npt.NDArray[np.float32],
    theta: float = ...,
    offset: int = ...,
    inverse: bool = ...,
    inv_freq: npt.NDArray[np.float32] | None = ...,
    out: npt.NDArray[np.float32] | None = ...,
) -> npt.NDArray[np.float32]: ...
def embedding_forward(ids: npt.NDArray[np.int64], wte: npt.NDArray[np.float32], /) -> npt.NDArray[np.float32]: ...
def embedding_backward(
    dx: npt.NDArray[np.float32], ids: npt.NDArray[np.int64], V: int, /
) -> npt.NDArray[np.float32]: ...
def softmax_xent_forward(
    logits: npt.NDArray[np.float32], targets: npt.NDArray[np.int64], /
) -> tuple[float, npt.NDArray[np.float32]]: ...
def softmax_xent_backward(
    logits: npt.NDArray[np.float32],
    targets: npt.NDArray[np.int64],
    lse: npt.NDArray[np.float32],
    dloss: float = ...,
    /,
) -> npt.NDArray[np.float32]: ...
def lm_head_xent_forward(
    x: npt.NDArray[np.float32],
    w: npt.NDArray[np.float32],
    targets: npt.NDArray[np.int64],
    chunk: int = ...,
    grad: bool = ...,
    need_dw: bool = ...,
) -> tuple[Any, ...]: ...
def lm_head_xent_backward(
    x: npt.NDArray[np.float32],
    w: npt.NDArray[np.float32],
    targets: npt.NDArray[np.int64],
    lse: npt.NDArray[np.float32],
    dloss: float = ...,
    need_dw: bool = ...,
    chunk: int = ...,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]: ...
def lm_head_xent_backward_into(
    dw: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32],
    w: npt.NDArray[np.float32],
    targets: npt.NDArray[np.int64],
    lse: npt.NDArray[np.float32],
    dloss: float = ...,
    chunk: int = ...,
) -> npt.NDArray[np.float32]: ...
def adamw_step(
    param: npt.NDArray[np.float32],
    grad: npt.NDArray[np.float32],
    m: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    /,
) -> None: ...
def attention_forward(
    q: npt.NDArray[np.float32],
    k: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32],
    causal: bool,
    scale: float,
    layout: str | None = "bhtd",
    out: npt.NDArray[np.float32] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def attention_backward(
    do: npt.NDArray[np.float32],
    q: npt.NDArray[np.float32],
    k: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32],
    o: npt.NDArray[np.float32],
    lse: npt.NDArray[np.float32],
    causal: bool,
    scale: float,
    layout: str | None = "bhtd",
    dq: npt.NDArray[np.float32] | None = None,
    dk: npt.NDArray[np.float32] | None = None,
    dv: npt.NDArray[np.float32] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...

# ---- planner: DTR ----
def remat_dtr(
    memory: npt.NDArray[np.int64],
    duration: npt.NDArray[np.int64],
    pred_ptr: npt.NDArray[np.int64],
    pred_idx: npt.NDArray[np.int64],
    succ_ptr: npt.NDArray[np.int64],
    succ_idx: npt.NDArray[np.int64],
    order: npt.NDArray[np.int64],
    once: npt.NDArray[np.bool_] | None,
    budget: int,
    heuristic: str = ...,
    lookahead: bool = ...,
    keep: npt.NDArray[np.bool_] | None = ...,
    max_computes: int = ...,
    time_limit: float = ...,
) -> tuple[int, npt.NDArray[np.int64] | None, int, int]: ...
