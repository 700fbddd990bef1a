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
