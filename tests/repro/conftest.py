"""Shared pieces of the LoRS and novel reproductions: the built-in GPT (a small byte-level GPT
trained on the built-in corpus, shipped in ``tests/repro/builtin_gpt/`` with its recipe) and an
SPP/SQFT-style masked adapter."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest

import sparseft as sft
from sparseft.adapters import LoRSLinear
from sparseft.models import from_pretrained
from sparseft.models.transformer import LinearOp

from .builtin_gpt import HERE as BUILTIN_GPT
from .builtin_gpt import corpus_split, held_out_perplexity

# the shape of the built-in GPT (tests that need an untrained model of that family use it)
CFG = dict(vocab_size=256, n_layer=2, n_head=2, d_model=64, seq_len=32)
BATCH, SEQ = 8, 32

__all__ = ["BATCH", "BUILTIN_GPT", "CFG", "SEQ", "corpus_split", "perplexity"]


def perplexity(model: Any) -> float:
    """Held-out perplexity of ``model`` (every non-overlapping SEQ window of the held-out split)."""
    return held_out_perplexity(model)


@pytest.fixture(scope="session")
def gpt_dir() -> pathlib.Path:
    """Directory of the shipped built-in GPT (Hugging Face layout; see builtin_gpt/RECIPE.json)."""
    sft.set_num_threads(1)  # deterministic and not oversubscribed on a shared 2-core host
    return BUILTIN_GPT


def load_gpt(path: pathlib.Path) -> Any:
    """A fresh copy of the built-in GPT (frozen, no adapters)."""
    return from_pretrained(path)


class SPPLinear(LoRSLinear):
    """The SPP/SQFT-style masked adapter as those papers' code writes it under autograd.

    W' = W + s·(B A) ⊙ M is materialised as a dense (out, in) float32 array in the forward and
    kept until the backward (autograd saves it for the input gradient), where the full
    (out, in) weight gradient G = gyᵀ x is formed, masked and reduced into dA, dB. Same math as
    LoRS's ``grad="exact"``; the difference is only the out×in buffers.
    """

    def __init__(self, src: LoRSLinear) -> None:
        super().__init__(src.base.to_dense(), src.mask, r=src.r, alpha=src.alpha, bias=src.bias, seed=0)
        self.A = src.A.copy()
        self.B = src.B.copy()
        self.grad_A = np.zeros_like(self.A)
        self.grad_B = np.zeros_like(self.B)
        self._Wd = src.base.to_dense()
        self._M = src.mask.astype(np.float32)
        self._saved: np.ndarray | None = None

    def _materialise(self) -> np.ndarray:
        return self._Wd + np.float32(self.scaling) * (self.B @ self.A) * self._M

    def forward(self, x: np.ndarray, save: bool = True) -> np.ndarray:
        Wp = self._materialise()
        self._saved = Wp  # what autograd keeps for the backward
        y = x.reshape(-1, self.in_features) @ Wp.T
        if self.bias is not None:
            y += self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, gy: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
        assert x is not None and self._saved is not None
        Wp, self._saved = self._saved, None
        gy2 = gy.reshape(-1, self.out_features)
        x2 = x.reshape(-1, self.in_features)
        gx = gy2 @ Wp
        Gm = (gy2.T @ x2) * self._M  # (out, in) full weight gradient, masked
        s = np.float32(self.scaling)
        self.grad_B += s * (Gm @ self.A.T)
        self.grad_A += s * (self.B.T @ Gm)
        return gx.reshape(*x.shape[:-1], self.in_features)


def use_spp(model: Any) -> None:
    """Replace every adapted block linear's LoRS layer by its SPP-style twin (same A, B, mask)."""
    for op in model.ops():
        if isinstance(op, LinearOp):
            op.layer = SPPLinear(op.layer)


def masked_weight_grads(model: Any, ids: np.ndarray) -> dict[str, np.ndarray]:
    """G ⊙ M (out, in) per block linear over one batch of ``ids`` (B, SEQ+1): the full-weight
    gradient the "lors" init takes, from sparse full fine-tuning's sampled weight gradient."""
    from sparseft.models.graph import run_step

    model.train_base(True)
    model.zero_grad()
    run_step(model, ids[:, :-1], ids[:, 1:])
    grads = model.gradients()
    out = {}
    for name, layer in model.linears().items():
        g = grads[f"{name}.weight"]
        mask = layer.mask
        if g.shape == mask.shape:
            out[name] = g.copy()
        else:  # compressed base: values in the mask's row-major order
            G = np.zeros(mask.shape, np.float32)
            G.reshape(-1)[np.flatnonzero(mask)] = g.reshape(-1)
            out[name] = G
    model.train_base(False)
    model.zero_grad()
    return out


def batch_windows(n: int, seed: int) -> np.ndarray:
    """``n`` random windows of SEQ+1 tokens of the training split."""
    train = corpus_split()[0]
    starts = np.random.default_rng(seed).integers(0, train.size - SEQ - 1, n)
    return np.stack([train[s : s + SEQ + 1] for s in starts]).astype(np.int64)
