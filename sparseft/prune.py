"""Pruning masks: magnitude, N:M and Wanda return a bool (out, in) mask; SparseGPT also updates the
kept weights and returns ``(W_new, mask)``.

All functions validate their input, never modify it, and break ties deterministically: among
entries with equal scores the one with the **lower index** (flat index for ``scope="global"``,
column index otherwise) is pruned first. Counts are exact: a row (or the whole matrix) of ``n``
entries keeps ``n - round(sparsity * n)`` of them, with Python's ``round`` (half to even).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sparseft._validation import check_choice, check_finite, check_nm, check_real

__all__ = ["magnitude", "nm", "sparsegpt", "wanda"]


def _check_matrix(W: object, name: str) -> np.ndarray:
    """A real floating 2-D finite ndarray (returned as is, never copied or modified)."""
    if not isinstance(W, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(W).__name__}")
    if W.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating dtype (float16/32/64), got {W.dtype}")
    if W.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (out, in), got shape {W.shape}")
    return check_finite(W, name)


def _n_pruned(sparsity: float, size: int) -> int:
    return round(sparsity * size)


def _keep_per_row(score: np.ndarray, n_prune: int) -> np.ndarray:
    """Per row, prune the n_prune lowest scores (ties: lower column first)."""
    out, cols = score.shape
    mask = np.ones((out, cols), dtype=bool)
    if n_prune <= 0 or cols == 0:
        return mask
    order = np.argsort(score, axis=1, kind="stable")[:, :n_prune]
    np.put_along_axis(mask, order, False, axis=1)
    return mask


def _keep_nm(score: np.ndarray, n: int, m: int) -> np.ndarray:
    """In every group of m consecutive columns keep the n highest scores (ties: lower column pruned)."""
    out, cols = score.shape
    groups = score.reshape(out, cols // m, m)
    mask = np.ones(groups.shape, dtype=bool)
    if m - n > 0:
        order = np.argsort(groups, axis=2, kind="stable")[:, :, : m - n]
        np.put_along_axis(mask, order, False, axis=2)
    return mask.reshape(out, cols)


def magnitude(W: np.ndarray, sparsity: float = 0.5, scope: str = "row") -> np.ndarray:
    """Magnitude pruning mask: keep the largest ``|W|``.

    Parameters
    ----------
    W : ndarray, shape (out, in), floating
        Weights (not modified).
    sparsity : float in [0, 1]
        Fraction of entries pruned.
    scope : {"row", "global"}
        ``"row"`` (default, as Wanda and SparseGPT do for LLM layers): every output row keeps exactly
        ``in - round(sparsity * in)`` entries. ``"global"``: the whole matrix keeps exactly
        ``out*in - round(sparsity * out*in)`` entries, rows may differ.

    Returns
    -------
    ndarray of bool, shape (out, in)
        True where the weight is kept. Ties are broken deterministically (lower index pruned first).

    Raises
    ------
    TypeError
        ``W`` not a floating ndarray, ``sparsity`` not a number, ``scope`` not a str.
    ValueError
        ``W`` not 2-D or not finite, ``sparsity`` outside [0, 1], unknown ``scope``.
    """
    W = _check_matrix(W, "W")
    s = check_real(sparsity, "sparsity", 0.0, 1.0, what="a number in [0, 1]")
    check_choice(scope, "scope", ("row", "global"))
    score = np.abs(W.astype(np.float64))
    if scope == "row":
        return _keep_per_row(score, _n_pruned(s, W.shape[1]))
    flat = score.reshape(1, -1)
    return _keep_per_row(flat, _n_pruned(s, flat.shape[1])).reshape(W.shape)


def nm(W: np.ndarray, n: int = 2, m: int = 4) -> np.ndarray:
    """N:M mask along the input dimension: in every group of ``m`` consecutive inputs keep ``n``.

    Parameters
    ----------
    W : ndarray, shape (out, in), floating
        Weights (not modified); ``in`` must be a multiple of ``m``.
    n, m : int
        Keep ``n`` of every ``m`` (``0 <= n <= m``), the largest ``|W|`` (ties: lower column pruned).

    Returns
    -------
    ndarray of bool, shape (out, in)

    Raises
    ------
    TypeError
        ``W`` not a floating ndarray, ``n``/``m`` not ints.
    ValueError
        ``W`` not 2-D or not finite, ``m < 1``, ``n`` outside [0, m], ``in`` not a multiple of ``m``.
    """
    W = _check_matrix(W, "W")
    n, m = check_nm(n, m, W.shape[1])
    return _keep_nm(np.abs(W.astype(np.float64)), n, m)


def wanda(
    W: np.ndarray, X: np.ndarray, sparsity: float = 0.5, nm: tuple[int, int] | None = None
) -> np.ndarray:
    """Wanda mask (Sun et al. 2023): score ``|W_ij| * ||X[:, j]||_2``, selected per output row.

    Parameters
    ----------
    W : ndarray, shape (out, in), floating
        Weights (not modified).
    X : ndarray, shape (tokens, in), floating
        Calibration inputs of the layer (not modified).
    sparsity : float in [0, 1]
        Fraction pruned in every output row (ignored when ``nm`` is given).
    nm : (n, m) or None
        Keep the ``n`` best-scored of every ``m`` consecutive inputs instead (N:M, e.g. ``(2, 4)``).

    Returns
    -------
    ndarray of bool, shape (out, in)

    Raises
    ------
    TypeError
        Wrong types (arrays not floating ndarrays, ``nm`` not a pair of ints).
    ValueError
        Wrong shapes, NaN/inf, ``sparsity`` outside [0, 1], invalid ``nm``.
    """
    W = _check_matrix(W, "W")
    X = _check_matrix(X, "X")
    if X.shape[1] != W.shape[1]:
        raise ValueError(f"X: expected shape (tokens, {W.shape[1]}), got {X.shape}")
    s = check_real(sparsity, "sparsity", 0.0, 1.0, what="a number in [0, 1]")
    X64 = X.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->j", X64, X64))
        score = np.abs(W.astype(np.float64)) * norms[None, :]
    if not np.isfinite(score).all():
        # finite but huge X (or W): the squares overflow, and 0 * inf = NaN would rank a zero weight
        # first. Rank by log-scores instead (log 0 = -inf ranks last), the norms taken of each column
        # scaled by its largest |X| so nothing overflows.
        big = np.abs(X64).max(axis=0) if X64.shape[0] else np.zeros(X64.shape[1])
        safe = np.where(big > 0, big, 1.0)
        log_norms = np.log(safe) + 0.5 * np.log(np.einsum("ij,ij->j", X64 / safe, X64 / safe))
        with np.errstate(divide="ignore"):
            score = np.log(np.abs(W.astype(np.float64))) + np.where(big > 0, log_norms, -np.inf)[None, :]
        score = np.where(np.isnan(score), -np.inf, score)
    if nm is None:
        return _keep_per_row(score, _n_pruned(s, W.shape[1]))
    if not isinstance(nm, tuple | list) or len(nm) != 2:
        raise TypeError(f"nm: expected a pair (n, m) of ints or None, got {nm!r}")
    n, m = check_nm(nm[0], nm[1], W.shape[1], prefix="nm.")
    return _keep_nm(score, n, m)


def sparsegpt(
    W: np.ndarray,
    X: Any,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT (Frantar & Alistarh 2023) on one layer: unlike the mask-only pruners here it also
    updates the kept weights, so it returns ``(W_new, mask)``.

    The same function as :func:`sparseft.sparsegpt` (see there and ``docs/pruning.md`` for the
    parameters); ``X`` is the calibration input (tokens, in) or an accumulated
    ``sparseft.sparsegpt.Gram``.
    """
    from sparseft.sparsegpt import sparsegpt as _sparsegpt  # imports this module: bind late

    return _sparsegpt(W, X, sparsity, nm, blocksize, percdamp)

