"""Layer-level SparseGPT: against the paper's column-by-column OBS reference, its error against
magnitude pruning and Wanda, exact counts and N:M groups, the Gram accumulator, bad input."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseft as sft
from sparseft.sparsegpt import Gram, inverse_hessian_factor, reconstruction_error, sparsegpt

from . import reference as ref

sparsegpt_module = sys.modules["sparseft.sparsegpt"]  # the attribute sft.sparsegpt is the function


def _inputs(rng: np.random.Generator, tokens: int, n_in: int, outliers: bool = True) -> np.ndarray:
    """Correlated layer inputs with a few large-norm features, as LLM activations have."""
    X = rng.standard_normal((tokens, n_in)) @ rng.standard_normal((n_in, n_in)) / np.sqrt(n_in)
    if outliers:
        X[:, rng.choice(n_in, size=max(1, n_in // 16), replace=False)] *= 8.0
    return X


@pytest.mark.parametrize("lapack", ["scipy", "numpy"])
def test_inverse_hessian_factor(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, lapack: str
) -> None:
    if lapack == "numpy":  # the path without SciPy: NumPy's general inverse of the Cholesky factor
        monkeypatch.setattr(sparsegpt_module, "_trtri", None)
    elif sparsegpt_module._trtri is None:
        pytest.skip("scipy not installed")
    for n in (1, 2, 7, 40):
        M = rng.standard_normal((n, n + 3))
        H = M @ M.T + 0.1 * np.eye(n)
        U = inverse_hessian_factor(H)
        np.testing.assert_array_equal(U, np.triu(U))
        assert (np.diag(U) > 0).all()
        np.testing.assert_allclose(
            U.T @ U, np.linalg.inv(H), rtol=1e-9, atol=1e-9 * np.abs(np.linalg.inv(H)).max()
        )
    with pytest.raises(ValueError, match=r"H: .*not positive definite"):
        inverse_hessian_factor(np.diag([1.0, -1.0]))


@pytest.mark.parametrize(
    ("shape", "sparsity", "nm", "blocksize"),
    [
        ((1, 8), 0.5, None, 128),
        ((5, 16), 0.5, None, 4),
        ((3, 33), 0.3, None, 8),
        ((7, 20), 0.77, None, 7),
        ((6, 24), 0.5, (2, 4), 8),
        ((4, 24), 0.5, (2, 4), 6),  # block rounded down to a multiple of m
        ((2, 12), 0.0, (1, 3), 128),
        ((9, 16), 0.0, (4, 8), 3),  # block rounded up to m
    ],
)
def test_matches_reference(
    rng: np.random.Generator,
    shape: tuple[int, int],
    sparsity: float,
    nm: tuple[int, int] | None,
    blocksize: int,
) -> None:
    W = rng.standard_normal(shape).astype(np.float32)
    X = _inputs(rng, 3 * shape[1] + 1, shape[1])
    W0, X0 = W.copy(), X.copy()
    Wn, mask = sparsegpt(W, X, sparsity, nm=nm, blocksize=blocksize)
    Wr, mr = ref.sparsegpt(W, X, sparsity, nm=nm, blocksize=blocksize)
    np.testing.assert_array_equal(mask, mr)
    np.testing.assert_allclose(Wn, Wr, rtol=1e-5, atol=1e-5 * np.abs(Wr).max())
    assert Wn.dtype == np.float32 and mask.dtype == np.bool_ and Wn.shape == mask.shape == shape
    assert (Wn[~mask] == 0).all()  # exactly zero, not rounding residue
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(X, X0)
    out, n_in = shape
    if nm is None:
        assert (~mask).sum() == round(sparsity * out * n_in)
    else:
        kept = mask.reshape(out, n_in // nm[1], nm[1]).sum(axis=2)
        assert (kept == nm[0]).all()
    np.testing.assert_allclose(reconstruction_error(W, Wn, X), ref.reconstruction_error(W, Wn, X), rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    out=st.integers(1, 6),
    n_in=st.integers(1, 24),
    sparsity=st.floats(0.0, 0.95),
    blocksize=st.integers(1, 32),
    seed=st.integers(0, 2**16),
)
def test_matches_reference_hypothesis(
    out: int, n_in: int, sparsity: float, blocksize: int, seed: int
) -> None:
    r = np.random.default_rng(seed)
    W = r.standard_normal((out, n_in)).astype(np.float32)
    X = _inputs(r, n_in + 5, n_in, outliers=False)
    Wn, mask = sparsegpt(W, X, sparsity, blocksize=blocksize)
    Wr, mr = ref.sparsegpt(W, X, sparsity, blocksize=blocksize)
    np.testing.assert_array_equal(mask, mr)
    np.testing.assert_allclose(Wn, Wr, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(Wr).max()))
    assert (~mask).sum() == round(sparsity * out * n_in)


def test_sparsity_zero_is_the_identity(rng: np.random.Generator) -> None:
    W = rng.standard_normal((4, 10)).astype(np.float32)
    Wn, mask = sparsegpt(W, _inputs(rng, 30, 10), 0.0, blocksize=3)
    assert mask.all()
    np.testing.assert_array_equal(Wn, W)


def test_float64_weights_keep_their_dtype(rng: np.random.Generator) -> None:
    W = rng.standard_normal((3, 8))
    Wn, _ = sparsegpt(W, _inputs(rng, 20, 8), 0.5)
    assert Wn.dtype == np.float64


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_error_below_magnitude_and_wanda(nm: tuple[int, int] | None) -> None:
    """The paper's claim at layer level: SparseGPT's reconstruction error is clearly below
    magnitude pruning's (and Wanda's) at the same sparsity, on every seed."""
    for seed in range(4):
        r = np.random.default_rng(seed)
        W = r.standard_normal((48, 64)).astype(np.float32)
        X = _inputs(r, 256, 64).astype(np.float32)
        Wn, _ = sparsegpt(W, X, 0.5, nm=nm)
        m_mag = sft.prune.magnitude(W, 0.5) if nm is None else sft.prune.nm(W, *nm)
        m_wanda = sft.prune.wanda(W, X, 0.5, nm=nm)
        e_gpt = reconstruction_error(W, Wn, X)
        e_mag = reconstruction_error(W, W * m_mag, X)
        e_wanda = reconstruction_error(W, W * m_wanda, X)
        assert e_gpt < 0.8 * e_mag, (seed, e_gpt, e_mag)
        assert e_gpt < 0.9 * e_wanda, (seed, e_gpt, e_wanda)


def test_dead_inputs_are_zeroed_and_pruned_first(rng: np.random.Generator) -> None:
    W = rng.standard_normal((4, 12)).astype(np.float32)
    X = _inputs(rng, 40, 12, outliers=False)
    X[:, [2, 7]] = 0.0
    Wn, mask = sparsegpt(W, X, 0.25)
    assert not mask[:, [2, 7]].any()
    assert (Wn[:, [2, 7]] == 0).all()
    Wr, mr = ref.sparsegpt(W, X, 0.25)
    np.testing.assert_array_equal(mask, mr)
    np.testing.assert_allclose(Wn, Wr, rtol=1e-5, atol=1e-6)


def test_gram_accumulates_batches(rng: np.random.Generator) -> None:
    W = rng.standard_normal((5, 16)).astype(np.float32)
    X = _inputs(rng, 90, 16)
    g = Gram(16)
    for part in np.array_split(X, 4):
        g.add(part.reshape(-1, 3, 16) if part.shape[0] % 3 == 0 else part)
    assert g.tokens == 90
    np.testing.assert_allclose(g.gram, X.T @ X, rtol=1e-12)
    np.testing.assert_allclose(g.column_norms(), np.linalg.norm(X, axis=0), rtol=1e-12)
    a = sparsegpt(W, g, 0.5, blocksize=8)
    b = sparsegpt(W, X, 0.5, blocksize=8)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-7)
    # float32 batches: the product is formed in float32, accumulated in float64
    g32 = Gram(16)
    g32.add(X.astype(np.float32))
    np.testing.assert_allclose(g32.gram, X.T @ X, rtol=1e-5, atol=1e-5 * np.abs(X.T @ X).max())


def test_gram_bad_input() -> None:
    with pytest.raises(TypeError, match="in_features"):
        Gram(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in_features"):
        Gram(0)
    g = Gram(3)
    with pytest.raises(ValueError, match="no inputs"):
        g.hessian()
    with pytest.raises(TypeError, match=r"X: expected a numpy\.ndarray"):
        g.add([[1.0, 2.0, 3.0]])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="X: expected a floating dtype"):
        g.add(np.ones((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"X: expected shape \(\.\.\., 3\)"):
        g.add(np.ones((2, 4)))
    with pytest.raises(ValueError, match="X: contains NaN"):
        g.add(np.array([[1.0, np.nan, 0.0]]))
    assert g.tokens == 0 and not g.gram.any()  # failed adds change nothing
    g.add(np.full((2, 3), 3e19, np.float32))  # float32 squares overflow: redone in float64
    np.testing.assert_allclose(g.gram, np.full((3, 3), 2 * 9e38), rtol=1e-6)


def test_bad_input(rng: np.random.Generator) -> None:
    W = rng.standard_normal((4, 8)).astype(np.float32)
    X = rng.standard_normal((10, 8))
    for s in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"sparsity: expected a number in \[0, 1\)"):
            sparsegpt(W, X, s)
    for s in ("0.5", True, None):
        with pytest.raises(TypeError, match="sparsity"):
            sparsegpt(W, X, s)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of m = 3"):
        sparsegpt(W, X, nm=(1, 3))
    for bad in ((0, 4), (5, 4), (-1, 2)):
        with pytest.raises(ValueError, match="nm: expected 1 <= n <= m"):
            sparsegpt(W, X, nm=bad)
    for bad_t in ("2:4", (2,), (2.0, 4)):
        with pytest.raises(TypeError, match="nm"):
            sparsegpt(W, X, nm=bad_t)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"X: expected shape \(tokens, 8\)"):
        sparsegpt(W, X[:, :5])
    with pytest.raises(ValueError, match="X: expected at least one calibration row"):
        sparsegpt(W, X[:0])
    with pytest.raises(TypeError, match="X: expected a floating dtype"):
        sparsegpt(W, X.astype(np.int32))
    with pytest.raises(TypeError, match=r"X: expected a numpy\.ndarray"):
        sparsegpt(W, X.tolist())  # type: ignore[arg-type]
    Xn = X.copy()
    Xn[3, 2] = np.inf
    with pytest.raises(ValueError, match="X: contains NaN"):
        sparsegpt(W, Xn)
    with pytest.raises(ValueError, match="W: expected a 2-D"):
        sparsegpt(W[0], X)
    with pytest.raises(ValueError, match="X: expected a Gram of 8"):
        sparsegpt(W, Gram(5))
    with pytest.raises(ValueError, match="X: the Gram holds no inputs"):
        sparsegpt(W, Gram(8))
    with pytest.raises(ValueError, match="blocksize"):
        sparsegpt(W, X, blocksize=0)
    with pytest.raises(TypeError, match="blocksize"):
        sparsegpt(W, X, blocksize=2.0)  # type: ignore[arg-type]
    for d in (0.0, -0.01, 1.5):
        with pytest.raises(ValueError, match="percdamp"):
            sparsegpt(W, X, percdamp=d)
    with pytest.raises(ValueError, match="W_new: expected shape"):
        reconstruction_error(W, W[:2], X)


def _official_torch(
    W: np.ndarray, X: np.ndarray, sparsity: float, prunen: int, prunem: int, blocksize: int
) -> Any:
    """A float64 port of the authors' ``SparseGPT.fasterprune`` (IST-DASLab/sparsegpt) in torch:
    torch.linalg.cholesky, cholesky_inverse, the upper Cholesky factor, and their mask rules
    (unstructured: threshold at the sorted score ``int(numel * sparsity)``, pruning ``<=``; N:M: prune
    the ``prunen`` lowest of every ``prunem``)."""
    torch = pytest.importorskip("torch")
    Wt = torch.tensor(W, dtype=torch.float64)
    Xt = torch.tensor(X, dtype=torch.float64)
    H = 2.0 / Xt.shape[0] * Xt.T @ Xt
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    Wt[:, dead] = 0
    idx = torch.arange(H.shape[0])
    H[idx, idx] += 0.01 * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    M = torch.zeros_like(Wt, dtype=torch.bool)
    for i1 in range(0, Wt.shape[1], blocksize):
        i2 = min(i1 + blocksize, Wt.shape[1])
        W1 = Wt[:, i1:i2].clone()
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            mask1 = tmp <= torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i : i + prunem] ** 2 / (torch.diag(Hinv1)[i : i + prunem].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Wt[:, i1:i2] = Q1
        M[:, i1:i2] = mask1
        Wt[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Wt.numpy(), ~M.numpy()


@pytest.mark.parametrize("case", ["2:4", "4:8", "unstructured"])
def test_matches_the_authors_algorithm_in_torch(rng: np.random.Generator, case: str) -> None:
    """Against a port of the authors' torch code (Cholesky factors from torch, not NumPy). Their
    unstructured rule prunes ``int(numel * s) + 1`` per block; with one block and a sparsity whose
    ``numel * s`` has a fractional part above 1/2 that is the same count as sparseft's rounding."""
    W = rng.standard_normal((10, 48))
    X = _inputs(rng, 150, 48)
    if case == "unstructured":
        s = 0.31  # 480 * 0.31 = 148.8: 148 + 1 = round(148.8) = 149 pruned
        Wo, mo = _official_torch(W, X, s, 0, 0, blocksize=128)
        Wn, mask = sparsegpt(W, X, s, blocksize=128)
        assert (~mask).sum() == 149
    else:
        n, m = map(int, case.split(":"))
        Wo, mo = _official_torch(W, X, 0.0, m - n, m, blocksize=16)
        Wn, mask = sparsegpt(W, X, nm=(n, m), blocksize=16)
    np.testing.assert_array_equal(mask, mo)
    np.testing.assert_allclose(Wn, Wo, rtol=1e-9, atol=1e-10)


def test_gram_factor_is_cached_until_the_next_add(rng: np.random.Generator) -> None:
    X = _inputs(rng, 30, 6)
    g = Gram(6)
    g.add(X)
    dead, U = g.factor(0.01)
    assert g.factor(0.01)[1] is U  # cached
    assert g.factor(0.1)[1] is not U  # another damping
    H = 2 * X.T @ X / 30
    H[np.diag_indices(6)] += 0.01 * np.mean(np.diag(H))
    np.testing.assert_allclose(g.factor(0.01)[1].T @ g.factor(0.01)[1], np.linalg.inv(H), rtol=1e-8)
    assert not dead.any()
    g.add(X[:, [0, 1, 2, 3, 4, 5]] * 0)
    dead2, U2 = g.factor(0.01)
    assert U2 is not U and not dead2.any()  # a new add drops the cached factor
    z = Gram(3)
    z.add(np.zeros((4, 3)))
    assert z.factor()[0].all()


def test_prune_sparsegpt_is_the_layer_function() -> None:
    """sft.prune.sparsegpt returns what sft.sparsegpt returns: the updated weight and the mask."""
    import sparseft as sft

    rng = np.random.default_rng(3)
    W = rng.standard_normal((6, 8)).astype(np.float32)
    X = rng.standard_normal((32, 8)).astype(np.float32)
    W1, m1 = sft.prune.sparsegpt(W, X, 0.5)
    W2, m2 = sft.sparsegpt(W, X, 0.5)
    np.testing.assert_array_equal(W1, W2)
    np.testing.assert_array_equal(m1, m2)
    assert m1.sum() == W.size // 2
