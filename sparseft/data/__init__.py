"""Datasets: the built-in corpus, tokenization and image corruptions."""

from sparseft.data.corpus import ArrayData, TokenData, as_dataset, builtin_corpus, builtin_text, tokenize
from sparseft.data.corrupt import KINDS, corrupt

__all__ = ["KINDS", "ArrayData", "TokenData", "as_dataset", "builtin_corpus", "builtin_text", "corrupt", "tokenize"]
