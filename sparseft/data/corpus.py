"""Training data for the Trainer: the built-in corpus, tokenization and batch sampling.

Token data is a 1-D int64 array of ids; a batch is ``batch_size`` random windows of
``seq_len + 1`` consecutive tokens (inputs and next-token targets). Array data ``(X, y)`` (for the
MLP) is sampled by random rows. Nothing is downloaded: the built-in corpus is the text of Python's
own help topics (:mod:`pydoc_data.topics`, shipped with CPython), byte-level. See ``docs/training.md``.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

__all__ = ["ArrayData", "TokenData", "as_dataset", "builtin_corpus", "builtin_text", "tokenize"]

#: Longest str still looked up as a file path (longer strings are text).
_MAX_PATH = 4096


def builtin_text() -> str:
    """The built-in corpus as text: every help topic of :mod:`pydoc_data.topics`, sorted by topic.

    About 465,000 characters of English prose and Python code, shipped with CPython.
    """
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


def builtin_corpus() -> np.ndarray:
    """The built-in corpus as byte-level token ids: int64 (n,), values in [0, 256)."""
    return np.frombuffer(builtin_text().encode("utf-8"), dtype=np.uint8).astype(np.int64)


def _encode_text(text: str, tokenizer: Any, name: str) -> np.ndarray:
    if tokenizer is None:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    enc = tokenizer.encode(text)
    ids = getattr(enc, "ids", enc)  # tokenizers.Tokenizer returns an Encoding; others a list
    try:
        return np.asarray(ids, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name}: the tokenizer returned {type(ids).__name__}, expected a list of ints"
        ) from None


def _is_path(data: object) -> bool:
    if isinstance(data, os.PathLike):
        return True
    return isinstance(data, str) and 0 < len(data) <= _MAX_PATH and "\n" not in data and os.path.isfile(data)


def tokenize(
    data: Any, tokenizer: Any = None, vocab_size: int | None = None, name: str = "data"
) -> np.ndarray:
    """Token ids from a 1-D integer array, ``bytes``/``str`` text, or a path to a UTF-8 text file.

    Parameters
    ----------
    data : numpy.ndarray, bytes, str or os.PathLike
        Token ids (1-D, integer dtype); raw bytes (byte-level ids); text; or a text file. A ``str``
        naming an existing file (one line, at most 4096 characters) is read as that file; use
        :class:`pathlib.Path` to be explicit.
    tokenizer : object, optional
        Anything with ``encode(text)`` returning ids or an Encoding with ``.ids`` (the
        ``tokenizers`` package). None: byte-level (UTF-8 bytes are the ids; bytes input as is).
    vocab_size : int, optional
        Checked bound on the ids.
    name : str
        The argument name used in error messages.

    Returns
    -------
    numpy.ndarray
        int64 (n,) ids (a new array).

    Raises
    ------
    TypeError
        On another type or a non-integer array.
    ValueError
        On an empty result, a file that cannot be read or decoded, a non-1-D array, or ids outside
        ``[0, vocab_size)``.
    """
    if _is_path(data):
        path = pathlib.Path(data)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{name}: cannot read text file {str(path)!r}: {e}") from None
        ids = _encode_text(text, tokenizer, name)
        where = f" (file {str(path)!r})"
    elif isinstance(data, (bytes, bytearray, memoryview)):
        if tokenizer is None:
            ids = np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int64)
        else:
            try:
                ids = _encode_text(bytes(data).decode("utf-8"), tokenizer, name)
            except UnicodeDecodeError as e:
                raise ValueError(f"{name}: bytes are not UTF-8 text for the model's tokenizer: {e}") from None
        where = ""
    elif isinstance(data, str):
        ids = _encode_text(data, tokenizer, name)
        where = ""
    elif isinstance(data, np.ndarray):
        if data.dtype == np.bool_ or not np.issubdtype(data.dtype, np.integer):
            raise TypeError(f"{name}: expected an integer array of token ids, got dtype {data.dtype}")
        if data.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D array of token ids, got shape {data.shape}")
        ids = data.astype(np.int64)  # a copy: the caller's array is never kept
        where = ""
    else:
        raise TypeError(
            f"{name}: expected token ids (1-D integer ndarray), bytes, str text or a text file path, "
            f"got {type(data).__name__}"
        )
    if ids.size == 0:
        raise ValueError(f"{name}: no tokens{where}")
    if vocab_size is not None:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{name}: token ids must be in [0, {vocab_size}), got min {lo}, max {hi}{where}")
    return ids


class TokenData:
    """A token stream sampled as random windows (language modelling).

    Parameters
    ----------
    ids : numpy.ndarray
        int64 (n,) token ids (see :func:`tokenize`).
    """

    kind = "tokens"

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return int(self.ids.size)

    def check(self, batch_size: int, seq_len: int, name: str = "data") -> None:
        """ValueError unless one window of ``seq_len + 1`` tokens fits."""
        if self.ids.size < seq_len + 1:
            raise ValueError(
                f"{name}: too short, {self.ids.size} tokens for windows of seq_len + 1 = {seq_len + 1} tokens"
            )

    def sample(
        self, rng: np.random.Generator, batch_size: int, seq_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` random windows: inputs and next-token targets, int64 (batch_size, seq_len) each."""
        starts = rng.integers(0, self.ids.size - seq_len, size=batch_size)
        idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
        w = self.ids[idx]
        return np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])

    def windows(self, batch_size: int, seq_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every non-overlapping window in order, grouped in batches (the last may be smaller)."""
        n = (self.ids.size - 1) // seq_len
        starts = np.arange(n) * seq_len
        out = []
        for k in range(0, n, batch_size):
            idx = starts[k : k + batch_size, None] + np.arange(seq_len + 1)[None, :]
            w = self.ids[idx]
            out.append((np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])))
        return out


class ArrayData:
    """Features and integer labels ``(X, y)`` sampled by rows (classification, e.g. the MLP).

    Parameters
    ----------
    X : numpy.ndarray
        float32 (n, features).
    y : numpy.ndarray
        int64 (n,) class labels.
    """

    kind = "arrays"

    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X, self.y = X, y

    def __len__(self) -> int:
        return int(self.y.size)

    def check(self, batch_size: int, seq_len: int, name: str = "data") -> None:
        """Array data has no minimum length beyond one row (checked at construction)."""

    def sample(
        self, rng: np.random.Generator, batch_size: int, seq_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` rows drawn with replacement: X float32 (batch_size, features), y int64 (batch_size,)."""
        idx = rng.integers(0, self.y.size, size=batch_size)
        return np.ascontiguousarray(self.X[idx]), np.ascontiguousarray(self.y[idx])

    def windows(self, batch_size: int, seq_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """All rows in order, in batches (the last may be smaller)."""
        return [
            (self.X[k : k + batch_size], self.y[k : k + batch_size])
            for k in range(0, self.y.size, batch_size)
        ]


def _as_arrays(data: tuple[Any, ...], name: str) -> ArrayData:
    if len(data) != 2:
        raise ValueError(f"{name}: expected an (X, y) pair, got a tuple of {len(data)}")
    X, y = data
    if not isinstance(X, np.ndarray) or not isinstance(y, np.ndarray):
        raise TypeError(f"{name}: expected (X, y) numpy arrays, got ({type(X).__name__}, {type(y).__name__})")
    if X.dtype != np.float32:
        raise TypeError(f"{name}: X must be float32, got {X.dtype}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{name}: y must hold integer class labels, got {y.dtype}")
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: expected X (n, features) and y (n,), got X {X.shape} and y {y.shape}")
    if y.size == 0:
        raise ValueError(f"{name}: no rows")
    if not np.isfinite(X).all():
        raise ValueError(f"{name}: X contains NaN or infinity")
    if int(y.min()) < 0:
        raise ValueError(f"{name}: class labels must be >= 0, got min {int(y.min())}")
    return ArrayData(np.ascontiguousarray(X).copy(), y.astype(np.int64))


def as_dataset(
    data: Any, tokenizer: Any = None, vocab_size: int | None = None, name: str = "data"
) -> TokenData | ArrayData:
    """Wrap what :meth:`sparseft.Trainer.fit` accepts: ``(X, y)`` arrays, or anything :func:`tokenize` takes.

    A :class:`TokenData` or :class:`ArrayData` passes through unchanged.
    """
    if isinstance(data, (TokenData, ArrayData)):
        return data
    if isinstance(data, tuple):
        return _as_arrays(data, name)
    return TokenData(tokenize(data, tokenizer, vocab_size, name))
