"""File readers the fuzz suite attacks with truncated, byte-flipped and lying files.

A reader is registered with ``register_reader(name, read, make, errors)``:

* ``read(path)`` loads the file (the public function under test);
* ``make(directory) -> path`` writes one valid file of that format into ``directory``;
* ``errors``: the exception types the reader documents for a bad file (ValueError by default).

The suite then checks, for every registered reader, that each damaged copy of a valid file either
still loads (a byte flip inside a number can leave a valid file) or raises one of ``errors`` -
never another exception, never a crash or a hang (reads run in a child process). To add a reader
(checkpoints, signatures, plans), call ``register_reader`` at import time of this module or of a
module it imports; see docs/testing.md."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Reader:
    name: str
    read: str  # "module:qualname" of the reader, resolved in the child
    make: Callable[[pathlib.Path], pathlib.Path]
    errors: tuple[str, ...] = ("ValueError",)


READERS: dict[str, Reader] = {}


def register_reader(
    name: str, read: str, make: Callable[[pathlib.Path], pathlib.Path], errors: tuple[type[Exception], ...] = (ValueError,)
) -> None:
    """Registers a file reader for the damaged-file fuzz (see the module docstring)."""
    READERS[name] = Reader(name, read, make, tuple(e.__name__ for e in errors))


# ---- the damage -------------------------------------------------------------------------------


def truncations(data: bytes) -> list[bytes]:
    """The file cut at its start, middle, end and a few places in between."""
    cuts = sorted({0, 1, len(data) // 3, len(data) // 2, len(data) - 1, max(0, len(data) - 7)})
    return [data[:c] for c in cuts if c < len(data)]


def byte_flips(data: bytes, positions: list[int], masks: list[int]) -> list[bytes]:
    """One byte XOR-ed with a mask at each given position."""
    out = []
    for p, m in zip(positions, masks, strict=True):
        if data:
            b = bytearray(data)
            b[p % len(data)] ^= m
            out.append(bytes(b))
    return out


# ---- readers of this package ------------------------------------------------------------------


def _make_graph(directory: pathlib.Path) -> pathlib.Path:
    path = directory / "graph.json"
    nodes = [{"id": i, "memory": 10 * (i + 1), "duration": i + 1} for i in range(5)]
    links = [{"source": i, "target": i + 1} for i in range(4)] + [{"source": 0, "target": 3}]
    path.write_text(json.dumps({"directed": True, "graph": {"order": [0, 1, 2, 3, 4]}, "nodes": nodes, "links": links}))
    return path


def _make_lying_graphs(directory: pathlib.Path) -> list[pathlib.Path]:
    """Valid JSON whose content lies: negative or huge sizes, links to missing nodes, a cycle, an
    order that is not a permutation, wrong types where numbers belong."""
    base = json.loads(_make_graph(directory).read_text())
    lies = []
    for k, edit in enumerate(
        [
            lambda d: d["nodes"][0].update(memory=-1),
            lambda d: d["nodes"][1].update(duration=2**80),
            lambda d: d["links"].append({"source": 0, "target": 99}),
            lambda d: d["links"].append({"source": 4, "target": 0}),
            lambda d: d["graph"].update(order=[0, 0, 1, 2, 3]),
            lambda d: d["nodes"][2].update(memory="ten"),
            lambda d: d["nodes"][2].update(memory=[1]),
            lambda d: d.update(nodes={"0": 1}),
            lambda d: d["nodes"].append(dict(d["nodes"][0])),
        ]
    ):
        d = json.loads(json.dumps(base))
        edit(d)
        p = directory / f"lie{k}.json"
        p.write_text(json.dumps(d))
        lies.append(p)
    return lies


register_reader("Graph.from_json", "sparseft:Graph.from_json", _make_graph, (ValueError, TypeError))
LYING: dict[str, Callable[[pathlib.Path], list[pathlib.Path]]] = {"Graph.from_json": _make_lying_graphs}


def _register_plan_reader() -> None:
    """The plan (schedule) JSON reader, where the package has one: ``Schedule.from_json``, the twin
    of ``Schedule.to_json``."""
    from sparseft.remat import planner

    schedule = getattr(planner, "Schedule", None)
    if schedule is None or not hasattr(schedule, "from_json"):
        return

    def make(directory: pathlib.Path) -> pathlib.Path:
        import sparseft as sft

        g = sft.Graph.from_json(_make_graph(directory))
        plan = sft.Planner(g, budget=10**9, solver="greedy").solve()
        path = directory / "plan.json"
        plan.to_json(path)
        return path

    register_reader("Schedule.from_json", "sparseft.remat.planner:Schedule.from_json", make)


_register_plan_reader()
