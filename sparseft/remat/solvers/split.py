"""Peak shaving by splitting retention intervals: a heuristic for the stage schedule class.

Start from the schedule without recomputation (every node computed once, in order, kept until
its last read). While some computation runs over the budget, take the event with the most
memory and cut one copy that is live across it but not read there: the copy is freed after its
last read before the event and computed again (in the stage of its next read, before that read)
from inputs that are live at that time. The cut chosen removes the most over-budget memory
(net of what the inputs recomputed for it add) per unit of recomputation. Times are the stage grid of
:mod:`sparseft.remat.solvers.moccasin` (stage t, order position p -> ``t * n + p``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sparseft.remat.graph import Graph


def split_heuristic(
    g: Graph, budget: int, max_cuts: int | None = None, time_limit: float = 10.0
) -> list[int] | None:
    """Compute sequence (node indices, stage-structured) within ``budget``, or None if stuck
    (or out of ``time_limit`` seconds)."""
    deadline = time.perf_counter() + time_limit
    n = g.n
    order = g.order_idx
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    mem = g.memory.astype(np.int64)
    dur = g.duration
    preds = g._preds
    # copies: node, start, reads (sorted times); end = last read + 1 (start + 1 without reads)
    node: list[int] = []
    start: list[int] = []
    reads: list[list[int]] = []
    live_of: list[list[int]] = [[] for _ in range(n)]  # copy ids per node
    for v in range(n):
        p = int(pos[v])
        node.append(v)
        start.append(p * (n + 1))
        reads.append(sorted(int(pos[s]) * (n + 1) for s in g._succs[v]))
        live_of[v].append(v)
    limit = max_cuts if max_cuts is not None else 4 * n + 16
    for _ in range(limit):
        if time.perf_counter() > deadline:
            return None
        st = np.array(start, dtype=np.int64)
        en = np.array([r[-1] + 1 if r else s + 1 for s, r in zip(start, reads, strict=True)], dtype=np.int64)
        mm = mem[np.array(node, dtype=np.int64)]
        times = np.unique(st)
        delta = np.zeros(len(times) + 1, dtype=np.int64)
        np.add.at(delta, np.searchsorted(times, st, "left"), mm)
        np.add.at(delta, np.searchsorted(times, en, "left"), -mm)
        prof = np.cumsum(delta[:-1])
        excess = np.maximum(prof - budget, 0)
        if excess.max() <= 0:
            order_idx = np.argsort(st, kind="stable")
            return [node[c] for c in order_idx.tolist()]
        best = None
        for depth in (4, 64):
            best = _best_cut(
                depth,
                prof,
                excess,
                times,
                st,
                en,
                start,
                reads,
                node,
                live_of,
                mem,
                dur,
                pos,
                preds,
                n,
                budget,
                g._once,
            )
            if best is not None:
                break
        if best is None:
            return None
        _, c, nxt, t_new, (new_copies, feeds) = best
        v = node[c]
        reads[c], move = [x for x in reads[c] if x < nxt], [x for x in reads[c] if x >= nxt]
        created = {v: t_new, **new_copies}
        ids = {}
        for x, tx in created.items():
            ids[x] = len(node)
            node.append(x)
            start.append(tx)
            reads.append(list(move) if x == v else [])
            live_of[x].append(ids[x])
        # reads of the inputs: existing copies get a read, new copies get theirs
        for src, when in feeds:
            if isinstance(src, tuple):
                reads[ids[src[1]]].append(when)
            else:
                reads[src].append(when)
        for x in created:
            reads[ids[x]].sort()
        for src, _ in feeds:
            if not isinstance(src, tuple):
                reads[src].sort()
    return None


def _end(s: int, r: list[int]) -> int:
    return r[-1] + 1 if r else s + 1


def _live(w: int, t: int, start: list[int], reads: list[list[int]], live_of: list[list[int]]) -> int | None:
    """The copy of w live at time t, if any."""
    return next((d for d in live_of[w] if start[d] < t < _end(start[d], reads[d])), None)


def _plan_inputs(
    v: int,
    t_v: int,
    stage: int,
    n: int,
    pos: np.ndarray,
    preds: list[list[int]],
    start: list[int],
    reads: list[list[int]],
    live_of: list[list[int]],
    once: np.ndarray,
    limit: int = 64,
) -> tuple[dict[int, int], list[tuple[object, int]]] | None:
    """Inputs needed to recompute v at t_v: missing ones are recomputed in the same stage.

    Returns (new copies {node: time}, reads [(copy id | ("new", node), time)]) or None (also
    when an input to recompute is marked ``once``).
    """
    new: dict[int, int] = {}
    feeds: list[tuple[object, int]] = []
    todo = [(v, t_v)]
    # walk the missing inputs, recomputing them earlier in the same stage
    while todo:
        x, tx = todo.pop()
        for w in preds[x]:
            if w in new:
                feeds.append((("new", w), tx))
                continue
            d = _live(w, tx, start, reads, live_of)
            if d is not None:
                feeds.append((d, tx))
                continue
            t_w = stage * n + int(pos[w])
            d = next((d for d in live_of[w] if start[d] == t_w), None)
            if d is not None:  # w is already computed in this slot: read that copy longer
                feeds.append((d, tx))
                continue
            if len(new) >= limit or int(pos[w]) >= stage or once[w]:
                return None
            new[w] = t_w
            feeds.append((("new", w), tx))
            todo.append((w, new[w]))
    return new, feeds


def _best_cut(
    depth: int,
    prof: np.ndarray,
    excess: np.ndarray,
    times: np.ndarray,
    st: np.ndarray,
    en: np.ndarray,
    start: list[int],
    reads: list[list[int]],
    node: list[int],
    live_of: list[list[int]],
    mem: np.ndarray,
    dur: np.ndarray,
    pos: np.ndarray,
    preds: list[list[int]],
    n: int,
    budget: int,
    g_once: np.ndarray,
) -> Any:
    """The best interval cut at the fullest over-budget events (None if there is none)."""
    best: Any = None
    # the fullest events first; at each, the copies live across it but not read there
    for k in np.argsort(-prof, kind="stable")[:64].tolist():
        if excess[k] <= 0:
            break
        tau = int(times[k])
        for c in np.nonzero((st < tau) & (en > tau))[0].tolist():
            r = reads[c]
            if tau in r:
                continue
            nxt = next((x for x in r if x > tau), None)
            if nxt is None:
                continue
            last_before = max([x for x in r if x < tau], default=start[c])
            v = node[c]
            if g_once[v]:  # computed exactly once: its copy cannot be cut
                continue
            # recompute as late as possible: in the stage of the next read, or earlier (but
            # after tau) where its inputs are live or cheap to rebuild
            plan = None
            for stage in range(nxt // n, tau // n, -1):
                t_new = stage * n + int(pos[v])
                if t_new >= nxt or t_new <= tau:
                    continue
                plan = _plan_inputs(
                    v, t_new, stage, n, pos, preds, start, reads, live_of, g_once, limit=depth
                )
                if plan is not None:
                    break
            if plan is None:
                continue
            cost = float(dur[v]) + sum(float(dur[w]) for w in plan[0]) + 1.0
            lo = int(np.searchsorted(times, last_before, "right"))
            hi = int(np.searchsorted(times, t_new, "left"))
            gain = int(np.minimum(excess[lo:hi], mem[v]).sum()) if hi > lo else 0
            # the inputs recomputed for it are live from their slot to their last read: they
            # add over-budget memory there (cutting is not free of memory)
            for w, t_w in plan[0].items():
                last = max(when for src, when in plan[1] if src == ("new", w))
                a = int(np.searchsorted(times, t_w, "left"))
                z = int(np.searchsorted(times, last, "right"))
                if z > a:
                    gain -= int((np.maximum(prof[a:z] + mem[w] - budget, 0) - excess[a:z]).sum())
            if gain <= 0:
                continue
            score = gain / cost
            if best is None or score > best[0]:
                best = (score, c, nxt, t_new, plan)
        if best is not None:
            break
    return best
