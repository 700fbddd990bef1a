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
def sparse_token_block(base: tuple[Any, ...], backward: bool, /) -> int: ...
