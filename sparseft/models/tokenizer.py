"""Tokenizers: byte-level ids (no files needed) or a Hugging Face ``tokenizer.json``.

Both give ``encode(text) -> int64 ids`` and ``decode(ids) -> str`` and a ``vocab_size``.
See ``docs/models.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ByteTokenizer", "HFTokenizer", "load_tokenizer"]


def _text_bytes(text: object) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8")
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"text: expected str or bytes, got {type(text).__name__}")


def _ids(ids: object, vocab: int) -> np.ndarray:
    a = np.asarray(ids)
    if a.dtype.kind not in "iu":
        raise TypeError(f"ids: expected integer token ids, got dtype {a.dtype}")
    a = a.reshape(-1).astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= vocab):
        raise ValueError(f"ids: expected ids in [0, {vocab}), got min {a.min()}, max {a.max()}")
    return a


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255 (``vocab_size`` 256); decoding replaces invalid UTF-8."""

    vocab_size = 256

    def encode(self, text: str | bytes) -> np.ndarray:
        """int64 ids (n,) of the UTF-8 bytes of ``text`` (str) or of ``text`` itself (bytes)."""
        return np.frombuffer(_text_bytes(text), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Any) -> str:
        """The text of byte ids (invalid UTF-8 sequences become U+FFFD)."""
        return _ids(ids, 256).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (from a ``tokenizer.json``) with NumPy ids.

    Parameters
    ----------
    tokenizer : tokenizers.Tokenizer
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str | bytes) -> np.ndarray:
        """int64 ids (n,) of ``text`` (bytes are decoded as UTF-8), without added special tokens."""
        s = text if isinstance(text, str) else _text_bytes(text).decode("utf-8", errors="replace")
        return np.asarray(self._tok.encode(s, add_special_tokens=False).ids, dtype=np.int64)

    def decode(self, ids: Any) -> str:
        """The text of ``ids``."""
        return str(self._tok.decode(_ids(ids, self.vocab_size).tolist()))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``tokenizer.json`` content to ``path``."""
        self._tok.save(str(path))

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size})"


def load_tokenizer(path: str | os.PathLike[str]) -> HFTokenizer:
    """An :class:`HFTokenizer` from a ``tokenizer.json`` file or a directory holding one.

    Raises
    ------
    ValueError
        If the file is missing or not a valid tokenizer file (the message names it).
    """
    from tokenizers import Tokenizer

    p = Path(path)
    f = p / "tokenizer.json" if p.is_dir() else p
    if not f.is_file():
        raise ValueError(f"tokenizer: {f} not found")
    try:
        return HFTokenizer(Tokenizer.from_file(str(f)))
    except Exception as e:  # the tokenizers package raises its own Exception types on bad files
        raise ValueError(f"{f}: not a valid tokenizer file ({e})") from e
