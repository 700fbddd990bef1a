"""Mutations of a valid call. Each takes (entry, call, rng) and returns (new call, expectation):
"error" (a TypeError/ValueError naming an argument must come out), "valid" (the call must succeed
and match the reference) or "either" (an error, or a result that matches the reference: a
mutation that may keep the inputs consistent, such as another shape or an aliased input), and
"any" for NaN/inf (an error or any result, never a crash). ``None`` when it does not apply."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

from .child import Alias, Call, Misaligned, ReadOnly, Strided
from .specs import Entry, value

Mutation = Callable[[Entry, Call, np.random.Generator], "tuple[Call, str] | None"]
MUTATIONS: dict[str, Mutation] = {}


def mutation(fn: Mutation) -> Mutation:
    """Registers a mutation under its function name."""
    MUTATIONS[fn.__name__] = fn
    return fn


# ---- addressing arguments ---------------------------------------------------------------------


def labels(call: Call) -> list[str]:
    """Labels of every argument, tuple items included, in the order the child walks them."""
    out: list[str] = []

    def walk(v: Any, label: str) -> None:
        out.append(label)
        if isinstance(v, tuple):
            for i, item in enumerate(v):
                walk(item, f"{label}[{i}]")

    for i, a in enumerate(call.args):
        walk(a, f"arg{i}")
    for k, v in call.kwargs.items():
        walk(v, k)
    return out


def unused(call: Call) -> set[str]:
    """Arguments the entry point does not read: an N:M base's rowptr slot."""
    first = call.args[0] if call.args else None
    if isinstance(first, tuple) and first and first[0] == "nm":
        return {"arg0[7]"}
    return set()


def array_labels(call: Call) -> list[str]:
    skip = unused(call)
    return [lab for lab in labels(call) if isinstance(value(call, lab), np.ndarray) and lab not in skip]


def replace(call: Call, label: str, new: Any) -> Call:
    """A copy of call with the argument at label replaced."""
    c = copy.copy(call)
    c.args, c.kwargs = tuple(call.args), dict(call.kwargs)
    head, _, rest = label.partition("[")
    path = [int(p) for p in rest.replace("]", "").split("[")] if rest else []

    def put(container: Any, idx: list[int]) -> Any:
        if not idx:
            return new
        items = list(container)
        items[idx[0]] = put(items[idx[0]], idx[1:])
        return tuple(items)

    if head.startswith("arg") and head[3:].isdigit():
        args = list(c.args)
        args[int(head[3:])] = put(args[int(head[3:])], path)
        c.args = tuple(args)
    else:
        c.kwargs[head] = put(c.kwargs[head], path)
    return c


def pick(rng: np.random.Generator, items: list[str]) -> str | None:
    return str(items[int(rng.integers(len(items)))]) if items else None


# ---- arrays -----------------------------------------------------------------------------------


@mutation
def dtype(entry: Entry, call: Call, rng: np.random.Generator) -> tuple[Call, str] | None:
    lab = pick(rng, array_labels(call))
    if lab is None:
        return None
    a = value(call, lab)
    choices = [t for t in (np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_, np.complex64) if t != a.dtype]
    if a.dtype in (np.uint8, np.bool_):  # masks take either
        choices = [t for t in choices if t not in (np.uint8, np.bool_)]
    choices = [t for t in choices if np.dtype(t).name not in entry.dtypes.get(lab, ())]
    new = a.astype(choices[int(rng.integers(len(choices)))])
    return replace(call, lab, new), "error"


@mutation
def byte_order(entry: Entry, call: Call, rng: np.random.Generator) -> tuple[Call, str] | None:
    labs = [lab for lab in array_labels(call) if value(call, lab).dtype.itemsize > 1]
    lab = pick(rng, labs)
    if lab is None:
        return None
    a = value(call, lab)
    return replace(call, lab, a.astype(a.dtype.newbyteorder())), "error"


@mutation
def strided(entry: Entry, call: Call, rng: np.random.Generator) -> tuple[Call, str] | None:
    lab = pick(rng, array_labels(call))
    if lab is None:
        return None
    a = value(call, lab)
    # every other element of the last axis: not contiguous unless that axis has <= 1 element
    expect = "error" if a.ndim and a.shape[-1] > 1 and a.size > 1 else "either"
    return replace(call, lab, Strided(a)), expect


@mutation
def misaligned(entry: Entry, call: Call, rng: np.random.Generator) -> tuple[Call, str] | None:
    lab = pick(rng, array_labels(call))
    if lab is None:
        return None
    a = value(call, lab)
    return replace(call, lab, Misaligned(a)), "error" if a.dtype.itemsize > 1 and a.size else "either"


@mutation
def read_only(entry: Entry, call: Call, rng: np.random.Generator) -> tuple[Call, str] | None:
    lab = pick(rng, array_labels(call))
    if lab is None:
        return None
    return replace(call, lab, ReadOnly(value(call, lab))), "error" if lab in call.outputs and value(call, lab).size else "either"


@mutation
def shape(entry: Entry, call: Call, rng: np.random.Generator) -> tuple[Call, str] | None:
    lab = pick(rng, array_labels(call))
    if lab is None:
        return None
    a = value(call, lab)
    how = int(rng.integers(3))
    if how == 0 or a.ndim == 0:  # one more axis
        return replace(call, lab, a[None]), "either" if lab in entry.free_ndim else "error"
    axis = int(rng.integers(a.ndim))
    n = a.shape[axis] + int(rng.choice([-1, 1, 2]))
    if n < 0:
        return None
    reps = [slice(None)] * a.ndim
    if n <= a.shape[axis]:
        reps[axis] = slice(0, n)
        new = a[tuple(reps)]
    else:
        pad = [(0, 0)] * a.ndim
        pad[axis] = (0, n - a.shape[axis])
        new = np.pad(a, pad)
    return replace(call, lab, np.ascontiguousarray(new)), "either"


@mutation
def nonfinite(entry: Entry, call: Call, rng: np.random.Generator) -> tuple[Call, str] | None:
    labs = [lab for lab in array_labels(call) if value(call, lab).dtype.kind == "f" and value(call, lab).size]
    lab = pick(rng, labs)
    if lab is None:
        return None
    a = value(call, lab).copy()
    a.reshape(-1)[int(rng.integers(a.size))] = rng.choice([np.nan, np.inf, -np.inf])
    return replace(call, lab, a), "any"


@mutation
def not_an_array(entry: Entry, call: Call, rng: np.random.Generator) -> tuple[Call, str] | None:
    lab = pick(rng, array_labels(call))
    if lab is None:
        return None
    a = value(call, lab)
    new = [a.tolist(), None, "x", 3, memoryview(b"abcd")][int(rng.integers(4))]
    optional = not lab.startswith("arg")  # keyword arrays (out=, bias=) may be None
    return replace(call, lab, new), "either" if optional and new is None else "error"


@mutation
def alias(entry: Entry, call: Call, rng: np.random.Generator) -> tuple[Call, str] | None:
    """One array argument replaced by another one (the same memory) or by an overlapping view of it,
    when the shapes allow; outputs and inputs alike."""
    labs = array_labels(call)
    if len(labs) < 2:
        return None
    i, j = sorted(rng.choice(len(labs), 2, replace=False).tolist())
    src, dst = labs[i], labs[j]
    a, b = value(call, src), value(call, dst)
    if a.dtype != b.dtype or a.size < b.size or b.size == 0:
        return None
    shift = int(rng.integers(0, a.size - b.size + 1)) if rng.integers(2) else 0
    every = [lab for lab in labels(call) if isinstance(value(call, lab), np.ndarray)]  # the child's numbering
    marker = Alias(every.index(src), shift, b.shape)
    return replace(call, dst, marker), "either"


# ---- scalars ----------------------------------------------------------------------------------

BAD_INTS: list[Any] = [2**63, 2**70, -(2**63) - 1, -1, -(2**40), 2**40, None, 1.5, "1", np.ones(2, np.int64), True]
BAD_FLAGS: list[Any] = [np.ones(2, bool), np.zeros(3), "yes", None, [1], 1.5]
GOOD_FLAGS: list[Any] = [0, 1, np.bool_(True), np.int64(0)]
BAD_REALS: list[Any] = [10**400, -(10**400), "1", None, np.ones(2, np.float32), float("nan"), float("inf"), 1e39, b"1"]
GOOD_REALS: list[Any] = [0, 0.0, -0.0, np.float32(0.25), np.float64(-1.5), 2]


@mutation
def integer(entry: Entry, call: Call, rng: np.random.Generator) -> tuple[Call, str] | None:
    labs = [lab for lab in entry.ints if _present(call, lab)]
    lab = pick(rng, labs)
    if lab is None:
        return None
    return replace(call, lab, BAD_INTS[int(rng.integers(len(BAD_INTS)))]), "either"


@mutation
def flag(entry: Entry, call: Call, rng: np.random.Generator) -> tuple[Call, str] | None:
    lab = pick(rng, list(entry.flags))
    if lab is None:
        return None
    if rng.integers(3) == 0:
        return replace_kw(call, lab, GOOD_FLAGS[int(rng.integers(len(GOOD_FLAGS)))]), "either"
    return replace_kw(call, lab, BAD_FLAGS[int(rng.integers(len(BAD_FLAGS)))]), "error"


@mutation
def real(entry: Entry, call: Call, rng: np.random.Generator) -> tuple[Call, str] | None:
    labs = [lab for lab in entry.scales if _present(call, lab)]
    lab = pick(rng, labs)
    if lab is None:
        return None
    if rng.integers(3) == 0:
        return replace(call, lab, GOOD_REALS[int(rng.integers(len(GOOD_REALS)))]), "either"
    return replace(call, lab, BAD_REALS[int(rng.integers(len(BAD_REALS)))]), "error"


@mutation
def text(entry: Entry, call: Call, rng: np.random.Generator) -> tuple[Call, str] | None:
    labs = [lab for lab in labels(call) if isinstance(value(call, lab), str)]
    lab = pick(rng, labs)
    if lab is None:
        return None
    s = value(call, lab)
    new = [s + "\0", "\0" + s, s.upper(), s.encode(), "\udcff", ""][int(rng.integers(6))]
    return replace(call, lab, new), "either" if new == s.upper() else "error"


def _present(call: Call, lab: str) -> bool:
    try:
        value(call, lab)
    except (KeyError, IndexError):
        return False
    return True


def replace_kw(call: Call, name: str, new: Any) -> Call:
    c = copy.copy(call)
    c.kwargs = {**call.kwargs, name: new}
    return c


# ---- index structures -------------------------------------------------------------------------


@mutation
def structure(entry: Entry, call: Call, rng: np.random.Generator) -> tuple[Call, str] | None:
    """CSR row pointers or column indices, or N:M positions, changed in one place."""
    if not entry.sparse:
        return None
    base = call.args[0]
    kind = base[0]
    if kind == "csr":
        which = "arg0[7]" if rng.integers(2) or base[6].size == 0 else "arg0[6]"
    else:
        which = "arg0[6]"
        if base[6].size == 0:
            return None
    a = value(call, which).copy()
    flat = a.reshape(-1)
    k = int(rng.integers(flat.size))
    big = np.iinfo(a.dtype).max
    choices = [-1, flat[k] + 1, flat[k] - 1, 0, big, base[2], base[4] if kind == "nm" else base[2] + 7, 10**6]
    v = choices[int(rng.integers(len(choices)))]
    if np.iinfo(a.dtype).min <= int(v) <= big:
        flat[k] = v
    else:
        return None
    return replace(call, which, a), "either"


@mutation
def base_sizes(entry: Entry, call: Call, rng: np.random.Generator) -> tuple[Call, str] | None:
    """out / in / n / m of a base replaced by a neighbour or an absurd value."""
    if not entry.sparse:
        return None
    k = int(rng.integers(1, 5))
    cur = call.args[0][k]
    v = [cur + 1, cur - 1, 0, 2**31, 2**62, 2**63 - 1, -(2**63), 10**30, None, float(cur)][int(rng.integers(10))]
    return replace(call, f"arg0[{k}]", v), "either"
