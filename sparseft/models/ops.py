"""Functional forward/backward kernels of the transformer ops (NumPy float32 in and out).

Each function is a thin front of a C kernel in :mod:`sparseft._core`: it shapes the arguments
(the norms accept (..., C) and treat every leading index as a row; strided views are copied to
C-contiguous), and the kernel validates them (``TypeError`` for a wrong type or dtype,
``ValueError`` for a wrong shape or value, both naming the argument). Inputs are never modified,
except by :func:`adamw_step`, which updates ``param``, ``m`` and ``v`` in place.

Memory: :func:`attention_forward` keeps only the log-sum-exp per query (no T x T matrix), and
:func:`lm_head_xent_forward` builds the logits ``chunk`` rows at a time (never (N, V) whole); their
backwards recompute what they need. See ``docs/ops.md``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sparseft import _core

__all__ = [
    "adamw_step",
    "attention_backward",
    "attention_forward",
    "embedding_backward",
    "embedding_forward",
    "gelu_backward",
    "gelu_forward",
    "layernorm_backward",
    "layernorm_forward",
    "lm_head_logits",
    "lm_head_xent_backward",
    "lm_head_xent_forward",
    "rmsnorm_backward",
    "rmsnorm_forward",
    "rope_backward",
    "rope_forward",
    "softmax_xent_backward",
    "softmax_xent_forward",
    "swiglu_backward",
    "swiglu_forward",
]

F32 = np.float32


def _c(a: object, name: str) -> np.ndarray:
    """``a`` C-contiguous (a copy only for a strided view); a non-array is a TypeError naming ``name``."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _rows(a: object, name: str) -> np.ndarray:
    """``a`` (..., C) viewed as (N, C) for the row kernels."""
    a = _c(a, name)
    if a.ndim < 1:
        raise ValueError(f"{name}: expected an array of at least 1 dimension (..., C), got shape {a.shape}")
    return a.reshape(math.prod(a.shape[:-1]), a.shape[-1])


def _per_row(a: object, name: str, x: np.ndarray) -> np.ndarray:
    """A per-row vector of ``x`` (shape x.shape[:-1]) flattened to (N,)."""
    a = _c(a, name)
    if a.shape != x.shape[:-1]:
        raise ValueError(f"{name}: expected shape {x.shape[:-1]} (x without its last axis), got {a.shape}")
    return a.reshape(-1)


def _out(out: object, xr: np.ndarray) -> Any:
    """``out`` viewed as the (N, C) rows of ``xr`` for the row kernels (None stays None; anything the
    kernel must reject, e.g. a wrong shape, is passed on for its error message)."""
    if isinstance(out, np.ndarray) and out.flags.c_contiguous and out.size == xr.size and out.ndim >= 1:
        return out.reshape(xr.shape)
    return out


def _pair(out: object) -> tuple[Any, Any]:
    if not isinstance(out, tuple) or len(out) != 2:
        raise TypeError(
            f"out: expected a pair (dgate, dup) of numpy.ndarray or None, got {type(out).__name__}"
        )
    return out[0], out[1]


def _chunk(chunk: int | None) -> int:
    if chunk is None:
        return 0
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk: expected a positive int or None, got {chunk!r}")
    return int(chunk)


# ---- LayerNorm, RMSNorm ----


def layernorm_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LayerNorm over the last axis: ``y = (x - mean) * rstd * w + b`` (``torch.nn.LayerNorm``).

    Parameters
    ----------
    x : numpy.ndarray
        float32 (..., C).
    w, b : numpy.ndarray
        float32 (C,), scale and shift.
    eps : float
        Added to the (biased) variance; finite and positive.
    out : numpy.ndarray or None
        float32 C-contiguous array shaped like ``x`` to write ``y`` into (returned); it must not
        share memory with the inputs. A preallocated ``out`` saves the page faults of a fresh
        output (a large share of the time of these memory-bound kernels, see ``docs/ops.md``).

    Returns
    -------
    y : numpy.ndarray
        float32, the shape of ``x``.
    mean, rstd : numpy.ndarray
        float32 (...,): per row mean and ``1 / sqrt(var + eps)``, kept for the backward.
    """
    xr = _rows(x, "x")
    y, mean, rstd = _core.layernorm_forward(xr, _c(w, "w"), _c(b, "b"), float(eps), _out(out, xr))
    lead = np.shape(x)[:-1]
    return y.reshape(np.shape(x)), mean.reshape(lead), rstd.reshape(lead)


def layernorm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`layernorm_forward`.

    Parameters
    ----------
    dy, x : numpy.ndarray
        float32 (..., C): the output gradient and the forward input.
    w : numpy.ndarray
        float32 (C,).
    mean, rstd : numpy.ndarray
        float32 (...,) from the forward.
    out : numpy.ndarray or None
        float32 C-contiguous array shaped like ``x`` to write ``dx`` into (returned); it must not
        share memory with the inputs. A preallocated ``out`` saves the page faults of a fresh
        output (a large share of the time of these memory-bound kernels, see ``docs/ops.md``).

    Returns
    -------
    dx : numpy.ndarray
        float32 (..., C).
    dw, db : numpy.ndarray
        float32 (C,), summed over the rows (the caller accumulates them into its gradients).
    """
    xr = _rows(x, "x")
    xs = np.shape(x)
    dyr = _c(dy, "dy")
    if dyr.shape != xs:
        raise ValueError(f"dy: expected shape {xs} (that of x), got {dyr.shape}")
    dx, dw, db = _core.layernorm_backward(
        dyr.reshape(xr.shape),
        xr,
        _c(w, "w"),
        _per_row(mean, "mean", dyr),
        _per_row(rstd, "rstd", dyr),
        _out(out, xr),
    )
    return dx.reshape(xs), dw, db


def rmsnorm_forward(
    x: np.ndarray, w: np.ndarray, eps: float = 1e-6, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """RMSNorm over the last axis (Llama's): ``y = x * rstd * w``, ``rstd = 1 / sqrt(mean(x**2) + eps)``.

    Parameters
    ----------
    x : numpy.ndarray
        float32 (..., C).
    w : numpy.ndarray
        float32 (C,).
    eps : float
        Added to the mean square; finite and positive.
    out : numpy.ndarray or None
        float32 C-contiguous array shaped like ``x`` to write ``y`` into (returned); it must not
        share memory with the inputs. A preallocated ``out`` saves the page faults of a fresh
        output (a large share of the time of these memory-bound kernels, see ``docs/ops.md``).

    Returns
    -------
    y : numpy.ndarray
        float32, the shape of ``x``.
    rstd : numpy.ndarray
        float32 (...,), kept for the backward.
    """
    xr = _rows(x, "x")
    y, rstd = _core.rmsnorm_forward(xr, _c(w, "w"), float(eps), _out(out, xr))
    return y.reshape(np.shape(x)), rstd.reshape(np.shape(x)[:-1])


def rmsnorm_backward(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, rstd: np.ndarray, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`rmsnorm_forward`: ``(dx (..., C), dw (C,))``, dw summed over the rows
    (``dx`` written into ``out`` when given, as in :func:`layernorm_backward`)."""
    xr = _rows(x, "x")
    xs = np.shape(x)
    dyr = _c(dy, "dy")
    if dyr.shape != xs:
        raise ValueError(f"dy: expected shape {xs} (that of x), got {dyr.shape}")
    dx, dw = _core.rmsnorm_backward(
        dyr.reshape(xr.shape), xr, _c(w, "w"), _per_row(rstd, "rstd", dyr), _out(out, xr)
    )
    return dx.reshape(xs), dw


# ---- GELU (tanh approximation) and SwiGLU ----


def gelu_forward(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """GPT-2's GELU ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3)))``, elementwise, any shape.

    ``out``: an optional float32 C-contiguous array shaped like ``x``, sharing no memory with it,
    to write the result into (as for every activation here; saves a fresh output's page faults).
    """
    return _core.gelu_forward(_c(x, "x"), out)


def gelu_backward(dy: np.ndarray, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of :func:`gelu_forward`: ``dx`` shaped like ``x`` (into ``out`` when given)."""
    return _core.gelu_backward(_c(dy, "dy"), _c(x, "x"), out)


def swiglu_forward(gate: np.ndarray, up: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Llama's gated activation ``silu(gate) * up`` (``silu(g) = g * sigmoid(g)``), elementwise
    (into ``out`` when given)."""
    return _core.swiglu_forward(_c(gate, "gate"), _c(up, "up"), out)


def swiglu_backward(
    dy: np.ndarray,
    gate: np.ndarray,
    up: np.ndarray,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`swiglu_forward`: ``(dgate, dup)`` (into the pair ``out`` when given; two
    distinct arrays shaped like ``up``)."""
    o1, o2 = (None, None) if out is None else _pair(out)
    return _core.swiglu_backward(_c(dy, "dy"), _c(gate, "gate"), _c(up, "up"), o1, o2)


# ---- RoPE ----


def _offset(offset: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"offset: expected a non-negative int, got {offset!r}")
    return int(offset)


def _freq(inv_freq: np.ndarray | None) -> np.ndarray | None:
    return None if inv_freq is None else _c(inv_freq, "inv_freq")


def rope_forward(
    x: np.ndarray,
    theta: float = 10000.0,
    offset: int = 0,
    inv_freq: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Rotary position embedding in Hugging Face's ``rotate_half`` convention.

    Parameters
    ----------
    x : numpy.ndarray
        float32 (B, T, H, D), D even; token t sits at position ``offset + t``.
    theta : float
        Base of the inverse frequencies ``theta ** (-2i / D)``.
    offset : int
        Position of the first token (for a KV cache).
    inv_freq : numpy.ndarray or None
        float32 (D/2,), finite: the inverse frequencies to use instead of ``theta``'s (e.g. Llama
        3.1's scaled ones).
    out : numpy.ndarray or None
        float32 (B, T, H, D) C-contiguous, sharing no memory with ``x``: written and returned
        instead of a new array.

    Returns
    -------
    numpy.ndarray
        float32 (B, T, H, D): ``x * cos + rotate_half(x) * sin`` with
        ``rotate_half(x) = concat(-x[..., D/2:], x[..., :D/2])``. The angles are rounded to float32
        as Hugging Face computes them (float32 frequencies times float32 positions).
    """
    return _core.rope(_c(x, "x"), float(theta), _offset(offset), False, _freq(inv_freq), out)


def rope_backward(
    dy: np.ndarray,
    theta: float = 10000.0,
    offset: int = 0,
    inv_freq: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Gradient of :func:`rope_forward` (a rotation: the inverse rotation of ``dy``; into ``out``
    when given)."""
    return _core.rope(_c(dy, "dy"), float(theta), _offset(offset), True, _freq(inv_freq), out)


# ---- attention ----


def _scale(scale: float | None, q: object) -> float:
    if scale is None:
        D = q.shape[-1] if isinstance(q, np.ndarray) and q.ndim == 4 else 1
        return 1.0 / math.sqrt(D) if D > 0 else 1.0
    s = float(scale)
    if not math.isfinite(s):
        raise ValueError(f"scale: expected a finite float or None, got {scale!r}")
    return s


def _attn_in(a: object, name: str) -> np.ndarray:
    """An attention input as the kernels read it in place: any view whose last axis (D) is
    contiguous and whose strides are whole float32 elements; others are copied (inputs only)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.float32 or a.ndim != 4 or a.size == 0:
        return a  # the kernel's check names the argument and says what it expected
    s = a.strides
    if (a.shape[3] > 1 and s[3] != 4) or any(x % 4 for x in s) or not a.flags.aligned:
        return np.ascontiguousarray(a)
    return a


def attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal: bool = True,
    scale: float | None = None,
    *,
    layout: str = "bhtd",
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scaled dot-product attention, grouped-query when ``k``, ``v`` have fewer heads than ``q``.

    Flash-style: keys are visited in tiles with an online softmax, so no T x T matrix is stored.
    The kernel reads ``q``, ``k``, ``v`` in place through their strides (only the D axis must be
    contiguous), so the heads of a fused (B, T, 3C) qkv projection need no copy::

        q, k, v = (qkv[..., i * C : (i + 1) * C].reshape(B, T, H, D) for i in range(3))
        o, lse = attention_forward(q, k, v, layout="bthd", out=y.reshape(B, T, H, D))

    Parameters
    ----------
    q : numpy.ndarray
        float32 (B, H, T, D) (``layout="bhtd"``) or (B, T, H, D) (``layout="bthd"``).
    k, v : numpy.ndarray
        float32 (B, Hkv, T, D) or (B, T, Hkv, D), Hkv dividing H; query head h reads kv head
        ``h // (H // Hkv)`` (Hugging Face's ``repeat_kv``). Inputs whose D axis is not contiguous
        (or whose strides are not whole elements) are copied first.
    causal : bool
        Token t attends to tokens 0..t only.
    scale : float or None
        Multiplies the scores; ``1 / sqrt(D)`` by default.
    layout : {"bhtd", "bthd"}
        Axis order of ``q``, ``k``, ``v``, ``out`` and the returned ``o``.
    out : numpy.ndarray or None
        Written with ``o`` and returned: a writeable float32 array of ``q``'s shape, any strides
        with a contiguous D axis (e.g. a (B, T, H, D) view of a (B, T, C) buffer), sharing no
        memory with ``q``, ``k``, ``v``. None: a new C-contiguous array.

    Returns
    -------
    o : numpy.ndarray
        float32, ``q``'s shape (``out`` when given).
    lse : numpy.ndarray
        float32 (B, H, T): the log-sum-exp of each query's scaled scores, kept for the backward.

    Raises
    ------
    TypeError
        A non-array or non-float32 argument.
    ValueError
        Mismatched shapes, kv heads not dividing H, an unknown ``layout``, or an ``out`` of the
        wrong shape, read-only, with a non-contiguous D axis or overlapping elements, or sharing
        memory with an input.
    """
    return _core.attention_forward(
        _attn_in(q, "q"),
        _attn_in(k, "k"),
        _attn_in(v, "v"),
        bool(causal),
        _scale(scale, q),
        layout=layout,
        out=out,
    )


def attention_backward(
    do: np.ndarray,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    o: np.ndarray,
    lse: np.ndarray,
    causal: bool = True,
    scale: float | None = None,
    *,
    layout: str = "bhtd",
    out: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`attention_forward`: ``(dq, dk, dv)`` shaped like ``q``, ``k``, ``v``.

    The probabilities are recomputed tile by tile from ``q``, ``k`` and ``lse``
    (FlashAttention-2); ``o`` gives the row terms ``sum(do * o)`` of the softmax backward.
    ``do``, ``q``, ``k``, ``v``, ``o`` are read in place in ``layout`` as in
    :func:`attention_forward`.

    Parameters
    ----------
    out : tuple (dq, dk, dv) or None
        Arrays written with the gradients and returned (an entry None: a new array), each
        writeable float32 of its input's shape with a contiguous D axis; they may be views of
        one (B, T, 3C) buffer (``layout="bthd"``), which is then the gradient of a fused qkv
        projection with no concatenation. None of them may share memory with another or with
        an input (ValueError).
    """
    if out is None:
        gq = gk = gv = None
    elif isinstance(out, tuple) and len(out) == 3:
        gq, gk, gv = out
    else:
        raise TypeError(f"out: expected a tuple (dq, dk, dv) or None, got {type(out).__name__}")
    return _core.attention_backward(
        _attn_in(do, "do"),
        _attn_in(q, "q"),
        _attn_in(k, "k"),
        _attn_in(v, "v"),
        _attn_in(o, "o"),
        _c(lse, "lse"),
        bool(causal),
        _scale(scale, q),
        layout=layout,
        dq=gq,
        dk=gk,
        dv=gv,
    )


# ---- embedding ----


def embedding_forward(ids: np.ndarray, wte: np.ndarray) -> np.ndarray:
    """Rows of ``wte`` (V, C) gathered by int64 ``ids`` (B, T), each in [0, V): (B, T, C) float32."""
    return _core.embedding_forward(_c(ids, "ids"), _c(wte, "wte"))


def embedding_backward(dx: np.ndarray, ids: np.ndarray, V: int) -> np.ndarray:
    """Gradient of :func:`embedding_forward` wrt ``wte``: dense (V, C), rows of ``dx`` summed per id."""
    if isinstance(V, bool) or not isinstance(V, (int, np.integer)):
        raise TypeError(f"V: expected an int, got {type(V).__name__}")
    return _core.embedding_backward(_c(dx, "dx"), _c(ids, "ids"), int(V))


# ---- fused LM head + cross-entropy ----


def lm_head_xent_forward(
    x: np.ndarray,
    w: np.ndarray,
    targets: np.ndarray,
    chunk: int | None = None,
    grad: bool = False,
    need_dw: bool = False,
) -> tuple[np.ndarray, ...]:
    """Mean softmax cross-entropy of the logits ``x @ w.T``, never materialised whole.

    Parameters
    ----------
    x : numpy.ndarray
        float32 (N, C), the final hidden states.
    w : numpy.ndarray
        float32 (V, C), the head (tied or not).
    targets : numpy.ndarray
        int64 (N,), each in [0, V).
    chunk : int or None
        Rows of x per logits block: the largest temporary is (chunk, V) float32. None picks about
        32 MiB.
    grad : bool
        Also return the gradients for ``dloss = 1`` computed in the same pass (one logits GEMM
        fewer than :func:`lm_head_xent_backward`, which recomputes them); scale them by the
        incoming loss gradient.
    need_dw : bool
        With ``grad``, also the head's gradient.

    Returns
    -------
    loss : numpy.ndarray
        float32 0-d, the mean over the N rows.
    lse : numpy.ndarray
        float32 (N,), the log-sum-exp of each row's logits, kept for the backward.
    dx, dw : numpy.ndarray
        Only with ``grad``: float32 (N, C) and (V, C) (None unless ``need_dw``).
    """
    out = _core.lm_head_xent_forward(
        _c(x, "x"), _c(w, "w"), _c(targets, "targets"), _chunk(chunk), bool(grad), bool(need_dw)
    )
    return (np.asarray(out[0], dtype=F32), *out[1:])


def lm_head_xent_backward(
    x: np.ndarray,
    w: np.ndarray,
    targets: np.ndarray,
    lse: np.ndarray,
    dloss: float = 1.0,
    need_dw: bool = False,
    chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradients of :func:`lm_head_xent_forward`, the logits recomputed ``chunk`` rows at a time.

    Returns
    -------
    dx : numpy.ndarray
        float32 (N, C): ``dloss / N * (softmax(x w^T) - onehot(targets)) @ w``.
    dw : numpy.ndarray or None
        float32 (V, C) when ``need_dw`` (a trainable head), else None.
    """
    return _core.lm_head_xent_backward(
        _c(x, "x"),
        _c(w, "w"),
        _c(targets, "targets"),
        _c(lse, "lse"),
        float(dloss),
        bool(need_dw),
        _chunk(chunk),
    )


def lm_head_logits(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Full logits ``x @ w.T``: (N, V) float32, for inference and tests (training never builds them)."""
    return _core.matmul(_c(x, "x"), _c(w, "w"), trans_b=True)


# ---- softmax cross-entropy on given logits (the MLP's loss) ----


def softmax_xent_forward(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean softmax cross-entropy of ``logits`` (N, K) against int64 ``targets`` (N,) in [0, K).

    Returns ``(loss float32 0-d, lse float32 (N,))``.
    """
    loss, lse = _core.softmax_xent_forward(_c(logits, "logits"), _c(targets, "targets"))
    return np.asarray(loss, dtype=F32), lse


def softmax_xent_backward(
    logits: np.ndarray, targets: np.ndarray, lse: np.ndarray, dloss: float = 1.0
) -> np.ndarray:
    """Gradient of :func:`softmax_xent_forward` wrt the logits: ``dloss / N * (softmax - onehot)``."""
    return _core.softmax_xent_backward(
        _c(logits, "logits"), _c(targets, "targets"), _c(lse, "lse"), float(dloss)
    )


# ---- AdamW ----


def adamw_step(
    param: np.ndarray,
    grad: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    step: int = 1,
) -> None:
    """One AdamW step, IN PLACE on ``param``, ``m`` and ``v`` (``torch.optim.AdamW`` semantics).

    ``param *= 1 - lr * weight_decay``; ``m = beta1 m + (1 - beta1) grad``;
    ``v = beta2 v + (1 - beta2) grad**2``;
    ``param -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)``.

    Parameters
    ----------
    param, grad, m, v : numpy.ndarray
        float32, one shape; ``param``, ``m``, ``v`` C-contiguous and writeable (updated in place).
    lr, beta1, beta2, eps, weight_decay : float
        Hyper-parameters: lr, eps, weight_decay finite and >= 0, betas in [0, 1).
    step : int
        1 for the first step (bias correction).
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step: expected an int, got {type(step).__name__}")
    _core.adamw_step(
        param,
        _c(grad, "grad"),
        m,
        v,
        float(lr),
        float(beta1),
        float(beta2),
        float(eps),
        float(weight_decay),
        int(step),
    )
