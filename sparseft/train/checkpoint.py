"""Checkpoint files: atomic directory writes, a SHA-256 manifest, and checked array archives.

A checkpoint directory is written into a temporary sibling and renamed into place, so a reader
sees either the previous complete checkpoint or the new one, never a half-written one. Its
``trainer.json`` lists every other file with its size and SHA-256; :func:`read_manifest` checks
them, so a truncated or corrupted file is a ValueError naming it before anything is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["MANIFEST", "atomic_dir", "file_digest", "read_arrays", "read_manifest", "write_arrays"]

MANIFEST = "trainer.json"
FORMAT = "sparseft-trainer"
VERSION = 1


def file_digest(path: pathlib.Path) -> str:
    """SHA-256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[pathlib.Path]:
    """Yield a fresh temporary directory beside ``target``; on success it replaces ``target``.

    On an exception the temporary directory is removed and ``target`` is left as it was.
    """
    target = pathlib.Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise ValueError(f"path: {str(target)!r} exists and is not a directory")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.replace(target, old / "ckpt")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_arrays(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Write named arrays to an uncompressed ``.npz`` (no pickles)."""
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def read_arrays(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Read an ``.npz`` written by :func:`write_arrays`; ValueError naming the file if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise ValueError(f"checkpoint file {str(path)!r} is corrupt or truncated: {e}") from None


def write_manifest(directory: pathlib.Path, content: dict[str, Any]) -> None:
    """Write ``trainer.json`` with the size and SHA-256 of every other file in ``directory``."""
    files = {}
    for f in sorted(directory.rglob("*")):
        if f.is_file() and f.name != MANIFEST:
            files[f.relative_to(directory).as_posix()] = {"bytes": f.stat().st_size, "sha256": file_digest(f)}
    doc = {"format": FORMAT, "version": VERSION, **content, "files": files}
    (directory / MANIFEST).write_text(json.dumps(doc, indent=1, sort_keys=True), encoding="utf-8")


def read_manifest(
    directory: str | os.PathLike[str], check: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Read and verify ``trainer.json``: every listed file present with its size and SHA-256.

    Raises
    ------
    ValueError
        Naming the file: a missing directory or manifest, unparsable JSON, another format or
        version, a missing file, or a size/digest mismatch (truncated or corrupted).
    """
    directory = pathlib.Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ValueError(f"path: {str(directory)!r} is not a sparseft checkpoint (no {MANIFEST})")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"checkpoint file {str(path)!r} is corrupt: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"checkpoint file {str(path)!r}: not a {FORMAT} manifest")
    if doc.get("version") != VERSION:
        raise ValueError(f"checkpoint file {str(path)!r}: version {doc.get('version')!r}, expected {VERSION}")
    files = doc.get("files")
    if not isinstance(files, dict):
        raise ValueError(f"checkpoint file {str(path)!r}: no file list")
    for name, meta in files.items():
        f = directory / name
        if not f.is_file():
            raise ValueError(f"checkpoint file {str(f)!r} is missing")
        if not isinstance(meta, dict) or f.stat().st_size != meta.get("bytes"):
            raise ValueError(
                f"checkpoint file {str(f)!r} is truncated or corrupt: {f.stat().st_size} bytes, "
                f"expected {meta.get('bytes') if isinstance(meta, dict) else '?'}"
            )
        if file_digest(f) != meta.get("sha256"):
            raise ValueError(f"checkpoint file {str(f)!r} is corrupt (SHA-256 mismatch)")
    if check is not None:
        check(doc)
    return doc
