"""LoRS: sparsity-preserving low-rank adapters for a pruned linear layer.

W' = W + s·(B A) ⊙ M with A (r, in), B (out, r), s = alpha/r (alpha/√r with ``use_rslora``).
The forward keeps only x; W' is rebuilt tile by tile inside the C GEMM in forward and backward,
so no (out, in) buffer lives between them. Merging folds the adapter into the base and keeps
every pruned zero exactly. The weight-normalized variant is :mod:`sparseft.adapters.dora`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from sparseft import _core
from sparseft._validation import (
    F32_MAX,
    check_bool,
    check_choice,
    check_finite,
    check_int,
    check_real,
    check_shaped,
)
from sparseft.adapters.inits import LORS_SCALES, gaussian_init, lora_init, lors_init
from sparseft.formats import FORMATS, BaseFormat, format_class, validate_base

__all__ = ["FORMATS", "GRADS", "INITS", "LoRSConfig", "LoRSLinear", "resolve_format"]

INITS = ("lora", "gaussian", "lors")
GRADS = ("exact", "lors")
_ALPHA = "a finite number or None"
#: The base-format class for a mask; this module's public name for :func:`sparseft.formats.format_class`.
resolve_format = format_class
_REALS = (int, float, np.integer, np.floating)  # real scalars, NumPy's included (bool excluded apart)


def _magnitude_requested(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """The ``magnitude`` argument of a LoRSLinear(...) call (the 15th positional one), checked."""
    return check_bool(kwargs.get("magnitude", args[14] if len(args) > 14 else False), "magnitude")


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
    target_modules : tuple of str or None
        Which linears of a model get adapters (matched against the last component of a linear's
        name, e.g. ``"c_attn"``, ``"q_proj"``, or its whole name); None means every block linear.
        Used by ``model.add_adapters`` and the Trainer; :meth:`make` ignores it.
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
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_int(self.r, "r", 1)
        if self.alpha is not None:
            check_real(self.alpha, "alpha", what=_ALPHA)
        check_choice(self.init, "init", INITS)
        check_choice(self.grad, "grad", GRADS)
        check_choice(self.format, "format", FORMATS)
        check_int(self.seed, "seed", 0)
        check_bool(self.use_rslora, "use_rslora")
        check_bool(self.magnitude, "magnitude")
        check_bool(self.norm_grad, "norm_grad")
        if self.target_modules is not None:
            tm = self.target_modules
            if isinstance(tm, str) or not all(isinstance(t, str) for t in tm):
                raise TypeError(f"target_modules: expected a sequence of str or None, got {tm!r}")
            if not tm:
                raise ValueError("target_modules: expected at least one name, got an empty sequence")
            object.__setattr__(self, "target_modules", tuple(tm))

    def make(self, W: np.ndarray, mask: np.ndarray | None = None, **kwargs: Any) -> LoRSLinear:
        """A :class:`LoRSLinear` on ``W`` with these settings (``kwargs`` go to the constructor);
        a :class:`~sparseft.adapters.DoRALinear` when ``magnitude`` is set."""
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
        True constructs the weight-normalized variant :class:`~sparseft.adapters.DoRALinear`
        ("sparse DoRA", W'' = m ⊙ W'/‖W'‖_row with a trainable magnitude m) instead.
    norm_grad : bool
        :class:`~sparseft.adapters.DoRALinear`'s option (whether the gradient flows through the
        row norms); checked and ignored by a plain LoRS layer.

    Attributes
    ----------
    A, B, bias : numpy.ndarray
        Parameters (float32; update them in place, e.g. ``layer.A -= lr * layer.grad_A``).
    grad_A, grad_B, grad_bias : numpy.ndarray
        Accumulated gradients (zeroed by :meth:`zero_grad`).
    magnitude, grad_magnitude : None
        None here; the magnitude m and its gradient of :class:`~sparseft.adapters.DoRALinear`.
    scaling : float
        s.
    base : object
        The base-format object (``base.format`` is "dense", "csr" or "nm").

    Notes
    -----
    Extension points for variants (see :class:`~sparseft.adapters.DoRALinear`):
    :meth:`_init_extra_parameters` (parameters that depend on the base only), :meth:`_forward_2d`
    and :meth:`_backward_2d` (the math, on 2-D C-contiguous float32 arrays, with the variant's
    saved state passed from one to the other), :meth:`_merged_base`/:meth:`_unmerged_base`,
    :meth:`parameters`/:meth:`gradients` (what an optimizer updates) and the state-dict hooks
    :meth:`_state_keys`, :meth:`_checked_state` and :meth:`_commit_state`.
    """

    magnitude: np.ndarray | None = None
    grad_magnitude: np.ndarray | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> LoRSLinear:
        """``LoRSLinear(..., magnitude=True)`` builds the DoRA variant."""
        if cls is LoRSLinear and _magnitude_requested(args, kwargs):
            from sparseft.adapters.dora import DoRALinear

            cls = DoRALinear
        return super().__new__(cls)

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
        check_shaped(W, "W", np.float32, (None, None))
        check_bool(magnitude, "magnitude")
        check_bool(norm_grad, "norm_grad")
        out, in_ = W.shape
        if mask is None:
            mask = W != 0
        W, mask = validate_base(W, mask)
        self.r = check_int(r, "r", 1, min(out, in_))
        self.alpha = float(self.r) if alpha is None else check_real(alpha, "alpha", what=_ALPHA)
        self.use_rslora = check_bool(use_rslora, "use_rslora")
        self.scaling = self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)
        if abs(self.scaling) > F32_MAX:
            raise ValueError(
                f"alpha: expected a scale alpha/{'sqrt(r)' if self.use_rslora else 'r'} that is finite in "
                f"float32 (<= {F32_MAX:.6g}), got alpha={alpha!r}, r={self.r}"
            )
        self.grad = check_choice(grad, "grad", GRADS)
        self.init = check_choice(init, "init", INITS)
        self.seed = check_int(seed, "seed", 0)
        if bias is not None:
            check_finite(check_shaped(bias, "bias", np.float32, (out,)), "bias")
        if not isinstance(lors_scale, (str, *_REALS)) or isinstance(lors_scale, (bool, np.bool_)):
            raise TypeError(f"lors_scale: expected {LORS_SCALES} or a float, got {type(lors_scale).__name__}")
        self._format_request = check_choice(format, "format", FORMATS)
        self.base: BaseFormat = format_class(mask, format).from_dense(W, mask)
        self.in_features, self.out_features = int(in_), int(out)
        self.bias = None if bias is None else bias.copy()
        self.A = np.zeros((self.r, in_), np.float32)
        self.B = np.zeros((out, self.r), np.float32)
        self.grad_A = np.zeros_like(self.A)
        self.grad_B = np.zeros_like(self.B)
        self.grad_bias = None if bias is None else np.zeros_like(self.bias)
        self._merged = False
        self._saved: tuple[np.ndarray, tuple[int, ...], Any] | None = None  # x, its leading shape, variant state
        self._merged_with: tuple[np.ndarray, np.ndarray] | None = None  # (A, B) folded in by merge()
        self._init_extra_parameters()
        self.init_adapters(
            init, init_grad=init_grad, calibration=calibration, loss_grad=loss_grad, lors_scale=lors_scale
        )

    def _init_extra_parameters(self) -> None:
        """A variant's parameters that depend on the base only (called once the base is built,
        before A is initialized). None for the plain layer."""

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
        check_choice(init, "init", INITS)
        if self._merged:
            raise RuntimeError("init_adapters: the layer is merged; call unmerge() first")
        rng = np.random.default_rng(self.seed if seed is None else check_int(seed, "seed", 0))
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
                G = check_shaped(init_grad, "init_grad", np.float32, (self.out_features, self.in_features))
                check_finite(G, "init_grad")
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
                y = self._output(x2)[0].reshape(*lead, self.out_features)
                gy = loss_grad(y)
            check_shaped(gy, "gy", np.float32, (*lead, self.out_features))
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

    def _forward_2d(self, x2: np.ndarray) -> tuple[np.ndarray, Any]:
        """(y (N, out) without the bias, the state the backward needs besides x) for x (N, in)
        (override point). The plain layer needs nothing besides x: its state is None."""
        s = 0.0 if self._merged else self.scaling
        return self.base.forward(x2, self.A, self.B, s), None

    def _output(self, x2: np.ndarray) -> tuple[np.ndarray, Any]:
        """(y (N, out) with the bias, the variant's state) for x (N, in)."""
        y, state = self._forward_2d(x2)
        if self.bias is not None:
            y += self.bias
        return y, state

    def _state_at(self, x2: np.ndarray) -> Any:
        """The variant's state of a forward at x (for ``backward(gy, x=x)``); None for the plain layer."""
        return None

    def _backward_2d(self, gy2: np.ndarray, x2: np.ndarray, state: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(gx (N, in), the gradients of the parameters other than the bias, by the names of
        :meth:`parameters`) for one backward (override point). Exact gradients of an unmerged layer
        come from the base's ``backward`` (one fused pass over the nonzeros for CSR and N:M); a
        merged layer's input gradient uses the merged base (scale 0) and its adapter gradients the
        layer's scale."""
        if self.grad == "exact" and not self._merged:
            gx2, dA, dB = self.base.backward(gy2, x2, self.A, self.B, self.scaling)
            return gx2, {"A": dA, "B": dB}
        s = 0.0 if self._merged else self.scaling
        gx2 = self.base.backward_input(gy2, self.A, self.B, s)  # checks gy for NaN/inf in C
        if self.grad == "exact":
            dA, dB = self.base.masked_grad(gy2, x2, self.A, self.B, self.scaling)
        else:
            # the paper's rearrangement: thin products only, nothing out x in (x, gy checked already)
            dA, dB = _core.lors_backward_lors(gy2, x2, self.A, self.B, self.scaling, check_finite=False)
        return gx2, {"A": dA, "B": dB}

    def forward(self, x: np.ndarray, save: bool = True) -> np.ndarray:
        """y = x W'ᵀ + bias for x float32 (..., in); keeps a reference to x (only) for backward.

        Parameters
        ----------
        x : numpy.ndarray
            float32 (..., in).
        save : bool
            Keep x (and a variant's state, e.g. DoRA's row norms) for the next :meth:`backward`
            (default). ``False`` keeps nothing and leaves a pending forward pending, for callers
            that own their activations and pass x to ``backward(gy, x=x)`` themselves (the
            Trainer's step executor frees and recomputes activations, so the layer must not hold
            one alive).

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
        save = check_bool(save, "save")
        y2, state = self._output(x2)
        if save:
            self._saved = (x2, lead, state)
        return y2.reshape(*lead, self.out_features)

    __call__ = forward

    def backward(self, gy: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
        """Gradient with respect to x; ACCUMULATES the parameters' gradients (:meth:`gradients`).

        One backward per forward (the saved x is released afterwards), or, with ``x`` given,
        a backward at that input with nothing pending needed.

        Parameters
        ----------
        gy : numpy.ndarray
            float32 (..., out), the same leading shape as the last forward's x.
        x : numpy.ndarray, optional
            float32 (..., in): the forward's input, passed by a caller that kept (or recomputed)
            it itself (see ``forward(x, save=False)``). A pending forward is then left pending.
            A variant's forward state (DoRA's row norms) is recomputed from x.

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
            check_finite(x2, "x")
        elif self._saved is None:
            raise RuntimeError("backward: call forward(x) first (each forward allows one backward)")
        else:
            x2, lead, state = self._saved
        check_shaped(gy, "gy", np.float32, (*lead, self.out_features))
        gy2 = np.ascontiguousarray(gy.reshape(-1, self.out_features))
        if explicit:
            state = self._state_at(x2)
        gx2, grads = self._backward_2d(gy2, x2, state)
        # all computed: only now touch the state
        live = self.gradients()
        for name, g in grads.items():
            live[name] += g
        if self.grad_bias is not None:
            self.grad_bias += gy2.sum(axis=0, dtype=np.float32)
        if not explicit:
            self._saved = None
        return gx2.reshape(*lead, self.in_features)

    def zero_grad(self) -> None:
        """Set every accumulated gradient (:meth:`gradients`) to zero."""
        for g in self.gradients().values():
            g.fill(0.0)

    def parameters(self) -> dict[str, np.ndarray]:
        """Trainable arrays by name (``A``, ``B``, and ``bias`` when present); the live arrays."""
        p = {"A": self.A, "B": self.B}
        if self.bias is not None:
            p["bias"] = self.bias
        return p

    def gradients(self) -> dict[str, np.ndarray]:
        """Accumulated gradients under the names of :meth:`parameters`; the live arrays."""
        g = {"A": self.grad_A, "B": self.grad_B}
        if self.grad_bias is not None:
            g["bias"] = self.grad_bias
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
        """W' = W + s·(B A) ⊙ M as a new float32 (out, in) array, exactly 0 wherever M is False."""
        if self._merged:
            return self.base.to_dense()
        return self.base.merged(self.A, self.B, self.scaling).to_dense()

    def merge(self) -> None:
        """Fold the adapter into the base (values at the mask only; zeros stay exact).

        Forward and backward then use the merged base (no recompute); A and B are kept, so
        gradients still flow to them, but changing them has no effect until :meth:`unmerge`,
        which subtracts the adapter as it was folded in (a copy of A and B taken here), so the
        base comes back as the original even when A and B were trained while merged.
        A no-op when already merged; a failure (NaN in a parameter) leaves the layer as it was.
        """
        if not self._merged:
            self.base = self._merged_base()
            self._merged = True

    def _merged_base(self) -> BaseFormat:
        """The base with the adapter folded in, and what :meth:`_unmerged_base` needs kept (override point)."""
        merged = self.base.merged(self.A, self.B, self.scaling)
        # the adapter as folded in: unmerge() subtracts this one, not A and B as they are after
        # training while merged (the base then stays the original)
        self._merged_with = (self.A.copy(), self.B.copy())
        return merged

    def unmerge(self) -> None:
        """Undo :meth:`merge`: W' − s·(B₀ A₀) at the mask, with A₀ and B₀ as they were merged in
        (equal to W up to float32 rounding, zeros exact). A no-op when not merged."""
        if self._merged:
            self.base = self._unmerged_base()
            self._merged_with = None
            self._merged = False

    def _unmerged_base(self) -> BaseFormat:
        """The base without the adapter folded in (the current one when not merged; override point)."""
        if not self._merged:
            return self.base
        assert self._merged_with is not None
        return self.base.unmerged(*self._merged_with, self.scaling)

    # ---- state ----

    @property
    def nbytes(self) -> int:
        """Bytes of the stored base (values + mask/indices) plus the parameters."""
        return int(self.base.nbytes + sum(p.nbytes for p in self.parameters().values()))

    def state_dict(self) -> dict[str, np.ndarray]:
        """PEFT-named copies: ``lora_A.weight`` (r, in), ``lora_B.weight`` (out, r),
        ``base_layer.weight`` (out, in), ``base_layer.weight_mask`` (bool, torch.nn.utils.prune's
        name) and ``base_layer.bias`` when present. A merged layer reports its unmerged base."""
        base = self._unmerged_base()
        sd = {
            "lora_A.weight": self.A.copy(),
            "lora_B.weight": self.B.copy(),
            "base_layer.weight": base.to_dense(),
            "base_layer.weight_mask": base.mask_dense(),
        }
        if self.bias is not None:
            sd["base_layer.bias"] = self.bias.copy()
        return sd

    def _state_keys(self) -> set[str]:
        """The keys :meth:`load_state_dict` knows (override point)."""
        return {"lora_A.weight", "lora_B.weight", "base_layer.weight", "base_layer.weight_mask", "base_layer.bias"}

    def _checked_vector(self, state: dict[str, Any], key: str) -> np.ndarray:
        """``state[key]`` as a checked, finite float32 (out,) copy."""
        return check_finite(check_shaped(state[key], key, np.float32, (self.out_features,)), key).copy()

    def _checked_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` sets, checked and copied, by attribute (override point)."""
        out, in_ = self.out_features, self.in_features
        A = check_shaped(state["lora_A.weight"], "lora_A.weight", np.float32, (self.r, in_))
        B = check_shaped(state["lora_B.weight"], "lora_B.weight", np.float32, (out, self.r))
        check_finite(A, "lora_A.weight")
        check_finite(B, "lora_B.weight")
        base = self._unmerged_base()
        if "base_layer.weight" in state:
            W = check_shaped(state["base_layer.weight"], "base_layer.weight", np.float32, (out, in_))
            mask = state.get("base_layer.weight_mask", base.mask_dense())
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
                raise TypeError(
                    f"base_layer.weight_mask: expected a bool numpy.ndarray, got "
                    f"{getattr(mask, 'dtype', type(mask).__name__)}"
                )
            if mask.shape != (out, in_):
                raise ValueError(f"base_layer.weight_mask: expected shape {(out, in_)}, got {mask.shape}")
            W, mask = validate_base(W, mask, "base_layer.weight", "base_layer.weight_mask")
            base = format_class(mask, self._format_request).from_dense(W, mask)
        elif "base_layer.weight_mask" in state:
            raise ValueError("base_layer.weight_mask: given without base_layer.weight (a mask needs its weight)")
        bias = self._checked_vector(state, "base_layer.bias") if "base_layer.bias" in state else self.bias
        return {"A": A.copy(), "B": B.copy(), "base": base, "bias": bias}

    def _commit_state(self, new: dict[str, Any]) -> None:
        """Set what :meth:`_checked_state` returned; the layer ends unmerged with nothing pending."""
        self.base = new["base"]
        self._merged = False
        self._merged_with = None
        self.A, self.B = new["A"], new["B"]
        if new["bias"] is not None and self.bias is None:
            self.grad_bias = np.zeros_like(new["bias"])
        self.bias = new["bias"]
        self._saved = None

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Load arrays named as in :meth:`state_dict` (copies; all checked before anything changes).

        ``lora_A.weight`` and ``lora_B.weight`` are required; ``base_layer.weight`` (with
        ``base_layer.weight_mask``, else the current mask) and ``base_layer.bias`` are optional.
        The layer ends unmerged, with its pending forward dropped.

        Raises
        ------
        TypeError
            If ``state`` is not a dict, a key is not a str, or an array has a wrong dtype.
        ValueError
            On missing keys, unknown keys (``strict``), a wrong shape, NaN/inf, or a base weight
            nonzero off its mask.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state: expected a dict, got {type(state).__name__}")
        for key in state:
            if not isinstance(key, str):
                raise TypeError(f"state: expected str keys, got the {type(key).__name__} key {key!r}")
        strict = check_bool(strict, "strict")
        missing = sorted({"lora_A.weight", "lora_B.weight"} - set(state))
        if missing:
            raise ValueError(f"state: missing keys {missing}")
        unknown = sorted(set(state) - self._state_keys())
        if strict and unknown:
            raise ValueError(f"state: unexpected keys {unknown}")
        self._commit_state(self._checked_state(state))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(in={self.in_features}, out={self.out_features}, r={self.r}, "
            f"scaling={self.scaling:g}, format={self.base.format!r}, grad={self.grad!r}, nnz={self.base.nnz}, "
            f"merged={self._merged}{self._repr_extra()})"
        )

    def _repr_extra(self) -> str:
        return ""
