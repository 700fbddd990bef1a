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


# ---- checkpoints, signatures, trainer checkpoints --------------------------------------------
#
# A reader of a directory is attacked through one file of it: the damaged copy of that file is put
# into a fresh copy of the valid directory, which is then loaded. The valid files are built once
# and cached (building a model or a trainer per example would dominate the run).

_PRISTINE: dict[str, dict[str, bytes]] = {}


def _pristine(kind: str) -> dict[str, bytes]:
    """Relative path -> bytes of every file of a valid ``kind`` ("model", "trainer") directory."""
    if kind not in _PRISTINE:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            d = pathlib.Path(tmp) / kind
            if kind == "model":
                from sparseft.models import GPT, GPTConfig

                GPT.random(GPTConfig(vocab_size=11, n_layer=1, n_head=2, d_model=8, seq_len=8), seed=0).save_pretrained(d)
            else:
                import numpy as np

                import sparseft as sft
                from tests.test_executor import TinyMLP

                rng = np.random.default_rng(0)
                tr = sft.Trainer(TinyMLP(), lr=1e-2)
                tr.fit((rng.standard_normal((16, 8)).astype(np.float32), rng.integers(0, 3, 16)), steps=1, batch_size=4,
                       progress=False)
                tr.save(d)
            _PRISTINE[kind] = {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
    return _PRISTINE[kind]


def _with_damaged(kind: str, target: str, damaged: pathlib.Path) -> pathlib.Path:
    """A copy of the valid ``kind`` directory beside ``damaged`` with ``target`` replaced by it."""
    d = damaged.parent / f"{damaged.name}.{kind}"
    for rel, data in _pristine(kind).items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(damaged.read_bytes() if rel == target else data)
    return d


def _maker(kind: str, target: str) -> Callable[[pathlib.Path], pathlib.Path]:
    def make(directory: pathlib.Path) -> pathlib.Path:
        path = directory / pathlib.Path(target).name
        data = _pristine(kind)[target]
        # a JSON file cut before its trailing newline is whole: the harness cuts real content only
        path.write_bytes(data.rstrip() if target.endswith(".json") else data)
        return path

    return make


def read_safetensors(path: str) -> None:
    """Every tensor of one safetensors file through the checkpoint reader (``SafetensorsReader``)."""
    from sparseft.models.checkpoint import SafetensorsReader

    r = SafetensorsReader([pathlib.Path(path)])
    for key in r.keys():
        r.read(key)


def from_pretrained_weights(path: str) -> None:
    """``sparseft.models.from_pretrained`` of a model directory whose weights file is ``path``."""
    from sparseft.models import from_pretrained

    from_pretrained(_with_damaged("model", "model.safetensors", pathlib.Path(path)), tokenizer=None)


def from_pretrained_config(path: str) -> None:
    """``sparseft.models.from_pretrained`` of a model directory whose config.json is ``path``."""
    from sparseft.models import from_pretrained

    from_pretrained(_with_damaged("model", "config.json", pathlib.Path(path)), tokenizer=None)


def _trainer_reader(target: str) -> Callable[[str], None]:
    def read(path: str) -> None:
        import sparseft as sft
        from tests.test_executor import TinyMLP

        sft.Trainer.load(_with_damaged("trainer", target, pathlib.Path(path)), model=TinyMLP())

    read.__qualname__ = read.__name__ = f"trainer_load_{target.replace('.', '_')}"
    read.__doc__ = f"``sparseft.Trainer.load`` of a checkpoint whose {target} is ``path``."
    return read


trainer_load_trainer_json = _trainer_reader("trainer.json")
trainer_load_state_npz = _trainer_reader("state.npz")
trainer_load_model_npz = _trainer_reader("model.npz")


def _make_signature(directory: pathlib.Path, bits: int | None = None) -> pathlib.Path:
    import numpy as np

    import sparseft as sft

    rng = np.random.default_rng(0)
    sig = sft.Signature({"h.0.w": rng.standard_normal((3, 5)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float32)})
    path = directory / ("qsig.safetensors" if bits else "sig.safetensors")
    (sig.quantize(bits) if bits else sig).save(path)
    return path


register_reader("SafetensorsReader", "tests.fuzz.readers:read_safetensors", _maker("model", "model.safetensors"))
register_reader("from_pretrained (weights)", "tests.fuzz.readers:from_pretrained_weights",
                _maker("model", "model.safetensors"))
register_reader("from_pretrained (config)", "tests.fuzz.readers:from_pretrained_config", _maker("model", "config.json"))
register_reader("Signature.load", "sparseft:Signature.load", _make_signature)
register_reader("Signature.load (quantized)", "sparseft:Signature.load", lambda d: _make_signature(d, 4))
for _target in ("trainer.json", "state.npz", "model.npz"):
    register_reader(f"Trainer.load ({_target})", f"tests.fuzz.readers:trainer_load_{_target.replace('.', '_')}",
                    _maker("trainer", _target))


def _safetensors_lies(make: Callable[[pathlib.Path], pathlib.Path]) -> Callable[[pathlib.Path], list[pathlib.Path]]:
    """Valid safetensors framing whose JSON header lies: offsets past the end, overlapping or
    reversed, a shape that does not match its bytes, a negative or huge shape, an unknown dtype,
    a header length beyond the file, a header that is not an object."""

    def lies(directory: pathlib.Path) -> list[pathlib.Path]:
        import struct

        data = make(directory).read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        body = data[8 + n :]
        key = next(k for k in header if k != "__metadata__")
        b, e = header[key]["data_offsets"]
        edits: list[Callable[[dict], object]] = [
            lambda h: h[key].update(data_offsets=[b, len(body) + 4]),
            lambda h: h[key].update(data_offsets=[e, b]) if e > b else h[key].update(data_offsets=[1, 0]),
            lambda h: h[key].update(shape=[*h[key]["shape"], 2]),
            lambda h: h[key].update(shape=[-1, *h[key]["shape"][1:]]),
            lambda h: h[key].update(shape=[2**62, 2**62]),
            lambda h: h[key].update(dtype="F8_E9"),
            lambda h: h[key].update(data_offsets="0"),
            lambda h: h.update({key: [1, 2]}),
        ]
        out = []
        for k, edit in enumerate(edits):
            h = json.loads(json.dumps(header))
            edit(h)
            raw = json.dumps(h).encode()
            raw += b" " * (-len(raw) % 8)
            p = directory / f"lie{k}.safetensors"
            p.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
            out.append(p)
        p = directory / "lie_len.safetensors"
        p.write_bytes(struct.pack("<Q", 2**63) + data[8:])
        out.append(p)
        p = directory / "lie_list.safetensors"
        p.write_bytes(struct.pack("<Q", 8) + b"[1,2,3] " + body)
        out.append(p)
        return out

    return lies


def _trainer_json_lies(directory: pathlib.Path) -> list[pathlib.Path]:
    """trainer.json as valid JSON that lies: wrong types, negative steps, missing entries, another
    file size or digest."""
    doc = json.loads(_pristine("trainer")["trainer.json"])
    edits: list[Callable[[dict], object]] = [
        lambda d: d.update(step=-1),
        lambda d: d.update(step="2"),
        lambda d: d.update(optimizer_t=2**80),
        lambda d: d.pop("trainer"),
        lambda d: d.update(trainer=[1, 2]),
        lambda d: d.update(history={"loss": "x"}),
        lambda d: d.update(rng=None),
        lambda d: d.update(adapter={"rank": -3}),
    ]
    files = doc.get("files")
    if isinstance(files, dict) and files:
        name = next(iter(files))
        entry = files[name]
        if isinstance(entry, dict):
            for field_, lie in (("bytes", 1), ("sha256", "0" * 64), ("bytes", -5), ("bytes", "many")):
                if field_ in entry:
                    edits.append(lambda d, f=field_, v=lie: d["files"][name].update({f: v}))
    out = []
    for k, edit in enumerate(edits):
        d = json.loads(json.dumps(doc))
        edit(d)
        p = directory / f"lie{k}.json"
        p.write_text(json.dumps(d))
        out.append(p)
    return out


for _name in ("SafetensorsReader", "from_pretrained (weights)", "Signature.load", "Signature.load (quantized)"):
    LYING[_name] = _safetensors_lies(READERS[_name].make)
LYING["Trainer.load (trainer.json)"] = _trainer_json_lies
