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
) -> tuple[
    npt.NDArray[np.float32] | None, npt.NDArray[np.float32] | None, npt.NDArray[np.float32] | None
]: ...
def sparse_merge(
    base: tuple[Any, ...],
    A: npt.NDArray[np.float32],
    B: npt.NDArray[np.float32],
    scale: float,
) -> npt.NDArray[np.float32]: ...
def sparse_plan(base: tuple[Any, ...], N: int, /) -> tuple[int, int, int, int]: ...

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
) -> tuple[int, npt.NDArray[np.int64] | None, int, int]: ...
