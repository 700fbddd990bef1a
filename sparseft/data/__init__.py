"""Datasets: the built-in corpus, tokenization and image corruptions."""

from sparseft.data.corpus import ArrayData, TokenData, as_dataset, builtin_corpus, builtin_text, tokenize

__all__ = ["ArrayData", "TokenData", "as_dataset", "builtin_corpus", "builtin_text", "tokenize"]
