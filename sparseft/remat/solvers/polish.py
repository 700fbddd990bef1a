"""Local search over a found schedule with the C simulator: drop recomputations that are not needed.

Moves, on the compute sequence (frees are re-derived: each copy is freed right after its last
read, ``remat_compact``):

- **drop**: delete one recomputation of ``u``; the copy before it then serves its reads (it stays
  resident longer). Kept when the schedule stays valid and within the budget: it saves
  ``duration(u)``. Tried most expensive first.
- **delay**: move one recomputation of ``u`` to just before its first reader, among that
  stage's recomputations in order position. Same duration; kept when the memory-time integral
  (sum of the step memories) falls, which frees room for later drops.

Both keep the first computations where they are and recomputations in order position inside a
stage, so a stage schedule stays one (a Moccasin hint stays a hint) and a general one (DTR) stays
valid. Every candidate is checked by the simulator; ``once`` nodes are never recomputed, so no
move touches them.
"""

from __future__ import annotations

import time

import numpy as np

from sparseft import _core
from sparseft.remat.graph import Graph


def _evaluate(g: Graph, seq: list[int]) -> tuple[int, int, int] | None:
    """(peak, duration, memory-time integral) of a compute sequence, None if invalid."""
    codes = _core.remat_compact(np.array(seq, dtype=np.int64), g.pred_ptr, g.pred_idx, g.n)
    rc, peak, dur, _, _, prof = _core.remat_simulate(
        codes, g.memory, g.duration, g.pred_ptr, g.pred_idx, profile=True
    )
    if rc != 0:
        return None
    return int(peak), int(dur), int(np.asarray(prof).sum())


def polish(g: Graph, budget: int, codes: np.ndarray, *, time_limit: float = 5.0) -> np.ndarray:
    """Improve a valid in-budget schedule of ``g`` (int64 codes, frees as ``-1 - v``) by the
    drop and delay moves until neither applies or ``time_limit`` seconds pass; returns the
    compacted codes of a schedule at most as long (the input if nothing applies)."""
    t_end = time.perf_counter() + time_limit
    seq = [int(c) for c in np.asarray(codes).tolist() if c >= 0]
    cur = _evaluate(g, seq)
    if cur is None or cur[0] > budget:
        return np.asarray(codes, dtype=np.int64)
    dur = g.duration
    order_pos = np.empty(g.n, dtype=np.int64)
    order_pos[g.order_idx] = np.arange(g.n)
    preds = g._preds
    changed = True
    while changed and time.perf_counter() < t_end:
        changed = False
        # drop: recomputations (not first computations), most expensive first
        seen: set[int] = set()
        recs = []
        for i, v in enumerate(seq):
            if v in seen:
                recs.append(i)
            seen.add(v)
        recs.sort(key=lambda i: -int(dur[seq[i]]))
        for i in recs:
            if time.perf_counter() > t_end:
                break
            cand = seq[:i] + seq[i + 1 :]
            r = _evaluate(g, cand)
            if r is not None and r[0] <= budget and r[1] < cur[1]:
                seq, cur, changed = cand, r, True
                break
        if changed:
            continue
        # delay: a recomputation to just before its first reader (within that reader's stage)
        seen.clear()
        first = [False] * len(seq)
        for i, v in enumerate(seq):
            first[i] = v not in seen
            seen.add(v)
        for i in range(len(seq)):
            if first[i] or time.perf_counter() > t_end:
                continue
            u = seq[i]
            j = next((k for k in range(i + 1, len(seq)) if u in preds[seq[k]] or seq[k] == u), None)
            if j is None or seq[j] == u:
                continue
            # the start of j's stage: after the last first computation before j
            s = j
            while s > i + 1 and not first[s - 1]:
                s -= 1
            if s <= i + 1:
                continue  # already in the reader's stage
            k = s
            while k < j and order_pos[seq[k]] < order_pos[u]:
                k += 1
            cand = seq[:i] + seq[i + 1 : k] + [u] + seq[k:]
            r = _evaluate(g, cand)
            if r is not None and r[0] <= budget and r[1] <= cur[1] and r[2] < cur[2]:
                seq, cur, changed = cand, r, True
                break
    return _core.remat_compact(np.array(seq, dtype=np.int64), g.pred_ptr, g.pred_idx, g.n)
