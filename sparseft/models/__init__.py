"""Models built on LoRS layers: GPT-2 / Llama decoders, an MLP, and Hugging Face checkpoint I/O."""

from sparseft.models.mlp import MLP

__all__ = ["MLP"]
