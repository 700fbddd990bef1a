"""GPT-2 and Llama decoders on LoRS layers, as a list of ops (the protocol of ``models.graph``).

One decoder class covers both, chosen by its config: GPT-2 (LayerNorm, learned positions, GELU-tanh
MLP, biases, tied head) and Llama (RMSNorm, RoPE, SwiGLU MLP, grouped-query attention, no biases,
head untied unless the config ties it). Every linear of the blocks is a :class:`~sparseft.LoRSLinear`
(sparse base, adapter only where :meth:`Decoder.add_adapters` puts one); the embeddings and the
head are dense and frozen. Weights use Hugging Face key names and layouts (see ``docs/models.md``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from sparseft import _core, formats
from sparseft.adapters.lors import LoRSConfig, LoRSLinear
from sparseft.formats.dense import DenseBase
from sparseft.models import ops as F
from sparseft.models.config import GPTConfig, LlamaConfig
from sparseft.models.graph import Act, Alloc, Model, Op, check_ops, primary

__all__ = ["GPT", "Decoder", "LinearOp", "Llama", "build", "weight_spec"]

F32 = np.float32
Config = GPTConfig | LlamaConfig
Getter = Callable[[str, tuple[int, ...]], np.ndarray]
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def _rows(a: np.ndarray) -> np.ndarray:
    """(..., C) as a C-contiguous (N, C) float32 view (a copy only when needed)."""
    return np.ascontiguousarray(a.reshape(-1, a.shape[-1]))


# ---- ops --------------------------------------------------------------------------------------


def _empty(alloc: Alloc | None, shape: tuple[int, ...]) -> np.ndarray:
    """A new float32 array of ``shape``, from ``alloc`` (an executor's buffer pool) when given."""
    return np.empty(shape, F32) if alloc is None else alloc(shape)


def _out(alloc: Alloc | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """An output buffer for a kernel's ``out=`` (None: the kernel allocates)."""
    return None if alloc is None else alloc(shape)


class _AllocOp(Op):
    """An op whose training forward and backward take ``alloc=`` for their large outputs (the
    executor's buffer pool, see ``Op.takes_alloc``); ``forward`` alone allocates as usual."""

    takes_alloc = True

    def forward(self, *xs: Act, alloc: Alloc | None = None) -> Act:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def train_forward(self, *xs: Act, alloc: Alloc | None = None) -> Act:
        return self.forward(*xs, alloc=alloc)


class LinearOp(Op):
    """A block linear: a :class:`~sparseft.LoRSLinear` in one of three modes.

    * ``"frozen"``: y = x Wᵀ + b with the sparse base only; backward returns gx and accumulates nothing.
    * ``"adapter"``: the layer's LoRS adapter trains (params ``A``, ``B``, and ``magnitude`` with
      DoRA); the bias stays frozen, as PEFT's ``bias="none"``.
    * ``"base"``: sparse full fine-tuning. Params are ``weight`` (the base's stored values: (out, in)
      with zeros for a dense base, the nonzeros for CSR/N:M) and ``bias``; the weight gradient is
      G = gyᵀx sampled at the mask positions, so the optimizer never moves a pruned zero.
    """

    def __init__(self, name: str, src: str, block: int, layer: LoRSLinear, conv1d: bool) -> None:
        super().__init__(name, (src,), block)
        self._layer = layer
        self.conv1d = conv1d  # stored (in, out) in the checkpoint (GPT-2's Conv1D)
        self.mode = "frozen"
        self.takes_alloc = False  # True in base mode on a dense base: y and gx go into alloc's buffers
        self._gw: np.ndarray | None = None
        self._gb: np.ndarray | None = None
        self._pos: np.ndarray | None = None
        self._mask: np.ndarray | None = None

    @property
    def layer(self) -> LoRSLinear:
        """The LoRS layer; assigning a new one (e.g. a pruned rebuild) keeps the op's mode, and in
        base mode re-derives the trainable values and fresh gradients from the new base."""
        return self._layer

    @layer.setter
    def layer(self, layer: LoRSLinear) -> None:
        if not isinstance(layer, LoRSLinear):
            raise TypeError(f"layer: expected a LoRSLinear, got {type(layer).__name__}")
        mode = self.mode
        if mode == "base":
            self.set_mode("frozen")
        self._layer = layer
        self.set_mode(mode)

    @property
    def in_features(self) -> int:
        return self.layer.in_features

    @property
    def out_features(self) -> int:
        return self.layer.out_features

    def _values(self) -> np.ndarray:
        base: Any = self.layer.base
        return base.values if hasattr(base, "values") else base._W

    def set_mode(self, mode: str) -> None:
        """Switch to ``"frozen"``, ``"adapter"`` or ``"base"`` (see the class docstring)."""
        if mode not in ("frozen", "adapter", "base"):
            raise ValueError(f"mode: expected 'frozen', 'adapter' or 'base', got {mode!r}")
        if mode == "base" and self.mode != "base":
            layer = self._layer
            if layer.merged:  # adapters folded in: the merged weights become the plain base
                layer = self._layer = _frozen_linear(layer.base.to_dense(), layer.bias, self.name)
            mask = layer.mask
            # a private copy of the base whose value array the optimizer may update in place
            fmt: Any = type(layer.base)  # every base format has from_dense
            layer.base = fmt.from_dense(layer.base.to_dense(), mask)
            vals = self._values()
            vals.flags.writeable = True
            self._gw = np.zeros_like(vals)
            # dense values: the gradient is multiplied by the mask (None: all ones, nothing to
            # multiply); compressed: sampled at its positions
            self._mask = mask if vals.shape == mask.shape and not mask.all() else None
            self._pos = None if vals.shape == mask.shape else np.flatnonzero(mask)
            if layer.bias is not None:
                layer.bias.flags.writeable = True
                self._gb = np.zeros_like(layer.bias)
        if mode != "base" and self.mode == "base":
            self._values().flags.writeable = False
            self._gw = self._gb = self._pos = self._mask = None
        self.mode = mode
        self.takes_alloc = mode == "base" and isinstance(self._layer.base, DenseBase)

    def params(self) -> dict[str, np.ndarray]:
        if self.mode == "adapter":
            return {k: v for k, v in self.layer.parameters().items() if k != "bias"}
        if self.mode == "base":
            p = {"weight": self._values()}
            if self.layer.bias is not None:
                p["bias"] = self.layer.bias
            return p
        return {}

    def grads(self) -> dict[str, np.ndarray]:
        if self.mode == "adapter":
            return {k: v for k, v in self.layer.gradients().items() if k != "bias"}
        if self.mode == "base":
            assert self._gw is not None
            g = {"weight": self._gw}
            if self._gb is not None:
                g["bias"] = self._gb
            return g
        return {}

    def train_forward(self, *xs: Act, alloc: Alloc | None = None) -> Act:
        return self.forward(*xs, alloc=alloc)

    def forward(self, *xs: Act, alloc: Alloc | None = None) -> Act:
        x = primary(xs[0])
        layer = self.layer
        if self.mode == "adapter":
            return layer.forward(x, save=False)
        if self.mode == "base" and isinstance(layer.base, DenseBase):
            x2 = _rows(x)
            out = _out(alloc, (x2.shape[0], self.out_features))
            y = layer.base.dense_forward(x2, layer.bias, out=out)  # the GEMM core alone, bias fused
            return y.reshape(*x.shape[:-1], self.out_features)
        y = layer.base.forward(_rows(x), layer.A, layer.B, 0.0)
        if layer.bias is not None:
            y += layer.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(
        self, gy: Act | None, *xs: Act, y: Act, alloc: Alloc | None = None
    ) -> tuple[np.ndarray | None, ...]:
        assert isinstance(gy, np.ndarray)
        x = primary(xs[0])
        layer = self.layer
        if self.mode == "adapter":
            gx = layer.backward(gy, x=x)
            if layer.grad_bias is not None:
                layer.grad_bias.fill(0.0)  # the bias is frozen with adapters (PEFT's bias="none")
            return (gx,)
        gy2 = _rows(gy)
        base = layer.base
        if self.mode == "base" and isinstance(base, DenseBase):
            # dense values: gx = gy W and gW += (gyᵀ x) ⊙ M accumulated in place (no out×in temporary)
            assert self._gw is not None
            gx = base.dense_backward_input(gy2, out=_out(alloc, (gy2.shape[0], self.in_features)))
            base.weight_grad_into(self._gw, gy2, _rows(x), full=self._mask is None)
            if self._gb is not None:
                self._gb += gy2.sum(axis=0, dtype=F32)
            return (gx.reshape(*x.shape[:-1], self.in_features),)
        gx = base.backward_input(gy2, layer.A, layer.B, 0.0)
        if self.mode == "base":
            assert self._gw is not None
            x2 = _rows(x)
            G = gy2.T @ x2  # (out, in): the dense weight gradient, sampled at the mask below
            if self._pos is None:  # dense-shaped values
                if self._mask is not None:
                    G *= self._mask
                self._gw += G
            else:
                self._gw += G.reshape(-1)[self._pos].reshape(self._gw.shape)
            if self._gb is not None:
                self._gb += gy2.sum(axis=0, dtype=F32)
        return (gx.reshape(*x.shape[:-1], self.in_features),)

    def out_nbytes(self, batch: int, seq: int) -> int:
        return 4 * batch * seq * self.out_features

    def grad_nbytes(self, batch: int, seq: int) -> int:
        return 4 * batch * seq * self.in_features

    def backward_reads(self) -> tuple[bool, ...]:
        return (True, False)  # x (the adapter's and the weight's gradients, gx's shape), never y


class _Norm(_AllocOp):
    """LayerNorm (w, b; output (y, mean, rstd)) or RMSNorm (w; output (y, rstd)) over C."""

    def __init__(
        self, name: str, src: str, block: int | None, w: np.ndarray, b: np.ndarray | None, eps: float
    ):
        super().__init__(name, (src,), block)
        self.w, self.b, self.eps = w, b, eps
        self.trainable = False
        self.gw = np.zeros_like(w)
        self.gb = None if b is None else np.zeros_like(b)

    def params(self) -> dict[str, np.ndarray]:
        if not self.trainable:
            return {}
        return {"weight": self.w} if self.b is None else {"weight": self.w, "bias": self.b}

    def grads(self) -> dict[str, np.ndarray]:
        if not self.trainable:
            return {}
        return {"weight": self.gw} if self.gb is None else {"weight": self.gw, "bias": self.gb}

    def forward(self, *xs: Act, alloc: Alloc | None = None) -> Act:
        x = primary(xs[0])
        out = _out(alloc, x.shape)
        if self.b is None:
            return F.rmsnorm_forward(x, self.w, self.eps, out=out)
        return F.layernorm_forward(x, self.w, self.b, self.eps, out=out)

    def backward(
        self, gy: Act | None, *xs: Act, y: Act, alloc: Alloc | None = None
    ) -> tuple[np.ndarray | None, ...]:
        assert isinstance(gy, np.ndarray) and isinstance(y, tuple)
        x = primary(xs[0])
        out = _out(alloc, x.shape)
        if self.b is None:
            dx, dw = F.rmsnorm_backward(gy, x, self.w, y[1], out=out)
            db = None
        else:
            dx, dw, db = F.layernorm_backward(gy, x, self.w, y[1], y[2], out=out)
        if self.trainable:
            self.gw += dw
            if self.gb is not None and db is not None:
                self.gb += db
        return (dx,)

    def out_nbytes(self, batch: int, seq: int) -> int:
        stats = 1 if self.b is None else 2
        return 4 * batch * seq * (self.w.size + stats)

    def grad_nbytes(self, batch: int, seq: int) -> int:
        return 4 * batch * seq * self.w.size


class _Embed(Op):
    """Token embedding (+ learned positions for GPT-2): ids int64 (B, T) -> (B, T, C).

    Frozen unless :meth:`set_trainable` (``Decoder.train_base(True, embeddings=True)``): then its
    params are ``weight`` (wte) and ``position`` (wpe), whose gradients the backward accumulates in
    place (rows of gy added at their ids; no (V, C) temporary). A head tied to wte adds its own
    gradient to the same ``weight`` gradient array.
    """

    def __init__(self, name: str, wte: np.ndarray, wpe: np.ndarray | None) -> None:
        super().__init__(name, ("input",), None)
        self.wte, self.wpe = wte, wpe
        self.gwte: np.ndarray | None = None
        self.gwpe: np.ndarray | None = None

    def set_trainable(self, enabled: bool) -> None:
        """Make wte (and wpe) trainable (fresh zero gradients) or frozen again."""
        if enabled and self.gwte is None:
            for a in (self.wte, self.wpe):
                if a is not None:
                    a.flags.writeable = True
            self.gwte = np.zeros_like(self.wte)
            self.gwpe = None if self.wpe is None else np.zeros_like(self.wpe)
        elif not enabled:
            self.gwte = self.gwpe = None

    def params(self) -> dict[str, np.ndarray]:
        if self.gwte is None:
            return {}
        return {"weight": self.wte} if self.wpe is None else {"weight": self.wte, "position": self.wpe}

    def grads(self) -> dict[str, np.ndarray]:
        if self.gwte is None:
            return {}
        if self.gwpe is None:
            return {"weight": self.gwte}
        return {"weight": self.gwte, "position": self.gwpe}

    def forward(self, *xs: Act) -> Act:
        ids = primary(xs[0])
        x = F.embedding_forward(ids, self.wte)
        if self.wpe is not None:
            T = ids.shape[1]
            if T > self.wpe.shape[0]:
                raise ValueError(
                    f"ids: expected at most {self.wpe.shape[0]} tokens per row (seq_len), got {T}"
                )
            x += self.wpe[:T]
        return x

    def backward(self, gy: Act | None, *xs: Act, y: Act) -> tuple[np.ndarray | None, ...]:
        if self.gwte is not None:
            assert isinstance(gy, np.ndarray)
            ids = primary(xs[0])
            np.add.at(self.gwte, ids.reshape(-1), _rows(gy))  # repeated ids add up
            if self.gwpe is not None:
                self.gwpe[: ids.shape[1]] += gy.sum(axis=0, dtype=F32)
        return (None,)

    def out_nbytes(self, batch: int, seq: int) -> int:
        return 4 * batch * seq * self.wte.shape[1]

    def grad_nbytes(self, batch: int, seq: int) -> int:
        return 0

    def backward_reads(self) -> tuple[bool, ...]:
        return (True, False)  # the ids (the batch, resident anyway) for a trainable embedding


class _Rope(_AllocOp):
    """RoPE on (B, T, heads·D) viewed as (B, T, heads, D): the ``ops`` kernel for plain RoPE, or a
    rotation by the given per-pair frequencies (Llama 3.1's scaled ones), same rotate_half layout."""

    def __init__(
        self,
        name: str,
        src: str,
        block: int,
        heads: int,
        head_dim: int,
        theta: float,
        inv_freq: np.ndarray | None,
    ) -> None:
        super().__init__(name, (src,), block)
        self.heads, self.hd, self.theta, self.inv_freq = heads, head_dim, theta, inv_freq

    def _rotate(self, x: np.ndarray, sign: float, alloc: Alloc | None = None) -> np.ndarray:
        B, T = x.shape[:2]
        x4 = x.reshape(B, T, self.heads, self.hd)
        f = F.rope_forward if sign > 0 else F.rope_backward
        out = _out(alloc, x4.shape)
        if self.inv_freq is None:
            return f(x4, self.theta, out=out).reshape(x.shape)
        # the given frequencies as float32 (as Hugging Face holds them): the kernel takes cos/sin
        # once per position, not per head
        freq = np.ascontiguousarray(self.inv_freq, dtype=F32)
        return f(x4, self.theta, inv_freq=freq, out=out).reshape(x.shape)

    def forward(self, *xs: Act, alloc: Alloc | None = None) -> Act:
        return self._rotate(primary(xs[0]), 1.0, alloc)

    def backward(
        self, gy: Act | None, *xs: Act, y: Act, alloc: Alloc | None = None
    ) -> tuple[np.ndarray | None, ...]:
        assert isinstance(gy, np.ndarray)
        return (self._rotate(gy, -1.0, alloc),)  # a rotation: its gradient is the inverse rotation

    def out_nbytes(self, batch: int, seq: int) -> int:
        return 4 * batch * seq * self.heads * self.hd

    grad_nbytes = out_nbytes

    def backward_reads(self) -> tuple[bool, ...]:
        return (False, False)


def _heads(x: np.ndarray, h: int, d: int) -> np.ndarray:
    """(B, T, h·d) -> a (B, T, h, d) view (a copy only when the last axis is not contiguous): the
    attention kernels read heads in place through the strides (``layout="bthd"``)."""
    B, T = x.shape[:2]
    return x.reshape(B, T, h, d)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    """(B, T, h, d) -> (B, T, h·d) (a view of a C-contiguous array)."""
    B, T, h, d = x.shape
    return x.reshape(B, T, h * d)


class _Attention(_AllocOp):
    """Causal attention; output (o (B, T, H·D), lse (B, H, T)).

    GPT-2 reads one fused qkv (B, T, 3C); Llama reads q, k, v (k and v with ``n_kv`` heads). The
    kernels read the heads in place from those arrays (no head-major copies), write o straight
    into (B, T, H·D), and GPT-2's dq, dk, dv straight into one (B, T, 3C) gradient for the qkv
    linear's backward (no concatenation).
    """

    def __init__(self, name: str, srcs: tuple[str, ...], block: int, H: int, Hkv: int, D: int) -> None:
        super().__init__(name, srcs, block)
        self.H, self.Hkv, self.D = H, Hkv, D

    def _qkv(self, xs: tuple[Act, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, T, heads, D) views of q, k, v."""
        H, Hkv, D = self.H, self.Hkv, self.D
        if len(xs) == 1:
            qkv = primary(xs[0])
            C = H * D
            return (
                _heads(qkv[..., :C], H, D),
                _heads(qkv[..., C : 2 * C], H, D),
                _heads(qkv[..., 2 * C :], H, D),
            )
        q, k, v = (primary(a) for a in xs)
        return _heads(q, H, D), _heads(k, Hkv, D), _heads(v, Hkv, D)

    def forward(self, *xs: Act, alloc: Alloc | None = None) -> Act:
        q, k, v = self._qkv(xs)
        B, T = q.shape[:2]
        o = _empty(alloc, (B, T, self.H * self.D))
        _, lse = F.attention_forward(q, k, v, causal=True, layout="bthd", out=_heads(o, self.H, self.D))
        return (o, lse)

    def backward(
        self, gy: Act | None, *xs: Act, y: Act, alloc: Alloc | None = None
    ) -> tuple[np.ndarray | None, ...]:
        assert isinstance(gy, np.ndarray) and isinstance(y, tuple)
        q, k, v = self._qkv(xs)
        H, Hkv, D = self.H, self.Hkv, self.D
        B, T = q.shape[:2]
        o, do = _heads(y[0], H, D), _heads(gy, H, D)
        if len(xs) == 1:
            C = H * D
            g = _empty(alloc, (B, T, 3 * C))
            out = (_heads(g[..., :C], H, D), _heads(g[..., C : 2 * C], H, D), _heads(g[..., 2 * C :], H, D))
            F.attention_backward(do, q, k, v, o, y[1], causal=True, layout="bthd", out=out)
            return (g,)
        grads = (
            _empty(alloc, (B, T, H * D)),
            _empty(alloc, (B, T, Hkv * D)),
            _empty(alloc, (B, T, Hkv * D)),
        )
        out = (_heads(grads[0], H, D), _heads(grads[1], Hkv, D), _heads(grads[2], Hkv, D))
        F.attention_backward(do, q, k, v, o, y[1], causal=True, layout="bthd", out=out)
        return grads

    def out_nbytes(self, batch: int, seq: int) -> int:
        return 4 * batch * seq * self.H * (self.D + 1)

    def grad_nbytes(self, batch: int, seq: int) -> int:
        return 4 * batch * seq * self.D * (self.H + 2 * self.Hkv)


class _Add(_AllocOp):
    """Residual add; its backward passes gy on to both inputs (the same array twice)."""

    def __init__(self, name: str, a: str, b: str, block: int, C: int) -> None:
        super().__init__(name, (a, b), block)
        self.C = C

    def forward(self, *xs: Act, alloc: Alloc | None = None) -> Act:
        a, b = primary(xs[0]), primary(xs[1])
        if alloc is None or a.shape != b.shape or a.dtype != F32 or b.dtype != F32:
            return a + b
        out = alloc(a.shape)
        # NumPy allows an out that overlaps an input: a pool must never hand out a live buffer
        if np.may_share_memory(out, a) or np.may_share_memory(out, b):
            raise ValueError(f"alloc: op {self.name!r} got an output buffer that overlaps an input")
        return np.add(a, b, out=out)  # the same ufunc loop as a + b: the same bits

    def backward(
        self, gy: Act | None, *xs: Act, y: Act, alloc: Alloc | None = None
    ) -> tuple[np.ndarray | None, ...]:
        assert isinstance(gy, np.ndarray)
        return (gy, gy)

    def out_nbytes(self, batch: int, seq: int) -> int:
        return 4 * batch * seq * self.C

    grad_nbytes = out_nbytes

    def backward_reads(self) -> tuple[bool, ...]:
        return (False, False, False)


class _Gelu(_AllocOp):
    def __init__(self, name: str, src: str, block: int, width: int) -> None:
        super().__init__(name, (src,), block)
        self.width = width

    def forward(self, *xs: Act, alloc: Alloc | None = None) -> Act:
        x = primary(xs[0])
        return F.gelu_forward(x, out=_out(alloc, x.shape))

    def backward(
        self, gy: Act | None, *xs: Act, y: Act, alloc: Alloc | None = None
    ) -> tuple[np.ndarray | None, ...]:
        assert isinstance(gy, np.ndarray)
        x = primary(xs[0])
        return (F.gelu_backward(gy, x, out=_out(alloc, x.shape)),)

    def out_nbytes(self, batch: int, seq: int) -> int:
        return 4 * batch * seq * self.width

    grad_nbytes = out_nbytes

    def backward_reads(self) -> tuple[bool, ...]:
        return (True, False)


class _SwiGLU(_AllocOp):
    def __init__(self, name: str, gate: str, up: str, block: int, width: int) -> None:
        super().__init__(name, (gate, up), block)
        self.width = width

    def forward(self, *xs: Act, alloc: Alloc | None = None) -> Act:
        up = primary(xs[1])
        return F.swiglu_forward(primary(xs[0]), up, out=_out(alloc, up.shape))

    def backward(
        self, gy: Act | None, *xs: Act, y: Act, alloc: Alloc | None = None
    ) -> tuple[np.ndarray | None, ...]:
        assert isinstance(gy, np.ndarray)
        up = primary(xs[1])
        out = None if alloc is None else (alloc(up.shape), alloc(up.shape))
        return F.swiglu_backward(gy, primary(xs[0]), up, out=out)

    def out_nbytes(self, batch: int, seq: int) -> int:
        return 4 * batch * seq * self.width

    def grad_nbytes(self, batch: int, seq: int) -> int:
        return 8 * batch * seq * self.width

    def backward_reads(self) -> tuple[bool, ...]:
        return (True, True, False)


class _HeadLoss(Op):
    """LM head fused with the mean cross-entropy; output (loss 0-d, lse (B·T,)). Frozen head.

    In training (:meth:`train_forward`) the same pass over the logits also computes the input
    gradient for ``dloss = 1``: output (loss, lse, dx (B, T, C)), and the backward only reads it
    (no second logits GEMM, and the head's input need not stay resident for it).
    """

    def __init__(self, name: str, src: str, w: np.ndarray) -> None:
        super().__init__(name, (src, "target"), None)
        self.w = w
        # trainable head (dense full fine-tuning, train_base(embeddings=True)): gw is where the
        # backward accumulates the head's gradient; owns_weight for an untied head (its own param)
        self.gw: np.ndarray | None = None
        self.owns_weight = False

    def params(self) -> dict[str, np.ndarray]:
        return {"weight": self.w} if self.gw is not None and self.owns_weight else {}

    def grads(self) -> dict[str, np.ndarray]:
        return {"weight": self.gw} if self.gw is not None and self.owns_weight else {}

    @property
    def accumulates(self) -> bool:
        return self.gw is not None

    def forward(self, *xs: Act) -> Act:
        x, t = primary(xs[0]), primary(xs[1])
        _check_targets(t, x.shape[:-1])
        return F.lm_head_xent_forward(_rows(x), self.w, t.reshape(-1))

    def _fused_training(self) -> bool:
        # a trainable head (a gradient buffer ``gw``) accumulates its weight gradient in the
        # backward, which then needs x: plain forward and backward
        return self.gw is None

    def train_forward(self, *xs: Act) -> Act:
        if not self._fused_training():
            return self.forward(*xs)
        x, t = primary(xs[0]), primary(xs[1])
        _check_targets(t, x.shape[:-1])
        loss, lse, dx, _ = F.lm_head_xent_forward(_rows(x), self.w, t.reshape(-1), grad=True)
        return (loss, lse, dx.reshape(x.shape))

    def backward(self, gy: Act | None, *xs: Act, y: Act) -> tuple[np.ndarray | None, ...]:
        assert isinstance(y, tuple)
        dloss = 1.0 if gy is None else float(np.asarray(gy))
        if len(y) == 3:  # from train_forward: dx for dloss = 1 is already there
            return (y[2] if dloss == 1.0 else y[2] * np.float32(dloss), None)
        x, t = primary(xs[0]), primary(xs[1])
        if self.gw is not None:  # trainable head: its gradient accumulated into gw in place
            tt = np.ascontiguousarray(t.reshape(-1))
            dx = _core.lm_head_xent_backward_into(self.gw, _rows(x), self.w, tt, y[1], dloss=dloss)
            return (dx.reshape(x.shape), None)
        dx, _ = F.lm_head_xent_backward(_rows(x), self.w, t.reshape(-1), y[1], dloss=dloss)
        return (dx.reshape(x.shape), None)

    def backward_reads(self) -> tuple[bool, ...]:
        if not self._fused_training():
            return (True, True, True)
        return (False, True, True)  # after train_forward: y (dx); the target stays resident anyway

    def train_out_nbytes(self, batch: int, seq: int) -> int:
        if not self._fused_training():
            return self.out_nbytes(batch, seq)
        return self.out_nbytes(batch, seq) + self.grad_nbytes(batch, seq)

    def out_nbytes(self, batch: int, seq: int) -> int:
        return 4 + 4 * batch * seq

    def grad_nbytes(self, batch: int, seq: int) -> int:
        return 4 * batch * seq * self.w.shape[1]


def _check_targets(t: np.ndarray, shape: tuple[int, ...]) -> None:
    if not isinstance(t, np.ndarray) or t.dtype != np.int64:
        raise TypeError(
            f"targets: expected an int64 numpy.ndarray, got {getattr(t, 'dtype', type(t).__name__)}"
        )
    if t.shape != shape:
        raise ValueError(f"targets: expected shape {shape} (that of ids), got {t.shape}")


def _check_ids(ids: object, V: int, seq_len: int) -> np.ndarray:
    if not isinstance(ids, np.ndarray) or ids.dtype.kind not in "iu":
        raise TypeError(
            f"ids: expected an integer numpy.ndarray, got {getattr(ids, 'dtype', type(ids).__name__)}"
        )
    if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        raise ValueError(
            f"ids: expected a 2-D (batch, seq) array with batch, seq >= 1, got shape {ids.shape}"
        )
    if ids.shape[1] > seq_len:
        raise ValueError(f"ids: expected at most {seq_len} tokens per row (seq_len), got {ids.shape[1]}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= V):
        raise ValueError(
            f"ids: expected token ids in [0, {V}), got min {int(ids.min())}, max {int(ids.max())}"
        )
    return np.ascontiguousarray(ids, dtype=np.int64)


# ---- weights ----------------------------------------------------------------------------------


def weight_spec(cfg: Config) -> list[tuple[str, tuple[int, ...], str]]:
    """Every checkpoint tensor of a model: (Hugging Face key, stored shape, kind), in load order.

    ``kind`` is ``"conv1d"`` (a GPT-2 linear stored (in, out)), ``"linear"`` ((out, in)),
    ``"embedding"`` or ``"vector"``.
    """
    C, ff, L = cfg.d_model, cfg.ff, cfg.n_layer
    spec: list[tuple[str, tuple[int, ...], str]] = []
    if isinstance(cfg, GPTConfig):
        p = "transformer."
        spec += [
            (p + "wte.weight", (cfg.vocab_size, C), "embedding"),
            (p + "wpe.weight", (cfg.seq_len, C), "embedding"),
        ]
        for i in range(L):
            h = f"{p}h.{i}."
            for ln in ("ln_1", "ln_2"):
                spec += [(h + ln + ".weight", (C,), "vector"), (h + ln + ".bias", (C,), "vector")]
            for mod, i_, o_ in (
                ("attn.c_attn", C, 3 * C),
                ("attn.c_proj", C, C),
                ("mlp.c_fc", C, ff),
                ("mlp.c_proj", ff, C),
            ):
                spec += [(h + mod + ".weight", (i_, o_), "conv1d"), (h + mod + ".bias", (o_,), "vector")]
        spec += [(p + "ln_f.weight", (C,), "vector"), (p + "ln_f.bias", (C,), "vector")]
        return spec
    p, D = "model.", cfg.head_dim
    spec.append((p + "embed_tokens.weight", (cfg.vocab_size, C), "embedding"))
    for i in range(L):
        h = f"{p}layers.{i}."
        spec += [
            (h + "input_layernorm.weight", (C,), "vector"),
            (h + "post_attention_layernorm.weight", (C,), "vector"),
        ]
        q, kv = cfg.n_head * D, cfg.n_kv_head * D
        for mod, o_, i_ in (
            ("self_attn.q_proj", q, C),
            ("self_attn.k_proj", kv, C),
            ("self_attn.v_proj", kv, C),
            ("self_attn.o_proj", C, q),
            ("mlp.gate_proj", ff, C),
            ("mlp.up_proj", ff, C),
            ("mlp.down_proj", C, ff),
        ):
            spec.append((h + mod + ".weight", (o_, i_), "linear"))
    spec.append((p + "norm.weight", (C,), "vector"))
    if not cfg.tie_word_embeddings:
        spec.append(("lm_head.weight", (cfg.vocab_size, C), "embedding"))
    return spec


def _frozen_linear(W: np.ndarray, bias: np.ndarray | None, name: str) -> LoRSLinear:
    """A LoRSLinear holding the base only (its r=1 adapter is zero and unused in "frozen" mode)."""
    mask = W != 0
    # above both crossovers "auto" means dense: say so and skip choose_format's N:M scan of the mask
    density = np.count_nonzero(mask) / max(mask.size, 1)
    dense = density > max(
        formats.density_crossover(None, W.shape[1]), formats.nm_max_density(None, W.shape[1])
    )
    try:
        layer = LoRSLinear(W, mask=mask, r=1, bias=bias, format="dense" if dense else "auto")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: {str(e).removeprefix('W: ')}") from e
    layer._format_request = "auto"  # a later pruned base (load_state_dict) still picks its format
    return layer


# ---- the model --------------------------------------------------------------------------------


class Decoder(Model):
    """A GPT-2 or Llama decoder; build it with :meth:`GPT.random`, :meth:`Llama.random` or
    :func:`sparseft.models.from_pretrained`.

    Attributes
    ----------
    config : GPTConfig or LlamaConfig
    tokenizer : object or None
        The tokenizer given to ``from_pretrained`` (``encode``/``decode``), if any.
    """

    tokenizer: Any = None
    config_type: type | tuple[type, ...] = (GPTConfig, LlamaConfig)

    def __init__(self, config: Config, get: Getter) -> None:
        if not isinstance(config, (GPTConfig, LlamaConfig)):
            raise TypeError(f"config: expected a GPTConfig or LlamaConfig, got {type(config).__name__}")
        self.config = config
        self.tokenizer = None
        self._ops = self._build(get)
        check_ops(self._ops)

    # construction

    def _build(self, get: Getter) -> list[Op]:
        cfg = self.config
        spec = {k: (shape, kind) for k, shape, kind in weight_spec(cfg)}

        def vec(key: str) -> np.ndarray:
            return get(key, spec[key][0])

        def linear(name: str, key: str, src: str, i: int, bias: bool) -> LinearOp:
            shape, kind = spec[key + ".weight"]
            W = get(key + ".weight", shape)
            if kind == "conv1d":
                W = np.ascontiguousarray(W.T)
            b = vec(key + ".bias") if bias else None
            return LinearOp(name, src, i, _frozen_linear(W, b, key + ".weight"), kind == "conv1d")

        ops: list[Op] = []
        C, H, D = cfg.d_model, cfg.n_head, cfg.head_dim
        if isinstance(cfg, GPTConfig):
            p = "transformer."
            self._wte = get(p + "wte.weight", spec[p + "wte.weight"][0])
            ops.append(_Embed("wte", self._wte, get(p + "wpe.weight", spec[p + "wpe.weight"][0])))
            x = "wte"
            for i in range(cfg.n_layer):
                n, k = f"h.{i}.", f"{p}h.{i}."
                ops += [
                    _Norm(n + "ln_1", x, i, vec(k + "ln_1.weight"), vec(k + "ln_1.bias"), cfg.ln_eps),
                    linear(n + "attn.c_attn", k + "attn.c_attn", n + "ln_1", i, True),
                    _Attention(n + "attn.attn", (n + "attn.c_attn",), i, H, H, D),
                    linear(n + "attn.c_proj", k + "attn.c_proj", n + "attn.attn", i, True),
                    _Add(n + "res_1", x, n + "attn.c_proj", i, C),
                    _Norm(
                        n + "ln_2", n + "res_1", i, vec(k + "ln_2.weight"), vec(k + "ln_2.bias"), cfg.ln_eps
                    ),
                    linear(n + "mlp.c_fc", k + "mlp.c_fc", n + "ln_2", i, True),
                    _Gelu(n + "mlp.act", n + "mlp.c_fc", i, cfg.ff),
                    linear(n + "mlp.c_proj", k + "mlp.c_proj", n + "mlp.act", i, True),
                    _Add(n + "res_2", n + "res_1", n + "mlp.c_proj", i, C),
                ]
                x = n + "res_2"
            ops.append(_Norm("ln_f", x, None, vec(p + "ln_f.weight"), vec(p + "ln_f.bias"), cfg.ln_eps))
            ops.append(_HeadLoss("lm_head", "ln_f", self._wte))
            return ops
        p, Hkv, inv_freq = "model.", cfg.n_kv_head, cfg.inv_freq()
        self._wte = get(p + "embed_tokens.weight", spec[p + "embed_tokens.weight"][0])
        ops.append(_Embed("embed_tokens", self._wte, None))
        x = "embed_tokens"
        for i in range(cfg.n_layer):
            n, k = f"layers.{i}.", f"{p}layers.{i}."
            a, m = n + "self_attn.", n + "mlp."
            ops += [
                _Norm(n + "input_layernorm", x, i, vec(k + "input_layernorm.weight"), None, cfg.rms_eps),
                linear(a + "q_proj", k + "self_attn.q_proj", n + "input_layernorm", i, False),
                linear(a + "k_proj", k + "self_attn.k_proj", n + "input_layernorm", i, False),
                linear(a + "v_proj", k + "self_attn.v_proj", n + "input_layernorm", i, False),
                _Rope(a + "rope_q", a + "q_proj", i, H, D, cfg.rope_theta, inv_freq),
                _Rope(a + "rope_k", a + "k_proj", i, Hkv, D, cfg.rope_theta, inv_freq),
                _Attention(a + "attn", (a + "rope_q", a + "rope_k", a + "v_proj"), i, H, Hkv, D),
                linear(a + "o_proj", k + "self_attn.o_proj", a + "attn", i, False),
                _Add(n + "res_1", x, a + "o_proj", i, C),
                _Norm(
                    n + "post_attention_layernorm",
                    n + "res_1",
                    i,
                    vec(k + "post_attention_layernorm.weight"),
                    None,
                    cfg.rms_eps,
                ),
                linear(m + "gate_proj", k + "mlp.gate_proj", n + "post_attention_layernorm", i, False),
                linear(m + "up_proj", k + "mlp.up_proj", n + "post_attention_layernorm", i, False),
                _SwiGLU(m + "act", m + "gate_proj", m + "up_proj", i, cfg.ff),
                linear(m + "down_proj", k + "mlp.down_proj", m + "act", i, False),
                _Add(n + "res_2", n + "res_1", m + "down_proj", i, C),
            ]
            x = n + "res_2"
        ops.append(_Norm("norm", x, None, vec(p + "norm.weight"), None, cfg.rms_eps))
        head = self._wte if cfg.tie_word_embeddings else get("lm_head.weight", (cfg.vocab_size, C))
        ops.append(_HeadLoss("lm_head", "norm", head))
        return ops

    @classmethod
    def random(cls, config: Config, seed: int = 0) -> Decoder:
        """A randomly initialized model (GPT-2's init: N(0, 0.02), residual projections scaled by
        1/√(2·n_layer), zero biases, unit norms), deterministic for ``seed``."""
        if not isinstance(config, cls.config_type):
            want = " or ".join(
                t.__name__
                for t in (cls.config_type if isinstance(cls.config_type, tuple) else (cls.config_type,))
            )
            raise TypeError(f"config: expected a {want}, got {type(config).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
        rng = np.random.default_rng(seed)
        resid = 0.02 / np.sqrt(2 * config.n_layer)

        def get(key: str, shape: tuple[int, ...]) -> np.ndarray:
            if key.endswith("norm.weight") or (key.endswith(".weight") and len(shape) == 1):
                return np.ones(shape, F32)
            if len(shape) == 1:
                return np.zeros(shape, F32)
            std = resid if key.endswith(("c_proj.weight", "o_proj.weight", "down_proj.weight")) else 0.02
            return (rng.standard_normal(shape, dtype=F32) * F32(std)).astype(F32)

        return build(config, get)

    # the protocol

    def ops(self) -> list[Op]:
        """The ops in topological order (the last is the fused head + cross-entropy loss)."""
        return self._ops

    def linears(self) -> dict[str, LoRSLinear]:
        """Every block linear by op name (e.g. ``"h.0.attn.c_attn"``, ``"layers.0.self_attn.q_proj"``)."""
        return {op.name: op.layer for op in self._ops if isinstance(op, LinearOp)}

    def _linear_ops(self) -> list[LinearOp]:
        return [op for op in self._ops if isinstance(op, LinearOp)]

    @property
    def hf_prefix(self) -> str:
        """Prefix of the Hugging Face module path of a block op: ``hf_prefix + op.name``."""
        return "transformer." if isinstance(self.config, GPTConfig) else "model."

    def zero_grad(self) -> None:
        super().zero_grad()
        for op in self._linear_ops():
            op.layer.zero_grad()

    # adapters and full fine-tuning

    def add_adapters(self, config: LoRSConfig, target_modules: Iterable[str] | None = None) -> list[str]:
        """Put a LoRS adapter on the targeted block linears (their ``params()`` become A, B
        (and the DoRA magnitude); the bias stays frozen).

        Parameters
        ----------
        config : LoRSConfig
            Adapter settings; layer k (in op order) is seeded ``config.seed + k``.
        target_modules : iterable of str or None
            Names matched against the last component of the op name (``"c_attn"``, ``"q_proj"``)
            or the whole op name; None adapts every block linear.

        Returns
        -------
        list of str
            The adapted op names.

        Raises
        ------
        ValueError
            If a target matches no linear, or a layer is in base (full fine-tuning) mode.
        """
        if not isinstance(config, LoRSConfig):
            raise TypeError(f"config: expected a LoRSConfig, got {type(config).__name__}")
        chosen = self._select(target_modules)
        for op in chosen:
            if op.mode == "base":
                raise ValueError(f"{op.name}: in base (full fine-tuning) mode; call train_base(False) first")
        new = {}
        for k, op in enumerate(self._linear_ops()):
            if op in chosen:
                layer = op.layer
                cfg = dataclasses.replace(config, seed=config.seed + k)
                W = layer.merged_weight() if op.mode == "adapter" else layer.base.to_dense()
                new[op.name] = cfg.make(W, layer.mask, bias=layer.bias)
        for op in chosen:
            op.layer = new[op.name]
            op.mode = "adapter"
        return [op.name for op in chosen]

    def _select(self, target_modules: Iterable[str] | None) -> list[LinearOp]:
        lin = self._linear_ops()
        if target_modules is None:
            return lin
        if isinstance(target_modules, str):
            target_modules = [target_modules]
        targets = list(target_modules)
        if not all(isinstance(t, str) for t in targets):
            raise TypeError(f"target_modules: expected str names, got {targets!r}")
        chosen = [op for op in lin if op.name in targets or op.name.rsplit(".", 1)[-1] in targets]
        for t in targets:
            if not any(op.name == t or op.name.rsplit(".", 1)[-1] == t for op in lin):
                names = sorted({op.name.rsplit(".", 1)[-1] for op in lin})
                raise ValueError(f"target_modules: {t!r} matches no block linear (names: {names})")
        return chosen

    def merge_adapters(self) -> None:
        """Fold every adapter into its base (zeros kept exactly); the layers become frozen."""
        for op in self._linear_ops():
            if op.mode == "adapter":
                op.layer.merge()
                op.mode = "frozen"

    def train_base(self, enabled: bool = True, embeddings: bool = False) -> None:
        """Sparse full fine-tuning: every block linear's stored values and bias, and every norm's
        weight (and bias), become the trainable parameters; the masks stay fixed.

        Parameters
        ----------
        enabled : bool
            True to train the base, False to freeze it again (adapters are left as they are).
        embeddings : bool
            With ``enabled``, also train the token embedding (and GPT-2's position embedding) and
            the head: a tied head adds its gradient to the embedding's in place, an untied one is
            a parameter of its own (``lm_head.weight``). This is full fine-tuning of every weight
            (see ``docs/dense_training.md``). ``train_base(False)`` freezes them again.

        Raises
        ------
        ValueError
            If a layer carries an adapter (merge it first with :meth:`merge_adapters`).
        """
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
        if not isinstance(embeddings, bool):
            raise TypeError(f"embeddings: expected a bool, got {type(embeddings).__name__}")
        lin = self._linear_ops()
        if enabled and any(op.mode == "adapter" for op in lin):
            raise ValueError("train_base: the model has adapters; call merge_adapters() first")
        for op in lin:
            if enabled or op.mode == "base":  # train_base(False) leaves adapters as they are
                op.set_mode("base" if enabled else "frozen")
        for o in self._ops:
            if isinstance(o, _Norm):
                o.trainable = enabled
                for a in (o.w, o.b):
                    if a is not None:
                        a.flags.writeable = True
        self._train_embeddings(enabled and embeddings)

    def _train_embeddings(self, enabled: bool) -> None:
        embed, head = self._ops[0], self._ops[-1]
        assert isinstance(embed, _Embed) and isinstance(head, _HeadLoss)
        embed.set_trainable(enabled)
        if not enabled:
            head.gw, head.owns_weight = None, False
        elif head.w is embed.wte:  # tied: the head's gradient goes into the embedding's
            head.gw, head.owns_weight = embed.gwte, False
        elif head.gw is None:
            head.w.flags.writeable = True
            head.gw, head.owns_weight = np.zeros_like(head.w), True

    # inference

    def _hidden(self, ids: np.ndarray) -> np.ndarray:
        """The final norm's output (B, T, C), freeing each activation after its last reader."""
        ids = _check_ids(ids, self.config.vocab_size, self.config.seq_len)
        ops = self._ops[:-1]
        last = {}
        for k, op in enumerate(ops):
            for i in op.inputs:
                last[i] = k
        acts: dict[str, Act] = {"input": ids}
        for k, op in enumerate(ops):
            acts[op.name] = op.forward(*(acts[i] for i in op.inputs))
            for i in op.inputs:
                if last[i] == k:
                    del acts[i]
        return primary(acts[ops[-1].name])

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits (batch, seq, vocab) float32 of token ids (batch, seq) (inference; training never
        builds them whole).

        Raises
        ------
        TypeError, ValueError
            If ``ids`` is not a 2-D integer array of ids in [0, vocab) with at most ``seq_len`` columns.
        """
        h = self._hidden(ids)
        B, T, _ = h.shape
        return F.lm_head_logits(_rows(h), self._head_weight()).reshape(B, T, -1)

    def loss(self, ids: np.ndarray, targets: np.ndarray) -> float:
        """Mean next-token cross-entropy; ``targets[b, t]`` is the token that follows ``ids[b, t]``."""
        h = self._hidden(ids)
        _check_targets(targets, h.shape[:-1])
        head = self._ops[-1]
        return float(primary(head.forward(h, targets)))

    def _head_weight(self) -> np.ndarray:
        head = self._ops[-1]
        assert isinstance(head, _HeadLoss)
        return head.w

    # weights

    @property
    def nbytes(self) -> int:
        """Bytes of the model's own arrays: embeddings, head, norms, the linears' bases (values and
        mask/indices) and adapters."""
        seen: dict[int, int] = {}
        for op in self._ops:
            for a in _op_arrays(op):
                seen[id(a)] = a.nbytes
        return int(sum(seen.values()) + sum(op.layer.nbytes for op in self._linear_ops()))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every weight under its Hugging Face key and layout (GPT-2's Conv1D weights (in, out));
        the linears' current bases (merged ones after :meth:`merge_adapters`), pruned zeros exact.
        Copies, except the embeddings/head/norms, which are the live arrays (read-only use)."""
        return dict(self.iter_state())

    def iter_state(self) -> Iterator[tuple[str, np.ndarray]]:
        """:meth:`state_dict`'s entries one at a time, in :func:`weight_spec` order (a saver holds
        one linear's dense weight at a time, not a second copy of the model)."""
        lin = {self.hf_prefix + op.name: op for op in self._linear_ops()}
        for key, _shape, kind in weight_spec(self.config):
            mod, _, leaf = key.rpartition(".")
            if mod in lin:
                layer = lin[mod].layer
                if leaf == "weight":
                    W = layer.base.to_dense()
                    yield key, np.ascontiguousarray(W.T) if kind == "conv1d" else W
                else:
                    assert layer.bias is not None
                    yield key, layer.bias.copy()
            else:
                yield key, self._array(key)

    def _array(self, key: str) -> np.ndarray:
        """A non-linear weight (embedding, positions, head, norm) by its Hugging Face key."""
        short = key.removeprefix(self.hf_prefix)
        if short in ("wte.weight", "embed_tokens.weight"):
            return self._wte
        if key == "lm_head.weight":
            return self._head_weight()
        if short == "wpe.weight":
            emb = self._ops[0]
            assert isinstance(emb, _Embed) and emb.wpe is not None
            return emb.wpe
        name, _, leaf = short.rpartition(".")
        op = next(o for o in self._ops if o.name == name)
        assert isinstance(op, _Norm)
        a = op.w if leaf == "weight" else op.b
        assert a is not None
        return a

    def load_state_dict(self, sd: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Load Hugging Face-named weights (GPT-2 keys with or without ``transformer.``; Conv1D
        layout). Pruned zeros become the masks. Everything is checked before anything changes;
        adapters on the linears are kept (their base is replaced).

        Raises
        ------
        ValueError
            On a missing key, an unexpected key (``strict``), a wrong shape or NaN/inf.
        TypeError
            On an entry that is not a float32 ndarray.
        """
        if not isinstance(sd, Mapping):
            raise TypeError(f"sd: expected a dict, got {type(sd).__name__}")
        sd = normalize_keys(sd, self.config)
        spec = weight_spec(self.config)
        known = {k for k, _, _ in spec}
        missing = sorted(known - set(sd))
        if missing:
            raise ValueError(f"sd: missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        extra = sorted(set(sd) - known)
        if strict and extra:
            raise ValueError(f"sd: unexpected keys {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        for key, shape, _ in spec:
            a = sd[key]
            if not isinstance(a, np.ndarray) or a.dtype != F32:
                raise TypeError(
                    f"{key}: expected a float32 numpy.ndarray, got {getattr(a, 'dtype', type(a).__name__)}"
                )
            if a.shape != shape:
                raise ValueError(f"{key}: expected shape {shape}, got {a.shape}")
            if not np.isfinite(a).all():
                raise ValueError(f"{key}: contains NaN or infinity")
        lin = {self.hf_prefix + op.name: op for op in self._linear_ops()}
        for key, _, kind in spec:
            mod, _, leaf = key.rpartition(".")
            if mod in lin:
                if leaf != "weight":
                    continue
                op = lin[mod]
                W = np.ascontiguousarray(sd[key].T if kind == "conv1d" else sd[key])
                state = {"lora_A.weight": op.layer.A, "lora_B.weight": op.layer.B, "base_layer.weight": W}
                state["base_layer.weight_mask"] = W != 0
                if op.layer.bias is not None:
                    state["base_layer.bias"] = sd[mod + ".bias"]
                mode = op.mode
                op.set_mode("frozen")
                op.layer.load_state_dict(state)
                op.set_mode(mode)
            else:
                dst = self._array(key)
                was = dst.flags.writeable
                dst.flags.writeable = True
                dst[...] = sd[key]
                dst.flags.writeable = was

    def save_pretrained(self, path: str) -> None:
        """Write ``config.json`` and ``model.safetensors`` (float32) that ``transformers`` loads;
        see :func:`sparseft.models.save_pretrained`."""
        from sparseft.models.checkpoint import save_pretrained

        save_pretrained(self, path)

    def __repr__(self) -> str:
        n_ad = sum(op.mode == "adapter" for op in self._linear_ops())
        return f"{type(self).__name__}({self.config}, ops={len(self._ops)}, adapted={n_ad}, nbytes={self.nbytes})"


def _op_arrays(op: Op) -> list[np.ndarray]:
    if isinstance(op, _Embed):
        return [op.wte] + ([] if op.wpe is None else [op.wpe])
    if isinstance(op, _Norm):
        return [op.w] + ([] if op.b is None else [op.b])
    if isinstance(op, _HeadLoss):
        return [op.w]
    return []


def normalize_keys(sd: Mapping[str, Any], cfg: Config) -> dict[str, Any]:
    """Keys as :func:`weight_spec` names them: GPT-2's without ``transformer.`` gain it, buffers
    (``attn.bias``, ``rotary_emb.inv_freq``) are dropped, and GPT-2's tied ``lm_head.weight`` is dropped."""
    out: dict[str, Any] = {}
    for k, v in sd.items():
        if not isinstance(k, str):
            raise TypeError(f"sd: expected str keys, got {type(k).__name__}")
        if k.endswith(_IGNORED_SUFFIXES):
            continue
        if isinstance(cfg, GPTConfig):
            if k == "lm_head.weight":
                continue
            if not k.startswith("transformer."):
                k = "transformer." + k
        elif cfg.tie_word_embeddings and k == "lm_head.weight":
            continue
        out[k] = v
    return out


class GPT(Decoder):
    """GPT-2 (see :class:`Decoder`); ``GPT.random(GPTConfig(...), seed)``."""

    config_type = GPTConfig


class Llama(Decoder):
    """Llama (see :class:`Decoder`); ``Llama.random(LlamaConfig(...), seed)``."""

    config_type = LlamaConfig


def _class_for(cfg: Config) -> type[Decoder]:
    return GPT if isinstance(cfg, GPTConfig) else Llama


def build(config: Config, get: Getter) -> Decoder:
    """A :class:`GPT` or :class:`Llama` whose weights come from ``get(key, shape)`` (stored layout)."""
    model = _class_for(config).__new__(_class_for(config))
    Decoder.__init__(model, config, get)
    return model
