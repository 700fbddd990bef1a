"""Datasets: the built-in corpus, tokenization and image corruptions."""
