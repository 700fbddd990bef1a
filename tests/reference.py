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


# ---- remat ----
def remat_dtr(memory, duration, preds, order, budget, once=None, heuristic="full", lookahead=False):
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
    """
    n = len(memory)
    once = [False] * n if once is None else [bool(x) for x in once]
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
    lock, last = [0] * n, [0] * n
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

    def make_room(nbytes):
        while state["cur"] + nbytes > budget:
            cands = [
                x
                for x in range(n)
                if resident[x] and lock[x] == 0 and memory[x] > 0 and not once[x] and rematerializable(x)
            ]
            if not cands:
                return False
            best = min(cands, key=lambda x: (cost(x) / (memory[x] * span(x)), x))
            steps.append(-1 - best)
            evict(best)
        return True

    def materialize(v):
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
