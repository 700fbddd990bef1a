"""Differential fuzzing of every ``sparseft._core`` entry point.

Each example builds a valid call on random sizes (``specs.py``), applies at most one mutation
(``mutate.py``: dtype, byte order, strides, alignment, read-only, shapes, NaN/inf, aliasing, huge
and negative integers, bad flags and scales, NUL in strings, CSR/N:M index structures), runs it in
a child process with every array against a guard page, on a random SIMD path and thread count,
and judges the outcome: no crash or hang, no input modified, errors are TypeError/ValueError whose
message starts with the argument's name, and results of valid calls match ``tests/reference.py``.
A failure prints the reproducer (the entry point, the mutation and the call's arguments)."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..conftest import SIMD_PATHS
from .child import Alias, Call, Misaligned, Outcome, ReadOnly, Strided, Worker
from .mutate import MUTATIONS
from .specs import ENTRIES, Entry

ALLOWED = {"TypeError", "ValueError"}


def resolve(call: Call) -> Call:
    """The call with markers replaced by the values the kernel saw before it ran (an alias reads
    its source's initial contents), for the reference."""
    arrays: list[np.ndarray] = []

    def walk(v: Any) -> Any:
        if isinstance(v, tuple):
            return tuple(walk(x) for x in v)
        if isinstance(v, Alias):
            src = arrays[v.index].reshape(-1)
            shape = v.shape if v.shape is not None else arrays[v.index].shape
            out = src[v.shift : v.shift + int(np.prod(shape))].reshape(shape).copy()
        elif isinstance(v, (Strided, Misaligned, ReadOnly)):
            out = np.asarray(v.a)
        elif isinstance(v, np.ndarray):
            out = v
        else:
            return v
        arrays.append(out)
        return out

    c = Call(call.fn, tuple(walk(a) for a in call.args), {}, call.outputs)
    c.kwargs = {k: walk(v) for k, v in call.kwargs.items()}
    return c


def names_argument(entry: Entry, message: str) -> bool:
    """The message starts with "<name>: " where name is one of the entry's argument names."""
    m = re.match(r"^(.+?): ", message)
    return m is not None and m.group(1) in entry.names


def judge(entry: Entry, call: Call, expect: str, out: Outcome, mutation: str) -> None:
    """Raises AssertionError (with the reproducer) when the outcome breaks the contract."""
    where = f"\n  entry point: _core.{call.fn}\n  mutation: {mutation} (expect {expect})\n  call: {call!r}\n"
    assert out.kind not in ("crashed", "hung"), f"{out.kind}: {out.detail}{where}"
    assert not out.modified, f"inputs modified: {out.modified}{where}"
    if out.kind == "raised":
        assert out.exc_type in ALLOWED, f"{out.exc_type}: {out.message!r} (expected TypeError/ValueError){where}"
        assert names_argument(entry, out.message), f"the message does not start with an argument name: {out.message!r}{where}"
        assert expect != "valid", f"a valid call raised {out.exc_type}: {out.message}{where}"
        return
    assert expect != "error", f"returned instead of raising{where}"
    if expect != "any" and entry.check is not None:
        entry.check(resolve(call), out.result)


def run_example(worker: Worker, name: str, mutation: str | None, seed: int) -> None:
    rng = np.random.default_rng(seed)
    entry = ENTRIES[name]
    call = entry.build(rng)
    expect = "valid"
    if mutation is not None:
        got = MUTATIONS[mutation](entry, call, rng)
        if got is None:
            return
        call, expect = got
        if mutation == "alias" and set(call.outputs):
            call = _alias_outputs(call)
    if name not in ("set_num_threads", "set_simd"):
        call.threads = int(rng.integers(1, 5))
        call.simd = SIMD_PATHS[int(rng.integers(len(SIMD_PATHS)))]
    call.guard = "end" if rng.integers(4) else "start"
    judge(entry, call, expect, worker.call(call), mutation or "none")


def _alias_outputs(call: Call) -> Call:
    """When an output aliases an input, that input may be written too."""
    from .mutate import labels

    arrays = [lab for lab in labels(call) if isinstance(_value(call, lab), (np.ndarray, Alias, Strided, Misaligned, ReadOnly))]
    extra = set()
    for lab in arrays:
        v = _value(call, lab)
        if isinstance(v, Alias) and lab in call.outputs:
            extra.add(arrays[v.index])
        if isinstance(v, Alias) and arrays[v.index] in call.outputs:
            extra.add(lab)
    call.outputs = frozenset(call.outputs | extra)
    return call


def _value(call: Call, lab: str) -> Any:
    from .specs import value

    return value(call, lab)


NAMES = sorted(ENTRIES)
MUTS = [None, *sorted(MUTATIONS)]
SHORT = int(os.environ.get("SPARSEFT_FUZZ_EXAMPLES", "2000"))


@settings(max_examples=SHORT, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(name=st.sampled_from(NAMES), mutation=st.sampled_from(MUTS), seed=st.integers(0, 2**32 - 1))
def test_core_fuzz_short(worker: Worker, name: str, mutation: str | None, seed: int) -> None:
    """The short run of the default suite (derandomized: the same examples every time)."""
    run_example(worker, name, mutation, seed)


@pytest.mark.fuzz
@settings(max_examples=int(os.environ.get("SPARSEFT_FUZZ_LONG", "20000")), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(NAMES), mutation=st.sampled_from(MUTS), seed=st.integers(0, 2**32 - 1))
def test_core_fuzz_long(worker: Worker, name: str, mutation: str | None, seed: int) -> None:
    """The long run: ``pytest -m fuzz --hypothesis-seed=N tests/fuzz`` (docs/testing.md)."""
    run_example(worker, name, mutation, seed)


@pytest.mark.parametrize("name", NAMES)
def test_every_entry_point_valid_calls_match_the_reference(worker: Worker, name: str) -> None:
    """Unmutated calls of every entry point, a few sizes each: they must succeed and agree."""
    for seed in range(4):
        run_example(worker, name, None, seed)


def test_every_core_function_has_a_fuzz_entry() -> None:
    from sparseft import _core

    public = {n for n in dir(_core) if not n.startswith("_") and callable(getattr(_core, n))}
    assert public == set(ENTRIES), f"no fuzz entry for {sorted(public - set(ENTRIES))}"


# ---- the harness itself can fail ------------------------------------------------------------


def test_a_crash_is_a_recorded_outcome(worker: Worker) -> None:
    got = worker.call(Call("ctypes:string_at", (8,)))
    assert got.kind == "crashed", got  # SIGSEGV, or SIGABRT from a sanitizer's handler
    assert worker.call(Call("get_num_threads", ())).kind == "ok"  # a fresh child took over


def test_the_guard_page_stops_a_read_past_the_end(worker: Worker) -> None:
    """np.frombuffer over one element more than the guarded array holds: the read faults."""
    got = worker.call(Call("tests.fuzz.selftest:read_past_end", (np.arange(1024, dtype=np.float32),)))
    assert got.kind == "crashed", got
    got = worker.call(Call("tests.fuzz.selftest:read_past_end", (np.arange(1024, dtype=np.float32),), guard="start"))
    assert got.kind == "ok", got


def test_a_modified_input_is_reported(worker: Worker) -> None:
    got = worker.call(Call("numpy:copyto", (np.zeros(3), np.ones(3))))
    assert got.modified == ["arg0"]
    got = worker.call(Call("numpy:copyto", (np.zeros(3), np.ones(3)), outputs=frozenset({"arg0"})))
    assert got.modified == []
