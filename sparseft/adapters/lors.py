"""LoRS: sparsity-preserving low-rank adapters for a pruned linear layer.

W' = W + s·(B A) ⊙ M with A (r, in), B (out, r), s = alpha/r (alpha/√r with ``use_rslora``).
The forward keeps only x; W' is rebuilt tile by tile inside the C GEMM in forward and backward,
so no (out, in) buffer lives between them. Merging folds the adapter into the base and keeps
every pruned zero exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from sparseft import _core, formats
from sparseft.adapters import dora
from sparseft.adapters.inits import LORS_SCALES, gaussian_init, lora_init, lors_init
from sparseft.formats.dense import F32_MAX, BaseFormat, DenseBase, validate_base

__all__ = ["FORMATS", "GRADS", "INITS", "LoRSConfig", "LoRSLinear", "resolve_format"]

INITS = ("lora", "gaussian", "lors")
GRADS = ("exact", "lors")
_REALS = (int, float, np.integer, np.floating)  # real scalars, NumPy's included (bool excluded apart)
FORMATS = ("auto", "dense", "csr", "nm")


def resolve_format(mask: np.ndarray, format: str = "auto") -> Any:
    """The base-format class for a mask: ``DenseBase``, or ``CSRBase``/``NMBase`` of
    :mod:`sparseft.formats`.

    Parameters
    ----------
    mask : numpy.ndarray
        bool (out, in).
    format : {"auto", "dense", "csr", "nm"}
        ``"auto"`` asks ``sparseft.formats.choose_format`` (a measured crossover).

    Raises
    ------
    ValueError
        If ``format`` is unknown or does not fit the mask.
    """
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
    name = formats.choose_format(mask, format)
    return {"dense": DenseBase, "csr": formats.CSRBase, "nm": formats.NMBase}[name]


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: expected an int {rng}, got {v}")
    return v


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return bool(value)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def _check_f32(name: str, a: object, shape: tuple[int | None, ...]) -> np.ndarray:
    """A float32 ndarray whose shape matches ``shape`` (None = any length on that axis)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name}: expected dtype float32, got {a.dtype}")
    want = (
        "("
        + ", ".join("..." if s is None else str(s) for s in shape)
        + ("," if len(shape) == 1 else "")
        + ")"
    )
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape, strict=False)):
        raise ValueError(f"{name}: expected shape {want}, got {a.shape}")
    return a


@dataclasses.dataclass(frozen=True)
class LoRSConfig:
    """Adapter settings for every layer a :class:`~sparseft.Trainer` adapts (see :class:`LoRSLinear`).

    Parameters
    ----------
    r : int
        Rank (>= 1).
    alpha : float or None
        Scaling numerator; None means ``r`` (scale 1).
    init : {"lora", "gaussian", "lors"}
        Initializer of A (B starts at zero).
    grad : {"exact", "lors"}
        Adapter gradient mode.
    use_rslora : bool
        Scale alpha/√r instead of alpha/r.
    format : {"auto", "dense", "csr", "nm"}
        Base storage.
    seed : int
        Seed of the initializers.
    magnitude : bool
        Weight-normalized adapters (sparse DoRA), see :class:`LoRSLinear`.
    norm_grad : bool
        With ``magnitude``: differentiate through the row norms (False: DoRA's detached norm).
    """

    r: int = 8
    alpha: float | None = None
    init: str = "lora"
    grad: str = "exact"
    use_rslora: bool = False
    format: str = "auto"
    seed: int = 0
    magnitude: bool = False
    norm_grad: bool = True

    def __post_init__(self) -> None:
        _check_int("r", self.r, 1)
        if self.alpha is not None:
            if isinstance(self.alpha, (bool, np.bool_)) or not isinstance(self.alpha, _REALS):
                raise TypeError(f"alpha: expected a finite number or None, got {type(self.alpha).__name__}")
            if not math.isfinite(self.alpha):
                raise ValueError(f"alpha: expected a finite number or None, got {self.alpha!r}")
        _check_choice("init", self.init, INITS)
        _check_choice("grad", self.grad, GRADS)
        _check_choice("format", self.format, FORMATS)
        _check_int("seed", self.seed, 0)
        _check_bool("use_rslora", self.use_rslora)
        _check_bool("magnitude", self.magnitude)
        _check_bool("norm_grad", self.norm_grad)

    def make(self, W: np.ndarray, mask: np.ndarray | None = None, **kwargs: Any) -> LoRSLinear:
        """A :class:`LoRSLinear` on ``W`` with these settings (``kwargs`` go to the constructor)."""
        return LoRSLinear(
            W,
            mask=mask,
            r=self.r,
            alpha=self.alpha,
            init=self.init,
            grad=self.grad,
            seed=self.seed,
            use_rslora=self.use_rslora,
            format=self.format,
            **{"magnitude": self.magnitude, "norm_grad": self.norm_grad, **kwargs},
        )


class LoRSLinear:
    """A pruned linear layer y = x W'ᵀ + bias with a sparsity-preserving low-rank adapter.

    W' = W + s·(B A) ⊙ M. Only A, B (and the bias) are trained; W stays frozen. The mask is
    kept through training and merging: :meth:`merged_weight` is exactly 0 wherever M is False.

    Parameters
    ----------
    W : numpy.ndarray
        float32 (out, in) base weight. Entries off the mask must be exactly 0 (a ValueError
        otherwise; nothing is zeroed silently). Copied, never modified.
    mask : numpy.ndarray or None
        bool (out, in); None means ``W != 0``.
    r : int
        Adapter rank, ``1 <= r <= min(out, in)``.
    alpha : float or None
        Scale numerator, default ``r``; s = alpha/r (alpha/√r with ``use_rslora``).
    bias : numpy.ndarray or None
        float32 (out,), trained (gradient in ``grad_bias``).
    init : {"lora", "gaussian", "lors"}
        A's initializer (B = 0): "lora" Kaiming-uniform U(−1/√in, 1/√in) as PEFT; "gaussian"
        N(0, std 1/r) as PEFT; "lors" the top-r right singular vectors of G ⊙ M from
        ``init_grad`` or ``calibration`` (see :meth:`estimate_full_grad`), rows scaled by ``lors_scale``.
    grad : {"exact", "lors"}
        "exact": the true gradient of W' including the mask, dB = s·((gyᵀx) ⊙ M) Aᵀ and
        dA = s·Bᵀ((gyᵀx) ⊙ M), formed tile by tile where M is set (cost ≈ one more GEMM, scaled
        by the density for compressed bases). "lors": the paper's rearranged gradient
        dB = s·gyᵀ(x Aᵀ), dA = s·(gy B)ᵀ x, which ignores the mask on the adapter path (it is the
        gradient of the unmasked W + s·BA) and costs only O(N·r·(in + out)).
    seed : int
        Seed of the initializers.
    use_rslora : bool
        Rank-stabilized scaling s = alpha/√r.
    format : {"auto", "dense", "csr", "nm"}
        Base storage; "auto" picks from the mask (``sparseft.formats.choose_format`` where that
        module is present, else "dense").
    init_grad : numpy.ndarray or None
        float32 (out, in) full-weight gradient estimate G for ``init="lors"`` (masked here).
    calibration : iterable or None
        Instead of ``init_grad``: batches for :meth:`estimate_full_grad` (with ``loss_grad``).
    loss_grad : callable or None
        See :meth:`estimate_full_grad`.
    lors_scale : {"lora", "unit"} or float
        Row norm of A for ``init="lors"``: "lora" (1/√3, the expected row norm of the "lora"
        init), "unit" (orthonormal rows) or a positive float.
    magnitude : bool
        Weight-normalized adapters ("sparse DoRA"): the layer's weight becomes
        W'' = m ⊙ W'/‖W'‖_row with a trainable magnitude m (out,), initialized to the row norms of W
        so the output is unchanged at step 0 (B = 0). Still no out×in buffer: y = (x W'ᵀ) ⊙ m/n with
        the row norms n computed row by row in C (see :mod:`sparseft.adapters.dora`). A row with ‖W'‖ = 0
        gives output 0 and zero gradients through it (not NaN). PEFT's name for m is
        ``lora_magnitude_vector``.
    norm_grad : bool
        With ``magnitude``: True differentiates through ‖W'‖ (the exact gradient); False treats it
        as a constant (DoRA's detached norm, PEFT's choice), which drops an O(out·in·r) term.

    Attributes
    ----------
    A, B, bias : numpy.ndarray
        Parameters (float32; update them in place, e.g. ``layer.A -= lr * layer.grad_A``).
    grad_A, grad_B, grad_bias : numpy.ndarray
        Accumulated gradients (zeroed by :meth:`zero_grad`).
    magnitude, grad_magnitude : numpy.ndarray or None
        With ``magnitude=True``: m (float32 (out,), a parameter) and its accumulated gradient.
    scaling : float
        s.
    base : object
        The base-format object (``base.format`` is "dense", "csr" or "nm").

    Notes
    -----
    Extension points (for subclasses such as weight-normalized adapters): :meth:`_forward_2d`,
    :meth:`_backward_2d` (which calls :meth:`_backward_input_2d` and :meth:`_adapter_grads`) work
    on 2-D C-contiguous float32 arrays and are the only places the math happens; :meth:`parameters`/:meth:`gradients` list what an
    optimizer updates.
    """

    def __init__(
        self,
        W: np.ndarray,
        mask: np.ndarray | None = None,
        r: int = 8,
        alpha: float | None = None,
        bias: np.ndarray | None = None,
        init: str = "lora",
        grad: str = "exact",
        seed: int = 0,
        use_rslora: bool = False,
        format: str = "auto",
        init_grad: np.ndarray | None = None,
        calibration: Iterable[Any] | None = None,
        loss_grad: Callable[[np.ndarray], np.ndarray] | None = None,
        lors_scale: str | float = "lora",
        magnitude: bool = False,
        norm_grad: bool = True,
    ) -> None:
        _check_f32("W", W, (None, None))
        use_magnitude = _check_bool("magnitude", magnitude)
        self.norm_grad = _check_bool("norm_grad", norm_grad)
        out, in_ = W.shape
        if mask is None:
            mask = W != 0
        W, mask = validate_base(W, mask)
        self.r = _check_int("r", r, 1, min(out, in_))
        if alpha is None:
            alpha = float(self.r)
        if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, _REALS):
            raise TypeError(f"alpha: expected a finite number or None, got {type(alpha).__name__}")
        if not math.isfinite(alpha):
            raise ValueError(f"alpha: expected a finite number or None, got {alpha!r}")
        self.alpha = float(alpha)
        self.use_rslora = _check_bool("use_rslora", use_rslora)
        self.scaling = self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)
        if abs(self.scaling) > F32_MAX:
            raise ValueError(
                f"alpha: expected a scale alpha/{'sqrt(r)' if self.use_rslora else 'r'} that is finite in "
                f"float32 (<= {F32_MAX:.6g}), got alpha={alpha!r}, r={self.r}"
            )
        self.grad = _check_choice("grad", grad, GRADS)
        self.init = _check_choice("init", init, INITS)
        self.seed = _check_int("seed", seed, 0)
        if bias is not None:
            bias = _check_f32("bias", bias, (out,))
            if not np.isfinite(bias).all():
                raise ValueError("bias: contains NaN or infinity")
        if not isinstance(lors_scale, (str, *_REALS)) or isinstance(lors_scale, (bool, np.bool_)):
            raise TypeError(f"lors_scale: expected {LORS_SCALES} or a float, got {type(lors_scale).__name__}")
        self._format_request = format
        self.base: BaseFormat = resolve_format(mask, format).from_dense(W, mask)
        self.in_features, self.out_features = int(in_), int(out)
        self.bias = None if bias is None else bias.copy()
        self.A = np.zeros((self.r, in_), np.float32)
        self.B = np.zeros((out, self.r), np.float32)
        self.grad_A = np.zeros_like(self.A)
        self.grad_B = np.zeros_like(self.B)
        self.grad_bias = None if bias is None else np.zeros_like(self.bias)
        self._merged = False
        self._saved: tuple[np.ndarray, tuple[int, ...]] | None = None
        self.magnitude: np.ndarray | None = None  # set below: init_adapters may run a DoRA-less forward
        self.grad_magnitude: np.ndarray | None = None
        self._dora_saved: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # z, n, m/n
        self._premerge_base: BaseFormat | None = None
        self._merged_with: tuple[np.ndarray, np.ndarray] | None = None  # (A, B) folded in by merge()
        self.init_adapters(
            init, init_grad=init_grad, calibration=calibration, loss_grad=loss_grad, lors_scale=lors_scale
        )
        if use_magnitude:
            self.magnitude = dora.magnitude_init(self.base)
            self.grad_magnitude = np.zeros_like(self.magnitude)

    # ---- adapters and their init ----

    def init_adapters(
        self,
        init: str = "lora",
        init_grad: np.ndarray | None = None,
        calibration: Iterable[Any] | None = None,
        loss_grad: Callable[[np.ndarray], np.ndarray] | None = None,
        lors_scale: str | float = "lora",
        seed: int | None = None,
    ) -> None:
        """(Re)initialize A by ``init`` and set B = 0 (see the class parameters).

        Raises
        ------
        ValueError
            If ``init="lors"`` gets neither ``init_grad`` nor ``calibration``, or G ⊙ M is all zero.
        RuntimeError
            If the layer is merged (unmerge first).
        """
        _check_choice("init", init, INITS)
        if self._merged:
            raise RuntimeError("init_adapters: the layer is merged; call unmerge() first")
        rng = np.random.default_rng(self.seed if seed is None else _check_int("seed", seed, 0))
        if init == "lora":
            A = lora_init(rng, self.r, self.in_features)
        elif init == "gaussian":
            A = gaussian_init(rng, self.r, self.in_features)
        else:
            if init_grad is None and calibration is None:
                raise ValueError(
                    "init_grad: init='lors' needs the full-weight gradient estimate: pass init_grad=G "
                    "(out, in) or calibration=batches (see LoRSLinear.estimate_full_grad)"
                )
            if init_grad is not None:
                G = _check_f32("init_grad", init_grad, (self.out_features, self.in_features))
                if not np.isfinite(G).all():
                    raise ValueError("init_grad: contains NaN or infinity")
                Gm = np.where(self.base.mask_dense(), G, np.float32(0))
            else:
                assert calibration is not None
                if isinstance(calibration, (str, bytes, np.ndarray)) or not isinstance(calibration, Iterable):
                    raise TypeError(
                        f"calibration: expected an iterable of batches (see estimate_full_grad), "
                        f"got {type(calibration).__name__}"
                    )
                Gm = self.estimate_full_grad(calibration, loss_grad=loss_grad)
            A = lors_init(Gm, self.r, rng, lors_scale)
        self.A = A
        self.B = np.zeros((self.out_features, self.r), np.float32)
        self.init = init

    def estimate_full_grad(
        self, batches: Iterable[Any], loss_grad: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> np.ndarray:
        """Masked gradient estimate G ⊙ M (out, in) of the full weight over calibration batches.

        G = Σ_batches gyᵀ x, the gradient of the loss with respect to the whole weight matrix at
        the current layer. This is a one-time init: G ⊙ M is an (out, in) float32 array, the one
        out×in buffer sparseft makes besides the base itself (each batch's gyᵀx is one GEMM).

        Parameters
        ----------
        batches : iterable
            Without ``loss_grad``: pairs ``(x, gy)``, x float32 (..., in) and gy float32 (..., out)
            the loss gradient with respect to this layer's output. With ``loss_grad``: arrays x.
        loss_grad : callable or None
            ``loss_grad(y) -> gy`` for y = this layer's output on x (float32, same shape as y).

        Returns
        -------
        numpy.ndarray
            float32 (out, in), exactly 0 off the mask.

        Raises
        ------
        TypeError, ValueError
            On batches of the wrong type, dtype or shape (naming ``x`` / ``gy``), NaN/inf in x or gy
            (or in what ``loss_grad`` returns), or no batches.
        """
        if isinstance(batches, (str, bytes)) or not isinstance(batches, Iterable):
            raise TypeError(f"batches: expected an iterable of batches, got {type(batches).__name__}")
        if loss_grad is not None and not callable(loss_grad):
            raise TypeError(f"loss_grad: expected a callable or None, got {type(loss_grad).__name__}")
        G = np.zeros((self.out_features, self.in_features), np.float32)
        count = 0
        for item in batches:
            if loss_grad is None:
                if not isinstance(item, (tuple, list)) or len(item) != 2:
                    raise TypeError(
                        f"batches: expected (x, gy) pairs without loss_grad, got {type(item).__name__}"
                    )
                x, gy = item
                x2, lead = self._as_rows("x", x, self.in_features)
            else:
                x2, lead = self._as_rows("x", item, self.in_features)
                y = self._forward_2d(x2).reshape(*lead, self.out_features)
                gy = loss_grad(y)
            _check_f32("gy", gy, (*lead, self.out_features))
            gy2 = np.ascontiguousarray(gy.reshape(-1, self.out_features))
            if not np.isfinite(x2).all():
                raise ValueError(f"x: contains NaN or infinity (batch {count})")
            if not np.isfinite(gy2).all():
                src = "loss_grad: returned" if loss_grad is not None else "gy: contains"
                raise ValueError(f"{src} NaN or infinity (batch {count})")
            G += _core.matmul(gy2, x2, trans_a=True)
            count += 1
        if count == 0:
            raise ValueError("batches: expected at least one calibration batch, got none")
        if not np.isfinite(G).all():
            raise ValueError("batches: the summed gradient gy^T x overflows float32 (rescale the calibration data)")
        G[~self.base.mask_dense()] = 0.0
        return G

    # ---- forward / backward ----

    def _as_rows(self, name: str, a: object, features: int) -> tuple[np.ndarray, tuple[int, ...]]:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
        if a.dtype != np.float32:
            raise TypeError(f"{name}: expected dtype float32, got {a.dtype}")
        if a.ndim < 1 or a.shape[-1] != features:
            raise ValueError(f"{name}: expected shape (..., {features}), got {a.shape}")
        return np.ascontiguousarray(a.reshape(-1, features)), tuple(a.shape[:-1])

    def _check_magnitude(self) -> None:
        # A and B are checked in C at every call; m is a parameter the user updates too
        if self.magnitude is not None and not np.isfinite(self.magnitude).all():
            raise ValueError("magnitude: contains NaN or infinity")

    def _dora_active(self) -> bool:
        return self.magnitude is not None and not self._merged

    def _forward_2d(self, x2: np.ndarray) -> np.ndarray:
        """y (N, out) for x (N, in): the base with the adapter recomputed (override point)."""
        s = 0.0 if self._merged else self.scaling
        y = self.base.forward(x2, self.A, self.B, s)
        if self._dora_active():
            assert self.magnitude is not None
            self._check_magnitude()
            # weight-normalized: y = (x W'^T) * m / ||W'||_row, z and the norms kept for backward
            n = dora.row_norms(self.base, self.A, self.B, s)
            c = dora.forward_scales(self.magnitude, n)
            self._dora_saved = (y, n, c)
            y = y * c
        if self.bias is not None:
            y += self.bias
        return y

    def _backward_input_2d(self, gy2: np.ndarray) -> np.ndarray:
        """gx (N, in) = gy W' (override point)."""
        s = 0.0 if self._merged else self.scaling
        return self.base.backward_input(gy2, self.A, self.B, s)

    def _adapter_grads(self, gy2: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dA, dB) for one backward in the layer's grad mode (override point)."""
        if self.grad == "exact":
            return self.base.masked_grad(gy2, x2, self.A, self.B, self.scaling)
        # the paper's rearrangement: thin products only, nothing out x in (x, gy checked already)
        return _core.lors_backward_lors(gy2, x2, self.A, self.B, self.scaling, check_finite=False)

    def _backward_2d(self, gy2: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(gx, dA, dB) for one backward (override point). Uses the base's fused ``backward``
        (one pass over the nonzeros) for exact gradients when the format has one; otherwise
        :meth:`_backward_input_2d` (which checks gy for NaN/inf) then :meth:`_adapter_grads`."""
        fused = getattr(self.base, "backward", None)
        if self.grad == "exact" and not self._merged and callable(fused):
            gx2, dA, dB = fused(gy2, x2, self.A, self.B, self.scaling)
            return gx2, dA, dB
        gx2 = self._backward_input_2d(gy2)
        dA, dB = self._adapter_grads(gy2, x2)
        return gx2, dA, dB

    def forward(self, x: np.ndarray, save: bool = True) -> np.ndarray:
        """y = x W'ᵀ + bias for x float32 (..., in); keeps a reference to x (only) for backward.

        Parameters
        ----------
        x : numpy.ndarray
            float32 (..., in).
        save : bool
            Keep x (and DoRA's row norms) for the next :meth:`backward` (default). ``False``
            keeps nothing, for callers that own their activations and pass x to
            ``backward(gy, x=x)`` themselves (the Trainer's step executor frees and recomputes
            activations, so the layer must not hold one alive).

        Returns
        -------
        numpy.ndarray
            float32 (..., out).

        Raises
        ------
        TypeError
            If x is not a float32 ndarray.
        ValueError
            If x's last axis is not ``in`` or x holds NaN/inf.
        """
        x2, lead = self._as_rows("x", x, self.in_features)
        save = _check_bool("save", save)
        pending = self._dora_saved
        y2 = self._forward_2d(x2)
        if save:
            self._saved = (x2, lead)
        else:
            self._dora_saved = pending  # a pending forward stays as it was
        return y2.reshape(*lead, self.out_features)

    __call__ = forward

    def backward(self, gy: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
        """Gradient with respect to x; ACCUMULATES ``grad_A``, ``grad_B`` (and ``grad_bias``).

        One backward per forward (the saved x is released afterwards), or, with ``x`` given,
        a backward at that input with nothing pending needed.

        Parameters
        ----------
        gy : numpy.ndarray
            float32 (..., out), the same leading shape as the last forward's x.
        x : numpy.ndarray, optional
            float32 (..., in): the forward's input, passed by a caller that kept (or recomputed)
            it itself (see ``forward(x, save=False)``). A pending forward is then left pending.
            With a DoRA magnitude the forward's row norms are recomputed from x.

        Returns
        -------
        numpy.ndarray
            gx float32 (..., in).

        Raises
        ------
        RuntimeError
            If no forward is pending.
        TypeError, ValueError
            On a wrong dtype/shape or NaN/inf in gy (the gradients are then left unchanged).
        """
        explicit = x is not None
        if explicit:
            x2, lead = self._as_rows("x", x, self.in_features)
            if not np.isfinite(x2).all():
                raise ValueError("x: contains NaN or infinity")
        elif self._saved is None:
            raise RuntimeError("backward: call forward(x) first (each forward allows one backward)")
        else:
            x2, lead = self._saved
        _check_f32("gy", gy, (*lead, self.out_features))
        gy2 = np.ascontiguousarray(gy.reshape(-1, self.out_features))
        if explicit and self._dora_active():
            pending = self._dora_saved
            self._forward_2d(x2)  # recompute z and the row norms at this x
            dora_saved, self._dora_saved = self._dora_saved, pending
        else:
            dora_saved = self._dora_saved if self._dora_active() else None
        dm = None
        if dora_saved is None:
            gx2, dA, dB = self._backward_2d(gy2, x2)  # checks gy for NaN/inf in C
        else:
            gz2 = gy2 * dora_saved[2]  # DoRA: through y = z * m/n
            gx2, dA, dB = self._backward_2d(gz2, x2)
            dm, dA, dB = self._magnitude_grads(gy2, dora_saved, dA, dB)
        # all computed: only now touch the state
        self.grad_A += dA
        self.grad_B += dB
        if dm is not None and self.grad_magnitude is not None:
            self.grad_magnitude += dm
        if self.grad_bias is not None:
            self.grad_bias += gy2.sum(axis=0, dtype=np.float32)
        if not explicit:
            self._saved = None
            self._dora_saved = None
        return gx2.reshape(*lead, self.in_features)

    def _magnitude_grads(
        self,
        gy2: np.ndarray,
        saved: tuple[np.ndarray, np.ndarray, np.ndarray],
        dA: np.ndarray,
        dB: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """DoRA: grad m, and dA, dB plus the gradient through the row norms (when ``norm_grad``)."""
        assert self.magnitude is not None
        z, n, _ = saved
        dm, grad_n = dora.backward_scales(gy2, z, self.magnitude, n, self.norm_grad)
        if grad_n is not None:
            cA, cB = dora.norm_grad_adapters(self.base, grad_n, n, self.A, self.B, self.scaling)
            dA, dB = dA + cA, dB + cB
        return dm, dA, dB

    def zero_grad(self) -> None:
        """Set ``grad_A``, ``grad_B`` (and ``grad_bias``) to zero."""
        self.grad_A.fill(0.0)
        self.grad_B.fill(0.0)
        if self.grad_bias is not None:
            self.grad_bias.fill(0.0)
        if self.grad_magnitude is not None:
            self.grad_magnitude.fill(0.0)

    def parameters(self) -> dict[str, np.ndarray]:
        """Trainable arrays by name (``A``, ``B``, and ``bias``/``magnitude`` when present); the live arrays."""
        p = {"A": self.A, "B": self.B}
        if self.bias is not None:
            p["bias"] = self.bias
        if self.magnitude is not None:
            p["magnitude"] = self.magnitude
        return p

    def gradients(self) -> dict[str, np.ndarray]:
        """Accumulated gradients under the names of :meth:`parameters`; the live arrays."""
        g = {"A": self.grad_A, "B": self.grad_B}
        if self.grad_bias is not None:
            g["bias"] = self.grad_bias
        if self.grad_magnitude is not None:
            g["magnitude"] = self.grad_magnitude
        return g

    # ---- merge ----

    @property
    def merged(self) -> bool:
        """Whether the adapter is folded into the base (see :meth:`merge`)."""
        return self._merged

    @property
    def mask(self) -> np.ndarray:
        """The bool (out, in) mask (a new array)."""
        return self.base.mask_dense()

    def merged_weight(self) -> np.ndarray:
        """W' = W + s·(B A) ⊙ M as a new float32 (out, in) array, exactly 0 wherever M is False
        (with ``magnitude``: W'' = m ⊙ W'/‖W'‖_row, also exactly 0 off the mask)."""
        if self._merged:
            return self.base.to_dense()
        if self.magnitude is not None:
            return dora.merged_dense(self.base, self.A, self.B, self.scaling, self.magnitude)
        return self.base.merged(self.A, self.B, self.scaling).to_dense()

    def merge(self) -> None:
        """Fold the adapter into the base (values at the mask only; zeros stay exact).

        Forward and backward then use the merged base (no recompute); A and B are kept, so
        gradients still flow to them, but changing them has no effect until :meth:`unmerge`,
        which subtracts the adapter as it was folded in (a copy of A and B taken here), so the
        base comes back as the original even when A and B were trained while merged.
        A no-op when already merged. With ``magnitude`` the merged base holds W'' (built densely
        once, then stored in the layer's format) and the unmerged base is kept for :meth:`unmerge`;
        while merged the magnitude gets no gradient.
        """
        if not self._merged:
            # build the merged base first: a failure (NaN in A, B or m) leaves the layer as it was
            if self.magnitude is not None:
                self._check_magnitude()
                fmt: Any = type(self.base)  # every base format has from_dense (see formats_dense)
                merged = fmt.from_dense(self.merged_weight(), self.base.mask_dense())
                self._premerge_base = self.base
            else:
                merged = self.base.merged(self.A, self.B, self.scaling)
                # the adapter as folded in: unmerge() subtracts this one, not A and B as they
                # are after training while merged (the base then stays the original)
                self._merged_with = (self.A.copy(), self.B.copy())
            self.base = merged
            self._merged = True

    def unmerge(self) -> None:
        """Undo :meth:`merge`: W' − s·(B₀ A₀) at the mask, with A₀ and B₀ as they were merged in
        (equal to W up to float32 rounding, zeros exact); with ``magnitude``, the kept unmerged base,
        bit for bit. A no-op when not merged."""
        if self._merged:
            self.base = self._unmerged_base()
            self._premerge_base = None
            self._merged_with = None
            self._merged = False

    def _unmerged_base(self) -> BaseFormat:
        """The base without the adapter folded in (the current one when not merged)."""
        if not self._merged:
            return self.base
        if self._premerge_base is not None:
            return self._premerge_base
        assert self._merged_with is not None
        return self.base.unmerged(*self._merged_with, self.scaling)

    # ---- state ----

    @property
    def nbytes(self) -> int:
        """Bytes of the stored base (values + mask/indices) plus the parameters (A, B, bias)."""
        return int(self.base.nbytes + sum(p.nbytes for p in self.parameters().values()))

    def state_dict(self) -> dict[str, np.ndarray]:
        """PEFT-named copies: ``lora_A.weight`` (r, in), ``lora_B.weight`` (out, r),
        ``base_layer.weight`` (out, in), ``base_layer.weight_mask`` (bool, torch.nn.utils.prune's
        name), ``base_layer.bias`` when present and ``lora_magnitude_vector`` (out,) with
        ``magnitude``. A merged layer reports its unmerged base."""
        base = self._unmerged_base()
        sd = {
            "lora_A.weight": self.A.copy(),
            "lora_B.weight": self.B.copy(),
            "base_layer.weight": base.to_dense(),
            "base_layer.weight_mask": base.mask_dense(),
        }
        if self.bias is not None:
            sd["base_layer.bias"] = self.bias.copy()
        if self.magnitude is not None:
            sd["lora_magnitude_vector"] = self.magnitude.copy()
        return sd

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Load arrays named as in :meth:`state_dict` (copies; all checked before anything changes).

        ``lora_A.weight`` and ``lora_B.weight`` are required; ``base_layer.weight`` (with
        ``base_layer.weight_mask``, else the current mask), ``base_layer.bias`` and, for a layer
        with ``magnitude``, ``lora_magnitude_vector`` are optional.
        The layer ends unmerged, with its pending forward dropped.

        Raises
        ------
        ValueError
            On missing keys, unknown keys (``strict``), a wrong shape, NaN/inf, or a base weight
            nonzero off its mask; TypeError on a wrong dtype.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state: expected a dict, got {type(state).__name__}")
        known = {
            "lora_A.weight",
            "lora_B.weight",
            "base_layer.weight",
            "base_layer.weight_mask",
            "base_layer.bias",
        }
        if self.magnitude is not None:
            known.add("lora_magnitude_vector")
        missing = sorted({"lora_A.weight", "lora_B.weight"} - set(state))
        if missing:
            raise ValueError(f"state: missing keys {missing}")
        unknown = sorted(set(state) - known)
        if strict and unknown:
            raise ValueError(f"state: unexpected keys {unknown}")
        out, in_ = self.out_features, self.in_features
        A = _check_f32("lora_A.weight", state["lora_A.weight"], (self.r, in_))
        B = _check_f32("lora_B.weight", state["lora_B.weight"], (out, self.r))
        for name, a in (("lora_A.weight", A), ("lora_B.weight", B)):
            if not np.isfinite(a).all():
                raise ValueError(f"{name}: contains NaN or infinity")
        base = self._unmerged_base()
        if "base_layer.weight" in state:
            W = _check_f32("base_layer.weight", state["base_layer.weight"], (out, in_))
            mask = state.get("base_layer.weight_mask", base.mask_dense())
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
                raise TypeError(
                    f"base_layer.weight_mask: expected a bool numpy.ndarray, got "
                    f"{getattr(mask, 'dtype', type(mask).__name__)}"
                )
            if mask.shape != (out, in_):
                raise ValueError(f"base_layer.weight_mask: expected shape {(out, in_)}, got {mask.shape}")
            W, mask = validate_base(W, mask, "base_layer.weight", "base_layer.weight_mask")
            base = resolve_format(mask, self._format_request).from_dense(W, mask)
        elif "base_layer.weight_mask" in state:
            raise ValueError("base_layer.weight_mask: given without base_layer.weight (a mask needs its weight)")
        bias = self.bias
        if "base_layer.bias" in state:
            bias = _check_f32("base_layer.bias", state["base_layer.bias"], (out,)).copy()
            if not np.isfinite(bias).all():
                raise ValueError("base_layer.bias: contains NaN or infinity")
        magnitude = self.magnitude
        if magnitude is not None and "lora_magnitude_vector" in state:
            magnitude = _check_f32("lora_magnitude_vector", state["lora_magnitude_vector"], (out,)).copy()
            if not np.isfinite(magnitude).all():
                raise ValueError("lora_magnitude_vector: contains NaN or infinity")
        # everything checked: commit
        self.base = base
        self._merged = False
        self.A, self.B = A.copy(), B.copy()
        if bias is not None and self.bias is None:
            self.grad_bias = np.zeros_like(bias)
        self.bias = bias
        self._saved = None
        self.magnitude = magnitude
        self._premerge_base = None
        self._merged_with = None
        self._dora_saved = None

    def __repr__(self) -> str:
        return (
            f"LoRSLinear(in={self.in_features}, out={self.out_features}, r={self.r}, scaling={self.scaling:g}, "
            f"format={self.base.format!r}, grad={self.grad!r}, nnz={self.base.nnz}, merged={self._merged}"
            + (f", magnitude=True, norm_grad={self.norm_grad})" if self.magnitude is not None else ")")
        )
