"""Float64 NumPy twins of every C kernel (the "slow" references the tests compare against).

Each function here is written independently of the C code, from the math in docs/design.md, and
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


class ReferenceBase:
    """A base format (sparseft.formats.BaseFormat) in plain NumPy: float64 inside, float32 out."""

    format = "reference"

    def __init__(self, W: np.ndarray, mask: np.ndarray) -> None:
        self.W = np.asarray(W, np.float64)
        self.M = np.asarray(mask, bool)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.W.shape[0]), int(self.W.shape[1]))

    def _wp(self, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        return dora_merged(self.W, self.M, A, B, scale)

    def forward(self, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        return (x.astype(np.float64) @ self._wp(A, B, scale).T).astype(np.float32)

    def backward_input(self, gy: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        return (gy.astype(np.float64) @ self._wp(A, B, scale)).astype(np.float32)

    def masked_grad(
        self, gy: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        G = (gy.astype(np.float64).T @ x) * self.M
        return (scale * B.T @ G).astype(np.float32), (scale * G @ A.T).astype(np.float32)

    def backward(
        self, gy: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (self.backward_input(gy, A, B, scale), *self.masked_grad(gy, x, A, B, scale))

    def merged(self, A: np.ndarray, B: np.ndarray, scale: float) -> ReferenceBase:
        return ReferenceBase(self._wp(A, B, scale) * self.M, self.M)

    def row_norms(self, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
        return dora_rownorm_forward(self.W, self.M, A, B, scale).astype(np.float32)

    def norm_grad(
        self, grad_n: np.ndarray, n: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        dA, dB = dora_rownorm_backward(grad_n, n, self.W, self.M, A, B, scale)
        return dA.astype(np.float32), dB.astype(np.float32)

    def to_dense(self) -> np.ndarray:
        return self.W.astype(np.float32)

    def mask_dense(self) -> np.ndarray:
        return self.M.copy()


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


# ---- remat ----


def remat_simulate(steps, memory, duration, preds):
    """Pure-Python twin of ``_core.remat_simulate``.

    ``steps``: ints, ``v`` to compute node v, ``-1 - v`` to free it; ``preds[v]``: inputs of v.
    Returns ``(peak, duration, profile)``, or raises ``ValueError`` naming the first bad step.
    """
    n = len(memory)
    resident = [False] * n
    computed = [False] * n
    cur = peak = total = 0
    profile = []
    for k, s in enumerate(steps):
        v = s if s >= 0 else -1 - s
        if v >= n:
            raise ValueError(f"bad node at step {k}")
        if s >= 0:
            if resident[v]:
                raise ValueError(f"already resident at step {k}")
            for u in preds[v]:
                if not resident[u]:
                    raise ValueError(f"missing input at step {k}")
            resident[v] = computed[v] = True
            cur += memory[v]
            total += duration[v]
            peak = max(peak, cur)
        else:
            if not resident[v]:
                raise ValueError(f"not resident at step {k}")
            resident[v] = False
            cur -= memory[v]
        profile.append(cur)
    if not all(computed):
        raise ValueError("never computed")
    return peak, total, profile


def remat_brute_force(memory, duration, preds, order, budget):
    """Least duration over all stage-structured schedules within ``budget`` (Dijkstra), or None.

    The schedule class of the planners: the node at position t of ``order`` is computed for the
    first time in stage t; before it, earlier nodes may be recomputed in increasing order
    position; frees are allowed anywhere. The state is (resident set, stage, position of the
    last recomputation in the stage). Exponential: for graphs of at most ~10 nodes.
    """
    import heapq

    n = len(memory)
    pos = {v: i for i, v in enumerate(order)}
    pmask = [sum(1 << u for u in preds[v]) for v in range(n)]

    def mem_of(mask):
        return sum(memory[v] for v in range(n) if mask >> v & 1)

    start = (0, 0, -1)
    dist = {start: 0}
    heap = [(0, start)]
    while heap:
        d, state = heapq.heappop(heap)
        if dist.get(state, None) != d:
            continue
        mask, t, last = state
        if t == n:
            return d
        moves = []
        # free any resident node
        for v in range(n):
            if mask >> v & 1:
                moves.append((0, (mask & ~(1 << v), t, last)))
        # compute: the next first computation, or a recomputation later in order than the last one
        for v in range(n):
            p = pos[v]
            if mask >> v & 1 or (pmask[v] & mask) != pmask[v]:
                continue
            new = mask | 1 << v
            if mem_of(new) > budget:
                continue
            if p == t:
                moves.append((duration[v], (new, t + 1, -1)))
            elif last < p < t:
                moves.append((duration[v], (new, t, p)))
        for c, nxt in moves:
            nd = d + c
            if nd < dist.get(nxt, 1 << 62):
                dist[nxt] = nd
                heapq.heappush(heap, (nd, nxt))
    return None


# ---- sparse ----


def lors_weight(W: np.ndarray, mask: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
    """W' = W ⊙ M + scale·(B A) ⊙ M in float64 (W masked first, so W need not be 0 off the mask)."""
    return lors_merged_weight(np.asarray(W, np.float64) * mask, mask, A, B, scale)


def sparse_forward(
    W: np.ndarray, mask: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
) -> np.ndarray:
    """y = x W'^T in float64 (the LoRS twin, with W masked first)."""
    return lors_forward(x, np.asarray(W, np.float64) * mask, mask, A, B, scale)


def sparse_backward_input(
    W: np.ndarray, mask: np.ndarray, gy: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
) -> np.ndarray:
    """gx = gy W' in float64 (the LoRS twin, with W masked first)."""
    return lors_backward_input(gy, np.asarray(W, np.float64) * mask, mask, A, B, scale)


def sparse_masked_grad(
    mask: np.ndarray, gy: np.ndarray, x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """(dA, dB) = (s·B^T (G ⊙ M), s·(G ⊙ M) A^T) with G = gy^T x, in float64 (the LoRS twin)."""
    return lors_grad_exact(gy, x, mask, A, B, scale)


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


# ---- rws ----


def rws_extract(pre: np.ndarray, clean: np.ndarray, robust: np.ndarray) -> tuple[np.ndarray, float, float]:
    """RWS = r − (d·r / d·d)·d with r = robust − pre, d = clean − pre (r when d·d = 0), float64."""
    p, c, r = (np.asarray(a, np.float64).ravel() for a in (pre, clean, robust))
    d, q = c - p, r - p
    dr, dd = float(d @ q), float(d @ d)
    coef = dr / dd if dd > 0 else 0.0
    return (q - coef * d).reshape(np.shape(pre)), dr, dd


def rws_levels(p0: float, p1: float, bits: int, scheme: str) -> np.ndarray:
    """The 2**bits levels of a quantization group from its parameters (float64; see docs/rws.md)."""
    n = 2**bits
    if scheme == "linear":
        return p0 + np.arange(n) * p1
    if bits == 1:
        return np.array([p1, -p1])
    K = n // 2
    L = K - 1
    mags = np.zeros(K)
    for k in range(1, L + 1):
        mags[k] = p1 if (k == L or p0 <= 0) else p0 * (p1 / p0) ** ((k - 1) / (L - 1))
    return np.concatenate([mags, -mags])


def rws_unpack(codes: np.ndarray, n: int, bits: int) -> np.ndarray:
    """The n codes packed LSB first into ``codes`` (uint8)."""
    allbits = np.unpackbits(np.asarray(codes, np.uint8), bitorder="little")[: n * bits].reshape(n, bits)
    return (allbits.astype(np.int64) << np.arange(bits)).sum(axis=1)


def rws_dequantize(
    codes: np.ndarray, params: np.ndarray, n: int, group: int, bits: int, scheme: str
) -> np.ndarray:
    """Values of packed codes with per-group parameters (float64)."""
    q = rws_unpack(codes, n, bits)
    out = np.empty(n)
    for g in range(-(-n // group)):
        lv = rws_levels(float(params[g, 0]), float(params[g, 1]), bits, scheme)
        out[g * group : (g + 1) * group] = lv[q[g * group : (g + 1) * group]]
    return out


def rws_patch(w: np.ndarray, s: np.ndarray, alpha: float, mask: np.ndarray | None = None) -> np.ndarray:
    """w + alpha·s in float64 where mask is set (w elsewhere)."""
    w64 = np.asarray(w, np.float64)
    out = w64 + float(alpha) * np.asarray(s, np.float64)
    return out if mask is None else np.where(mask, out, w64)


def merge_ties(taus: list[np.ndarray], density: float) -> np.ndarray:
    """TIES per tensor, entry by entry: trim each tau to its top ceil(density·n) magnitudes (the
    earlier position wins a tie), elect the sign of the trimmed sum, average the agreeing kept values."""
    n = taus[0].size
    k = int(np.ceil(density * n))
    trimmed = []
    for t in taus:
        flat = np.asarray(t, np.float64).ravel()
        order = sorted(range(n), key=lambda i: (-abs(flat[i]), i))
        keep = np.zeros(n)
        for i in order[:k]:
            keep[i] = flat[i]
        trimmed.append(keep)
    out = np.zeros(n)
    for i in range(n):
        vals = [t[i] for t in trimmed]
        sign = np.sign(sum(vals))
        agree = [v for v in vals if v != 0 and np.sign(v) == sign]
        out[i] = sum(agree) / len(agree) if agree else 0.0
    return out.reshape(taus[0].shape)


def merge_dare(taus: list[np.ndarray], density: float, keeps: list[np.ndarray]) -> np.ndarray:
    """DARE given the keep masks: sum of tau·keep / density."""
    return sum(np.asarray(t, np.float64) * k / density for t, k in zip(taus, keeps, strict=True))


# ---- pruning ----


def sparsegpt(
    W: np.ndarray,
    X: np.ndarray,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT as the paper states it, column by column, in float64: no Cholesky, no lazy blocks.

    For column c, with F = {c, ..., in-1} the columns not yet visited, the inverse Hessian of the
    remaining columns is inverted explicitly, Hf = (H[F, F])⁻¹, and every row applies the OBS update
    w[F] -= ((w_c - q_c) / Hf[0, 0]) · Hf[0, :], where q_c is w_c kept or 0 pruned. The mask follows
    the paper's selection: per block of ``blocksize`` columns, chosen at the block's start from
    w_c² / Hf_c[0, 0] (exactly round(sparsity·out·i2) − round(sparsity·out·i1) lowest over the block,
    ties to the lower row-major index); for N:M, per row at each group's first column, from the
    current weights. H = 2XᵀX/tokens; dead inputs get H_jj = 1 and weight 0; damping
    ``percdamp``·mean(diag H).
    """
    W = np.array(W, np.float64)
    X = np.asarray(X, np.float64)
    out, n_in = W.shape
    H = 2.0 * X.T @ X / X.shape[0]
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H[np.diag_indices(n_in)] += percdamp * np.mean(np.diag(H))
    if nm is not None:
        blocksize = max(nm[1], blocksize - blocksize % nm[1])
    hf_diag = np.array([np.linalg.inv(H[c:, c:])[0, 0] for c in range(n_in)])
    prune = np.zeros((out, n_in), bool)
    for c in range(n_in):
        if nm is None and c % blocksize == 0:
            c2 = min(c + blocksize, n_in)
            score = (W[:, c:c2] ** 2 / hf_diag[None, c:c2]).ravel()
            k = round(sparsity * out * c2) - round(sparsity * out * c)
            order = sorted(range(score.size), key=lambda j: (score[j], j))[:k]
            flat = np.zeros(score.size, bool)
            flat[order] = True
            prune[:, c:c2] = flat.reshape(out, c2 - c)
        if nm is not None and c % nm[1] == 0:
            n, m = nm
            for i in range(out):
                sc = W[i, c : c + m] ** 2 / hf_diag[c : c + m]
                order = sorted(range(m), key=lambda j: (sc[j], j))[: m - n]
                prune[i, [c + j for j in order]] = True
        Hf = np.linalg.inv(H[c:, c:])
        q = np.where(prune[:, c], 0.0, W[:, c])
        W[:, c:] -= np.outer((W[:, c] - q) / Hf[0, 0], Hf[0, :])
        W[:, c] = q
    return W, ~prune


def reconstruction_error(W: np.ndarray, W_new: np.ndarray, X: np.ndarray) -> float:
    """Relative layer-wise reconstruction error ‖X Wᵀ − X Ŵᵀ‖_F / ‖X Wᵀ‖_F in float64."""
    X = np.asarray(X, np.float64)
    y = X @ np.asarray(W, np.float64).T
    return float(np.linalg.norm(y - X @ np.asarray(W_new, np.float64).T) / np.linalg.norm(y))


# ---- nn ops ----
# Written from the formulas (torch's LayerNorm/RMSNorm/GELU-tanh/SiLU/AdamW, Hugging Face's RoPE),
# in float64, with no chunking or tiling: the C kernels' blocking is what the tests check.

_F = np.float64


def layernorm_forward(x, w, b, eps=1e-5):
    """LayerNorm over the last axis: (y, mean, rstd)."""
    x = np.asarray(x, _F)
    mean = x.mean(axis=-1)
    var = ((x - mean[..., None]) ** 2).mean(axis=-1)
    rstd = 1.0 / np.sqrt(var + eps)
    return (x - mean[..., None]) * rstd[..., None] * np.asarray(w, _F) + np.asarray(b, _F), mean, rstd


def layernorm_backward(dy, x, w, mean, rstd):
    """(dx, dw, db) of layernorm_forward; dw, db summed over all leading axes."""
    x, g, w = np.asarray(x, _F), np.asarray(dy, _F), np.asarray(w, _F)
    xhat = (x - np.asarray(mean, _F)[..., None]) * np.asarray(rstd, _F)[..., None]
    lead = tuple(range(x.ndim - 1))
    gw = g * w
    dx = np.asarray(rstd, _F)[..., None] * (
        gw - gw.mean(axis=-1, keepdims=True) - xhat * (gw * xhat).mean(axis=-1, keepdims=True)
    )
    return dx, (g * xhat).sum(axis=lead), g.sum(axis=lead)


def rmsnorm_forward(x, w, eps=1e-6):
    """RMSNorm over the last axis: (y, rstd)."""
    x = np.asarray(x, _F)
    rstd = 1.0 / np.sqrt((x * x).mean(axis=-1) + eps)
    return x * rstd[..., None] * np.asarray(w, _F), rstd


def rmsnorm_backward(dy, x, w, rstd):
    """(dx, dw) of rmsnorm_forward."""
    x, g, w = np.asarray(x, _F), np.asarray(dy, _F), np.asarray(w, _F)
    rs = np.asarray(rstd, _F)[..., None]
    xhat = x * rs
    gw = g * w
    dx = rs * (gw - xhat * (gw * xhat).mean(axis=-1, keepdims=True))
    return dx, (g * xhat).sum(axis=tuple(range(x.ndim - 1)))


_GELU_K = np.sqrt(2.0 / np.pi)


def gelu_forward(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x = np.asarray(x, _F)
    return 0.5 * x * (1.0 + np.tanh(_GELU_K * (x + 0.044715 * x**3)))


def gelu_backward(dy, x):
    x = np.asarray(x, _F)
    t = np.tanh(_GELU_K * (x + 0.044715 * x**3))
    return np.asarray(dy, _F) * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_K * (1 + 3 * 0.044715 * x * x))


def swiglu_forward(gate, up):
    """silu(gate) * up."""
    g = np.asarray(gate, _F)
    return g / (1.0 + np.exp(-g)) * np.asarray(up, _F)


def swiglu_backward(dy, gate, up):
    g, u, d = np.asarray(gate, _F), np.asarray(up, _F), np.asarray(dy, _F)
    s = 1.0 / (1.0 + np.exp(-g))
    return d * u * s * (1 + g * (1 - s)), d * g * s


def rope_angles(T, D, theta=10000.0, offset=0, inv_freq=None):
    """(T, D/2) angles as Hugging Face computes them: float32 inverse frequencies times float32 positions."""
    if inv_freq is None:
        inv = (1.0 / theta ** (np.arange(0, D, 2, dtype=_F) / D)).astype(np.float32)
    else:
        inv = np.asarray(inv_freq, np.float32)
    pos = (np.arange(T, dtype=_F) + offset).astype(np.float32)
    return (pos[:, None] * inv[None, :]).astype(np.float32).astype(_F)


def rope_forward(x, theta=10000.0, offset=0, inverse=False, inv_freq=None):
    """x (B, T, H, D): x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1); inverse: the transpose."""
    x = np.asarray(x, _F)
    T, D = x.shape[1], x.shape[3]
    ang = rope_angles(T, D, theta, offset, inv_freq)
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[None, :, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[None, :, None, :]
    rot = np.concatenate([-x[..., D // 2 :], x[..., : D // 2]], axis=-1)
    if not inverse:
        return x * cos + rot * sin
    # the transpose of the rotation: rotate by the negative angle
    return x * cos - rot * sin


def attention_forward(q, k, v, causal=True, scale=None):
    """Softmax attention with the T x T matrix materialised: (o, lse); kv head of query head h is h // (H // Hkv)."""
    q, k, v = (np.asarray(a, _F) for a in (q, k, v))
    H, T, D = q.shape[1], q.shape[2], q.shape[3]
    g = H // k.shape[1]
    s = 1.0 / np.sqrt(D) if scale is None else scale
    kk, vv = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    S = s * q @ kk.transpose(0, 1, 3, 2)
    if causal:
        S = np.where(np.tril(np.ones((T, T), bool)), S, -np.inf)
    lse = np.log(np.exp(S - S.max(-1, keepdims=True)).sum(-1)) + S.max(-1)
    return np.exp(S - lse[..., None]) @ vv, lse


def attention_backward(do, q, k, v, causal=True, scale=None):
    """(dq, dk, dv) by the chain rule through the materialised softmax (no lse trick)."""
    q, k, v, do = (np.asarray(a, _F) for a in (q, k, v, do))
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    g = H // Hkv
    s = 1.0 / np.sqrt(D) if scale is None else scale
    kk, vv = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    S = s * q @ kk.transpose(0, 1, 3, 2)
    if causal:
        S = np.where(np.tril(np.ones((T, T), bool)), S, -np.inf)
    P = np.exp(S - S.max(-1, keepdims=True))
    P /= P.sum(-1, keepdims=True)
    dP = do @ vv.transpose(0, 1, 3, 2)
    dS = P * (dP - (dP * P).sum(-1, keepdims=True))
    dq = s * dS @ kk
    dk = (s * dS.transpose(0, 1, 3, 2) @ q).reshape(B, Hkv, g, T, D).sum(2)
    dv = (P.transpose(0, 1, 3, 2) @ do).reshape(B, Hkv, g, T, D).sum(2)
    return dq, dk, dv


def embedding_backward(dx, ids, V):
    """Dense (V, C): rows of dx summed per id."""
    dx = np.asarray(dx, _F)
    out = np.zeros((V, dx.shape[-1]))
    np.add.at(out, np.asarray(ids).reshape(-1), dx.reshape(-1, dx.shape[-1]))
    return out


def softmax_xent(logits, targets):
    """(mean loss, lse, dlogits for dloss = 1) of softmax cross-entropy, from the whole logits."""
    L = np.asarray(logits, _F)
    N = L.shape[0]
    m = L.max(axis=1)
    lse = m + np.log(np.exp(L - m[:, None]).sum(axis=1))
    t = np.asarray(targets)
    P = np.exp(L - lse[:, None])
    P[np.arange(N), t] -= 1.0
    return (lse - L[np.arange(N), t]).mean(), lse, P / N


def lm_head_xent(x, w, targets):
    """(loss, lse, dx, dw) of the mean cross-entropy of x w^T, the logits materialised whole."""
    x, w = np.asarray(x, _F), np.asarray(w, _F)
    loss, lse, dL = softmax_xent(x @ w.T, targets)
    return loss, lse, dL @ w, dL.T @ x


def adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """New (param, m, v) of one torch.optim.AdamW step, in float64 (inputs untouched)."""
    p, g = np.asarray(param, _F), np.asarray(grad, _F)
    m2 = beta1 * np.asarray(m, _F) + (1 - beta1) * g
    v2 = beta2 * np.asarray(v, _F) + (1 - beta2) * g * g
    p2 = p * (1 - lr * weight_decay)
    p2 = p2 - lr / (1 - beta1**step) * m2 / (np.sqrt(v2) / np.sqrt(1 - beta2**step) + eps)
    return p2, m2, v2


# ---- remat ----
def remat_dtr(
    memory, duration, preds, order, budget, once=None, heuristic="full", lookahead=False, keep=None
):
    """Twin of ``_core.remat_dtr``: DTR over ``order`` with eviction by h = cost / (memory * span).

    Every node is computed once in ``order``; non-resident inputs are rematerialized depth-first
    (inputs in ``preds`` order, in two passes: the missing inputs first, each held once back while
    the others stay evictable, then the rest held, rematerializing any evicted meanwhile). An output nobody can read again is freed at once. Before each
    computation, while it would not fit ``budget``, the resident node with the lowest h (ties: the
    lowest index) is evicted among those not read by a computation in progress, with memory > 0,
    not ``once`` and rematerializable (no freed ``once`` node among the freed ancestors it would
    need). cost = 1 + duration plus, for "full", 1 + duration of every node connected through
    non-resident nodes (towards inputs: any; towards users: those still needed), or for "eq" the
    duration sums of the union-find classes of its needed non-resident neighbours; span = steps
    since the last access, or with ``lookahead`` the order distance to the next first use.
    Returns (steps, peak, duration), or None when nothing can be evicted or the run needs more
    than 8 n + 1024 computations.

    ``heuristic="belady"`` (``lookahead`` ignored): a frame rematerializes its first missing input
    until all are resident; inputs of frames in progress are evicted only when nothing else can go,
    those of the computation about to run never; the evicted node has the highest
    memory * (next first use - t, or n + 1 - t) / (1 + duration + 1 + duration of each non-resident
    ancestor, x4 past 64); ties: the lowest index; more than 64 n + 1024 computations: None.

    ``heuristic="cone"``: Belady's eviction, but a computation's missing ancestors (reached through
    non-resident nodes) are rematerialized as one cone in order position, every read of the cone
    held as Belady's frames hold theirs; when the rest of the cone misses a node evicted meanwhile,
    the cone is collected again. Same computation limit.

    ``heuristic="largest"``: Belady, but a frame rematerializes the missing input with the largest
    Belady cost first (the first of equal ones), as Sethi-Ullman orders register allocation.

    ``heuristic="su"``: Belady's eviction, but a frame takes its inputs in Sethi-Ullman order of
    :func:`remat_su_need` minus memory (descending, stable): a resident one is held (never evicted)
    at once, a missing one rebuilt first; the inputs not reached yet are held as Belady's frames
    hold theirs. Same computation limit.

    ``keep`` (checkpoints): a node with ``keep[x]`` true is evicted only when no node without it
    can be (for "belady": after the other free nodes, before the inputs of frames in progress).
    """
    n = len(memory)
    once = [False] * n if once is None else [bool(x) for x in once]
    keep = [0] * n if keep is None else [int(bool(x)) for x in keep]
    succs = [[] for _ in range(n)]
    for v in range(n):
        for u in preds[v]:
            succs[u].append(v)
    pos = {v: t for t, v in enumerate(order)}
    once_anc = [False] * n
    for v in order:
        once_anc[v] = once[v] or any(once_anc[u] for u in preds[v])
    need = [len(succs[v]) for v in range(n)]
    resident, computed = [False] * n, [False] * n
    lock, last, spin = [0] * n, [0] * n, [0] * n
    parent, cls_cost = list(range(n)), [0] * n
    steps: list[int] = []
    state = {"cur": 0, "peak": 0, "total": 0, "clock": 0, "t": 0, "computes": 0}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    def evicted(x):
        return computed[x] and not resident[x] and need[x] > 0

    def join(x):
        cls_cost[find(x)] += duration[x]
        for u in preds[x] + succs[x]:
            if u != x and evicted(u):
                a, b = find(u), find(x)
                if a != b:
                    parent[a] = b
                    cls_cost[b] += cls_cost[a]

    def release(x):
        stack = [x]
        while stack:
            y = stack.pop()
            if resident[y]:
                steps.append(-1 - y)
                resident[y] = False
                state["cur"] -= memory[y]
                continue
            if heuristic == "eq":
                cls_cost[find(y)] -= duration[y]
            for u in preds[y]:
                need[u] -= 1
                if need[u] == 0:
                    stack.append(u)

    def cost(x):
        if heuristic == "eq":
            roots = {find(u) for u in preds[x] + succs[x] if evicted(u)}
            return duration[x] + 1.0 + sum(float(cls_cost[r]) for r in roots)
        seen, stack, c, visited = {x}, [x], duration[x] + 1.0, 0
        while stack:
            y = stack.pop()
            for direction, nbrs in ((0, preds[y]), (1, succs[y])):
                for u in nbrs:
                    if u in seen or resident[u] or (direction and need[u] == 0):
                        continue
                    seen.add(u)
                    c += duration[u] + 1.0
                    visited += 1
                    if visited >= 64:
                        return c * 4.0
                    stack.append(u)
        return c

    def rematerializable(x):
        stack, seen = [x], set()
        while stack:
            for u in preds[stack.pop()]:
                if u in seen or resident[u] or need[u] > 0:
                    continue
                if once[u]:
                    return False
                seen.add(u)
                stack.append(u)
        return True

    def span(x):
        if lookahead:
            later = [pos[c] for c in succs[x] if pos[c] > state["t"]]
            return float(min(later) - state["t"]) if later else float(n + 1)
        return float(state["clock"] - last[x] + 1)

    def evict(x):
        resident[x] = False
        state["cur"] -= memory[x]
        if heuristic == "eq":
            join(x)
        stack = [x]
        while stack:
            for u in preds[stack.pop()]:
                need[u] += 1
                if need[u] == 1 and not resident[u]:
                    if heuristic == "eq":
                        join(u)
                    stack.append(u)

    def evictable():
        # resident outputs that may go: not held by the running computation, not free, not
        # exactly-once, and recomputable from what stays
        return [
            x
            for x in range(n)
            if resident[x] and lock[x] == 0 and memory[x] > 0 and not once[x] and rematerializable(x)
        ]

    def make_room(nbytes):
        while state["cur"] + nbytes > budget:
            cands = evictable()
            if not cands:
                return False
            best = min(cands, key=lambda x: (keep[x], cost(x) / (memory[x] * span(x)), x))
            steps.append(-1 - best)
            evict(best)
        return True

    def belady_cost(x):
        seen, stack, c, visited = {x}, [x], duration[x] + 1.0, 0
        while stack:
            for u in preds[stack.pop()]:
                if u in seen or resident[u]:
                    continue
                seen.add(u)
                c += duration[u] + 1.0
                visited += 1
                if visited >= 64:
                    return c * 4.0
                stack.append(u)
        return c

    def belady_make_room(nbytes):
        # evict the highest memory * next-use distance / cost; inputs held by frames still
        # rematerializing (spin) only when no other node can go; the running computation's (lock) never
        while state["cur"] + nbytes > budget:
            cands = evictable()
            if not cands:
                return False

            def key(x, t=state["t"]):
                later = [pos[c] for c in succs[x] if pos[c] > t]
                dist = float(min(later) - t) if later else float(n + 1 - t)
                return (2 * (spin[x] > 0) + keep[x], -(float(memory[x]) * dist / belady_cost(x)), x)

            best = min(cands, key=key)
            steps.append(-1 - best)
            evict(best)
        return True

    def belady_materialize(v):
        frames = [v]
        for u in preds[v]:
            spin[u] += 1
        while frames:
            x = frames[-1]
            miss = [u for u in preds[x] if not resident[u]]
            if miss:
                if heuristic == "largest":  # the costliest cone first (the first of equals)
                    costs = [belady_cost(u) for u in miss]
                    miss = [miss[costs.index(max(costs))]]
                frames.append(miss[0])
                for u in preds[miss[0]]:
                    spin[u] += 1
                continue
            state["computes"] += 1
            if state["computes"] > 64 * n + 1024:
                return False
            for u in preds[x]:
                lock[u] += 1
            ok = belady_make_room(memory[x])
            for u in preds[x]:
                lock[u] -= 1
                spin[u] -= 1
            if not ok:
                return False
            steps.append(x)
            state["total"] += duration[x]
            resident[x] = True
            state["cur"] += memory[x]
            state["peak"] = max(state["peak"], state["cur"])
            was_evicted = computed[x]
            computed[x] = True
            frames.pop()
            if was_evicted:
                for u in preds[x]:
                    need[u] -= 1
                    if need[u] == 0:
                        release(u)
        return True

    su_need = remat_su_need(memory, preds, order) if heuristic == "su" else None

    def su_inputs(x):
        return sorted(preds[x], key=lambda u: -(su_need[u] - memory[u]))  # stable

    def su_materialize(v):
        frames = [[v, su_inputs(v), 0]]
        for u in preds[v]:
            spin[u] += 1
        while frames:
            x, ins, i = frames[-1]
            if i < len(ins):
                u = ins[i]
                if resident[u]:
                    lock[u] += 1
                    frames[-1][2] += 1
                else:
                    frames.append([u, su_inputs(u), 0])
                    for w in preds[u]:
                        spin[w] += 1
                continue
            state["computes"] += 1
            if state["computes"] > 64 * n + 1024 or not belady_make_room(memory[x]):
                return False
            for u in preds[x]:
                lock[u] -= 1
                spin[u] -= 1
            steps.append(x)
            state["total"] += duration[x]
            resident[x] = True
            state["cur"] += memory[x]
            state["peak"] = max(state["peak"], state["cur"])
            was_evicted = computed[x]
            computed[x] = True
            frames.pop()
            if was_evicted:
                for u in preds[x]:
                    need[u] -= 1
                    if need[u] == 0:
                        release(u)
        return True

    def cone_materialize(v):
        # the missing ancestors in order position, then v; every read of the cone held (spin); a
        # node evicted that the rest of the cone reads: collect the cone again
        while True:
            seen, stack, cone = {v}, [v], []
            while stack:
                x = stack.pop()
                if x != v:
                    cone.append(x)
                for u in preds[x]:
                    if not resident[u] and u not in seen:
                        seen.add(u)
                        stack.append(u)
            cone = [*sorted(cone, key=lambda x: pos[x]), v]
            for x in cone:
                for u in preds[x]:
                    spin[u] += 1
            i, missing = 0, False
            while i < len(cone):
                x = cone[i]
                if any(not resident[u] for u in preds[x]):
                    missing = True
                    break
                state["computes"] += 1
                if state["computes"] > 64 * n + 1024:
                    return False
                for u in preds[x]:
                    lock[u] += 1
                ok = belady_make_room(memory[x])
                for u in preds[x]:
                    lock[u] -= 1
                    spin[u] -= 1
                if not ok:
                    return False
                steps.append(x)
                state["total"] += duration[x]
                resident[x] = True
                state["cur"] += memory[x]
                state["peak"] = max(state["peak"], state["cur"])
                was_evicted = computed[x]
                computed[x] = True
                if was_evicted:
                    for u in preds[x]:
                        need[u] -= 1
                        if need[u] == 0:
                            release(u)
                i += 1
            for x in cone[i:]:
                for u in preds[x]:
                    spin[u] -= 1
            if not missing:
                return True

    def materialize(v):
        if heuristic in ("belady", "largest"):
            return belady_materialize(v)
        if heuristic == "cone":
            return cone_materialize(v)
        if heuristic == "su":
            return su_materialize(v)
        # two passes over a frame's inputs: missing ones first (held once back), then the rest
        frames = [[v, 0, set()]]
        while frames:
            x, i, held = frames[-1]
            deg = len(preds[x])
            if i < 2 * deg:
                u = preds[x][i % deg]
                if i % deg in held or (i < deg and resident[u]):
                    frames[-1][1] += 1
                elif resident[u]:
                    lock[u] += 1
                    held.add(i % deg)
                    frames[-1][1] += 1
                else:
                    frames.append([u, 0, set()])
                continue
            state["computes"] += 1
            if state["computes"] > 8 * n + 1024 or not make_room(memory[x]):
                return False
            steps.append(x)
            state["total"] += duration[x]
            resident[x] = True
            state["cur"] += memory[x]
            state["peak"] = max(state["peak"], state["cur"])
            state["clock"] += 1
            last[x] = state["clock"]
            was_evicted = computed[x]
            computed[x] = True
            frames.pop()
            for u in preds[x]:
                lock[u] -= 1
                last[u] = state["clock"]
            if was_evicted:
                if heuristic == "eq":
                    cls_cost[find(x)] -= duration[x]
                for u in preds[x]:
                    need[u] -= 1
                    if need[u] == 0:
                        release(u)
        return True

    for t, v in enumerate(order):
        state["t"] = t
        if not materialize(v):
            return None
        for u in preds[v]:
            need[u] -= 1
            if need[u] == 0:
                release(u)
        if need[v] == 0:
            release(v)
    return steps, state["peak"], state["total"]


def remat_su_need(memory, preds, order):
    """From-scratch memory need of each node when a frame rebuilds its inputs one at a time in
    order of need minus memory (descending), holding each once back: P(x) = max(max_i (memory of
    the inputs before i + P(input i)), memory of all inputs + memory(x)), by plain recursion."""
    need = [0] * len(memory)
    for x in order:
        ins = sorted(preds[x], key=lambda u: -(need[u] - memory[u]))
        held, best = 0, 0
        for u in ins:
            best = max(best, held + need[u])
            held += memory[u]
        need[x] = max(best, held + memory[x])
    return need


def remat_brute_force_general(memory, duration, preds, order, budget, once=None):
    """Least duration over ALL schedules whose first computations follow ``order`` (Dijkstra), or None.

    The class of the memory-cut bound (sparseft.remat.bounds): the node at position k of
    ``order`` is the k-th node computed for the first time; any already computed node (not
    ``once``) may be recomputed at any time, in any order, and frees are allowed anywhere. A
    computation needs its inputs resident and itself not, and the resident memory including its
    output within ``budget``. The state is (number of nodes computed so far, resident set).
    Exponential: for graphs of at most ~8 nodes.
    """
    import heapq

    n = len(memory)
    once = [False] * n if once is None else [bool(x) for x in once]
    pmask = [sum(1 << u for u in preds[v]) for v in range(n)]

    def mem_of(mask):
        return sum(memory[v] for v in range(n) if mask >> v & 1)

    dist = {(0, 0): 0}
    heap = [(0, (0, 0))]
    while heap:
        d, state = heapq.heappop(heap)
        if dist.get(state) != d:
            continue
        k, mask = state
        if k == n:
            return d
        moves = [(0, (k, mask & ~(1 << v))) for v in range(n) if mask >> v & 1]
        cands = [(order[k], k + 1)] + [(u, k) for u in order[:k] if not once[u]]
        for v, k2 in cands:
            if mask >> v & 1 or (pmask[v] & mask) != pmask[v]:
                continue
            new = mask | 1 << v
            if mem_of(new) <= budget:
                moves.append((duration[v], (k2, new)))
        for c, nxt in moves:
            nd = d + c
            if nd < dist.get(nxt, 1 << 62):
                dist[nxt] = nd
                heapq.heappush(heap, (nd, nxt))
    return None
