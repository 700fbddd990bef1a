"""Weight normalization (Salimans & Kingma, 2016): ``w = g * v / ||v||`` for a 2-D weight.

The meaning of ``dim`` and the shape of ``g`` follow ``torch.nn.utils.parametrizations.weight_norm``
for a weight ``v`` of shape ``(out, in)``:

==========  ===========================  ===================
``dim``     norms                        ``g`` shape
==========  ===========================  ===================
``0``       one per row (output unit)    ``(out, 1)``
``1``       one per column (input)       ``(1, in)``
``None``    one over the whole tensor    ``()``
==========  ===========================  ===================

(PyTorch spells the whole-tensor case ``dim=-1`` in ``torch._weight_norm``; sparseft only accepts
``None`` for it, so a negative ``dim`` is rejected instead of silently meaning "whole tensor".)

Zero norms: where a slice of ``v`` is entirely zero, PyTorch returns NaN (pytorch#19126). sparseft
defines the weight there as 0 (whatever ``g``) and both gradients for that slice as 0, so training
never turns NaN silently; the slice simply stays zero until something else moves it.

The arithmetic runs in the C kernels of :mod:`sparseft._core` (norms accumulated in double, float32
outputs, OpenMP, AVX2/FMA).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

from sparseft import _core
from sparseft._validation import F32_MAX, check_real

__all__ = ["WeightNorm"]

F32 = npt.NDArray[np.float32]

# Added under the square root of the batch variance in data_init (as in the paper's reference code).
DATA_INIT_EPS = 1e-10


def _float_array(name: str, a: Any, ndim: int | None = None) -> F32:
    """``a`` as a C-contiguous float32 array (a new array when a conversion is needed).

    Floating dtypes (float16/32/64) are accepted and computed in float32; anything else is a
    TypeError naming the argument.
    """
    if not isinstance(a, (np.ndarray, numbers.Real)) or isinstance(a, bool):
        raise TypeError(f"{name}: expected a numpy.ndarray of floats, got {type(a).__name__}")
    arr = np.asarray(a)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point dtype (float32 or float64), got {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {arr.shape}")
    with np.errstate(over="ignore"):  # a float64 value beyond float32 range: _check_finite reports it
        return np.asarray(arr, dtype=np.float32, order="C")  # (ascontiguousarray would make a 0-d g 1-D)


def _check_finite(name: str, a: F32, src: Any = None) -> None:
    """ValueError naming ``name`` unless ``a`` is finite; ``src`` (what the caller passed, before the
    float32 conversion) tells a float64 value beyond float32 range from a NaN/inf in the input."""
    if not np.isfinite(a).all():
        if src is not None:
            src64 = np.asarray(src)
            if np.isfinite(src64).all():
                big = float(np.abs(src64).max())
                raise ValueError(
                    f"{name}: expected values within float32 range (|value| <= {F32_MAX:.4g}), got "
                    f"{big:.4g}, which overflows to infinity in float32"
                )
        raise ValueError(f"{name}: contains NaN or infinity")


def _check_dim(dim: Any) -> int | None:
    if dim is None:
        return None
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim: expected 0, 1 or None, got {type(dim).__name__}")
    if dim not in (0, 1):
        hint = " (use dim=None for one norm over the whole tensor)" if dim < 0 else ""
        raise ValueError(f"dim: expected 0, 1 or None for a 2-D weight, got {int(dim)}{hint}")
    return int(dim)


def _g_shape(shape: tuple[int, ...], dim: int | None) -> tuple[int, ...]:
    if dim == 0:
        return (shape[0], 1)
    if dim == 1:
        return (1, shape[1])
    return ()


def _core_dim(dim: int | None) -> int:
    return -1 if dim is None else dim


def _default_g(name: str, v: F32, dim: int | None) -> F32:
    """The norms of a finite ``v`` as ``g`` (the kernel sums in double, so only a norm that is itself
    beyond float32 range comes back as inf): a ValueError naming ``name`` when one does not fit."""
    norms = _core.weightnorm_norms(v, _core_dim(dim))
    bad = np.flatnonzero(~np.isfinite(norms))
    if bad.size:
        k = int(bad[0])
        v64 = v.astype(np.float64)
        part = v64[k] if dim == 0 else v64[:, k] if dim == 1 else v64
        where = f"row {k}" if dim == 0 else f"column {k}" if dim == 1 else "the whole tensor"
        raise ValueError(
            f"{name}: expected norms that fit float32 (<= {F32_MAX:.4g}) for the default g = ||{name}||, "
            f"got a norm of {float(np.sqrt(np.sum(part * part))):.4g} for {where}, which overflows "
            f"float32 (rescale {name} or pass g explicitly)"
        )
    return norms.reshape(_g_shape(v.shape, dim))


class WeightNorm:
    """A weight-normalized 2-D weight ``w = g * v / ||v||``.

    Parameters
    ----------
    v : numpy.ndarray
        Direction, shape ``(out, in)``, floating point (computed in float32), finite. Copied.
    g : numpy.ndarray or float, optional
        Magnitude with PyTorch's shape: ``(out, 1)`` for ``dim=0``, ``(1, in)`` for ``dim=1``,
        ``()`` for ``dim=None``, finite. Default: the norms of ``v``, so that ``weight()`` equals
        ``v``; they must then fit float32 (a norm above ~3.4e38 is a ValueError).
    dim : {0, 1, None}
        0: one norm per row (output unit); 1: one per column; None: one over the whole tensor.

    Attributes
    ----------
    v : numpy.ndarray
        float32 ``(out, in)``, owned by this object (update it in place during training, e.g.
        ``wn.v -= lr * grad_v``; keep it finite: it is validated when set, not at every call).
    g : numpy.ndarray
        float32 with the shape above, owned by this object.
    dim : int or None

    Raises
    ------
    TypeError
        If ``v`` or ``g`` is not a floating-point array, or ``dim`` is not an int or None.
    ValueError
        If ``v`` is not 2-D, ``dim`` is not 0, 1 or None, ``g`` has the wrong shape, ``v``/``g``
        hold NaN or infinity, or ``g`` is omitted and a norm of ``v`` overflows float32.

    Notes
    -----
    Where a slice of ``v`` has norm 0 the weight slice is 0 and its gradients are 0 (PyTorch gives
    NaN there, pytorch#19126).

    Examples
    --------
    >>> import numpy as np, sparseft as sft
    >>> wn = sft.WeightNorm(np.array([[3.0, 4.0], [0.0, 2.0]], np.float32), g=np.array([[1.0], [3.0]]))
    >>> wn.weight()
    array([[0.6, 0.8],
           [0. , 3. ]], dtype=float32)
    """

    _v: F32
    _g: F32

    def __init__(self, v: npt.ArrayLike, g: npt.ArrayLike | None = None, dim: int | None = 0) -> None:
        self.dim = _check_dim(dim)
        self.v = v  # type: ignore[assignment]  # the setter validates and copies
        if g is None:
            self._g = _default_g("v", self._v, self.dim)
        else:
            self.g = g  # type: ignore[assignment]

    # -- attributes with validation --

    @property
    def v(self) -> F32:
        """The direction, float32 ``(out, in)``."""
        return self._v

    @v.setter
    def v(self, value: npt.ArrayLike) -> None:
        arr = _float_array("v", value, 2)
        _check_finite("v", arr, value)
        if hasattr(self, "_g") and arr.shape != self._v.shape:
            raise ValueError(f"v: expected shape {self._v.shape}, got {arr.shape}")
        self._v = arr.copy() if isinstance(value, np.ndarray) and np.shares_memory(arr, value) else arr

    @property
    def g(self) -> F32:
        """The magnitude, float32 with PyTorch's shape for ``dim``."""
        return self._g

    @g.setter
    def g(self, value: npt.ArrayLike) -> None:
        arr = _float_array("g", value)
        want = _g_shape(self._v.shape, self.dim)
        if arr.shape != want:
            raise ValueError(f"g: expected shape {want} for dim={self.dim}, got {arr.shape}")
        _check_finite("g", arr, value)
        self._g = arr.copy() if isinstance(value, np.ndarray) and np.shares_memory(arr, value) else arr

    @property
    def shape(self) -> tuple[int, int]:
        """Shape ``(out, in)`` of the weight."""
        return (int(self._v.shape[0]), int(self._v.shape[1]))

    def __repr__(self) -> str:
        return f"WeightNorm(shape={self.shape}, dim={self.dim})"

    # -- computation --

    def norms(self) -> F32:
        """Norms of ``v`` (accumulated in double), float32 with the shape of ``g``."""
        n = _core.weightnorm_norms(self._v, _core_dim(self.dim))
        return n.reshape(self._g.shape)

    def weight(self, out: F32 | None = None) -> F32:
        """The weight ``w = g * v / ||v||`` (0 where ``||v|| = 0``).

        Parameters
        ----------
        out : numpy.ndarray, optional
            A float32 C-contiguous ``(out, in)`` array to write the weight into (reusing one buffer
            across training steps saves an allocation and its page faults). Default: a new array.

        Returns
        -------
        numpy.ndarray
            float32 ``(out, in)`` (``out`` itself when given).
        """
        return _core.weightnorm_forward(self._v, self._g.reshape(-1), _core_dim(self.dim), out)

    def backward(self, grad_w: npt.ArrayLike, out: F32 | None = None) -> tuple[F32, F32]:
        """Gradients of ``v`` and ``g`` from the gradient of the weight.

        ``grad_g = <grad_w, v> / ||v||`` and
        ``grad_v = (g / ||v||) * grad_w - (g * grad_g / ||v||**2) * v``, per slice.

        Parameters
        ----------
        grad_w : numpy.ndarray
            Gradient of the loss with respect to ``weight()``, shape ``(out, in)``, floating point.
        out : numpy.ndarray, optional
            A float32 C-contiguous ``(out, in)`` array to write ``grad_v`` into; it may be ``grad_w``
            itself (computed in place). Default: a new array.

        Returns
        -------
        grad_v : numpy.ndarray
            float32 ``(out, in)``.
        grad_g : numpy.ndarray
            float32 with the shape of ``g``. Both are 0 on slices where ``||v|| = 0``. ``grad_w`` is
            not scanned for NaN/inf (that would cost a pass over memory): they propagate.

        Raises
        ------
        TypeError
            If ``grad_w`` is not a floating-point array.
        ValueError
            If ``grad_w`` does not have shape ``(out, in)``.
        """
        gw = _float_array("grad_w", grad_w)
        if gw.shape != self._v.shape:
            raise ValueError(f"grad_w: expected shape {self._v.shape}, got {gw.shape}")
        grad_v, grad_g = _core.weightnorm_backward(gw, self._v, self._g.reshape(-1), _core_dim(self.dim), out)
        return grad_v, grad_g.reshape(self._g.shape)

    # -- constructors / initialisation --

    @classmethod
    def from_weight(cls, w: npt.ArrayLike, dim: int | None = 0) -> WeightNorm:
        """Reparameterise an existing weight: ``v = w`` and ``g = ||w||``, so ``weight()`` equals ``w``.

        Parameters
        ----------
        w : numpy.ndarray
            Weight, shape ``(out, in)``, floating point, finite. Copied.
        dim : {0, 1, None}
            As in :class:`WeightNorm`.

        Returns
        -------
        WeightNorm

        Raises
        ------
        TypeError
            If ``w`` is not a floating-point array, or ``dim`` is not an int or None.
        ValueError
            If ``w`` is not 2-D or holds NaN/inf, ``dim`` is not 0, 1 or None, or a norm of ``w``
            overflows float32 (then ``g = ||w||`` cannot be represented).
        """
        dim = _check_dim(dim)
        w32 = _float_array("w", w, 2)
        _check_finite("w", w32, w)
        return cls(w32, _default_g("w", w32, dim), dim)

    @staticmethod
    def data_init(v: npt.ArrayLike, x: npt.ArrayLike, init_scale: float = 1.0) -> tuple[F32, F32]:
        """Data-dependent initialisation of ``g`` and a bias ``b`` (Salimans & Kingma 2016, sec. 3).

        On a minibatch, ``t = x v^T / ||v||_row`` (shape ``(N, out)``, one column per output unit,
        ``dim=0``); then ``g = init_scale / sigma[t]`` and ``b = -mu[t] * g``, with ``mu`` and
        ``sigma`` the mean and standard deviation of ``t`` over the batch, so the layer's
        pre-activations ``x w^T + b`` start with mean 0 and standard deviation ``init_scale`` per unit.
        ``sigma = sqrt(var + 1e-10)`` (the paper's reference code), so a unit whose ``t`` is constant
        over the batch (e.g. a zero row of ``v``) gets a large but finite ``g``; a zero row of ``v``
        gives ``t = 0`` there.

        Parameters
        ----------
        v : numpy.ndarray
            Direction, ``(out, in)``, floating point, finite.
        x : numpy.ndarray
            Minibatch of layer inputs, ``(N, in)``: one row per example (the convention of
            ``y = x w^T + b``), ``N >= 1``, floating point, finite.
        init_scale : float
            Target standard deviation of the initial pre-activations, > 0 and representable in
            float32 (at most ~3.4e38, not rounding to 0).

        Returns
        -------
        g : numpy.ndarray
            float32 ``(out, 1)``, ready for ``WeightNorm(v, g, dim=0)``.
        b : numpy.ndarray
            float32 ``(out,)``.

        Raises
        ------
        TypeError
            If ``v`` or ``x`` is not a floating-point array or ``init_scale`` is not a real number.
        ValueError
            If the shapes do not match, ``x`` is empty, an input holds NaN/inf, ``init_scale`` is not
            positive, finite and representable in float32, or ``g`` or ``b`` would overflow float32
            (or ``g`` underflow to 0): the error names ``init_scale``, or ``x`` when ``b`` overflows
            even with ``init_scale = 1`` (a unit whose ``t`` has a huge mean for its spread).
        """
        v32 = _float_array("v", v, 2)
        x32 = _float_array("x", x, 2)
        scale = check_real(init_scale, "init_scale", 0.0, lo_open=True, what="a positive finite float")
        with np.errstate(over="ignore", under="ignore"):
            scale32 = np.float32(scale)
        if not (np.isfinite(scale32) and scale32 > 0):
            raise ValueError(
                f"init_scale: expected a positive float representable in float32 (<= {F32_MAX:.4g}, "
                f"not rounding to 0), got {init_scale}"
            )
        if x32.shape[1] != v32.shape[1]:
            raise ValueError(
                f"x: expected shape (N, {v32.shape[1]}) (one row per example, in = v.shape[1]), got {x32.shape}"
            )
        if x32.shape[0] == 0:
            raise ValueError(f"x: expected at least one example (row), got shape {x32.shape}")
        _check_finite("v", v32, v)
        _check_finite("x", x32, x)
        norms = _core.weightnorm_norms(v32, 0).astype(np.float64)
        t = _core.matmul(x32, v32, trans_b=True).astype(np.float64)  # (N, out)
        if not (np.isfinite(norms).all() and np.isfinite(t).all()):
            # large finite inputs overflowed the float32 product or norms: redo them in double
            # (only then, so ordinary inputs keep the float32 kernels' results)
            v64 = v32.astype(np.float64)
            norms = np.sqrt(np.einsum("ij,ij->i", v64, v64))
            t = x32.astype(np.float64) @ v64.T
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        t *= inv
        mu = t.mean(axis=0)
        sigma = np.sqrt(t.var(axis=0) + DATA_INIT_EPS)
        g = scale / sigma
        b = -mu * g
        with np.errstate(over="ignore", under="ignore"):
            g32, b32 = g.astype(np.float32), b.astype(np.float32)
        bad_g = np.flatnonzero(~np.isfinite(g32) | (g32 == 0))
        if bad_g.size:
            k = int(bad_g[0])
            raise ValueError(
                f"init_scale: expected a value for which g = init_scale / std(t) fits float32, got "
                f"{init_scale} (g = {g[k]:.4g} for output unit {k}, std(t) = {sigma[k]:.4g})"
            )
        bad_b = np.flatnonzero(~np.isfinite(b32))
        if bad_b.size:
            k = int(bad_b[0])
            if abs(mu[k]) / sigma[k] > F32_MAX:  # overflows with init_scale = 1 too: the data's fault
                raise ValueError(
                    f"x: expected inputs for which b = -mean(t) / std(t) * init_scale fits float32, got "
                    f"mean(t) = {mu[k]:.4g} and std(t) = {sigma[k]:.4g} for output unit {k}"
                )
            raise ValueError(
                f"init_scale: expected a value for which b = -mean(t) / std(t) * init_scale fits float32, "
                f"got {init_scale} (b = {b[k]:.4g} for output unit {k})"
            )
        return g32.reshape(-1, 1), b32
