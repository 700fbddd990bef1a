"""Local search over a found schedule with the C simulator: drop recomputations that are not needed.

Moves, on the compute sequence (frees are re-derived: each copy is freed right after its last
read, ``remat_compact``):

- **drop**: delete one recomputation of ``u``; the copy before it then serves its reads (it stays
  resident longer). Kept when the schedule stays valid and within the budget: it saves
  ``duration(u)``. Tried most expensive first.
- **swap**: drop one recomputation of ``u`` and, at the first step that then overflows the
  budget, recompute instead a resident node ``w`` cheaper than ``u`` before its next reader (so
  ``w`` is freed after its last read before the overflow); up to four such nodes in a chain,
  while their durations add up to less than ``u``'s. Resident nodes are tried cheapest per byte
  first; the one that pushes the first overflow furthest is kept.
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

_SWAP_DEPTH = 4  # nodes recomputed instead of one dropped recomputation, at most
_SWAP_CANDIDATES = 24  # resident nodes tried at each overflow, cheapest per byte first


def _evaluate(g: Graph, seq: list[int]) -> tuple[int, int, int] | None:
    """(peak, duration, memory-time integral) of a compute sequence, None if invalid."""
    codes = _core.remat_compact(np.array(seq, dtype=np.int64), g.pred_ptr, g.pred_idx, g.n)
    rc, peak, dur, _, _, prof = _core.remat_simulate(
        codes, g.memory, g.duration, g.pred_ptr, g.pred_idx, profile=True
    )
    if rc != 0:
        return None
    return int(peak), int(dur), int(np.asarray(prof).sum())


def polish(
    g: Graph, budget: int, codes: np.ndarray, *, time_limit: float = 5.0, max_copies: int | None = None
) -> np.ndarray:
    """Improve a valid in-budget schedule of ``g`` (int64 codes, frees as ``-1 - v``) by the
    drop, swap and delay moves until none applies or ``time_limit`` seconds pass; returns the
    compacted codes of a schedule at most as long (the input if nothing applies). With
    ``max_copies``, a swap never computes a node more often than that (a Moccasin hint stays in
    the model's class)."""
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
        # swap: drop a recomputation of u, and make room where that overflows by recomputing a
        # cheaper resident w later instead (w freed after its last read before the overflow)
        for i in recs:
            if time.perf_counter() > t_end or changed:
                break
            sw = _swap(g, budget, seq, i, order_pos, cur[1], max_copies)
            if sw is not None:
                seq, cur, changed = sw[0], sw[1], True
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


def _profile(g: Graph, seq: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """(compacted codes, memory profile) of a compute sequence, None if invalid."""
    codes = _core.remat_compact(np.array(seq, dtype=np.int64), g.pred_ptr, g.pred_idx, g.n)
    rc, _, _, _, _, prof = _core.remat_simulate(codes, g.memory, g.duration, g.pred_ptr, g.pred_idx, profile=True)
    return None if rc != 0 else (codes, np.asarray(prof))


def _swap(
    g: Graph,
    budget: int,
    seq: list[int],
    i: int,
    order_pos: np.ndarray,
    cur_dur: int,
    max_copies: int | None,
) -> tuple[list[int], tuple[int, int, int]] | None:
    """Drop the recomputation at ``seq[i]``; at the first step over budget, recompute a resident
    node cheaper than what is left of the saving (cheapest per byte first) before its next reader
    instead, keeping the one that pushes the first overflow furthest; up to ``_SWAP_DEPTH``
    such nodes, while the total stays cheaper than the dropped recomputation."""
    u = seq[i]
    dur = g.duration
    mem = g.memory
    preds = g._preds
    trial = seq[:i] + seq[i + 1 :]
    left = int(dur[u])
    for _ in range(_SWAP_DEPTH):
        pr = _profile(g, trial)
        if pr is None:
            return None
        codes, prof = pr
        over = np.nonzero(prof > budget)[0]
        if len(over) == 0:
            r = _evaluate(g, trial)
            return (trial, r) if r is not None and r[1] < cur_dur else None
        x = int(over[0])
        codes_l = codes.tolist()
        resident: set[int] = set()
        for c in codes_l[:x]:
            if c >= 0:
                resident.add(c)
            else:
                resident.discard(-1 - c)
        v = codes_l[x]
        base = [c for c in codes_l if c >= 0]
        xi = sum(1 for c in codes_l[:x] if c >= 0)  # index of v's computation in base
        keep = set(preds[v]) | {v}
        count = np.bincount(np.array(base, dtype=np.int64), minlength=g.n)
        ws = [
            w
            for w in resident
            if w not in keep
            and not g._once[w]
            and dur[w] < left
            and mem[w] > 0
            and (max_copies is None or count[w] < max_copies)
        ]
        ws.sort(key=lambda w: float(dur[w]) / float(mem[w]))
        first = []
        seen: set[int] = set()
        for c in base:
            first.append(c not in seen)
            seen.add(c)
        best: tuple[int, list[int], int] | None = None  # (first overflow step or len, trial, w)
        for w in ws[:_SWAP_CANDIDATES]:
            j = next((k for k in range(xi + 1, len(base)) if w in preds[base[k]] or base[k] == w), None)
            if j is None or base[j] == w:
                continue
            s = j
            while s > xi + 1 and not first[s - 1]:
                s -= 1
            k = s
            while k < j and order_pos[base[k]] < order_pos[w]:
                k += 1
            t2 = [*base[:k], w, *base[k:]]
            p2 = _profile(g, t2)
            if p2 is None:
                continue
            o2 = np.nonzero(p2[1] > budget)[0]
            reach = len(p2[1]) + 1 if len(o2) == 0 else int(o2[0])
            if reach <= x:
                continue
            if len(o2) == 0:
                r = _evaluate(g, t2)
                if r is not None and r[1] < cur_dur:
                    return t2, r
                continue
            if best is None or reach > best[0]:
                best = (reach, t2, w)
        if best is None:
            return None
        trial = best[1]
        left -= int(dur[best[2]])
        if left <= 0:
            return None
    return None
