"""Initializers of the LoRS adapter A (r, in); B always starts at zero, so W' = W at step 0.

- ``"lora"``: Kaiming-uniform as PEFT (``nn.init.kaiming_uniform_(A, a=sqrt(5))``), i.e.
  A ~ U(−1/√in, 1/√in).
- ``"gaussian"``: A ~ N(0, std = 1/r), as PEFT's ``init_lora_weights="gaussian"``.
- ``"lors"``: A = the top-r right singular vectors of G ⊙ M, G the full-weight gradient estimate
  (randomized SVD), rows rescaled by the ``lors_scale`` option.
"""

from __future__ import annotations

import numpy as np

from sparseft._validation import check_real

__all__ = ["LORS_SCALES", "gaussian_init", "lora_init", "lors_init", "randomized_svd"]

#: Named row scalings of the "lors" init (a positive float is accepted too).
LORS_SCALES = ("lora", "unit")


def lora_init(rng: np.random.Generator, r: int, in_features: int) -> np.ndarray:
    """A (r, in) float32 ~ U(−1/√in, 1/√in), PEFT's ``kaiming_uniform_(a=sqrt(5))``."""
    bound = 1.0 / np.sqrt(in_features)
    return rng.uniform(-bound, bound, size=(r, in_features)).astype(np.float32)


def gaussian_init(rng: np.random.Generator, r: int, in_features: int) -> np.ndarray:
    """A (r, in) float32 ~ N(0, (1/r)²), PEFT's ``nn.init.normal_(A, std=1/r)``."""
    return rng.normal(0.0, 1.0 / r, size=(r, in_features)).astype(np.float32)


def randomized_svd(
    G: np.ndarray, k: int, rng: np.random.Generator, oversample: int = 10, n_iter: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k singular values and right singular vectors of G (Halko, Martinsson & Tropp 2011).

    Parameters
    ----------
    G : numpy.ndarray
        (m, n) matrix (computed in float64).
    k : int
        Number of singular triplets, ``1 <= k <= min(m, n)``.
    rng : numpy.random.Generator
        Source of the Gaussian test matrix (the result is deterministic for a fixed seed).
    oversample, n_iter : int
        Extra test vectors and power iterations (subspace iteration with re-orthonormalization).

    Returns
    -------
    (S, Vt) : tuple of numpy.ndarray
        S (k,) descending, Vt (k, n) with orthonormal rows; each row's largest-magnitude entry
        is made positive, so the signs are reproducible.
    """
    G64 = np.asarray(G, dtype=np.float64)
    m, n = G64.shape
    ell = min(k + oversample, m, n)
    Q, _ = np.linalg.qr(G64 @ rng.standard_normal((n, ell)))
    # power iterations sharpen the spectrum's decay
    for _ in range(n_iter):
        Z, _ = np.linalg.qr(G64.T @ Q)
        Q, _ = np.linalg.qr(G64 @ Z)
    _, S, Vt = np.linalg.svd(Q.T @ G64, full_matrices=False)
    S, Vt = S[:k], Vt[:k]
    # sign convention: the largest-magnitude entry of each row positive
    idx = np.argmax(np.abs(Vt), axis=1)
    signs = np.sign(Vt[np.arange(Vt.shape[0]), idx])
    signs[signs == 0] = 1.0
    return S, Vt * signs[:, None]


def lors_init(
    G_masked: np.ndarray, r: int, rng: np.random.Generator, scale: str | float = "lora"
) -> np.ndarray:
    """A (r, in) float32 from the top-r right singular vectors of the masked gradient G ⊙ M.

    Parameters
    ----------
    G_masked : numpy.ndarray
        (out, in) gradient estimate of the full weight, already multiplied by the mask.
    r : int
        Adapter rank, ``r <= min(out, in)``.
    rng : numpy.random.Generator
        Seeds the randomized SVD.
    scale : {"lora", "unit"} or float
        Norm of each row of A: ``"lora"`` (default) 1/√3, the expected row norm of the ``"lora"``
        init, so learning rates tuned for LoRA carry over; ``"unit"`` 1 (orthonormal rows);
        a positive float sets the row norm directly.

    Raises
    ------
    ValueError
        If G ⊙ M is all zero (no direction to pick), or ``scale`` is unknown / not positive.
    """
    if isinstance(scale, str):
        if scale not in LORS_SCALES:
            raise ValueError(f"lors_scale: expected one of {LORS_SCALES} or a positive float, got {scale!r}")
        norm = 1.0 / np.sqrt(3.0) if scale == "lora" else 1.0
    else:
        norm = check_real(scale, "lors_scale", 0.0, lo_open=True, what="a positive finite float")
        # A's rows have this norm: it must survive float32 (1e300 would make A inf, 1e-300 zero)
        if not 1e-30 <= norm <= 1e30:
            raise ValueError(f"lors_scale: expected a row norm in [1e-30, 1e30] (float32 A), got {scale!r}")
    if not np.any(G_masked):
        raise ValueError(
            "init_grad: G ⊙ mask is all zero, so the 'lors' init has no direction to pick "
            "(use init='lora' or a nonzero gradient estimate)"
        )
    _, Vt = randomized_svd(G_masked, r, rng)
    return (norm * Vt).astype(np.float32)
