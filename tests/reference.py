"""Float64 NumPy twins of every C kernel (the "slow" references the tests compare against).

Each function here is written independently of the C code, from the math in DESIGN.md, and
computes in float64. Keep one block per area, marked ``# ---- area ----``.
"""

from __future__ import annotations

import numpy as np

# ---- gemm ----


def matmul(a: np.ndarray, b: np.ndarray, trans_a: bool = False, trans_b: bool = False) -> np.ndarray:
    """op(a) @ op(b) in float64."""
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    return (a64.T if trans_a else a64) @ (b64.T if trans_b else b64)


# ---- lors ----


def lors_merged_weight(W: np.ndarray, mask: np.ndarray, A: np.ndarray, B: np.ndarray, s: float) -> np.ndarray:
    """W' = W + s·(B A) ⊙ M in float64."""
    f = np.float64
    return np.asarray(W, f) + s * (np.asarray(B, f) @ np.asarray(A, f)) * np.asarray(mask, bool)


def lors_forward(
    x: np.ndarray,
    W: np.ndarray,
    mask: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    s: float,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """y = x W'ᵀ (+ bias) in float64."""
    y = np.asarray(x, np.float64) @ lors_merged_weight(W, mask, A, B, s).T
    return y if bias is None else y + np.asarray(bias, np.float64)


def lors_backward_input(
    gy: np.ndarray, W: np.ndarray, mask: np.ndarray, A: np.ndarray, B: np.ndarray, s: float
) -> np.ndarray:
    """gx = gy W' in float64."""
    return np.asarray(gy, np.float64) @ lors_merged_weight(W, mask, A, B, s)


def lors_grad_exact(
    gy: np.ndarray, x: np.ndarray, mask: np.ndarray, A: np.ndarray, B: np.ndarray, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """(dA, dB) of the masked adapter: G = gyᵀx, dA = s·Bᵀ(G ⊙ M), dB = s·(G ⊙ M) Aᵀ (float64)."""
    G = (np.asarray(gy, np.float64).T @ np.asarray(x, np.float64)) * np.asarray(mask, bool)
    return s * np.asarray(B, np.float64).T @ G, s * G @ np.asarray(A, np.float64).T


def lors_grad_lors(
    gy: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """(dA, dB) of the paper's rearranged gradient: dA = s·(gy B)ᵀ x, dB = s·gyᵀ(x Aᵀ) (float64)."""
    gy64, x64 = np.asarray(gy, np.float64), np.asarray(x, np.float64)
    dA = s * (gy64 @ np.asarray(B, np.float64)).T @ x64
    dB = s * gy64.T @ (x64 @ np.asarray(A, np.float64).T)
    return dA, dB
