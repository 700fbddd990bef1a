"""Damaged files for every registered reader (``readers.py``): truncated, byte-flipped and lying
copies of a valid file either still load or raise one of the reader's documented errors (a
ValueError unless registered otherwise), never anything else, never a crash or a hang."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .child import Call, Worker
from .readers import LYING, READERS, byte_flips, truncations


def judge_file(worker: Worker, name: str, path: pathlib.Path, what: str) -> None:
    reader = READERS[name]
    got = worker.call(Call(reader.read, (str(path),)))
    where = f"\n  reader: {name}\n  damage: {what}\n  file: {path.read_bytes()[:400]!r}"
    assert got.kind in ("ok", "raised"), f"{got.kind}: {got.detail}{where}"
    if got.kind == "raised":
        assert got.exc_type in reader.errors, f"{got.exc_type}: {got.message}{where}"


@pytest.mark.parametrize("name", sorted(READERS))
def test_valid_file_loads(worker: Worker, name: str, tmp_path: pathlib.Path) -> None:
    got = worker.call(Call(READERS[name].read, (str(READERS[name].make(tmp_path)),)))
    assert got.kind == "ok", got


@pytest.mark.parametrize("name", sorted(READERS))
def test_truncated_files(worker: Worker, name: str, tmp_path: pathlib.Path) -> None:
    data = READERS[name].make(tmp_path).read_bytes()
    for k, cut in enumerate(truncations(data)):
        p = tmp_path / f"cut{k}"
        p.write_bytes(cut)
        judge_file(worker, name, p, f"truncated to {len(cut)} of {len(data)} bytes")
        # a truncated file must not load as if it were whole
        assert worker.call(Call(READERS[name].read, (str(p),))).kind == "raised" or len(cut) == len(data)


@pytest.mark.parametrize("name", sorted(LYING))
def test_lying_files(worker: Worker, name: str, tmp_path: pathlib.Path) -> None:
    for p in LYING[name](tmp_path):
        got = worker.call(Call(READERS[name].read, (str(p),)))
        assert got.kind == "raised" and got.exc_type in READERS[name].errors, (p.read_text(), got)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(name=st.sampled_from(sorted(READERS)), seed=st.integers(0, 2**32 - 1))
def test_byte_flipped_files(worker: Worker, name: str, seed: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    d = tmp_path_factory.mktemp("flip")
    data = READERS[name].make(d).read_bytes()
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 4))
    pos = rng.integers(0, len(data), k).tolist()
    masks = rng.choice([1, 2, 4, 0x20, 0x40, 0x80, 0xFF], k).tolist()
    for j, flipped in enumerate(byte_flips(data, pos, masks)):
        p = d / f"flip{j}"
        p.write_bytes(flipped)
        judge_file(worker, name, p, f"byte {pos[j]} ^ {masks[j]:#x}")
