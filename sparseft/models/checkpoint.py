"""Hugging Face checkpoints in and out: ``from_pretrained(dir)`` and ``save_pretrained(model, dir)``.

Reading: ``config.json`` picks GPT-2 or Llama; weights come from ``model.safetensors`` or the shards
listed in ``model.safetensors.index.json``. Every file is validated by the ``safetensors`` package.
F32 tensors are then memory-mapped copy-on-write (``mmap.ACCESS_COPY``: pages are read from the
file when touched, and a write into the array goes to a private copy of its page, never to the
file); F16 and BF16 tensors are widened into new float32 arrays 4M values at a time. Either way a
checkpoint loads without a second copy of the model in memory: the peak extra is one block
linear's float32 weight while its LoRS layer is built.

Writing: ``config.json`` + ``model.safetensors`` (float32, metadata ``format: pt``), the tensors
streamed one at a time, each file written to a temporary name and renamed, so an interrupted save
never leaves a corrupt file.
See ``docs/models.md``.
"""

from __future__ import annotations

import json
import mmap as _mmap
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sparseft._atomic import atomic_path
from sparseft.models.config import GPTConfig, LlamaConfig, config_from_hf
from sparseft.models.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from sparseft.models.transformer import Decoder, build, normalize_keys, weight_spec

__all__ = ["SafetensorsReader", "from_pretrained", "save_pretrained"]

_DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "F64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
}
_CHUNK = 1 << 22  # values widened per read: the only temporary besides the float32 result


def _safe_open(path: Path) -> Any:
    from safetensors import safe_open

    return safe_open(str(path), framework="numpy")


class SafetensorsReader:
    """Float32 tensors by key from one or more ``.safetensors`` files (F32, F16, BF16 or F64 stored).

    Each file is validated by the ``safetensors`` package when the reader is made (header, offsets
    covering the data exactly, dtypes and shapes matching the byte ranges), which also lists its
    tensors. With ``mmap`` (the default) an F32 tensor whose bytes start 4-byte aligned is a view
    of a copy-on-write memory map of its byte range (``mmap.ACCESS_COPY``; one map per tensor,
    released with the last array viewing it): no read and no copy at load time, the pages come
    from the page cache when touched, and writes into the array stay private to the process (the
    file is never modified). Any other tensor is read from its byte
    range straight into its float32 result, in chunks of 4M values for the narrower dtypes: no
    full-size temporary (the package's NumPy API cannot give BF16, and copies F16 whole first).

    Parameters
    ----------
    files : list of pathlib.Path
    mmap : bool
        Map F32 tensors (True) or read them into new arrays (False).

    Notes
    -----
    A mapped array reads the file lazily, so the file must not be truncated or rewritten in place
    while the array lives (replacing it by a rename, as :func:`save_pretrained` does, is safe:
    the map keeps the old file alive).

    Raises
    ------
    ValueError
        On a file that is not a valid safetensors file (truncated, header lying about offsets or
        sizes, overlapping data) or a key present in two files; the message names the file.
    """

    def __init__(self, files: list[Path], mmap: bool = True) -> None:
        self.where: dict[str, tuple[Path, str, tuple[int, ...]]] = {}
        self._headers: dict[Path, tuple[dict[str, Any], int, int]] = {}
        self._mmap = bool(mmap)
        for path in files:
            try:
                with _safe_open(path) as f:
                    for key in f.keys():
                        sl = f.get_slice(key)
                        if key in self.where:
                            raise ValueError(f"{path}: tensor {key!r} also stored in {self.where[key][0]}")
                        self.where[key] = (path, str(sl.get_dtype()), tuple(int(s) for s in sl.get_shape()))
            except ValueError:
                raise
            except Exception as e:  # SafetensorError, OSError: a corrupt, truncated or unreadable file
                raise ValueError(f"{path}: not a valid safetensors file ({e})") from e

    def keys(self) -> list[str]:
        return list(self.where)

    def read(self, key: str, shape: tuple[int, ...] | None = None, check_finite: bool = True) -> np.ndarray:
        """The tensor ``key`` as a new float32 C-contiguous array.

        Raises
        ------
        ValueError
            If the key is absent, its shape is not ``shape``, its dtype is unsupported, its bytes
            are not in the file, or (``check_finite``) it holds NaN/inf; the message names the file
            and key.
        """
        if key not in self.where:
            raise ValueError(f"{key}: missing from the checkpoint")
        path, dtype, stored = self.where[key]
        if shape is not None and stored != tuple(shape):
            raise ValueError(f"{path}: {key}: expected shape {tuple(shape)}, got {stored}")
        if dtype not in _DTYPES:
            raise ValueError(f"{path}: {key}: unsupported dtype {dtype} (expected F32, F16 or BF16)")
        if path not in self._headers:
            self._headers[path] = _header(path)
        try:
            a = self._mapped(path, key, dtype, stored)
            if a is None:
                a = _read_range(path, self._headers[path], key, dtype, stored)
        except OSError as e:
            raise ValueError(f"{path}: {key}: unreadable ({e})") from e
        if check_finite and not np.isfinite(a).all():
            raise ValueError(f"{path}: {key}: contains NaN or infinity")
        return a

    def _mapped(self, path: Path, key: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """An F32 tensor as a view of a copy-on-write map of its bytes, or None (not mapped: another
        dtype, ``mmap=False``, an empty tensor or bytes not 4-byte aligned)."""
        if not self._mmap or dtype != "F32":
            return None
        header, start, size = self._headers[path]
        b, e = _offsets(path, header, key, dtype, shape, start, size)
        count = (e - b) // 4
        if count == 0 or (start + b) % 4:
            return None
        # one map per tensor, from the page holding its first byte: it is unmapped (and its pages
        # leave the resident set) when the last array viewing it goes, e.g. a block linear's
        # weight once its sparse base is built
        pos = start + b
        off = pos - pos % _mmap.ALLOCATIONGRANULARITY
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size != size:
                raise ValueError(f"{path}: the file changed size since its header was read")
            m = _mmap.mmap(f.fileno(), start + e - off, offset=off, access=_mmap.ACCESS_COPY)
        return np.frombuffer(m, np.float32, count, pos - off).reshape(shape)


def _header(path: Path) -> tuple[dict[str, Any], int, int]:
    """The parsed JSON header, the data section's start and the file size, checked."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated (no header length)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"{path}: header length {n} exceeds the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header is not a JSON object")
    return header, 8 + n, size


def _offsets(
    path: Path, header: dict[str, Any], key: str, dtype: str, shape: tuple[int, ...], start: int, size: int
) -> tuple[int, int]:
    """The checked byte range [b, e) of ``key`` in the data section (ValueError naming file and key)."""
    entry = header.get(key)
    offs = entry.get("data_offsets") if isinstance(entry, dict) else None
    if not (
        isinstance(offs, list)
        and len(offs) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
    ):
        raise ValueError(f"{path}: {key}: header entry without valid data_offsets")
    b, e = offs
    count = int(np.prod(shape, dtype=np.int64))
    if not (0 <= b <= e and start + e <= size and e - b == _DTYPES[dtype].itemsize * count):
        raise ValueError(
            f"{path}: {key}: data_offsets {offs} do not fit {shape} {dtype} in a {size}-byte file"
        )
    return b, e


def _read_range(
    path: Path, head: tuple[dict[str, Any], int, int], key: str, dtype: str, shape: tuple[int, ...]
) -> np.ndarray:
    """Tensor ``key`` read from its byte range and widened to float32 (BF16: the upper 16 bits)."""
    header, start, size = head
    src = _DTYPES[dtype]
    b, _ = _offsets(path, header, key, dtype, shape, start, size)
    count = int(np.prod(shape, dtype=np.int64))
    out = np.empty(shape, np.float32)
    flat = out.reshape(-1)
    with open(path, "rb") as f:
        f.seek(start + b)
        if dtype == "F32":
            got = f.readinto(flat.view(np.uint8).data)
            if got != 4 * count:
                raise ValueError(f"{path}: {key}: truncated data")
            return out
        buf = np.empty(min(_CHUNK, count), src)
        for i in range(0, count, _CHUNK):
            m = min(_CHUNK, count - i)
            if f.readinto(buf[:m].view(np.uint8).data) != src.itemsize * m:
                raise ValueError(f"{path}: {key}: truncated data")
            if dtype == "BF16":
                np.left_shift(buf[:m], 16, out=flat[i : i + m].view(np.uint32), dtype=np.uint32)
            else:
                flat[i : i + m] = buf[:m]
    return out


def _weight_files(d: Path) -> list[Path]:
    index = d / "model.safetensors.index.json"
    if index.exists():
        try:
            wm = json.loads(index.read_text())["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a valid index file ({e!r})") from e
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise ValueError(f"{index}: weight_map must map tensor names to file names")
        files = []
        for name in dict.fromkeys(wm.values()):
            if Path(name).name != name or not name.endswith(".safetensors"):
                raise ValueError(f"{index}: shard {name!r} is not a .safetensors file name in the directory")
            if not (d / name).is_file():
                raise ValueError(f"{index}: shard {name!r} is missing from {d}")
            files.append(d / name)
        return files
    single = d / "model.safetensors"
    if not single.is_file():
        raise ValueError(f"{d}: no model.safetensors or model.safetensors.index.json")
    return [single]


def read_config(path: str | os.PathLike[str]) -> GPTConfig | LlamaConfig:
    """The model config of a Hugging Face directory's ``config.json`` (errors name the file)."""
    f = Path(path) / "config.json"
    try:
        d = json.loads(f.read_text())
    except FileNotFoundError as e:
        raise ValueError(f"{f}: missing") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from e
    try:
        return config_from_hf(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{f}: {e}") from e


def from_pretrained(path: str | os.PathLike[str], tokenizer: Any = "auto", mmap: bool = True) -> Decoder:
    """Load a GPT-2 or Llama from a Hugging Face checkpoint directory.

    Parameters
    ----------
    path : str or path-like
        Directory with ``config.json`` and ``model.safetensors`` or a sharded
        ``model.safetensors.index.json``. GPT-2 keys may carry the ``transformer.`` prefix or not;
        F32, F16 and BF16 tensors are read to float32. Exact zeros in a block linear's weight are
        its pruning mask.
    tokenizer : "auto", str, path-like or None
        ``"auto"``: the directory's ``tokenizer.json`` through the ``tokenizers`` package when
        present, else :class:`ByteTokenizer` when the vocabulary has at least 256 tokens, else
        None. A path: a ``tokenizer.json`` or a directory holding one. None: no tokenizer.
    mmap : bool
        True (default): F32 tensors the model keeps as they are (embeddings, head, norms) are
        views of a copy-on-write memory map of the file (``mmap.ACCESS_COPY``), so a large F32
        checkpoint loads without reading it into a second copy; the model may still modify them
        (training, :meth:`merge_adapters`), the changes stay in the process and the file is never
        written. The file must then not be truncated or rewritten in place while the model lives
        (:func:`save_pretrained` into the same directory replaces it by a rename, which is safe).
        False: every tensor is read into a new array. F16/BF16 tensors are always decoded to new
        float32 arrays, 4M values at a time.

    Returns
    -------
    GPT or Llama
        With ``model.tokenizer`` set.

    Raises
    ------
    ValueError
        On a missing/invalid config or weight file, a missing, mis-shaped or non-finite tensor (the
        message names the file and key), or an unsupported architecture variant.
    """
    d = Path(path)
    if not d.is_dir():
        raise ValueError(f"path: expected a checkpoint directory, got {str(path)!r}")
    cfg = read_config(d)
    if not isinstance(mmap, (bool, np.bool_)):
        raise TypeError(f"mmap: expected a bool, got {type(mmap).__name__}")
    reader = SafetensorsReader(_weight_files(d), mmap=bool(mmap))
    stored = normalize_keys(dict.fromkeys(reader.keys(), None), cfg)
    alias = {}  # spec key -> key in the files (GPT-2 files may omit "transformer.")
    for k in reader.keys():
        for n in normalize_keys({k: None}, cfg):
            alias[n] = k
    wanted = {k for k, _, _ in weight_spec(cfg)}
    unused = sorted(set(stored) - wanted)
    if unused:
        warnings.warn(f"{d}: tensors not used by the model: {unused[:5]}", stacklevel=2)

    linear = {k for k, _, kind in weight_spec(cfg) if kind in ("linear", "conv1d")}

    def get(key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in alias:
            raise ValueError(f"{d}: tensor {key!r} missing from the checkpoint")
        # a block linear's weight is checked for NaN/inf when its LoRS layer is built
        return reader.read(alias[key], shape, check_finite=key not in linear)

    try:
        model = build(cfg, get)
    except ValueError as e:
        raise ValueError(str(e) if str(e).startswith(str(d)) else f"{d}: {e}") from e
    model.tokenizer = _tokenizer(d, tokenizer, cfg.vocab_size)
    return model


def _tokenizer(d: Path, tokenizer: Any, vocab: int) -> Any:
    if tokenizer is None:
        return None
    if isinstance(tokenizer, str) and tokenizer == "auto":
        if (d / "tokenizer.json").is_file():
            return load_tokenizer(d)
        return ByteTokenizer() if vocab >= 256 else None
    if isinstance(tokenizer, (str, os.PathLike)):
        return load_tokenizer(tokenizer)
    if isinstance(tokenizer, (ByteTokenizer, HFTokenizer)):
        return tokenizer
    raise TypeError(
        f"tokenizer: expected 'auto', a path, a tokenizer or None, got {type(tokenizer).__name__}"
    )


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place."""
    with atomic_path(path) as tmp:
        write(tmp)


def _write_safetensors(path: str, entries: list[tuple[str, tuple[int, ...]]], tensors: Iterator[Any]) -> None:
    """Write a float32 safetensors file tensor by tensor: the header comes from ``entries``
    (key, shape), the data from ``tensors`` ((key, array) in the same order)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    off = 0
    for key, shape in entries:
        n = 4 * int(np.prod(shape, dtype=np.int64))
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for (key, shape), (k, a) in zip(entries, tensors, strict=True):
            if k != key or a.shape != shape or a.dtype != np.float32:
                raise RuntimeError(
                    f"{key}: the model produced {k} {a.shape} {a.dtype}, expected float32 {shape}"
                )
            f.write(np.ascontiguousarray(a).data)


def save_pretrained(model: Decoder, path: str | os.PathLike[str]) -> None:
    """Write ``config.json`` and ``model.safetensors`` (float32, Hugging Face keys and layouts) that
    ``transformers.AutoModelForCausalLM.from_pretrained`` loads; pruned zeros are written as zeros.

    Adapters are not part of the file: call ``model.merge_adapters()`` first to ship the merged
    (still sparse) weights. A ``tokenizers``-backed tokenizer is saved as ``tokenizer.json``.
    Tensors are written one at a time (no second copy of the model in memory). Each file is
    written to a temporary name and renamed, and a shard index left from an earlier sharded
    checkpoint in the directory is removed so that the new weights are the ones read.

    Raises
    ------
    TypeError
        If ``model`` is not a GPT or Llama.
    """
    if not isinstance(model, Decoder):
        raise TypeError(f"model: expected a GPT or Llama model, got {type(model).__name__}")
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    entries = [(k, shape) for k, shape, _ in weight_spec(model.config)]
    _atomic_write(d / "model.safetensors", lambda tmp: _write_safetensors(tmp, entries, model.iter_state()))
    text = json.dumps(model.config.to_hf(), indent=2) + "\n"
    _atomic_write(d / "config.json", lambda tmp: Path(tmp).write_text(text))
    if isinstance(model.tokenizer, HFTokenizer):
        _atomic_write(d / "tokenizer.json", model.tokenizer.save)
    stale = d / "model.safetensors.index.json"
    if stale.exists():
        stale.unlink()
