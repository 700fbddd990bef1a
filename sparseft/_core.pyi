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
def matmul(
    a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], trans_a: bool = ..., trans_b: bool = ...
) -> npt.NDArray[np.float32]: ...

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
