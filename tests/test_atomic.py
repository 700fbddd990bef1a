"""sparseft._atomic.atomic_path: the one atomic-write mechanism of graphs, plans, signatures and checkpoints."""

from __future__ import annotations

import pathlib

import pytest

from sparseft._atomic import atomic_path


def test_a_completed_block_replaces_the_file(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert pathlib.Path(tmp).parent == tmp_path and not target.samefile(tmp)
        pathlib.Path(tmp).write_bytes(b"new")
        assert target.read_bytes() == b"old"  # nothing visible before the rename
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_a_failed_block_leaves_the_file_and_no_temporary(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(str(target)) as tmp:
        pathlib.Path(tmp).write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
