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


# ---- weightnorm ----


def _wn_axis(dim: int | None) -> int | None:
    """numpy axis summed over for torch's dim: dim 0 -> per row (sum over axis 1), 1 -> per column."""
    return None if dim is None else 1 - dim


def weightnorm_norms(v: np.ndarray, dim: int | None) -> np.ndarray:
    """Norms of v in float64 with torch's g shape: (out, 1), (1, in) or ()."""
    v64 = np.asarray(v, dtype=np.float64)
    return np.sqrt((v64 * v64).sum(axis=_wn_axis(dim), keepdims=dim is not None))


def weightnorm_forward(v: np.ndarray, g: np.ndarray, dim: int | None) -> np.ndarray:
    """w = g * v / ||v|| in float64; a zero-norm slice gives 0."""
    v64 = np.asarray(v, dtype=np.float64)
    n = weightnorm_norms(v64, dim)
    coef = np.divide(np.asarray(g, dtype=np.float64), n, out=np.zeros(np.shape(n)), where=n > 0)
    return coef * v64


def weightnorm_backward(
    grad_w: np.ndarray, v: np.ndarray, g: np.ndarray, dim: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(grad_v, grad_g) of w = g * v / ||v|| in float64; zero-norm slices give 0."""
    v64 = np.asarray(v, dtype=np.float64)
    gw = np.asarray(grad_w, dtype=np.float64)
    g64 = np.asarray(g, dtype=np.float64)
    n = weightnorm_norms(v64, dim)
    dot = (gw * v64).sum(axis=_wn_axis(dim), keepdims=dim is not None)
    safe = np.where(n > 0, n, 1.0)
    grad_g = np.where(n > 0, dot / safe, 0.0)
    a = np.where(n > 0, g64 / safe, 0.0)
    b = np.where(n > 0, g64 * grad_g / safe**2, 0.0)
    return a * gw - b * v64, grad_g


def weightnorm_data_init(
    v: np.ndarray, x: np.ndarray, init_scale: float = 1.0, eps: float = 1e-10
) -> tuple[np.ndarray, np.ndarray]:
    """Salimans & Kingma data-dependent init in float64: g (out, 1), b (out,)."""
    v64 = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v64, axis=1)
    t = np.asarray(x, dtype=np.float64) @ v64.T
    t = t / np.where(n > 0, n, np.inf)
    g = init_scale / np.sqrt(t.var(axis=0) + eps)
    return g[:, None], -t.mean(axis=0) * g


def dora_merged(W: np.ndarray, mask: np.ndarray, A: np.ndarray, B: np.ndarray, s: float) -> np.ndarray:
    """W' = W + s * (B A) * M in float64."""
    M = np.asarray(mask, dtype=np.float64)
    return np.asarray(W, np.float64) + s * (np.asarray(B, np.float64) @ np.asarray(A, np.float64)) * M


def dora_rownorm_forward(
    W: np.ndarray, mask: np.ndarray, A: np.ndarray, B: np.ndarray, s: float
) -> np.ndarray:
    """Row norms of W' (float64, shape (out,))."""
    return np.linalg.norm(dora_merged(W, mask, A, B, s), axis=1)


def dora_rownorm_backward(
    grad_n: np.ndarray, n: np.ndarray, W: np.ndarray, mask: np.ndarray, A: np.ndarray, B: np.ndarray, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """(dA, dB) of sum_i grad_n_i * ||W'_i|| through W' = W + s (BA) * M; rows with n = 0 give 0."""
    n64 = np.asarray(n, dtype=np.float64)
    alpha = np.divide(np.asarray(grad_n, np.float64), n64, out=np.zeros_like(n64), where=n64 > 0)
    G = alpha[:, None] * dora_merged(W, mask, A, B, s) * np.asarray(mask, dtype=np.float64)
    return s * np.asarray(B, np.float64).T @ G, s * G @ np.asarray(A, np.float64).T


def dora_layer(
    x: np.ndarray,
    W: np.ndarray,
    mask: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    s: float,
    m: np.ndarray,
    bias: np.ndarray | None,
    gy: np.ndarray,
    norm_grad: bool = True,
) -> dict[str, np.ndarray]:
    """Weight-normalized LoRS in float64, through the dense (out, in) weight (the slow way):
    W'' = (m / ||W'||_row) W' (0 for a zero row), y = x W''^T + bias, and the gradients of
    <gy, y> with respect to x, A, B, m (and bias). norm_grad=False treats ||W'|| as a constant."""
    x64, gy64 = np.asarray(x, np.float64), np.asarray(gy, np.float64)
    M = np.asarray(mask, np.float64)
    Wp = dora_merged(W, mask, A, B, s)
    n = np.linalg.norm(Wp, axis=1)
    live = n > 0
    c = np.divide(np.asarray(m, np.float64), n, out=np.zeros_like(n), where=live)
    W2 = c[:, None] * Wp
    y = x64 @ W2.T + (0.0 if bias is None else np.asarray(bias, np.float64))
    G = gy64.T @ x64  # gradient of the full weight W''
    GW = (G * Wp).sum(axis=1)
    grad_m = np.divide(GW, n, out=np.zeros_like(n), where=live)
    gWp = c[:, None] * G
    if norm_grad:
        k = np.divide(np.asarray(m, np.float64) * GW, n**3, out=np.zeros_like(n), where=live)
        gWp -= k[:, None] * Wp
    gWp *= M
    return {
        "y": y,
        "gx": gy64 @ W2,
        "dA": s * np.asarray(B, np.float64).T @ gWp,
        "dB": s * gWp @ np.asarray(A, np.float64).T,
        "dm": grad_m,
        "dbias": gy64.sum(axis=0),
        "W2": W2,
    }
