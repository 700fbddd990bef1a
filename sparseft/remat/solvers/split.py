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
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparseft.remat.graph import Graph


@dataclass
class _Copies:
    """The copies (retention intervals) of the schedule being shaved, and the graph facts a cut needs.

    Copy ``c`` holds node ``node[c]`` from ``start[c]`` to just after its last read (``reads[c]``,
    sorted times; ``start[c] + 1`` without reads); ``live_of[v]`` lists the copies of node ``v``.
    """

    node: list[int]
    start: list[int]
    reads: list[list[int]]
    live_of: list[list[int]]
    mem: np.ndarray
    dur: np.ndarray
    pos: np.ndarray
    preds: list[list[int]]
    once: np.ndarray
    n: int
    budget: int


@dataclass
class _Profile:
    """Memory over the event times of the current copies (``prof``), its part over the budget
    (``excess``), and each copy's start and end (``st``, ``en``)."""

    prof: np.ndarray
    excess: np.ndarray
    times: np.ndarray
    st: np.ndarray
    en: np.ndarray


def split_heuristic(
    g: Graph, budget: int, max_cuts: int | None = None, time_limit: float = 10.0
) -> list[int] | None:
    """Compute sequence (node indices, stage-structured) within ``budget``, or None if stuck
    (or out of ``time_limit`` seconds)."""
    deadline = time.perf_counter() + time_limit
    n = g.n
    pos = np.empty(n, dtype=np.int64)
    pos[g.order_idx] = np.arange(n)
    cp = _Copies(
        node=list(range(n)),
        start=[int(pos[v]) * (n + 1) for v in range(n)],
        reads=[sorted(int(pos[s]) * (n + 1) for s in g._succs[v]) for v in range(n)],
        live_of=[[v] for v in range(n)],
        mem=g.memory.astype(np.int64),
        dur=g.duration,
        pos=pos,
        preds=g._preds,
        once=g._once,
        n=n,
        budget=budget,
    )
    limit = max_cuts if max_cuts is not None else 4 * n + 16
    for _ in range(limit):
        if time.perf_counter() > deadline:
            return None
        pr = _profile(cp)
        if pr.excess.max() <= 0:
            order_idx = np.argsort(pr.st, kind="stable")
            return [cp.node[c] for c in order_idx.tolist()]
        best = None
        for depth in (4, 64):
            best = _best_cut(depth, cp, pr)
            if best is not None:
                break
        if best is None:
            return None
        _apply_cut(cp, best)
    return None


def _profile(cp: _Copies) -> _Profile:
    st = np.array(cp.start, dtype=np.int64)
    en = np.array([_end(s, r) for s, r in zip(cp.start, cp.reads, strict=True)], dtype=np.int64)
    mm = cp.mem[np.array(cp.node, dtype=np.int64)]
    times = np.unique(st)
    delta = np.zeros(len(times) + 1, dtype=np.int64)
    np.add.at(delta, np.searchsorted(times, st, "left"), mm)
    np.add.at(delta, np.searchsorted(times, en, "left"), -mm)
    prof = np.cumsum(delta[:-1])
    return _Profile(prof, np.maximum(prof - cp.budget, 0), times, st, en)


def _apply_cut(cp: _Copies, cut: Any) -> None:
    """Free copy c after its last read before ``nxt`` and compute node and missing inputs again."""
    _, c, nxt, t_new, (new_copies, feeds) = cut
    v = cp.node[c]
    cp.reads[c], move = [x for x in cp.reads[c] if x < nxt], [x for x in cp.reads[c] if x >= nxt]
    created = {v: t_new, **new_copies}
    ids = {}
    for x, tx in created.items():
        ids[x] = len(cp.node)
        cp.node.append(x)
        cp.start.append(tx)
        cp.reads.append(list(move) if x == v else [])
        cp.live_of[x].append(ids[x])
    # reads of the inputs: existing copies get a read, new copies get theirs
    for src, when in feeds:
        if isinstance(src, tuple):
            cp.reads[ids[src[1]]].append(when)
        else:
            cp.reads[src].append(when)
    for x in created:
        cp.reads[ids[x]].sort()
    for src, _ in feeds:
        if not isinstance(src, tuple):
            cp.reads[src].sort()


def _end(s: int, r: list[int]) -> int:
    return r[-1] + 1 if r else s + 1


def _live(cp: _Copies, w: int, t: int) -> int | None:
    """The copy of w live at time t, if any."""
    return next((d for d in cp.live_of[w] if cp.start[d] < t < _end(cp.start[d], cp.reads[d])), None)


def _plan_inputs(
    cp: _Copies, v: int, t_v: int, stage: int, limit: int = 64
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
        for w in cp.preds[x]:
            if w in new:
                feeds.append((("new", w), tx))
                continue
            d = _live(cp, w, tx)
            if d is not None:
                feeds.append((d, tx))
                continue
            t_w = stage * cp.n + int(cp.pos[w])
            d = next((d for d in cp.live_of[w] if cp.start[d] == t_w), None)
            if d is not None:  # w is already computed in this slot: read that copy longer
                feeds.append((d, tx))
                continue
            if len(new) >= limit or int(cp.pos[w]) >= stage or cp.once[w]:
                return None
            new[w] = t_w
            feeds.append((("new", w), tx))
            todo.append((w, new[w]))
    return new, feeds


def _best_cut(depth: int, cp: _Copies, pr: _Profile) -> Any:
    """The best interval cut at the fullest over-budget events (None if there is none)."""
    best: Any = None
    n, times, prof, excess = cp.n, pr.times, pr.prof, pr.excess
    # the fullest events first; at each, the copies live across it but not read there
    for k in np.argsort(-prof, kind="stable")[:64].tolist():
        if excess[k] <= 0:
            break
        tau = int(times[k])
        for c in np.nonzero((pr.st < tau) & (pr.en > tau))[0].tolist():
            r = cp.reads[c]
            if tau in r:
                continue
            nxt = next((x for x in r if x > tau), None)
            if nxt is None:
                continue
            last_before = max([x for x in r if x < tau], default=cp.start[c])
            v = cp.node[c]
            if cp.once[v]:  # computed exactly once: its copy cannot be cut
                continue
            # recompute as late as possible: in the stage of the next read, or earlier (but
            # after tau) where its inputs are live or cheap to rebuild
            plan = None
            for stage in range(nxt // n, tau // n, -1):
                t_new = stage * n + int(cp.pos[v])
                if t_new >= nxt or t_new <= tau:
                    continue
                plan = _plan_inputs(cp, v, t_new, stage, limit=depth)
                if plan is not None:
                    break
            if plan is None:
                continue
            cost = float(cp.dur[v]) + sum(float(cp.dur[w]) for w in plan[0]) + 1.0
            lo = int(np.searchsorted(times, last_before, "right"))
            hi = int(np.searchsorted(times, t_new, "left"))
            gain = int(np.minimum(excess[lo:hi], cp.mem[v]).sum()) if hi > lo else 0
            # the inputs recomputed for it are live from their slot to their last read: they
            # add over-budget memory there (cutting is not free of memory)
            for w, t_w in plan[0].items():
                last = max(when for src, when in plan[1] if src == ("new", w))
                a = int(np.searchsorted(times, t_w, "left"))
                z = int(np.searchsorted(times, last, "right"))
                if z > a:
                    gain -= int((np.maximum(prof[a:z] + cp.mem[w] - cp.budget, 0) - excess[a:z]).sum())
            if gain <= 0:
                continue
            score = gain / cost
            if best is None or score > best[0]:
                best = (score, c, nxt, t_new, plan)
        if best is not None:
            break
    return best
