"""Datasets: the built-in corpus, tokenization and image corruptions."""

from sparseft.data.corrupt import KINDS, corrupt

__all__ = ["KINDS", "corrupt"]
