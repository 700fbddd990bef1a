"""Functional forward/backward kernels of the transformer ops (NumPy float32 in and out).

Every function validates its arrays (float32, shapes that agree; ``TypeError``/``ValueError``
naming the argument) and never modifies its inputs, except :func:`adamw_step`, which updates
``param``, ``m`` and ``v`` in place. Rows are tokens: ``x`` of shape (N, C) holds N tokens of C
features; the norms also accept (..., C) and treat every leading index as a row.
See ``docs/ops.md`` for the math and the memory behaviour of each op.
"""

from __future__ import annotations

import math

import numpy as np

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


def _f32(a: object, name: str, ndim: int | None = None, dims: str = "") -> np.ndarray:
    """``a`` as a C-contiguous float32 array (a copy only when not contiguous), else a named error."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != F32:
        raise TypeError(f"{name}: expected dtype float32, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array{dims}, got shape {a.shape}")
    if ndim is None and a.ndim < 1:
        raise ValueError(f"{name}: expected an array of at least 1 dimension, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _same(a: np.ndarray, name: str, shape: tuple[int, ...], ref: str) -> None:
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (that of {ref}), got {a.shape}")


def _ids(a: object, name: str, ndim: int, dims: str, V: int) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.int64:
        raise TypeError(f"{name}: expected dtype int64, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array{dims}, got shape {a.shape}")
    if a.size and (int(a.min()) < 0 or int(a.max()) >= V):
        raise ValueError(f"{name}: expected ids in [0, {V}), got values in [{a.min()}, {a.max()}]")
    return np.ascontiguousarray(a)


def _eps(eps: float, name: str = "eps") -> float:
    e = float(eps)
    if not (math.isfinite(e) and e > 0):
        raise ValueError(f"{name}: expected a finite positive float, got {eps!r}")
    return e


def _rows(x: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """``x`` (..., C) viewed as (N, C)."""
    C = x.shape[-1]
    return x.reshape(-1, C), C


# ---- LayerNorm ----


def layernorm_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LayerNorm over the last axis: ``y = (x - mean) * rstd * w + b``.

    Parameters
    ----------
    x : numpy.ndarray
        float32 (..., C).
    w, b : numpy.ndarray
        float32 (C,), scale and shift.
    eps : float
        Added to the variance (biased, as in ``torch.nn.LayerNorm``).

    Returns
    -------
    y : numpy.ndarray
        float32, the shape of ``x``.
    mean, rstd : numpy.ndarray
        float32 (...,): per row mean and 1 / sqrt(var + eps), kept for the backward.
    """
    x = _f32(x, "x")
    C = x.shape[-1]
    w = _f32(w, "w", 1, " (C,)")
    b = _f32(b, "b", 1, " (C,)")
    _same(w, "w", (C,), "x's last axis")
    _same(b, "b", (C,), "x's last axis")
    e = _eps(eps)
    xr, _ = _rows(x, "x")
    x64 = xr.astype(np.float64)
    mean = x64.mean(axis=1)
    var = ((x64 - mean[:, None]) ** 2).mean(axis=1)
    rstd = 1.0 / np.sqrt(var + e)
    y = (x64 - mean[:, None]) * rstd[:, None] * w + b
    lead = x.shape[:-1]
    return y.astype(F32).reshape(x.shape), mean.astype(F32).reshape(lead), rstd.astype(F32).reshape(lead)


def layernorm_backward(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, mean: np.ndarray, rstd: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`layernorm_forward`.

    Parameters
    ----------
    dy, x : numpy.ndarray
        float32 (..., C), the output gradient and the forward input.
    w : numpy.ndarray
        float32 (C,).
    mean, rstd : numpy.ndarray
        float32 (...,) from the forward.

    Returns
    -------
    dx : numpy.ndarray
        float32 (..., C).
    dw, db : numpy.ndarray
        float32 (C,), summed over the rows (the caller accumulates them).
    """
    x = _f32(x, "x")
    dy = _f32(dy, "dy")
    _same(dy, "dy", x.shape, "x")
    C = x.shape[-1]
    w = _f32(w, "w", 1, " (C,)")
    _same(w, "w", (C,), "x's last axis")
    mean = _f32(mean, "mean", x.ndim - 1) if x.ndim > 1 else _f32(mean, "mean")
    rstd = _f32(rstd, "rstd", x.ndim - 1) if x.ndim > 1 else _f32(rstd, "rstd")
    _same(mean, "mean", x.shape[:-1], "x without its last axis")
    _same(rstd, "rstd", x.shape[:-1], "x without its last axis")
    xr = x.reshape(-1, C).astype(np.float64)
    g = dy.reshape(-1, C).astype(np.float64)
    mu = mean.reshape(-1, 1).astype(np.float64)
    rs = rstd.reshape(-1, 1).astype(np.float64)
    xhat = (xr - mu) * rs
    db = g.sum(axis=0)
    dw = (g * xhat).sum(axis=0)
    gw = g * w
    dx = rs * (gw - gw.mean(axis=1, keepdims=True) - xhat * (gw * xhat).mean(axis=1, keepdims=True))
    return dx.astype(F32).reshape(x.shape), dw.astype(F32), db.astype(F32)


# ---- RMSNorm ----


def rmsnorm_forward(x: np.ndarray, w: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """RMSNorm over the last axis (Llama's): ``y = x * rstd * w``, ``rstd = 1 / sqrt(mean(x**2) + eps)``.

    Parameters
    ----------
    x : numpy.ndarray
        float32 (..., C).
    w : numpy.ndarray
        float32 (C,).
    eps : float
        Added to the mean square.

    Returns
    -------
    y : numpy.ndarray
        float32, the shape of ``x``.
    rstd : numpy.ndarray
        float32 (...,), kept for the backward.
    """
    x = _f32(x, "x")
    C = x.shape[-1]
    w = _f32(w, "w", 1, " (C,)")
    _same(w, "w", (C,), "x's last axis")
    e = _eps(eps)
    xr = x.reshape(-1, C).astype(np.float64)
    rstd = 1.0 / np.sqrt((xr * xr).mean(axis=1) + e)
    y = xr * rstd[:, None] * w
    return y.astype(F32).reshape(x.shape), rstd.astype(F32).reshape(x.shape[:-1])


def rmsnorm_backward(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, rstd: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`rmsnorm_forward`: ``(dx (..., C), dw (C,))``, dw summed over the rows."""
    x = _f32(x, "x")
    dy = _f32(dy, "dy")
    _same(dy, "dy", x.shape, "x")
    C = x.shape[-1]
    w = _f32(w, "w", 1, " (C,)")
    _same(w, "w", (C,), "x's last axis")
    rstd = _f32(rstd, "rstd")
    _same(rstd, "rstd", x.shape[:-1], "x without its last axis")
    xr = x.reshape(-1, C).astype(np.float64)
    g = dy.reshape(-1, C).astype(np.float64)
    rs = rstd.reshape(-1, 1).astype(np.float64)
    xhat = xr * rs
    dw = (g * xhat).sum(axis=0)
    gw = g * w
    dx = rs * (gw - xhat * (gw * xhat).mean(axis=1, keepdims=True))
    return dx.astype(F32).reshape(x.shape), dw.astype(F32)


# ---- GELU (tanh approximation) and SwiGLU ----

_GELU_K = math.sqrt(2.0 / math.pi)


def gelu_forward(x: np.ndarray) -> np.ndarray:
    """GPT-2's GELU, ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3)))``, elementwise, any shape."""
    x = _f32(x, "x")
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + np.tanh(_GELU_K * (x64 + 0.044715 * x64**3)))).astype(F32)


def gelu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Gradient of :func:`gelu_forward`: ``dx`` with the shape of ``x``."""
    x = _f32(x, "x")
    dy = _f32(dy, "dy")
    _same(dy, "dy", x.shape, "x")
    x64 = x.astype(np.float64)
    u = _GELU_K * (x64 + 0.044715 * x64**3)
    t = np.tanh(u)
    d = 0.5 * (1.0 + t) + 0.5 * x64 * (1.0 - t * t) * _GELU_K * (1.0 + 3 * 0.044715 * x64 * x64)
    return (dy * d).astype(F32)


def swiglu_forward(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Llama's gated activation ``silu(gate) * up`` (``silu(g) = g * sigmoid(g)``), elementwise."""
    gate = _f32(gate, "gate")
    up = _f32(up, "up")
    _same(up, "up", gate.shape, "gate")
    g = gate.astype(np.float64)
    return (g / (1.0 + np.exp(-g)) * up).astype(F32)


def swiglu_backward(dy: np.ndarray, gate: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`swiglu_forward`: ``(dgate, dup)``."""
    gate = _f32(gate, "gate")
    up = _f32(up, "up")
    dy = _f32(dy, "dy")
    _same(up, "up", gate.shape, "gate")
    _same(dy, "dy", gate.shape, "gate")
    g = gate.astype(np.float64)
    s = 1.0 / (1.0 + np.exp(-g))
    dgate = dy * up * s * (1.0 + g * (1.0 - s))
    dup = dy * g * s
    return dgate.astype(F32), dup.astype(F32)


# ---- RoPE ----


def _rope_check(x: np.ndarray, name: str, theta: float, offset: int) -> tuple[np.ndarray, float, int]:
    x = _f32(x, name, 4, " (B, T, H, D)")
    if x.shape[3] % 2:
        raise ValueError(f"{name}: expected an even head size D, got shape {x.shape}")
    t = float(theta)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"theta: expected a finite positive float, got {theta!r}")
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"offset: expected a non-negative int, got {offset!r}")
    return x, t, int(offset)


def _rope(x: np.ndarray, theta: float, offset: int, sign: float) -> np.ndarray:
    T, D = x.shape[1], x.shape[3]
    inv = 1.0 / theta ** (np.arange(0, D, 2, dtype=np.float64) / D)
    ang = (np.arange(T, dtype=np.float64) + offset)[:, None] * inv[None, :]
    cos = np.cos(ang)[None, :, None, :]
    sin = sign * np.sin(ang)[None, :, None, :]
    x64 = x.astype(np.float64)
    x1, x2 = x64[..., : D // 2], x64[..., D // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(F32)


def rope_forward(x: np.ndarray, theta: float = 10000.0, offset: int = 0) -> np.ndarray:
    """Rotary position embedding in Hugging Face's ``rotate_half`` convention.

    Parameters
    ----------
    x : numpy.ndarray
        float32 (B, T, H, D), D even; token t sits at position ``offset + t``.
    theta : float
        Base of the frequencies ``theta ** (-2i / D)``.
    offset : int
        Position of the first token (for a KV cache).

    Returns
    -------
    numpy.ndarray
        float32 (B, T, H, D): ``x * cos + rotate_half(x) * sin`` with
        ``rotate_half(x) = concat(-x[..., D/2:], x[..., :D/2])``.
    """
    x, t, o = _rope_check(x, "x", theta, offset)
    return _rope(x, t, o, 1.0)


def rope_backward(dy: np.ndarray, theta: float = 10000.0, offset: int = 0) -> np.ndarray:
    """Gradient of :func:`rope_forward` (a rotation, so the inverse rotation of ``dy``)."""
    dy, t, o = _rope_check(dy, "dy", theta, offset)
    return _rope(dy, t, o, -1.0)


# ---- attention ----


def _attn_check(
    q: object, k: object, v: object, scale: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    q = _f32(q, "q", 4, " (B, H, T, D)")
    k = _f32(k, "k", 4, " (B, Hkv, T, D)")
    v = _f32(v, "v", 4, " (B, Hkv, T, D)")
    B, H, T, D = q.shape
    if k.shape[0] != B or k.shape[2:] != (T, D) or k.shape[1] < 1 or H % k.shape[1]:
        raise ValueError(f"k: expected shape ({B}, Hkv, {T}, {D}) with Hkv dividing H={H}, got {k.shape}")
    _same(v, "v", k.shape, "k")
    if scale is None:
        s = 1.0 / math.sqrt(D) if D else 1.0
    else:
        s = float(scale)
        if not math.isfinite(s):
            raise ValueError(f"scale: expected a finite float or None, got {scale!r}")
    return q, k, v, s


def _attn_scores(q: np.ndarray, k: np.ndarray, causal: bool, s: float) -> np.ndarray:
    H, Hkv = q.shape[1], k.shape[1]
    kk = np.repeat(k.astype(np.float64), H // Hkv, axis=1)
    S = s * (q.astype(np.float64) @ kk.transpose(0, 1, 3, 2))
    if causal:
        T = q.shape[2]
        S = np.where(np.tril(np.ones((T, T), dtype=bool)), S, -np.inf)
    return S


def attention_forward(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = True, scale: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scaled dot-product attention, grouped-query when k and v have fewer heads than q.

    Parameters
    ----------
    q : numpy.ndarray
        float32 (B, H, T, D).
    k, v : numpy.ndarray
        float32 (B, Hkv, T, D), Hkv dividing H; query head h reads kv head ``h // (H // Hkv)``.
    causal : bool
        Token t attends to tokens 0..t only.
    scale : float or None
        Multiplies the scores; ``1 / sqrt(D)`` by default.

    Returns
    -------
    o : numpy.ndarray
        float32 (B, H, T, D).
    lse : numpy.ndarray
        float32 (B, H, T), the log-sum-exp of each query's scaled scores, kept for the backward
        (which recomputes the probabilities from it: no T x T matrix is kept per head).
    """
    q, k, v, s = _attn_check(q, k, v, scale)
    H, Hkv = q.shape[1], k.shape[1]
    S = _attn_scores(q, k, bool(causal), s)
    m = S.max(axis=-1, keepdims=True)
    P = np.exp(S - m)
    z = P.sum(axis=-1, keepdims=True)
    o = (P / z) @ np.repeat(v.astype(np.float64), H // Hkv, axis=1)
    lse = (m + np.log(z))[..., 0]
    return o.astype(F32), lse.astype(F32)


def attention_backward(
    do: np.ndarray,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    o: np.ndarray,
    lse: np.ndarray,
    causal: bool = True,
    scale: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`attention_forward`: ``(dq (B,H,T,D), dk, dv (B,Hkv,T,D))``.

    The probabilities are recomputed from ``q``, ``k`` and ``lse``; ``o`` gives the row terms
    ``sum(do * o)`` of the softmax backward.
    """
    q, k, v, s = _attn_check(q, k, v, scale)
    do = _f32(do, "do", 4, " (B, H, T, D)")
    o = _f32(o, "o", 4, " (B, H, T, D)")
    _same(do, "do", q.shape, "q")
    _same(o, "o", q.shape, "q")
    lse = _f32(lse, "lse", 3, " (B, H, T)")
    _same(lse, "lse", q.shape[:3], "q without its last axis")
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    g = H // Hkv
    S = _attn_scores(q, k, bool(causal), s)
    P = np.exp(S - lse.astype(np.float64)[..., None])
    do64 = do.astype(np.float64)
    vv = np.repeat(v.astype(np.float64), g, axis=1)
    kk = np.repeat(k.astype(np.float64), g, axis=1)
    dP = do64 @ vv.transpose(0, 1, 3, 2)
    Di = (do64 * o.astype(np.float64)).sum(axis=-1, keepdims=True)
    dS = P * (dP - Di)
    dq = s * dS @ kk
    dk = (s * dS.transpose(0, 1, 3, 2) @ q.astype(np.float64)).reshape(B, Hkv, g, T, D).sum(axis=2)
    dv = (P.transpose(0, 1, 3, 2) @ do64).reshape(B, Hkv, g, T, D).sum(axis=2)
    return dq.astype(F32), dk.astype(F32), dv.astype(F32)


# ---- embedding ----


def embedding_forward(ids: np.ndarray, wte: np.ndarray) -> np.ndarray:
    """Rows of ``wte`` (V, C) gathered by ``ids`` (int64 (B, T), each in [0, V)): (B, T, C) float32."""
    wte = _f32(wte, "wte", 2, " (V, C)")
    ids = _ids(ids, "ids", 2, " (B, T)", wte.shape[0])
    return wte[ids]


def embedding_backward(dx: np.ndarray, ids: np.ndarray, V: int) -> np.ndarray:
    """Gradient of :func:`embedding_forward` wrt ``wte``: dense (V, C), rows of ``dx`` summed per id."""
    if isinstance(V, bool) or not isinstance(V, (int, np.integer)) or V < 1:
        raise ValueError(f"V: expected a positive int, got {V!r}")
    dx = _f32(dx, "dx", 3, " (B, T, C)")
    ids = _ids(ids, "ids", 2, " (B, T)", int(V))
    if dx.shape[:2] != ids.shape:
        raise ValueError(
            f"dx: expected shape {(*ids.shape, dx.shape[2])} (ids' shape + (C,)), got {dx.shape}"
        )
    out = np.zeros((int(V), dx.shape[2]), dtype=np.float64)
    np.add.at(out, ids.reshape(-1), dx.reshape(-1, dx.shape[2]).astype(np.float64))
    return out.astype(F32)


# ---- fused LM head + cross-entropy ----

DEFAULT_CHUNK = 4096


def _head_check(x: object, w: object, targets: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = _f32(x, "x", 2, " (N, C)")
    w = _f32(w, "w", 2, " (V, C)")
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w: expected shape (V, {x.shape[1]}) (C of x), got {w.shape}")
    targets = _ids(targets, "targets", 1, " (N,)", w.shape[0])
    _same(targets, "targets", (x.shape[0],), "x's rows")
    return x, w, targets


def lm_head_xent_forward(
    x: np.ndarray, w: np.ndarray, targets: np.ndarray, chunk: int = DEFAULT_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Mean softmax cross-entropy of the logits ``x @ w.T`` without materialising them whole.

    Parameters
    ----------
    x : numpy.ndarray
        float32 (N, C), the final hidden states.
    w : numpy.ndarray
        float32 (V, C), the head (tied or not).
    targets : numpy.ndarray
        int64 (N,), each in [0, V).
    chunk : int
        Vocabulary rows per block: the largest logits buffer is (N, chunk).

    Returns
    -------
    loss : numpy.ndarray
        float32 0-d, the mean over the N rows.
    lse : numpy.ndarray
        float32 (N,), the log-sum-exp of each row's logits, kept for the backward.
    """
    x, w, targets = _head_check(x, w, targets)
    c = _chunk(chunk)
    N, V = x.shape[0], w.shape[0]
    m = np.full(N, -np.inf)
    z = np.zeros(N)
    tgt = np.zeros(N)
    x64 = x.astype(np.float64)
    for v0 in range(0, V, c):
        L = x64 @ w[v0 : v0 + c].astype(np.float64).T
        mn = np.maximum(m, L.max(axis=1))
        z = z * np.exp(m - mn) + np.exp(L - mn[:, None]).sum(axis=1)
        m = mn
        sel = (targets >= v0) & (targets < v0 + c)
        tgt[sel] = L[sel, targets[sel] - v0]
    lse = m + np.log(z)
    loss = np.float32((lse - tgt).mean()) if N else np.float32(0.0)
    return np.asarray(loss, dtype=F32), lse.astype(F32)


def _chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk: expected a positive int, got {chunk!r}")
    return int(chunk)


def lm_head_xent_backward(
    x: np.ndarray,
    w: np.ndarray,
    targets: np.ndarray,
    lse: np.ndarray,
    dloss: float = 1.0,
    need_dw: bool = False,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradients of :func:`lm_head_xent_forward`, recomputing the logits chunk by chunk.

    Returns
    -------
    dx : numpy.ndarray
        float32 (N, C), ``dloss / N * (softmax(x w^T) - onehot(targets)) @ w``.
    dw : numpy.ndarray or None
        float32 (V, C) when ``need_dw`` (a trainable head), else None.
    """
    x, w, targets = _head_check(x, w, targets)
    lse = _f32(lse, "lse", 1, " (N,)")
    _same(lse, "lse", (x.shape[0],), "x's rows")
    c = _chunk(chunk)
    N, V = x.shape[0], w.shape[0]
    g = float(dloss) / max(N, 1)
    x64 = x.astype(np.float64)
    dx = np.zeros_like(x64)
    dw = np.zeros(w.shape) if need_dw else None
    for v0 in range(0, V, c):
        w64 = w[v0 : v0 + c].astype(np.float64)
        P = np.exp(x64 @ w64.T - lse.astype(np.float64)[:, None])
        sel = (targets >= v0) & (targets < v0 + c)
        P[np.nonzero(sel)[0], targets[sel] - v0] -= 1.0
        P *= g
        dx += P @ w64
        if dw is not None:
            dw[v0 : v0 + c] = P.T @ x64
    return dx.astype(F32), None if dw is None else dw.astype(F32)


def lm_head_logits(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Full logits ``x @ w.T``: (N, V) float32, for inference and tests (training never builds them)."""
    x = _f32(x, "x", 2, " (N, C)")
    w = _f32(w, "w", 2, " (V, C)")
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w: expected shape (V, {x.shape[1]}) (C of x), got {w.shape}")
    return (x @ w.T).astype(F32)


# ---- softmax cross-entropy on given logits (the MLP's loss) ----


def softmax_xent_forward(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean softmax cross-entropy of ``logits`` (N, K) against int64 ``targets`` (N,).

    Returns ``(loss float32 0-d, lse float32 (N,))``.
    """
    logits = _f32(logits, "logits", 2, " (N, K)")
    targets = _ids(targets, "targets", 1, " (N,)", logits.shape[1])
    _same(targets, "targets", (logits.shape[0],), "logits' rows")
    L = logits.astype(np.float64)
    m = L.max(axis=1) if L.shape[0] else np.zeros(0)
    lse = m + np.log(np.exp(L - m[:, None]).sum(axis=1))
    N = L.shape[0]
    loss = (lse - L[np.arange(N), targets]).mean() if N else 0.0
    return np.asarray(loss, dtype=F32), lse.astype(F32)


def softmax_xent_backward(
    logits: np.ndarray, targets: np.ndarray, lse: np.ndarray, dloss: float = 1.0
) -> np.ndarray:
    """Gradient of :func:`softmax_xent_forward` wrt the logits: ``dloss / N * (softmax - onehot)``."""
    logits = _f32(logits, "logits", 2, " (N, K)")
    targets = _ids(targets, "targets", 1, " (N,)", logits.shape[1])
    N = logits.shape[0]
    _same(targets, "targets", (N,), "logits' rows")
    lse = _f32(lse, "lse", 1, " (N,)")
    _same(lse, "lse", (N,), "logits' rows")
    P = np.exp(logits.astype(np.float64) - lse.astype(np.float64)[:, None])
    P[np.arange(N), targets] -= 1.0
    return (P * (float(dloss) / max(N, 1))).astype(F32)


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
        Hyper-parameters; betas in [0, 1).
    step : int
        1 for the first step (bias correction).
    """
    arrs = {}
    for name, a in (("param", param), ("grad", grad), ("m", m), ("v", v)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
        if a.dtype != F32:
            raise TypeError(f"{name}: expected dtype float32, got {a.dtype}")
        if a.shape != param.shape:
            raise ValueError(f"{name}: expected shape {param.shape} (that of param), got {a.shape}")
        if name != "grad" and not (a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"{name}: expected a C-contiguous writeable array (updated in place)")
        arrs[name] = a
    for name, val in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
        if not (math.isfinite(float(val)) and float(val) >= 0):
            raise ValueError(f"{name}: expected a finite non-negative float, got {val!r}")
    for name, val in (("beta1", beta1), ("beta2", beta2)):
        if not (0.0 <= float(val) < 1.0):
            raise ValueError(f"{name}: expected a float in [0, 1), got {val!r}")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step: expected a positive int, got {step!r}")
    p64 = param.astype(np.float64)
    g64 = grad.astype(np.float64)
    m64 = beta1 * m.astype(np.float64) + (1 - beta1) * g64
    v64 = beta2 * v.astype(np.float64) + (1 - beta2) * g64 * g64
    p64 *= 1 - lr * weight_decay
    bc1 = 1 - beta1**step
    bc2 = 1 - beta2**step
    p64 -= lr / bc1 * m64 / (np.sqrt(v64) / math.sqrt(bc2) + eps)
    param[...] = p64
    m[...] = m64
    v[...] = v64
