"""sparseft.data.corpus: the built-in corpus, tokenization, batch sampling and bad input."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseft.data import ArrayData, TokenData, as_dataset, builtin_corpus, builtin_text, tokenize


def test_builtin_corpus_is_python_help_text_as_bytes() -> None:
    text = builtin_text()
    ids = builtin_corpus()
    assert len(text) > 100_000 and "lambda" in text
    assert ids.dtype == np.int64 and ids.ndim == 1 and ids.min() >= 0 and ids.max() < 256
    assert ids.tobytes() == np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64).tobytes()


def test_tokenize_forms(tmp_path: pathlib.Path) -> None:
    assert tokenize("hé").tolist() == [104, 195, 169]
    assert tokenize(b"ab").tolist() == [97, 98]
    f = tmp_path / "t.txt"
    f.write_text("xyz", encoding="utf-8")
    assert tokenize(f).tolist() == [120, 121, 122]
    assert tokenize(str(f)).tolist() == [120, 121, 122]
    a = np.array([1, 2, 3], dtype=np.int32)
    out = tokenize(a, vocab_size=4)
    assert out.dtype == np.int64 and out.tolist() == [1, 2, 3]
    out[0] = 9
    assert a[0] == 1  # the caller's array is not kept


class _Tok:
    def encode(self, text: str) -> list[int]:
        return [len(w) for w in text.split()]


def test_tokenizer_is_used_for_text_and_bytes() -> None:
    assert tokenize("a bb ccc", _Tok()).tolist() == [1, 2, 3]
    assert tokenize(b"a bb", _Tok()).tolist() == [1, 2]
    with pytest.raises(ValueError, match="data: bytes are not UTF-8"):
        tokenize(b"\xff\xfe", _Tok())


@pytest.mark.parametrize(
    ("data", "exc", "match"),
    [
        (b"", ValueError, "no tokens"),
        (np.array([], np.int64), ValueError, "no tokens"),
        (np.array([True]), TypeError, "integer array"),
        (np.zeros((2, 2), np.int64), ValueError, "1-D"),
        (np.array([-1, 3]), ValueError, r"in \[0, 10\)"),
        (3.5, TypeError, "expected token ids"),
        ([1, 2], TypeError, "expected token ids"),
    ],
)
def test_tokenize_rejects(data, exc, match) -> None:
    with pytest.raises(exc, match=match):
        tokenize(data, vocab_size=10, name="data")


def test_missing_path_object_is_a_value_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="cannot read text file"):
        tokenize(tmp_path / "absent.txt")


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 200), batch=st.integers(1, 5), seq=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_token_windows_are_consecutive_next_token_pairs(n: int, batch: int, seq: int, seed: int) -> None:
    ids = np.arange(n, dtype=np.int64)  # unique ids: a window's first id is its start
    ds = TokenData(ids)
    if n < seq + 1:
        with pytest.raises(ValueError, match="too short"):
            ds.check(batch, seq)
        return
    ds.check(batch, seq)
    x, y = ds.sample(np.random.default_rng(seed), batch, seq)
    assert x.shape == y.shape == (batch, seq) and x.dtype == np.int64
    for r in range(batch):
        start = int(x[r, 0])
        assert np.array_equal(x[r], ids[start : start + seq])
        assert np.array_equal(y[r], ids[start + 1 : start + seq + 1])
    # deterministic for a seed
    x2, _ = ds.sample(np.random.default_rng(seed), batch, seq)
    assert np.array_equal(x, x2)
    wins = ds.windows(batch, seq)
    got = np.concatenate([w[0].reshape(-1) for w in wins])
    assert np.array_equal(got, ids[: got.size]) and got.size == (n - 1) // seq * seq


def test_array_data() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 3)).astype(np.float32)
    y = rng.integers(0, 2, 10)
    ds = as_dataset((X, y))
    assert isinstance(ds, ArrayData) and len(ds) == 10
    xb, yb = ds.sample(rng, 4, 1)
    assert xb.shape == (4, 3) and yb.shape == (4,)
    X[0, 0] = 99.0
    assert ds.X[0, 0] != 99.0  # copied
    assert sum(len(b[1]) for b in ds.windows(3, 1)) == 10
    with pytest.raises(TypeError, match="X must be float32"):
        as_dataset((X.astype(np.float64), y))
    with pytest.raises(ValueError, match=r"X \(n, features\) and y \(n,\)"):
        as_dataset((X, y[:5]))
    with pytest.raises(ValueError, match="NaN"):
        as_dataset((np.full((2, 3), np.nan, np.float32), y[:2]))
    with pytest.raises(ValueError, match="labels must be >= 0"):
        as_dataset((X, -np.ones(10, np.int64)))
    with pytest.raises(TypeError, match="integer class labels"):
        as_dataset((X, y.astype(np.float32)))
    with pytest.raises(ValueError, match="no rows"):
        as_dataset((X[:0], y[:0]))
