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


# ---- sparse ----


def lors_weight(W: np.ndarray, mask: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
    """W' = W + scale·(B A) ⊙ M in float64."""
    W64 = np.asarray(W, np.float64) * mask
    return W64 + scale * (np.asarray(B, np.float64) @ np.asarray(A, np.float64)) * mask


def sparse_forward(
    W: np.ndarray, mask: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
) -> np.ndarray:
    """y = x W'^T in float64."""
    return np.asarray(x, np.float64) @ lors_weight(W, mask, A, B, scale).T


def sparse_backward_input(
    W: np.ndarray, mask: np.ndarray, gy: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
) -> np.ndarray:
    """gx = gy W' in float64."""
    return np.asarray(gy, np.float64) @ lors_weight(W, mask, A, B, scale)


def sparse_masked_grad(
    mask: np.ndarray, gy: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """(dA, dB) = (s·B^T (G ⊙ M), s·(G ⊙ M) A^T) with G = gy^T x, in float64."""
    G = (np.asarray(gy, np.float64).T @ np.asarray(x, np.float64)) * mask
    return scale * np.asarray(B, np.float64).T @ G, scale * G @ np.asarray(A, np.float64).T


def prune_magnitude(W: np.ndarray, sparsity: float, scope: str = "row") -> np.ndarray:
    """Keep the largest |W| (ties: lower index pruned first) with Python sorting, row by row or globally."""
    W = np.asarray(W, np.float64)
    rows = [W.ravel()] if scope == "global" else list(W)
    out = []
    for row in rows:
        n_prune = round(sparsity * row.size)
        order = sorted(range(row.size), key=lambda j: (abs(row[j]), j))
        keep = np.ones(row.size, bool)
        keep[order[:n_prune]] = False
        out.append(keep)
    return np.array(out).reshape(W.shape)


def prune_nm_scores(score: np.ndarray, n: int, m: int) -> np.ndarray:
    """In every group of m consecutive columns keep the n highest scores (ties: lower column pruned)."""
    score = np.asarray(score, np.float64)
    keep = np.zeros(score.shape, bool)
    for i in range(score.shape[0]):
        for g in range(0, score.shape[1], m):
            order = sorted(range(g, g + m), key=lambda j: (score[i, j], j))
            keep[i, order[m - n :]] = True
    return keep


def prune_wanda(
    W: np.ndarray, X: np.ndarray, sparsity: float, nm: tuple[int, int] | None = None
) -> np.ndarray:
    """Wanda: score |W_ij|·||X_:j||, per row (or N:M groups)."""
    score = np.abs(np.asarray(W, np.float64)) * np.linalg.norm(np.asarray(X, np.float64), axis=0)[None, :]
    if nm is not None:
        return prune_nm_scores(score, *nm)
    keep = np.zeros(score.shape, bool)
    for i, row in enumerate(score):
        order = sorted(range(row.size), key=lambda j: (row[j], j))
        keep[i, order[round(sparsity * row.size) :]] = True
    return keep
