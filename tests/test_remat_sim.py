"""The C schedule simulator and eager-free rewrite against the pure-Python reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseft as sft
from sparseft import _core

from . import reference as ref


def preds_of(g: sft.Graph) -> list[list[int]]:
    return [[int(u) for u in g.pred_idx[g.pred_ptr[v] : g.pred_ptr[v + 1]]] for v in range(g.n)]


def csim(g: sft.Graph, steps: list[int], profile: bool = True):
    return _core.remat_simulate(
        np.array(steps, dtype=np.int64), g.memory, g.duration, g.pred_ptr, g.pred_idx, profile=profile
    )


@st.composite
def dag_and_steps(draw):
    """A random DAG and a random (possibly invalid) schedule biased towards valid steps."""
    n = draw(st.integers(1, 9))
    edges = [(u, v) for v in range(n) for u in range(v) if draw(st.booleans()) and draw(st.booleans())]
    mem = draw(st.lists(st.integers(0, 50), min_size=n, max_size=n))
    dur = draw(st.lists(st.integers(0, 50), min_size=n, max_size=n))
    g = sft.Graph(list(range(n)), edges, mem, dur)
    preds = preds_of(g)
    resident: set[int] = set()
    steps: list[int] = []
    for _ in range(draw(st.integers(0, 40))):
        v = draw(st.integers(0, n - 1))
        if draw(st.integers(0, 9)) == 0:  # sometimes an arbitrary (maybe invalid) step
            steps.append(v if draw(st.booleans()) else -1 - v)
            continue
        if v in resident:
            steps.append(-1 - v)
            resident.discard(v)
        elif all(u in resident for u in preds[v]):
            steps.append(v)
            resident.add(v)
    if draw(st.booleans()):  # complete it: compute everything in order once more
        for v in g.order_idx.tolist():
            if v not in resident:
                for u in preds[v]:
                    if u not in resident:
                        break
                else:
                    steps.append(v)
                    resident.add(v)
    return g, steps


@settings(max_examples=300, deadline=None)
@given(dag_and_steps())
def test_simulator_matches_reference(case) -> None:
    g, steps = case
    rc, peak, dur, bad_step, _, prof = csim(g, steps)
    try:
        rpeak, rdur, rprof = ref.remat_simulate(steps, g.memory.tolist(), g.duration.tolist(), preds_of(g))
    except ValueError as exc:
        assert rc != 0, f"C accepted a schedule the reference rejects: {exc}"
        first_bad = int(str(exc).rsplit(" ", 1)[-1]) if "step" in str(exc) else None
        if first_bad is not None:
            assert bad_step == first_bad
        return
    assert rc == 0
    assert (peak, dur) == (rpeak, rdur)
    assert prof.tolist() == rprof


@settings(max_examples=200, deadline=None)
@given(dag_and_steps())
def test_compact_never_worse_and_valid(case) -> None:
    g, steps = case
    rc, peak, dur, *_ = csim(g, steps, profile=False)
    if rc != 0:
        return
    out = _core.remat_compact(np.array(steps, dtype=np.int64), g.pred_ptr, g.pred_idx, g.n)
    rpeak, rdur, _ = ref.remat_simulate(out.tolist(), g.memory.tolist(), g.duration.tolist(), preds_of(g))
    assert rpeak <= peak and rdur <= dur
    # every copy is freed right after its last use: nothing is left resident at the end
    assert sum(1 for s in out if s >= 0) == sum(1 for s in out if s < 0)


def test_error_codes_and_messages() -> None:
    g = sft.Graph(["a", "b", "c"], [("a", "b"), ("b", "c")], [1, 2, 3], [1, 1, 1])
    rc, peak, dur, *_ = csim(g, [0, 1, -1, 2])
    assert (rc, peak, dur) == (0, 5, 3)
    assert csim(g, [0, 2])[0] == 2 and csim(g, [0, 2])[4] == 1  # missing input b
    assert csim(g, [0, 0])[0] == 3  # already resident
    assert csim(g, [-2])[0] == 4  # free of a non-resident node
    assert csim(g, [0, 1])[0] == 5  # c never computed
    assert csim(g, [7])[0] == 1  # not a node
    with pytest.raises(
        ValueError,
        match=r"steps\[1\] \(compute 'c'\) computes a node whose input is not resident \(missing input 'b'\)",
    ):
        sft.simulate(g, [("compute", "a"), ("compute", "c")])
    with pytest.raises(ValueError, match=r"steps\[0\] \(free 'b'\) frees a node that is not resident"):
        sft.simulate(g, [("free", "b")])
    with pytest.raises(ValueError, match=r"steps never computes a node: 'c'"):
        sft.simulate(g, [("compute", "a"), ("compute", "b")])
    with pytest.raises(ValueError, match=r"steps\[0\] names node 'zz', which is not in the graph"):
        sft.simulate(g, [("compute", "zz")])
    with pytest.raises(ValueError, match=r"steps\[0\]: operation must be \"compute\" or \"free\", got 'run'"):
        sft.simulate(g, [("run", "a")])
    with pytest.raises(TypeError, match=r"graph must be a sparseft.Graph, got list"):
        sft.simulate([], [])  # type: ignore[arg-type]
    assert sft.simulate(g, [("compute", "a"), ("compute", "b"), ("free", "a"), ("compute", "c")]) == (5, 3)


def test_simulate_steps_type_errors() -> None:
    g = sft.Graph([0, 1], [(0, 1)], [1, 2], [1, 1])
    with pytest.raises(
        TypeError, match=r'steps must be a list of \("compute" \| "free", node\) pairs, got NoneType'
    ):
        sft.simulate(g, None)
    with pytest.raises(TypeError, match=r"steps must be a list .* got int"):
        sft.simulate(g, 3)
    # bools are never node ids (Graph rejects them), although True == 1
    with pytest.raises(
        TypeError, match=r"steps\[1\]: node must be a node id \(an int or str\), got bool True"
    ):
        sft.simulate(g, [("compute", 0), ("compute", True)])
    with pytest.raises(TypeError, match=r"steps\[0\]: node must be a node id .* got bool (np\.)?False_?"):
        sft.simulate(g, [("compute", np.bool_(False))])
    with pytest.raises(ValueError, match=r'steps\[0\]: operation must be "compute" or "free", got array'):
        sft.simulate(g, [(np.array(["compute", "free"]), 0)])
    assert sft.simulate(g, [("compute", 0), ("compute", np.int64(1))]) == (3, 2)


def test_simulate_duration_past_int64_is_an_error() -> None:
    # durations sum below 2**62 (Graph's bound): computing each node twice still fits in int64 ...
    g = sft.Graph([0, 1], [(0, 1)], [1, 1], [2**61, 2**61 - 1])
    twice = [("compute", 0), ("compute", 1), ("free", 1), ("free", 0)] * 2
    assert sft.simulate(g, twice) == (2, 2**63 - 2)
    # ... a third time would wrap the C simulator's int64 sum: an error, not a wrapped duration
    with pytest.raises(
        ValueError,
        match=r"steps: the total duration of the computations, 13835058055282163709, does not fit in int64",
    ):
        sft.simulate(g, twice + twice[:4])
    codes = np.array([0, 1, -2, -1] * 3, dtype=np.int64)
    with pytest.raises(ValueError, match=r"does not fit in int64"):
        sft.simulate(g, codes)


def test_core_argument_validation() -> None:
    g = sft.Graph([0, 1], [(0, 1)], [1, 1], [1, 1])
    steps = np.array([0, 1], dtype=np.int64)
    with pytest.raises(TypeError, match=r"steps: expected dtype int64, got int32"):
        _core.remat_simulate(steps.astype(np.int32), g.memory, g.duration, g.pred_ptr, g.pred_idx)
    with pytest.raises(
        ValueError, match=r"duration: expected axis 0 of length 2 \(len\(memory\)\), got shape \(3,\)"
    ):
        _core.remat_simulate(steps, g.memory, np.ones(3, dtype=np.int64), g.pred_ptr, g.pred_idx)
    with pytest.raises(ValueError, match=r"pred_ptr/pred_idx: expected a CSR adjacency of 2 nodes"):
        _core.remat_simulate(steps, g.memory, g.duration, g.pred_ptr, np.array([5], dtype=np.int64))
    with pytest.raises(ValueError, match=r"memory/duration: expected non-negative values"):
        _core.remat_simulate(steps, np.array([1, -1], dtype=np.int64), g.duration, g.pred_ptr, g.pred_idx)
    with pytest.raises(ValueError, match=r"order: expected a permutation of 0..1"):
        _core.remat_greedy(
            g.memory,
            g.duration,
            g.pred_ptr,
            g.pred_idx,
            g.succ_ptr,
            g.succ_idx,
            np.array([0, 0], dtype=np.int64),
            10,
        )
    with pytest.raises(ValueError, match=r"steps: expected node ids in \[0, 2\)"):
        _core.remat_compact(np.array([0, 5], dtype=np.int64), g.pred_ptr, g.pred_idx, 2)
    # inputs are never modified
    mem = g.memory.copy()
    _core.remat_simulate(steps, g.memory, g.duration, g.pred_ptr, g.pred_idx, profile=True)
    assert np.array_equal(mem, g.memory)


def test_million_steps_chain() -> None:
    # a chain computed forward, each node freed after its user: 10^6 steps (CSR built directly)
    n = 500_000
    ptr = np.arange(n + 1, dtype=np.int64) - 1
    ptr[0] = 0
    idx = np.arange(n - 1, dtype=np.int64)
    mem = np.full(n, 3, dtype=np.int64)
    dur = np.full(n, 2, dtype=np.int64)
    steps = np.empty(2 * n, dtype=np.int64)
    steps[0] = 0
    steps[1::2][: n - 1] = np.arange(1, n)
    steps[2::2][: n - 1] = -1 - np.arange(0, n - 1)
    steps[-1] = -n
    rc, peak, total, _, _, prof = _core.remat_simulate(steps, mem, dur, ptr, idx, profile=True)
    assert (rc, peak, total) == (0, 6, 2 * n)
    assert prof.max() == 6 and prof[-1] == 0
    # an invalid step deep in the list is caught
    bad = steps.copy()
    bad[2] = 1  # compute node 1 twice in a row
    assert _core.remat_simulate(bad, mem, dur, ptr, idx)[0] == 3


def test_core_rejects_costs_whose_sums_overflow_int64() -> None:
    # each value fits, their sum does not: the kernels would wrap to negative totals
    g = sft.Graph([0, 1], [(0, 1)], [1, 1], [1, 1])
    steps = np.array([0, 1], dtype=np.int64)
    big = np.array([2**62, 2**62], dtype=np.int64)
    small = np.ones(2, dtype=np.int64)
    args = (g.pred_ptr, g.pred_idx)
    with pytest.raises(ValueError, match=r"memory: expected values summing to less than 2\*\*62"):
        _core.remat_simulate(steps, big, small, *args)
    with pytest.raises(ValueError, match=r"duration: expected values summing to less than 2\*\*62"):
        _core.remat_simulate(steps, small, big, *args)
    top = np.array([2**63 - 1, 2**63 - 1], dtype=np.int64)
    with pytest.raises(ValueError, match=r"duration: expected values summing to less than 2\*\*62"):
        _core.remat_greedy(small, top, *args, g.succ_ptr, g.succ_idx, g.order_idx, 10)
    with pytest.raises(ValueError, match=r"memory: expected values summing to less than 2\*\*62"):
        _core.remat_dtr(top, small, *args, g.succ_ptr, g.succ_idx, g.order_idx, None, 10)
    # a just-fitting sum is accepted
    ok = np.array([2**61, 2**61 - 1], dtype=np.int64)
    assert _core.remat_simulate(steps, ok, ok, *args)[:3] == (0, 2**62 - 1, 2**62 - 1)


def test_core_simulate_reports_duration_overflow_from_recomputations() -> None:
    # durations summing below 2**62, recomputed often enough to pass 2**63: status 9, not a wrap;
    # the fourth computation of node 0 (steps[6]) reaches 4 * 2**61 = 2**63
    g = sft.Graph([0, 1], [], [1, 1], [2**61, 1])
    steps = np.array([0, -1, 0, -1, 0, -1, 0, -1, 0, 1], dtype=np.int64)
    rc, _, total, bad_step, bad_node, _ = _core.remat_simulate(
        steps, g.memory, g.duration, g.pred_ptr, g.pred_idx
    )
    assert (rc, bad_step, bad_node) == (9, 6, 0) and total == 0


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            {"budget": 2**63},
            ValueError,
            r"budget: expected an int in \[0, 9223372036854775807\], got 9223372036854775808",
        ),
        ({"budget": -1}, ValueError, r"budget: expected an int in \[0, 9223372036854775807\], got -1"),
        ({"budget": 1.5}, TypeError, r"budget: expected an int, got float"),
        ({"budget": None}, TypeError, r"budget: expected an int, got NoneType"),
        (
            {"heuristic": "lru"},
            ValueError,
            r"heuristic: expected 'full', 'eq', 'belady', 'cone', 'largest' or 'su', got 'lru'",
        ),
        (
            {"once": np.zeros(3, dtype=bool)},
            ValueError,
            r"once: expected axis 0 of length 2 \(number of nodes\)",
        ),
        ({"once": np.zeros(2, dtype=np.int64)}, TypeError, r"once: expected dtype bool, got int64"),
    ],
)
def test_core_dtr_argument_validation(kwargs: dict, exc: type, match: str) -> None:
    g = sft.Graph([0, 1], [(0, 1)], [1, 1], [1, 1])
    args = {"once": None, "budget": 10, **kwargs}
    with pytest.raises(exc, match=match):
        _core.remat_dtr(
            g.memory,
            g.duration,
            g.pred_ptr,
            g.pred_idx,
            g.succ_ptr,
            g.succ_idx,
            g.order_idx,
            args.pop("once"),
            args.pop("budget"),
            **args,
        )


def test_core_integer_arguments_name_themselves() -> None:
    g = sft.Graph([0, 1], [(0, 1)], [1, 1], [1, 1])
    with pytest.raises(ValueError, match=r"budget: expected an int in \[0, 9223372036854775807\]"):
        _core.remat_greedy(
            g.memory, g.duration, g.pred_ptr, g.pred_idx, g.succ_ptr, g.succ_idx, g.order_idx, 2**63
        )
    with pytest.raises(ValueError, match=r"n: expected an int in \[0, "):
        _core.remat_compact(np.array([0, 1], dtype=np.int64), g.pred_ptr, g.pred_idx, 2**63)
