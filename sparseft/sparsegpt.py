"""SparseGPT (Frantar & Alistarh 2023): prune one linear layer and update its remaining weights.

For a layer y = x Wᵀ with calibration inputs X (tokens, in), SparseGPT minimises the layer-wise
reconstruction error ‖X Wᵀ − X Ŵᵀ‖² over weights Ŵ with the requested sparsity. It walks the
input columns left to right; pruning column c of a row sets it to zero and moves the error onto the
columns not yet visited with the Optimal Brain Surgeon update δ = −(w_c / [H_F⁻¹]_cc) · [H_F⁻¹]_c,:
where H = 2 XᵀX / tokens (+ damping) and F is the set of columns from c on. All rows share H, and
the rows [H_F⁻¹]_c,: / √[H_F⁻¹]_cc are exactly the rows of the upper Cholesky factor U of H⁻¹
(UᵀU = H⁻¹), so one factorisation serves every column. Updates are applied lazily per block of
columns (one matrix product per block for the columns to its right), and the mask of a block is
chosen at its start from the scores w²/U_cc² ("adaptive mask selection"). See ``docs/pruning.md``.
"""

from __future__ import annotations

import numbers

import numpy as np

from sparseft.prune import _check_matrix

try:  # LAPACK's triangular inverse (n³/3 flops); NumPy alone offers only the general inverse (LU, ~8n³/3)
    from scipy.linalg.lapack import dtrtri as _trtri
except ImportError:  # pragma: no cover - scipy is optional
    _trtri = None

__all__ = ["Gram", "inverse_hessian_factor", "reconstruction_error", "sparsegpt"]


class Gram:
    """Running Gram matrix XᵀX (float64) of a layer's inputs, over calibration batches.

    SparseGPT needs H = 2 XᵀX / tokens, Wanda the column norms √diag(XᵀX), and the reconstruction
    error ‖(W − Ŵ) Xᵀ‖² = tr((W − Ŵ) XᵀX (W − Ŵ)ᵀ): all three come from this (in, in) matrix, so the
    calibration inputs never have to be held together.

    Parameters
    ----------
    in_features : int
        Width of the layer inputs (>= 1).

    Attributes
    ----------
    gram : numpy.ndarray
        float64 (in, in), the sum of xᵀx over all rows added.
    tokens : int
        Number of rows added.
    """

    def __init__(self, in_features: int) -> None:
        if isinstance(in_features, bool) or not isinstance(in_features, numbers.Integral):
            raise TypeError(f"in_features: expected an int, got {type(in_features).__name__}")
        if in_features < 1:
            raise ValueError(f"in_features: expected an int >= 1, got {in_features}")
        self.in_features: int = int(in_features)
        self.gram: np.ndarray = np.zeros((self.in_features, self.in_features), np.float64)
        self.tokens: int = 0
        self._factor: tuple[float, np.ndarray, np.ndarray] | None = None  # (percdamp, dead, U)

    def add(self, X: np.ndarray) -> None:
        """Add a batch of inputs X (..., in), any floating dtype (not modified).

        The product XᵀX of the batch is formed in float32 when X is float32 (BLAS speed) and
        accumulated across batches in float64.

        Raises
        ------
        TypeError
            X not a floating ndarray.
        ValueError
            X's last axis is not ``in_features`` or X holds NaN/inf (the Gram is then unchanged).
        """
        if not isinstance(X, np.ndarray):
            raise TypeError(f"X: expected a numpy.ndarray, got {type(X).__name__}")
        if X.dtype.kind != "f":
            raise TypeError(f"X: expected a floating dtype, got {X.dtype}")
        if X.ndim < 1 or X.shape[-1] != self.in_features:
            raise ValueError(f"X: expected shape (..., {self.in_features}), got {X.shape}")
        X2 = X.reshape(-1, self.in_features)
        if not np.isfinite(X2).all():
            raise ValueError("X: contains NaN or infinity")
        wide = X2.astype(np.float64) if X2.dtype != np.float32 else X2
        with np.errstate(over="ignore", invalid="ignore"):
            g = (wide.T @ wide).astype(np.float64)
        if not np.isfinite(g).all():
            # float32 squares overflowed (|x| near 1e19): redo this batch in float64
            w64 = X2.astype(np.float64)
            g = w64.T @ w64
            if not np.isfinite(g).all():
                raise ValueError("X: XᵀX overflows float64")
        self.gram += g
        self.tokens += int(X2.shape[0])
        self._factor = None

    def hessian(self) -> np.ndarray:
        """H = 2 XᵀX / tokens, float64 (in, in) (the layer-wise squared error's Hessian, averaged)."""
        if self.tokens == 0:
            raise ValueError("Gram: no inputs added (call add(X) with calibration inputs first)")
        return self.gram * (2.0 / self.tokens)

    def factor(self, percdamp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
        """SparseGPT's factor of the damped Hessian: (dead, U) with ``dead`` the bool (in,) inputs
        that were 0 in every row and U the upper Cholesky factor of H⁻¹ (see
        :func:`inverse_hessian_factor`).

        Cached until the next :meth:`add`, so layers reading the same inputs (Llama's q/k/v or
        gate/up projections) share one O(in³) factorisation.
        """
        if self._factor is None or self._factor[0] != percdamp:
            H, dead = _dampen(self.hessian(), percdamp)
            self._factor = (percdamp, dead, inverse_hessian_factor(H))
        return self._factor[1], self._factor[2]

    def column_norms(self) -> np.ndarray:
        """‖X[:, j]‖₂ for every input column j, float64 (in,) (Wanda's activation norms)."""
        return np.sqrt(np.maximum(np.diag(self.gram), 0.0))


def _as_gram(X: object, in_features: int) -> Gram:
    if isinstance(X, Gram):
        if X.in_features != in_features:
            raise ValueError(f"X: expected a Gram of {in_features} input features, got {X.in_features}")
        if X.tokens == 0:
            raise ValueError("X: the Gram holds no inputs")
        return X
    Xm = _check_matrix(X, "X")
    if Xm.shape[1] != in_features:
        raise ValueError(f"X: expected shape (tokens, {in_features}), got {Xm.shape}")
    if Xm.shape[0] == 0:
        raise ValueError("X: expected at least one calibration row, got shape (0, ...)")
    g = Gram(in_features)
    g.add(Xm)
    return g


def _check_real(name: str, v: object, lo: float, hi: float, hi_open: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    f = float(v)
    if not (lo <= f < hi if hi_open else lo <= f <= hi):
        rng = f"[{lo:g}, {hi:g})" if hi_open else f"[{lo:g}, {hi:g}]"
        raise ValueError(f"{name}: expected a number in {rng}, got {v!r}")
    return f


def check_sparsity_nm(
    sparsity: object, nm: object, in_features: int | None
) -> tuple[float, tuple[int, int] | None]:
    """Validate the pruning target: a fraction in [0, 1), or N:M (keep n of every m inputs).

    Returns the sparsity (``(m - n) / m`` for N:M) and the (n, m) pair or None.
    """
    if nm is None:
        return _check_real("sparsity", sparsity, 0.0, 1.0, hi_open=True), None
    if not isinstance(nm, tuple | list) or len(nm) != 2:
        raise TypeError(f"nm: expected a pair (n, m) of ints or None, got {nm!r}")
    n, m = nm
    for label, v in (("nm.n", n), ("nm.m", m)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{label}: expected an int, got {type(v).__name__}")
    n, m = int(n), int(m)
    if not 1 <= n <= m:
        raise ValueError(f"nm: expected 1 <= n <= m (keep n of every m), got {(n, m)!r}")
    if in_features is not None and in_features % m:
        raise ValueError(f"nm: expected an input dimension that is a multiple of m = {m}, got {in_features}")
    return (m - n) / m, (n, m)


def check_options(blocksize: object, percdamp: object) -> tuple[int, float]:
    """Validate SparseGPT's ``blocksize`` (int >= 1) and ``percdamp`` (in (0, 1])."""
    if isinstance(blocksize, bool) or not isinstance(blocksize, numbers.Integral):
        raise TypeError(f"blocksize: expected an int, got {type(blocksize).__name__}")
    if blocksize < 1:
        raise ValueError(f"blocksize: expected an int >= 1, got {blocksize}")
    damp = _check_real("percdamp", percdamp, 0.0, 1.0, hi_open=False)
    if damp == 0.0:
        raise ValueError("percdamp: expected a number in (0, 1], got 0 (H may be singular)")
    return int(blocksize), damp


def _dampen(H: np.ndarray, percdamp: float) -> tuple[np.ndarray, np.ndarray]:
    """The damped Hessian and the dead inputs (always 0: diag H = 0), as in the paper's code: dead
    inputs get H_jj = 1, then ``percdamp`` times the mean diagonal is added to the diagonal."""
    H = H.copy()
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    H[np.diag_indices_from(H)] += percdamp * float(np.mean(np.diag(H)))
    return H, dead


def inverse_hessian_factor(H: np.ndarray) -> np.ndarray:
    """The upper-triangular U with UᵀU = H⁻¹ (the upper Cholesky factor of H⁻¹), float64.

    With P the index reversal, P H P = L Lᵀ (LAPACK potrf) gives H = R Rᵀ with R = P L P upper
    triangular, so H⁻¹ = R⁻ᵀ R⁻¹ and U = R⁻¹ = P L⁻¹ P: one factorisation and one triangular
    inverse (LAPACK trtri through SciPy when installed, else NumPy's general inverse), with no
    explicit H⁻¹ formed and factored again.

    Raises
    ------
    ValueError
        If H is not (numerically) positive definite.
    """
    H = np.asarray(H, np.float64)
    try:
        L = np.linalg.cholesky(H[::-1, ::-1])
    except np.linalg.LinAlgError:
        raise ValueError(
            "H: the damped Hessian of the layer inputs is not positive definite (raise percdamp)"
        ) from None
    if _trtri is not None:
        Linv, info = _trtri(L, lower=1)
        if info != 0:
            raise ValueError(f"H: the Cholesky factor is singular (LAPACK trtri info {info}; raise percdamp)")
    else:
        Linv = np.linalg.inv(L)
    return np.ascontiguousarray(np.triu(Linv[::-1, ::-1]))


def _block_mask(score: np.ndarray, k: int) -> np.ndarray:
    """Prune exactly the k lowest scores of a block (ties: lower row-major index first)."""
    prune = np.zeros(score.size, dtype=bool)
    if k > 0:
        prune[np.argsort(score, axis=None, kind="stable")[:k]] = True
    return prune.reshape(score.shape)


def sparsegpt(
    W: np.ndarray,
    X: np.ndarray | Gram,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """Prune a linear layer with SparseGPT; return the updated weight and the mask.

    Parameters
    ----------
    W : numpy.ndarray
        (out, in) floating weights (not modified).
    X : numpy.ndarray or Gram
        Calibration inputs of the layer, (tokens, in) floating, or a :class:`Gram` accumulated
        over batches.
    sparsity : float in [0, 1)
        Fraction of the layer's weights pruned (ignored with ``nm``). Exactly
        ``round(sparsity * out * in)`` entries are pruned: each block of columns prunes its share
        (the rounded cumulative count) at its lowest scores w²/[H⁻¹]_cc over all rows, so rows may
        differ, as in the paper.
    nm : (n, m) or None
        Keep ``n`` of every ``m`` consecutive inputs in every row (e.g. ``(2, 4)``), chosen as the
        paper does when column ``c`` starts a group: the lowest scores among the group's columns
        with the updates from earlier columns applied. ``in`` must be a multiple of ``m``.
    blocksize : int
        Columns per lazy-update block (the paper's B = 128); with ``nm`` rounded down to a multiple
        of ``m`` (at least ``m``). The result does not depend on it beyond rounding, except through
        the unstructured mask selection, which happens per block.
    percdamp : float in (0, 1]
        Damping λ added to H's diagonal, as a fraction of its mean diagonal (the paper's 1%).

    Returns
    -------
    W_new : numpy.ndarray
        (out, in) in W's dtype: exactly 0 wherever ``mask`` is False.
    mask : numpy.ndarray
        bool (out, in), True where a weight is kept. Inputs that are 0 in every calibration row
        ("dead") get weight 0 and are pruned first.

    Raises
    ------
    TypeError
        Arrays not floating ndarrays, numbers or ``nm`` of the wrong type.
    ValueError
        Wrong shapes, NaN/inf, ``sparsity`` outside [0, 1), invalid ``nm`` or ``in`` not a multiple of
        ``m``, ``blocksize < 1``, ``percdamp`` outside (0, 1], no calibration rows, or a Hessian that
        stays singular after damping.

    Notes
    -----
    Computed in float64 with NumPy's LAPACK (Cholesky); cost O(in³ + out·in²).
    """
    W = _check_matrix(W, "W")
    out, n_in = W.shape
    s, pair = check_sparsity_nm(sparsity, nm, n_in)
    bs, damp = check_options(blocksize, percdamp)
    gram = _as_gram(X, n_in)
    if pair is not None:
        bs = max(pair[1], bs - bs % pair[1])

    Wd = W.astype(np.float64)  # a copy: the caller's W is never touched
    dead, U = gram.factor(damp)
    Wd[:, dead] = 0.0  # inputs that are always 0: their weights go first
    prune = np.zeros((out, n_in), dtype=bool)
    for i1 in range(0, n_in, bs):
        i2 = min(i1 + bs, n_in)
        W1 = Wd[:, i1:i2].copy()
        U1 = U[i1:i2, i1:i2]
        d = np.diag(U1).copy()
        err = np.zeros_like(W1)
        if pair is None:
            k = round(s * out * i2) - round(s * out * i1)
            prune1 = _block_mask(W1**2 / d[None, :] ** 2, k)
        else:
            prune1 = np.zeros(W1.shape, dtype=bool)
        for i in range(i2 - i1):
            if pair is not None and i % pair[1] == 0:
                n, m = pair
                score = W1[:, i : i + m] ** 2 / d[None, i : i + m] ** 2
                order = np.argsort(score, axis=1, kind="stable")[:, : m - n]
                np.put_along_axis(prune1[:, i : i + m], order, True, axis=1)
            w = W1[:, i]
            e = np.where(prune1[:, i], w, 0.0) / d[i]  # (w - q) / U_cc, q = w kept or 0 pruned
            W1[:, i:] -= np.outer(e, U1[i, i:])
            W1[prune1[:, i], i] = 0.0  # exactly zero (the update leaves rounding residue)
            err[:, i] = e
        Wd[:, i1:i2] = W1
        Wd[:, i2:] -= err @ U[i1:i2, i2:]
        prune[:, i1:i2] = prune1
    Wd[prune] = 0.0
    return Wd.astype(W.dtype), ~prune


def reconstruction_error(W: np.ndarray, W_new: np.ndarray, X: np.ndarray | Gram) -> float:
    """Relative layer-wise error ‖X Wᵀ − X Ŵᵀ‖_F / ‖X Wᵀ‖_F (0 when X Wᵀ = 0 and Ŵ = W).

    Parameters
    ----------
    W, W_new : numpy.ndarray
        (out, in) floating: the original and the pruned weights.
    X : numpy.ndarray or Gram
        (tokens, in) calibration inputs, or their :class:`Gram`.

    Returns
    -------
    float
        Computed from XᵀX in float64 (inf when X Wᵀ = 0 but X Ŵᵀ is not).
    """
    W = _check_matrix(W, "W")
    W_new = _check_matrix(W_new, "W_new")
    if W_new.shape != W.shape:
        raise ValueError(f"W_new: expected shape {W.shape}, got {W_new.shape}")
    g = _as_gram(X, W.shape[1]).gram
    W64 = W.astype(np.float64)
    D = W64 - W_new.astype(np.float64)
    num = max(float(np.sum((D @ g) * D)), 0.0)
    den = max(float(np.sum((W64 @ g) * W64)), 0.0)
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return float(np.sqrt(num / den))
