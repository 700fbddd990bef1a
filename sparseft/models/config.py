"""Configurations of the GPT-2 and Llama decoders, and their Hugging Face ``config.json`` forms.

See ``docs/models.md``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = ["GPTConfig", "LlamaConfig", "config_from_hf"]


def _int(name: str, v: object, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v}")
    return v


def _pos(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name}: expected a float, got {type(v).__name__}")
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: expected a finite float > 0, got {v!r}")
    return float(v)


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """GPT-2: LayerNorm, learned positions, GELU (tanh) MLP of width ``4 * d_model``, biases, tied head.

    Parameters
    ----------
    vocab_size, n_layer, n_head, d_model, seq_len : int
        ``d_model`` must be a multiple of ``n_head``; ``seq_len`` is the number of learned
        positions (Hugging Face ``n_positions``).
    ln_eps : float
        LayerNorm epsilon (``layer_norm_epsilon``).
    d_ff : int or None
        MLP width (``n_inner``); None means ``4 * d_model``.
    """

    vocab_size: int
    n_layer: int
    n_head: int
    d_model: int
    seq_len: int
    ln_eps: float = 1e-5
    d_ff: int | None = None

    kind = "gpt2"

    def __post_init__(self) -> None:
        for f in ("vocab_size", "n_layer", "n_head", "d_model", "seq_len"):
            _int(f, getattr(self, f))
        _pos("ln_eps", self.ln_eps)
        if self.d_ff is not None:
            _int("d_ff", self.d_ff)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model: expected a multiple of n_head={self.n_head}, got {self.d_model}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ff(self) -> int:
        """The MLP width."""
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` dict ``transformers.GPT2Config`` reads."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_embd": self.d_model,
            "n_positions": self.seq_len,
            "n_inner": self.d_ff,
            "layer_norm_epsilon": self.ln_eps,
            "activation_function": "gelu_new",
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
        }

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> GPTConfig:
        """From a GPT-2 ``config.json`` dict (unsupported variants are a ValueError naming the key)."""
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            raise ValueError(f"activation_function: expected the tanh GELU ('gelu_new'), got {act!r}")
        for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
            if d.get(key, ok) != ok:
                raise ValueError(f"{key}: only {ok} is supported, got {d[key]!r}")
        if d.get("tie_word_embeddings", True) is not True:
            raise ValueError("tie_word_embeddings: GPT-2's head is tied to wte, got False")
        return cls(
            vocab_size=_need(d, "vocab_size"),
            n_layer=_need(d, "n_layer"),
            n_head=_need(d, "n_head"),
            d_model=_need(d, "n_embd"),
            seq_len=_need(d, "n_positions"),
            ln_eps=d.get("layer_norm_epsilon", 1e-5),
            d_ff=d.get("n_inner"),
        )


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Llama: RMSNorm, RoPE, SwiGLU MLP, grouped-query attention, no biases, untied head by default.

    Parameters
    ----------
    vocab_size, n_layer, n_head, n_kv_head, d_model, d_ff, seq_len : int
        ``d_model`` a multiple of ``n_head``, ``n_head`` a multiple of ``n_kv_head``, the head
        size even (RoPE rotates pairs); ``seq_len`` is ``max_position_embeddings``.
    rope_theta : float
        RoPE base.
    rms_eps : float
        RMSNorm epsilon.
    tie_word_embeddings : bool
        Whether the head is the token embedding (Llama 3.2 1B/3B tie it).
    rope_llama3 : tuple or None
        Llama 3.1's RoPE frequency scaling, ``(factor, low_freq_factor, high_freq_factor,
        original_max_position_embeddings)`` (Hugging Face ``rope_type: "llama3"``); None for plain RoPE.
    """

    vocab_size: int
    n_layer: int
    n_head: int
    n_kv_head: int
    d_model: int
    d_ff: int
    seq_len: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    tie_word_embeddings: bool = False
    rope_llama3: tuple[float, float, float, int] | None = None

    kind = "llama"

    def __post_init__(self) -> None:
        for f in ("vocab_size", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "seq_len"):
            _int(f, getattr(self, f))
        _pos("rope_theta", self.rope_theta)
        _pos("rms_eps", self.rms_eps)
        if not isinstance(self.tie_word_embeddings, bool):
            raise TypeError(
                f"tie_word_embeddings: expected a bool, got {type(self.tie_word_embeddings).__name__}"
            )
        if self.d_model % self.n_head:
            raise ValueError(f"d_model: expected a multiple of n_head={self.n_head}, got {self.d_model}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head: expected a divisor of n_head={self.n_head}, got {self.n_kv_head}")
        if self.head_dim % 2:
            raise ValueError(f"d_model: expected an even head size d_model/n_head, got {self.head_dim}")
        if self.rope_llama3 is not None:
            r = self.rope_llama3
            if not (isinstance(r, tuple) and len(r) == 4):
                raise TypeError(f"rope_llama3: expected a tuple of 4 numbers or None, got {r!r}")
            for name, v in zip(("factor", "low_freq_factor", "high_freq_factor"), r[:3], strict=False):
                _pos(f"rope_llama3 {name}", v)
            _int("rope_llama3 original_max_position_embeddings", r[3])
            if not r[2] > r[1]:
                raise ValueError(f"rope_llama3: expected high_freq_factor > low_freq_factor, got {r!r}")

    def inv_freq(self) -> np.ndarray | None:
        """RoPE's per-pair frequencies (head_dim/2,) float64 with Llama 3.1's scaling, None when
        plain RoPE (``rope_theta ** (-2i / head_dim)``) applies."""
        if self.rope_llama3 is None:
            return None
        factor, low, high, old = self.rope_llama3
        D = self.head_dim
        inv = 1.0 / self.rope_theta ** (np.arange(0, D, 2, dtype=np.float64) / D)
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ff(self) -> int:
        """The MLP width."""
        return self.d_ff

    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` dict ``transformers.LlamaConfig`` reads."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "num_hidden_layers": self.n_layer,
            "num_attention_heads": self.n_head,
            "num_key_value_heads": self.n_kv_head,
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ff,
            "max_position_embeddings": self.seq_len,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "rope_scaling": None
            if self.rope_llama3 is None
            else dict(
                rope_type="llama3",
                factor=self.rope_llama3[0],
                low_freq_factor=self.rope_llama3[1],
                high_freq_factor=self.rope_llama3[2],
                original_max_position_embeddings=self.rope_llama3[3],
            ),
            "torch_dtype": "float32",
        }

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> LlamaConfig:
        """From a Llama ``config.json`` dict (unsupported variants are a ValueError naming the key)."""
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act: only 'silu' is supported, got {d['hidden_act']!r}")
        for key in ("attention_bias", "mlp_bias"):
            if d.get(key, False):
                raise ValueError(f"{key}: biases are not supported in Llama, got {d[key]!r}")
        partial = d.get(
            "partial_rotary_factor", (d.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0)
        )
        if partial != 1.0:
            raise ValueError(
                f"partial_rotary_factor: only 1.0 (RoPE on the whole head) is supported, got {partial!r}"
            )
        n_head = _need(d, "num_attention_heads")
        d_model = _need(d, "hidden_size")
        hd = d.get("head_dim")
        if hd is not None and isinstance(n_head, int) and isinstance(d_model, int) and hd * n_head != d_model:
            raise ValueError(f"head_dim: expected hidden_size/num_attention_heads, got {hd}")
        rope = d.get("rope_theta")
        llama3 = None
        for key in ("rope_scaling", "rope_parameters"):
            rp = d.get(key)
            if rp in (None, {}):
                continue
            if not isinstance(rp, dict):
                raise ValueError(f"{key}: expected an object, got {rp!r}")
            kind = rp.get("rope_type", rp.get("type", "default"))
            if kind == "llama3":
                try:
                    llama3 = tuple(
                        rp[k]
                        for k in (
                            "factor",
                            "low_freq_factor",
                            "high_freq_factor",
                            "original_max_position_embeddings",
                        )
                    )
                except KeyError as e:
                    raise ValueError(f"{key}: llama3 scaling without {e.args[0]!r}") from e
            elif kind != "default":
                raise ValueError(
                    f"{key}: only plain RoPE and Llama 3.1's 'llama3' scaling are supported, got {rp!r}"
                )
            rope = rp.get("rope_theta", rope)
        return cls(
            vocab_size=_need(d, "vocab_size"),
            n_layer=_need(d, "num_hidden_layers"),
            n_head=n_head,
            n_kv_head=d.get("num_key_value_heads") or n_head,
            d_model=d_model,
            d_ff=_need(d, "intermediate_size"),
            seq_len=_need(d, "max_position_embeddings"),
            rope_theta=10000.0 if rope is None else rope,
            rms_eps=d.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            rope_llama3=llama3,  # type: ignore[arg-type]
        )


def _need(d: dict[str, Any], key: str) -> Any:
    if key not in d:
        raise ValueError(f"{key}: missing from config.json")
    return d[key]


def config_from_hf(d: object) -> GPTConfig | LlamaConfig:
    """The config of a Hugging Face ``config.json`` dict, picked by ``model_type``.

    Raises
    ------
    ValueError
        If ``model_type`` is not ``"gpt2"`` or ``"llama"``, or a field is missing or invalid.
    """
    if not isinstance(d, dict):
        raise TypeError(f"config: expected a JSON object, got {type(d).__name__}")
    kind = d.get("model_type")
    if kind == "gpt2":
        return GPTConfig.from_hf(d)
    if kind == "llama":
        return LlamaConfig.from_hf(d)
    raise ValueError(f"model_type: expected 'gpt2' or 'llama', got {kind!r}")
