"""A classification MLP built from model ops (the model-op protocol of ``docs/rws.md``).

``MLP(sizes)`` is ``Linear → activation → … → Linear → softmax cross-entropy``. Every op is a pure
function of its inputs and parameters: ``forward`` keeps nothing, ``backward`` gets the inputs and
output back and accumulates its parameter gradients, so a step executor can free and recompute
activations. Matrix products run on the package's GEMM core (``sparseft._core.matmul``). The linears own full float32 weights (all of them are trained; a pruned layer's mask
zeroes its gradient, so every pruned zero stays exact), or with ``weight_norm=True`` are
parametrised as w = g·v/‖v‖ (:class:`sparseft.WeightNorm`, one norm per output row) with the
data-dependent init of Salimans & Kingma (:meth:`MLP.data_init`). :meth:`MLP.to_lors` turns a
(pretrained, possibly pruned) MLP into one whose linears are :class:`sparseft.LoRSLinear` layers,
for sparsity-preserving adapter fine-tuning.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sparseft import _core
from sparseft import prune as prune_module
from sparseft.weightnorm import WeightNorm

__all__ = ["MLP", "Activation", "Linear", "LoRSOp", "SoftmaxCrossEntropy", "WNLinear"]

ACTIVATIONS = ("relu", "tanh")
Act = np.ndarray | tuple[np.ndarray, ...]


class Linear:
    """y = x Wᵀ + b with W float32 (out, in) and an optional bool mask (pruned entries stay 0)."""

    def __init__(
        self, name: str, inputs: tuple[str, ...], block: int | None, weight: np.ndarray, bias: np.ndarray
    ):
        self.name, self.inputs, self.block = name, inputs, block
        self.weight, self.bias = weight, bias
        self.mask: np.ndarray | None = None
        self.grad_weight = np.zeros_like(weight)
        self.grad_bias = np.zeros_like(bias)

    def params(self) -> dict[str, np.ndarray]:
        """``weight`` and ``bias`` (the live arrays)."""
        return {"weight": self.weight, "bias": self.bias}

    def grads(self) -> dict[str, np.ndarray]:
        """Accumulated gradients under the names of :meth:`params`."""
        return {"weight": self.grad_weight, "bias": self.grad_bias}

    def _w(self) -> np.ndarray:
        return self.weight

    def forward(self, *xs: Act) -> Act:
        """x (N, in) → (N, out)."""
        x = xs[0]
        assert isinstance(x, np.ndarray)
        y = _core.matmul(np.ascontiguousarray(x, dtype=np.float32), self._w(), trans_b=True)
        y += self.bias
        return y

    def _accumulate_weight(self, gw: np.ndarray) -> None:
        if self.mask is not None:
            gw *= self.mask
        self.grad_weight += gw

    def backward(self, gy: Act | None, *xs: Act, y: Act) -> tuple[np.ndarray | None, ...]:
        """Accumulates dW = gyᵀx (masked) and db = Σ gy; returns gx = gy W (None for the batch input)."""
        x = xs[0]
        assert isinstance(x, np.ndarray) and isinstance(gy, np.ndarray)
        self._accumulate_weight(_core.matmul(gy, np.ascontiguousarray(x, dtype=np.float32), trans_a=True))
        self.grad_bias += gy.sum(axis=0)
        return (None if self.inputs[0] == "input" else _core.matmul(gy, self._w()),)

    def out_nbytes(self, batch: int, seq: int) -> int:
        """Bytes of the output (batch, out) float32."""
        return 4 * batch * self.weight.shape[0]

    def grad_nbytes(self, batch: int, seq: int) -> int:
        """Bytes of the input gradient (batch, in) float32 (0 for the batch input)."""
        return 0 if self.inputs[0] == "input" else 4 * batch * self.weight.shape[1]


class WNLinear(Linear):
    """y = x wᵀ + b with w = g·v/‖v‖ per output row (trainable v, g, b)."""

    def __init__(
        self, name: str, inputs: tuple[str, ...], block: int | None, v: np.ndarray, bias: np.ndarray
    ):
        self.wn = WeightNorm(v, dim=0)
        super().__init__(name, inputs, block, self.wn.v, bias)
        self.grad_v = np.zeros_like(self.wn.v)
        self.grad_g = np.zeros_like(self.wn.g)

    def params(self) -> dict[str, np.ndarray]:
        """``v`` (out, in), ``g`` (out, 1) and ``bias`` (the live arrays)."""
        return {"v": self.wn.v, "g": self.wn.g, "bias": self.bias}

    def grads(self) -> dict[str, np.ndarray]:
        """Accumulated gradients under the names of :meth:`params`."""
        return {"v": self.grad_v, "g": self.grad_g, "bias": self.grad_bias}

    def _w(self) -> np.ndarray:
        return self.wn.weight()

    def _accumulate_weight(self, gw: np.ndarray) -> None:
        if self.mask is not None:
            gw *= self.mask
        gv, gg = self.wn.backward(gw)
        if self.mask is not None:
            gv *= self.mask
        self.grad_v += gv
        self.grad_g += gg


class LoRSOp:
    """A linear op on :class:`sparseft.LoRSLinear`: y = x W'ᵀ + b with W' = W + s·(B A) ⊙ M, the base W
    frozen, A, B and b trained; forward keeps nothing (``forward(x, save=False)``), backward gets x
    back (``backward(gy, x=x)``), as the model-op protocol requires."""

    def __init__(self, name: str, inputs: tuple[str, ...], block: int | None, layer: Any):
        self.name, self.inputs, self.block, self.layer = name, inputs, block, layer

    def params(self) -> dict[str, np.ndarray]:
        """``A``, ``B``, ``bias`` (and ``magnitude`` with DoRA): the layer's live arrays."""
        return dict(self.layer.parameters())

    def grads(self) -> dict[str, np.ndarray]:
        """Accumulated gradients under the names of :meth:`params`."""
        return dict(self.layer.gradients())

    def forward(self, *xs: Act) -> Act:
        """x (N, in) → (N, out)."""
        x = xs[0]
        assert isinstance(x, np.ndarray)
        return self.layer.forward(np.ascontiguousarray(x, dtype=np.float32), save=False)

    def backward(self, gy: Act | None, *xs: Act, y: Act) -> tuple[np.ndarray | None, ...]:
        """Accumulates the adapter (and bias) gradients; returns gx (None for the batch input)."""
        x = xs[0]
        assert isinstance(x, np.ndarray) and isinstance(gy, np.ndarray)
        gx = self.layer.backward(gy, x=np.ascontiguousarray(x, dtype=np.float32))
        return (None if self.inputs[0] == "input" else gx,)

    def out_nbytes(self, batch: int, seq: int) -> int:
        """Bytes of the output (batch, out) float32."""
        return 4 * batch * self.layer.out_features

    def grad_nbytes(self, batch: int, seq: int) -> int:
        """Bytes of the input gradient (batch, in) float32 (0 for the batch input)."""
        return 0 if self.inputs[0] == "input" else 4 * batch * self.layer.in_features


class Activation:
    """Elementwise ReLU or tanh."""

    def __init__(self, name: str, inputs: tuple[str, ...], block: int | None, kind: str, width: int):
        self.name, self.inputs, self.block, self.kind, self.width = name, inputs, block, kind, width

    def params(self) -> dict[str, np.ndarray]:
        """None."""
        return {}

    def grads(self) -> dict[str, np.ndarray]:
        """None."""
        return {}

    def forward(self, *xs: Act) -> Act:
        """relu(x) or tanh(x)."""
        x = xs[0]
        assert isinstance(x, np.ndarray)
        return np.maximum(x, np.float32(0)) if self.kind == "relu" else np.tanh(x)

    def backward(self, gy: Act | None, *xs: Act, y: Act) -> tuple[np.ndarray | None, ...]:
        """gy · f'(x), from the output y."""
        assert isinstance(gy, np.ndarray) and isinstance(y, np.ndarray)
        return (gy * (y > 0) if self.kind == "relu" else gy * (np.float32(1) - y * y),)

    def out_nbytes(self, batch: int, seq: int) -> int:
        """Bytes of the output (batch, width) float32."""
        return 4 * batch * self.width

    def grad_nbytes(self, batch: int, seq: int) -> int:
        """Bytes of the input gradient (batch, width) float32."""
        return 4 * batch * self.width


class SoftmaxCrossEntropy:
    """Mean cross-entropy of logits (N, C) against int labels (N,); the model's loss op."""

    def __init__(self, name: str, inputs: tuple[str, ...], classes: int):
        self.name, self.inputs, self.block, self.classes = name, inputs, None, classes

    def params(self) -> dict[str, np.ndarray]:
        """None."""
        return {}

    def grads(self) -> dict[str, np.ndarray]:
        """None."""
        return {}

    def forward(self, *xs: Act) -> Act:
        """A float32 0-d array: −mean log softmax(logits)[label]."""
        z, t = xs
        assert isinstance(z, np.ndarray) and isinstance(t, np.ndarray)
        z64 = z.astype(np.float64)
        z64 -= z64.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z64).sum(axis=1))
        return np.asarray(np.mean(lse - z64[np.arange(len(t)), t]), dtype=np.float32)

    def backward(self, gy: Act | None, *xs: Act, y: Act) -> tuple[np.ndarray | None, ...]:
        """(softmax − onehot) / N for the logits, None for the labels."""
        z, t = xs
        assert isinstance(z, np.ndarray) and isinstance(t, np.ndarray)
        z64 = z.astype(np.float64)
        p = np.exp(z64 - z64.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(t)), t] -= 1.0
        scale = 1.0 if gy is None else float(np.asarray(gy))
        return ((p * (scale / len(t))).astype(np.float32), None)

    def out_nbytes(self, batch: int, seq: int) -> int:
        """4 (a float32 scalar)."""
        return 4

    def grad_nbytes(self, batch: int, seq: int) -> int:
        """Bytes of the logits' gradient (batch, classes) float32."""
        return 4 * batch * self.classes


def _check_data(X: object, y: object | None, in_features: int) -> tuple[np.ndarray, np.ndarray | None]:
    if not isinstance(X, np.ndarray) or X.dtype.kind not in "fiu":
        raise TypeError(f"X: expected a numeric numpy.ndarray, got {getattr(X, 'dtype', type(X).__name__)}")
    if X.ndim != 2 or X.shape[1] != in_features:
        raise ValueError(f"X: expected shape (N, {in_features}), got {X.shape}")
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X32).all():
        raise ValueError("X: contains NaN or infinity")
    if y is None:
        return X32, None
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu":
        raise TypeError(
            f"y: expected an integer numpy.ndarray of labels, got {getattr(y, 'dtype', type(y).__name__)}"
        )
    if y.shape != (X.shape[0],):
        raise ValueError(f"y: expected shape ({X.shape[0]},) (one label per row of X), got {y.shape}")
    return X32, y.astype(np.int64)


class MLP:
    """A classification MLP: ``sizes[0]`` inputs, ``sizes[-1]`` classes, implementing the model-op
    protocol (``ops()``, ``parameters()``, ``gradients()``, ``zero_grad()``, ``state_dict()``,
    ``load_state_dict()``).

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, at least two (inputs and classes), each >= 1.
    activation : {"relu", "tanh"}
        Between the linears.
    weight_norm : bool
        Parametrise every linear as w = g·v/‖v‖ (call :meth:`data_init` on a batch for the
        data-dependent init of g and b).
    seed : int
        Initialisation seed: PyTorch's ``nn.Linear`` default, U(±1/√in) for weights and biases
        (v ~ N(0, 0.05) with ``weight_norm``).

    Notes
    -----
    Op names: ``fc.{i}`` (linears), ``act.{i}``, ``loss`` (inputs ``(f"fc.{L-1}", "target")``);
    parameters ``fc.{i}.weight``/``fc.{i}.bias`` (``fc.{i}.v``/``fc.{i}.g`` with weight norm).
    """

    def __init__(
        self, sizes: Sequence[int], activation: str = "relu", weight_norm: bool = False, seed: int = 0
    ):
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
            raise TypeError(f"sizes: expected a sequence of ints, got {type(sizes).__name__}")
        if len(sizes) < 2:
            raise ValueError(f"sizes: expected at least 2 widths (inputs, classes), got {len(sizes)}")
        for s in sizes:
            if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral):
                raise TypeError(f"sizes: expected ints, got {type(s).__name__} {s!r}")
            if s < 1:
                raise ValueError(f"sizes: expected widths >= 1, got {list(sizes)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        if not isinstance(weight_norm, (bool, np.bool_)):
            raise TypeError(f"weight_norm: expected a bool, got {type(weight_norm).__name__}")
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
        self.sizes: tuple[int, ...] = tuple(int(s) for s in sizes)
        self.activation: str = activation
        self.weight_norm: bool = bool(weight_norm)
        self.lors: bool = False  # see to_lors
        rng = np.random.default_rng(int(seed))
        self.linears: list[Any] = []  # Linear / WNLinear, or LoRSOp after to_lors
        self._ops: list[Any] = []
        prev = "input"
        n = len(self.sizes) - 1
        for i in range(n):
            fan_in, fan_out = self.sizes[i], self.sizes[i + 1]
            k = 1.0 / np.sqrt(fan_in)
            b = rng.uniform(-k, k, fan_out).astype(np.float32)
            lin: Linear
            if self.weight_norm:
                v = (rng.standard_normal((fan_out, fan_in)) * 0.05).astype(np.float32)
                lin = WNLinear(f"fc.{i}", (prev,), i, v, b)
            else:
                lin = Linear(
                    f"fc.{i}", (prev,), i, rng.uniform(-k, k, (fan_out, fan_in)).astype(np.float32), b
                )
            self.linears.append(lin)
            self._ops.append(lin)
            prev = lin.name
            if i < n - 1:
                act = Activation(f"act.{i}", (prev,), i, activation, fan_out)
                self._ops.append(act)
                prev = act.name
        self._ops.append(SoftmaxCrossEntropy("loss", (prev, "target"), self.sizes[-1]))

    # ---- protocol ----

    def ops(self) -> list[Any]:
        """The ops in topological order; the last is the loss."""
        return list(self._ops)

    def parameters(self) -> dict[str, np.ndarray]:
        """``"<op name>.<param>"`` → the live trainable arrays."""
        return {f"{op.name}.{k}": v for op in self._ops for k, v in op.params().items()}

    def gradients(self) -> dict[str, np.ndarray]:
        """Accumulated gradients under the names of :meth:`parameters`."""
        return {f"{op.name}.{k}": v for op in self._ops for k, v in op.grads().items()}

    def zero_grad(self) -> None:
        """Set every gradient to 0."""
        for g in self.gradients().values():
            g.fill(0.0)

    def masks(self) -> dict[str, np.ndarray]:
        """Bool masks of the pruned weights (``fc.{i}.weight``, or ``fc.{i}.v`` with weight norm)."""
        if self.lors:  # the merged weights are what state_dict reports; the adapters have no mask
            return {}
        key = "v" if self.weight_norm else "weight"
        return {f"{lin.name}.{key}": lin.mask.copy() for lin in self.linears if lin.mask is not None}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies under PyTorch's names: ``fc.{i}.weight``, ``fc.{i}.bias`` (with weight norm
        ``fc.{i}.parametrizations.weight.original0`` = g (out, 1) and ``original1`` = v), plus
        ``fc.{i}.weight_mask`` (bool) for pruned layers."""
        sd: dict[str, np.ndarray] = {}
        for lin in self.linears:
            if isinstance(lin, LoRSOp):
                sd[f"{lin.name}.weight"] = lin.layer.merged_weight()
                sd[f"{lin.name}.bias"] = lin.layer.bias.copy()
                sd[f"{lin.name}.weight_mask"] = lin.layer.mask
                continue
            if isinstance(lin, WNLinear):
                sd[f"{lin.name}.parametrizations.weight.original0"] = lin.wn.g.copy()
                sd[f"{lin.name}.parametrizations.weight.original1"] = lin.wn.v.copy()
            else:
                sd[f"{lin.name}.weight"] = lin.weight.copy()
            sd[f"{lin.name}.bias"] = lin.bias.copy()
            if lin.mask is not None:
                sd[f"{lin.name}.weight_mask"] = lin.mask.copy()
        return sd

    def load_state_dict(self, sd: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays named as in :meth:`state_dict` into the live parameters (all checked first;
        with ``strict`` every expected key must be present and no other)."""
        if not isinstance(sd, Mapping):
            raise TypeError(f"sd: expected a dict name -> numpy.ndarray, got {type(sd).__name__}")
        if self.lors:
            raise ValueError(
                "sd: a LoRS model's state_dict holds merged weights; load them into a plain MLP "
                "and call to_lors() again"
            )
        current = self.state_dict()
        expected = {k for k in current if not k.endswith(".weight_mask")}
        if strict:
            missing = sorted(expected - set(sd))
            extra = sorted(set(sd) - set(current) - {f"{lin.name}.weight_mask" for lin in self.linears})
            if missing or extra:
                raise ValueError(f"sd: missing keys {missing}, unexpected keys {extra}")
        staged: dict[str, np.ndarray] = {}
        for k, v in sd.items():
            if k not in current and not k.endswith(".weight_mask"):
                continue
            if not isinstance(v, np.ndarray):
                raise TypeError(f"sd[{k!r}]: expected a numpy.ndarray, got {type(v).__name__}")
            want = current.get(k)
            shape = (
                want.shape
                if want is not None
                else (self.sizes[int(k.split(".")[1]) + 1], self.sizes[int(k.split(".")[1])])
            )
            if v.shape != shape:
                raise ValueError(f"sd[{k!r}]: expected shape {shape}, got {v.shape}")
            if k.endswith(".weight_mask"):
                if v.dtype != np.bool_:
                    raise TypeError(f"sd[{k!r}]: expected dtype bool, got {v.dtype}")
                staged[k] = v.copy()
            else:
                if v.dtype.kind != "f":
                    raise TypeError(f"sd[{k!r}]: expected a floating-point array, got {v.dtype}")
                a = v.astype(np.float32)
                if not np.isfinite(a).all():
                    raise ValueError(f"sd[{k!r}]: contains NaN or infinity")
                staged[k] = a
        for lin in self.linears:
            mk = f"{lin.name}.weight_mask"
            if mk in staged:
                lin.mask = staged[mk]
            for k, dst in (
                (f"{lin.name}.weight", lin.weight),
                (f"{lin.name}.bias", lin.bias),
                (
                    f"{lin.name}.parametrizations.weight.original0",
                    getattr(getattr(lin, "wn", None), "g", None),
                ),
                (
                    f"{lin.name}.parametrizations.weight.original1",
                    getattr(getattr(lin, "wn", None), "v", None),
                ),
            ):
                if k in staged and dst is not None:
                    dst[...] = staged[k]
            if lin.mask is not None:
                (lin.wn.v if isinstance(lin, WNLinear) else lin.weight)[~lin.mask] = 0.0

    # ---- convenience ----

    def forward(self, X: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 of X (N, sizes[0])."""
        h: Act = _check_data(X, None, self.sizes[0])[0]
        for op in self._ops[:-1]:
            h = op.forward(h)
        assert isinstance(h, np.ndarray)
        return h

    def loss_and_grad(self, X: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy on (X, y) and the gradients of every parameter (zeroed first, then
        accumulated by running every op's forward, then every backward in reverse order)."""
        X32, y64 = _check_data(X, y, self.sizes[0])
        assert y64 is not None
        if y64.size and (y64.min() < 0 or y64.max() >= self.sizes[-1]):
            raise ValueError(f"y: expected labels in [0, {self.sizes[-1]}), got [{y64.min()}, {y64.max()}]")
        self.zero_grad()
        values: dict[str, Act] = {"input": X32, "target": y64}
        for op in self._ops:
            values[op.name] = op.forward(*(values[i] for i in op.inputs))
        grads: dict[str, np.ndarray] = {}
        for op in reversed(self._ops):
            gy = grads.pop(op.name, None)
            gin = op.backward(gy, *(values[i] for i in op.inputs), y=values[op.name])
            for name, g in zip(op.inputs, gin, strict=True):
                if g is not None:
                    grads[name] = grads[name] + g if name in grads else g
        return float(np.asarray(values["loss"])), self.gradients()

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted classes (N,) int64."""
        return self.forward(X).argmax(axis=1)

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        """Fraction of rows of X whose predicted class is y."""
        X32, y64 = _check_data(X, y, self.sizes[0])
        return float((self.forward(X32).argmax(axis=1) == y64).mean()) if len(X32) else 0.0

    def data_init(self, X: np.ndarray, init_scale: float = 1.0) -> None:
        """Weight norm's data-dependent init (Salimans & Kingma 2016) layer by layer on a batch X:
        each layer's pre-activations start with mean 0 and std ``init_scale`` per unit."""
        if not self.weight_norm:
            raise ValueError("data_init: the model was built with weight_norm=False")
        h: Act = _check_data(X, None, self.sizes[0])[0]
        for op in self._ops[:-1]:
            if isinstance(op, WNLinear):
                assert isinstance(h, np.ndarray)
                g, b = WeightNorm.data_init(op.wn.v, h, init_scale)
                op.wn.g[...] = g
                op.bias[...] = b
            h = op.forward(h)

    def prune(self, sparsity: float, scope: str = "row") -> None:
        """Magnitude-prune every linear's weight to ``sparsity`` (``sft.prune.magnitude``); the
        pruned entries become 0 and stay 0 through training and patching (see :meth:`masks`)."""
        if self.lors:
            raise ValueError("prune: prune before to_lors() (a LoRS base is frozen)")
        for lin in self.linears:
            w = lin.wn.v if isinstance(lin, WNLinear) else lin.weight
            keep = prune_module.magnitude(w, sparsity=sparsity, scope=scope)
            lin.mask = keep if lin.mask is None else keep & lin.mask
            w[~lin.mask] = 0.0

    def to_lors(self, config: Any) -> MLP:
        """A copy whose linears are :class:`sparseft.LoRSLinear` layers on the current weights and
        masks (a dense mask where unpruned), built by ``config`` (a :class:`sparseft.LoRSConfig`):
        training then updates the adapters A, B and the biases while the (sparse) base stays frozen.
        :meth:`state_dict` of the copy reports the merged weights W' (zeros off the mask exact), so
        signatures can be extracted between adapter fine-tunes; to patch, load those merged weights
        into a plain MLP (``load_state_dict``), whose ``masks()`` then keep the pruned zeros."""
        from sparseft.adapters import LoRSConfig

        if not isinstance(config, LoRSConfig):
            raise TypeError(f"config: expected a sparseft.LoRSConfig, got {type(config).__name__}")
        if self.lors:
            raise ValueError("config: the model's linears are LoRS layers already")
        new = MLP.__new__(MLP)
        new.sizes, new.activation = self.sizes, self.activation
        new.weight_norm, new.lors = False, True
        new.linears = []
        new._ops = []
        for op in self._ops:
            if isinstance(op, Linear):
                w = op.wn.weight() if isinstance(op, WNLinear) else op.weight.copy()
                mask = op.mask if op.mask is not None else np.ones(w.shape, dtype=bool)
                w[~mask] = 0.0
                layer = config.make(w, mask, bias=op.bias.copy())
                lop = LoRSOp(op.name, op.inputs, op.block, layer)
                new._ops.append(lop)
                new.linears.append(lop)  # type: ignore[arg-type]
            else:
                new._ops.append(op)
        return new

    def __repr__(self) -> str:
        wn = ", weight_norm" if self.weight_norm else ", LoRS" if self.lors else ""
        return f"MLP({list(self.sizes)}, {self.activation}{wn})"
