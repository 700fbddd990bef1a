"""Weight-normalized sparse adapters ("sparse DoRA"): :class:`DoRALinear`, a LoRS variant.

With W' = W + s·(B A) ⊙ M (the LoRS merged weight, zero off the mask M) the layer's weight is

    W'' = m ⊙ W' / ‖W'‖_row,   i.e.  W''_i = (m_i / n_i) · W'_i,   n_i = ‖W'_i‖,

with a trainable magnitude m (out,) (PEFT's ``lora_magnitude_vector``). Nothing of size out×in is
formed: with z = x W'ᵀ from the base format's recomputing GEMM and c = m / n,

    y  = z ⊙ c                                     (per output column)
    gz = gy ⊙ c,   gx = gz W'                      (the base's backward with gz)
    grad m_i = Σ_t gy_ti z_ti / n_i
    grad n_i = −m_i Σ_t gy_ti z_ti / n_i²          (only with norm_grad)

and the adapters get the LoRS gradients with gy replaced by gz plus, with ``norm_grad``, the
gradient through the row norms, which the base format computes (``row_norms`` and ``norm_grad``
of :class:`sparseft.formats.BaseFormat`: row by row in C for the dense base, O(out·in·r); two
SpMMs of the merged base for CSR and N:M, O(nnz·r)). ``norm_grad=False`` is DoRA's detached
norm (PEFT's default): the norm is treated as a constant and that second term is dropped.

Zero rows: where n_i = 0 (a row of W' entirely zero, e.g. a fully pruned output unit) the layer
defines c_i = 0, so y's column i is 0 and every gradient through row i (gz, grad m_i, grad n_i) is 0,
where the formula would give 0/0 = NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from sparseft._validation import check_bool, check_finite
from sparseft.adapters.lors import LoRSLinear
from sparseft.formats import BaseFormat

__all__ = ["DoRALinear", "backward_scales", "forward_scales", "magnitude_init", "merged_dense"]

F32 = npt.NDArray[np.float32]


def magnitude_init(base: BaseFormat) -> F32:
    """The row norms of the base W (float32 (out,)): m = ‖W‖_row leaves the layer's output
    unchanged while B = 0 (W' = W, so W'' = W)."""
    out, inn = base.shape
    return base.row_norms(np.zeros((1, inn), np.float32), np.zeros((out, 1), np.float32), 0.0)


def forward_scales(m: F32, n: F32) -> F32:
    """c = m / n per output (float32 (out,)), 0 where n == 0."""
    n64 = n.astype(np.float64)
    c = np.divide(m.astype(np.float64), n64, out=np.zeros_like(n64), where=n64 > 0)
    return c.astype(np.float32)


def backward_scales(gy: F32, z: F32, m: F32, n: F32, norm_grad: bool) -> tuple[F32, F32 | None]:
    """(grad_m, grad_n) from gy, z = x W'ᵀ (both (N, out)), m and n; 0 where n == 0.

    grad_m_i = Σ_t gy_ti z_ti / n_i and, when ``norm_grad``, grad_n_i = −m_i Σ_t gy_ti z_ti / n_i²
    (else None).
    """
    dot = np.einsum("ti,ti->i", gy, z, dtype=np.float64)
    n64 = n.astype(np.float64)
    live = n64 > 0
    grad_m = np.divide(dot, n64, out=np.zeros_like(n64), where=live)
    if not norm_grad:
        return grad_m.astype(np.float32), None
    grad_n = np.divide(-m.astype(np.float64) * grad_m, n64, out=np.zeros_like(n64), where=live)
    return grad_m.astype(np.float32), grad_n.astype(np.float32)


def merged_dense(base: BaseFormat, A: F32, B: F32, scale: float, m: F32) -> F32:
    """W'' = (m / n) ⊙ W' as a new float32 (out, in) array, exactly 0 wherever the mask is False."""
    c = forward_scales(m, base.row_norms(A, B, scale))  # the forward's norms, bit for bit
    W2 = base.merged(A, B, scale).to_dense()
    W2 *= c[:, None]
    W2[~base.mask_dense()] = 0.0  # also turns -0.0 (a negative m_i times a zero) into +0.0
    return W2


class DoRALinear(LoRSLinear):
    """A LoRS layer with weight-normalized rows: W'' = m ⊙ W'/‖W'‖_row (see the module docstring).

    Takes every :class:`~sparseft.LoRSLinear` parameter (``LoRSLinear(..., magnitude=True)`` and
    ``LoRSConfig(magnitude=True)`` build this class), plus:

    Parameters
    ----------
    norm_grad : bool
        True differentiates through ‖W'‖ (the exact gradient); False treats it as a constant
        (DoRA's detached norm, PEFT's choice), which drops an O(out·in·r) term.
    magnitude : bool
        Must be True (accepted so that both constructors take the same arguments).

    Attributes
    ----------
    magnitude, grad_magnitude : numpy.ndarray
        m (float32 (out,), a parameter, initialized to the row norms of W so the output is
        unchanged at step 0 where B = 0) and its accumulated gradient. A row with ‖W'‖ = 0 gives
        output 0 and zero gradients through it (not NaN).

    Notes
    -----
    Still no out×in buffer: y = (x W'ᵀ) ⊙ m/n with the row norms n from the base format. Merging
    builds W'' densely once and stores it in the layer's format (the unmerged base is kept for
    :meth:`unmerge`, which restores it bit for bit); while merged the layer computes with W''
    like a plain merged LoRS layer and the magnitude gets no gradient.
    """

    magnitude: np.ndarray
    grad_magnitude: np.ndarray

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
        magnitude: bool = True,
        norm_grad: bool = True,
    ) -> None:
        if not check_bool(magnitude, "magnitude"):
            raise ValueError("magnitude: DoRALinear is the magnitude=True layer (use LoRSLinear without it)")
        self.norm_grad = check_bool(norm_grad, "norm_grad")
        self._premerge_base: BaseFormat | None = None
        super().__init__(
            W,
            mask,
            r,
            alpha,
            bias,
            init,
            grad,
            seed,
            use_rslora,
            format,
            init_grad,
            calibration,
            loss_grad,
            lors_scale,
        )

    def _init_extra_parameters(self) -> None:
        self.magnitude = magnitude_init(self.base)
        self.grad_magnitude = np.zeros_like(self.magnitude)

    def _check_magnitude(self) -> None:
        # A and B are checked in C at every call; m is a parameter the user updates too
        check_finite(self.magnitude, "magnitude")

    def _forward_2d(self, x2: np.ndarray) -> tuple[np.ndarray, Any]:
        """y = (x W'ᵀ) ⊙ m/n, with (z, n, c) kept for the backward."""
        if self._merged:
            return super()._forward_2d(x2)
        z, _ = super()._forward_2d(x2)
        self._check_magnitude()
        n = self.base.row_norms(self.A, self.B, self.scaling)
        c = forward_scales(self.magnitude, n)
        return z * c, (z, n, c)

    def _state_at(self, x2: np.ndarray) -> Any:
        return self._forward_2d(x2)[1]

    def _backward_2d(
        self, gy2: np.ndarray, x2: np.ndarray, state: Any
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self._merged or state is None:
            return super()._backward_2d(gy2, x2, None)
        z, n, c = state
        gx2, grads = super()._backward_2d(gy2 * c, x2, None)  # through y = z * m/n
        dm, grad_n = backward_scales(gy2, z, self.magnitude, n, self.norm_grad)
        if grad_n is not None:
            cA, cB = self.base.norm_grad(grad_n, n, self.A, self.B, self.scaling)
            grads["A"], grads["B"] = grads["A"] + cA, grads["B"] + cB
        grads["magnitude"] = dm
        return gx2, grads

    def parameters(self) -> dict[str, np.ndarray]:
        """Trainable arrays by name (``A``, ``B``, ``magnitude``, and ``bias`` when present)."""
        return {**super().parameters(), "magnitude": self.magnitude}

    def gradients(self) -> dict[str, np.ndarray]:
        """Accumulated gradients under the names of :meth:`parameters`; the live arrays."""
        return {**super().gradients(), "magnitude": self.grad_magnitude}

    def merged_weight(self) -> np.ndarray:
        """W'' = m ⊙ W'/‖W'‖_row as a new float32 (out, in) array, exactly 0 wherever M is False."""
        if self._merged:
            return self.base.to_dense()
        return merged_dense(self.base, self.A, self.B, self.scaling, self.magnitude)

    def _merged_base(self) -> BaseFormat:
        self._check_magnitude()
        merged = type(self.base).from_dense(self.merged_weight(), self.base.mask_dense())
        self._premerge_base = self.base
        return merged

    def unmerge(self) -> None:
        """Undo :meth:`merge`: the unmerged base kept at merge time, bit for bit."""
        super().unmerge()
        self._premerge_base = None

    def _unmerged_base(self) -> BaseFormat:
        if self._merged and self._premerge_base is not None:
            return self._premerge_base
        return self.base

    def state_dict(self) -> dict[str, np.ndarray]:
        """:meth:`LoRSLinear.state_dict` plus ``lora_magnitude_vector`` (out,)."""
        return {**super().state_dict(), "lora_magnitude_vector": self.magnitude.copy()}

    def _state_keys(self) -> set[str]:
        return super()._state_keys() | {"lora_magnitude_vector"}

    def _checked_state(self, state: dict[str, Any]) -> dict[str, Any]:
        new = super()._checked_state(state)
        if "lora_magnitude_vector" in state:
            new["magnitude"] = self._checked_vector(state, "lora_magnitude_vector")
        return new

    def _commit_state(self, new: dict[str, Any]) -> None:
        super()._commit_state(new)
        self.magnitude = new.get("magnitude", self.magnitude)
        self._premerge_base = None

    def _repr_extra(self) -> str:
        return f", magnitude=True, norm_grad={self.norm_grad}"
