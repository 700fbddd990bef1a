"""Models built on LoRS layers: GPT-2 / Llama decoders, an MLP, Hugging Face checkpoints in and out, tokenizers.

See ``docs/models.md``.
"""

from sparseft.models.checkpoint import from_pretrained, save_pretrained
from sparseft.models.config import GPTConfig, LlamaConfig
from sparseft.models.graph import Model, Op, run_step
from sparseft.models.mlp import MLP
from sparseft.models.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from sparseft.models.transformer import GPT, Decoder, Llama

__all__ = [
    "GPT",
    "MLP",
    "ByteTokenizer",
    "Decoder",
    "GPTConfig",
    "HFTokenizer",
    "Llama",
    "LlamaConfig",
    "Model",
    "Op",
    "from_pretrained",
    "load_tokenizer",
    "run_step",
    "save_pretrained",
]
