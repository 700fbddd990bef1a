"""Signature files: safetensors with metadata and a checksum, written atomically.

Layout (``docs/rws.md``): a float32 signature stores each tensor under its own name; a quantized
one stores ``<name>.codes`` (uint8, packed) and ``<name>.params`` (float32 (groups, 2)). The
``__metadata__`` holds ``format`` ("sparseft.rws"), ``format_version``, ``kind`` ("float32" or
"quantized"), ``bits``, ``scheme``, ``granularity``, ``names`` (JSON list, the model's order),
``shapes`` (JSON), ``errors``/``coefficients`` (JSON) and ``sha256``: the hash of the other
metadata and every tensor's name, dtype, shape and bytes, so a tampered file is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import struct
from typing import Any

import numpy as np

from sparseft._atomic import atomic_path
from sparseft.rws.quantized import BITS, GRANULARITIES, SCHEMES, QuantizedSignature, group_size
from sparseft.rws.signature import Signature

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "atomic_write",
    "load",
    "read_safetensors",
    "save_quantized",
    "save_signature",
    "write_safetensors",
]

FORMAT = "sparseft.rws"
FORMAT_VERSION = "1"


def _path(path: Any) -> pathlib.Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    return pathlib.Path(path)


def atomic_write(path: Any, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, and rename it over ``path``."""
    with atomic_path(_path(path)) as tmp, open(tmp, "wb") as f:
        f.write(data)


def _digest(meta: dict[str, str], tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_safetensors(path: Any, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """A safetensors file of ``tensors`` with ``metadata`` (str → str), written atomically."""
    from safetensors.numpy import save

    atomic_write(path, save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata))


def read_safetensors(path: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a safetensors file; anything unreadable is a ValueError naming the path."""
    from safetensors.numpy import load as st_load

    p = _path(path)
    data = p.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{p}: not a safetensors file (truncated: {len(data)} bytes)")
    (hlen,) = struct.unpack("<Q", data[:8])
    if hlen > len(data) - 8:
        raise ValueError(f"{p}: truncated safetensors file (header of {hlen} bytes, file of {len(data)})")
    try:
        header = json.loads(data[8 : 8 + hlen])
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("metadata is not a str -> str map")
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types on corrupt data
        raise ValueError(f"{p}: corrupt safetensors file ({type(e).__name__}: {e})") from None
    return dict(tensors), dict(meta)


def save_signature(sig: Signature, path: Any) -> None:
    """Write a float32 signature (see the module docstring)."""
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "float32",
        "names": json.dumps(sig.keys()),
        "shapes": json.dumps({k: list(v) for k, v in sig.shapes.items()}),
        "coefficients": json.dumps(sig.coefficients),
    }
    tensors = {k: v for k, v in sig.items()}
    meta["sha256"] = _digest(meta, tensors)
    write_safetensors(path, tensors, meta)


def save_quantized(q: QuantizedSignature, path: Any) -> None:
    """Write a quantized signature (see the module docstring)."""
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "quantized",
        "bits": str(q.bits),
        "scheme": q.scheme,
        "granularity": q.granularity,
        "names": json.dumps(q.keys()),
        "shapes": json.dumps({k: list(v) for k, v in q.shapes.items()}),
        "errors": json.dumps(q.errors),
    }
    tensors: dict[str, np.ndarray] = {}
    for name in q.keys():
        codes, params, _ = q.packed(name)
        tensors[f"{name}.codes"] = codes
        tensors[f"{name}.params"] = params
    meta["sha256"] = _digest(meta, tensors)
    write_safetensors(path, tensors, meta)


def _json(meta: dict[str, str], key: str, p: pathlib.Path) -> Any:
    try:
        return json.loads(meta[key])
    except (KeyError, ValueError):
        raise ValueError(f"{p}: metadata {key!r} missing or not JSON") from None


def load(path: Any) -> Signature | QuantizedSignature:
    """Read a signature file; truncated, tampered or foreign files are ValueErrors naming the path."""
    p = _path(path)
    tensors, meta = read_safetensors(p)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{p}: not a sparseft signature file (metadata format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{p}: unsupported format_version {meta.get('format_version')!r} "
            f"(this sparseft reads {FORMAT_VERSION!r})"
        )
    if meta.get("sha256") != _digest(meta, tensors):
        raise ValueError(f"{p}: checksum mismatch (the file was modified or damaged)")
    names = _json(meta, "names", p)
    shapes = _json(meta, "shapes", p)
    if not isinstance(names, list) or not isinstance(shapes, dict) or set(names) != set(shapes):
        raise ValueError(f"{p}: metadata names/shapes disagree")
    shp = {k: tuple(int(d) for d in shapes[k]) for k in names}
    kind = meta.get("kind")
    if kind == "float32":
        if set(tensors) != set(names):
            raise ValueError(f"{p}: tensors do not match the metadata names")
        for k in names:
            if tensors[k].dtype != np.float32 or tensors[k].shape != shp[k]:
                raise ValueError(
                    f"{p}: tensor {k!r} is {tensors[k].dtype} {tensors[k].shape}, "
                    f"metadata says float32 {shp[k]}"
                )
        sig = Signature({k: tensors[k] for k in names})
        coef = _json(meta, "coefficients", p)
        sig.coefficients = {k: float(v) for k, v in coef.items()} if isinstance(coef, dict) else {}
        return sig
    if kind != "quantized":
        raise ValueError(f"{p}: unknown signature kind {kind!r}")
    try:
        bits = int(meta["bits"])
        scheme, gran = meta["scheme"], meta["granularity"]
    except (KeyError, ValueError):
        raise ValueError(f"{p}: metadata bits/scheme/granularity missing") from None
    if bits not in BITS or scheme not in SCHEMES or gran not in GRANULARITIES:
        raise ValueError(f"{p}: unsupported bits={bits}, scheme={scheme!r}, granularity={gran!r}")
    expected = {f"{k}.{part}" for k in names for part in ("codes", "params")}
    if set(tensors) != expected:
        raise ValueError(f"{p}: tensors do not match the metadata names")
    packed: dict[str, tuple[np.ndarray, np.ndarray, tuple[int, ...]]] = {}
    for k in names:
        codes, params = tensors[f"{k}.codes"], tensors[f"{k}.params"]
        n = math.prod(shp[k])
        groups = -(-n // group_size(shp[k], gran))
        if codes.dtype != np.uint8 or codes.shape != (-(-n * bits // 8),):
            raise ValueError(
                f"{p}: {k}.codes is {codes.dtype} {codes.shape}, expected uint8 ({-(-n * bits // 8)},)"
            )
        if params.dtype != np.float32 or params.shape != (groups, 2) or not np.isfinite(params).all():
            raise ValueError(f"{p}: {k}.params is not finite float32 ({groups}, 2)")
        packed[k] = (codes.copy(), params.copy(), shp[k])
    errors = _json(meta, "errors", p)
    return QuantizedSignature(bits, gran, scheme, packed, errors if isinstance(errors, dict) else None)
