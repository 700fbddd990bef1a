"""Whole-model pruning: magnitude, Wanda or SparseGPT on every block linear, block by block.

``sparsify(model, sparsity=0.5, method="sparsegpt", calib=text)`` prunes every linear of the
model's blocks (GPT-2's ``c_attn``/``c_proj``/``c_fc``/``mlp.c_proj``, Llama's ``q/k/v/o_proj`` and
``gate/up/down_proj``). Wanda and SparseGPT use calibration inputs the way both papers do: the
calibration sequences go through the model one block at a time; each block's linears are pruned
from the inputs that block receives from the *already pruned* blocks before it, and the block is
then run again, pruned, to produce the next block's inputs. Each linear's inputs are summarised by
their Gram matrix XᵀX (:class:`sparseft.sparsegpt.Gram`), which gives SparseGPT's Hessian, Wanda's
column norms and the layer-wise reconstruction error, so no layer's inputs are held whole.

The model is changed only when everything succeeded: during the pass the pruned layers are copies;
at the end each :class:`~sparseft.LoRSLinear` loads its new base (stored in the format its mask calls
for; adapter and bias carried over), so an error or an interrupt leaves the model as it was.
See ``docs/pruning.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from sparseft import prune
from sparseft.adapters.lors import LoRSLinear
from sparseft.models.graph import Act, Op, check_ops, primary
from sparseft.sparsegpt import Gram, check_options, check_sparsity_nm, reconstruction_error, sparsegpt

__all__ = ["METHODS", "LayerReport", "SparsifyReport", "sparsify"]

METHODS = ("magnitude", "wanda", "sparsegpt")

#: Default calibration window: the papers' 2048 tokens, or the model's context if shorter.
DEFAULT_SEQ_LEN = 2048


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """What :func:`sparsify` did to one linear.

    Attributes
    ----------
    name : str
        The op name (e.g. ``"h.0.attn.c_attn"``, ``"layers.0.self_attn.q_proj"``).
    shape : tuple of int
        (out, in).
    sparsity : float
        Fraction of the weights pruned (mask False).
    error : float or None
        Relative reconstruction error ‖X Wᵀ − X Ŵᵀ‖_F / ‖X Wᵀ‖_F on the calibration inputs the layer
        received (from the already pruned blocks before it); None without calibration.
    """

    name: str
    shape: tuple[int, int]
    sparsity: float
    error: float | None


@dataclasses.dataclass(frozen=True)
class SparsifyReport:
    """The result of :func:`sparsify`: settings and one :class:`LayerReport` per pruned linear.

    Attributes
    ----------
    method : str
    sparsity : float
        The requested fraction (``(m - n) / m`` for N:M).
    nm : tuple of int or None
    calib_tokens : int
        Calibration tokens (rows) run through the model (0 without calibration).
    layers : list of LayerReport
        In the model's op order.
    """

    method: str
    sparsity: float
    nm: tuple[int, int] | None
    calib_tokens: int
    layers: list[LayerReport]

    @property
    def overall_sparsity(self) -> float:
        """Fraction of all pruned linears' weights that is pruned."""
        total = sum(r.shape[0] * r.shape[1] for r in self.layers)
        pruned = sum(r.sparsity * r.shape[0] * r.shape[1] for r in self.layers)
        return float(pruned / total) if total else 0.0

    @property
    def mean_error(self) -> float | None:
        """Mean relative reconstruction error over the layers (None without calibration)."""
        errs = [r.error for r in self.layers if r.error is not None]
        return float(np.mean(errs)) if errs else None

    def __str__(self) -> str:
        target = f"{self.nm[0]}:{self.nm[1]}" if self.nm else f"{self.sparsity:.3g}"
        lines = [
            f"sparsify: method={self.method}, target={target}, calibration tokens={self.calib_tokens}, "
            f"overall sparsity={self.overall_sparsity:.4f}",
            f"{'layer':<36} {'shape':>12} {'sparsity':>9} {'rel. error':>11}",
        ]
        for r in self.layers:
            err = "-" if r.error is None else f"{r.error:.4g}"
            lines.append(f"{r.name:<36} {f'{r.shape[0]}x{r.shape[1]}':>12} {r.sparsity:>9.4f} {err:>11}")
        return "\n".join(lines)


def _linear_of(op: Op) -> LoRSLinear | None:
    layer = getattr(op, "layer", None)
    return layer if isinstance(layer, LoRSLinear) and len(op.inputs) == 1 else None


def _runs(ops: Sequence[Op]) -> list[tuple[int, int]]:
    """[start, stop) index ranges of consecutive ops sharing the same ``block``."""
    runs, start = [], 0
    for k in range(1, len(ops) + 1):
        if k == len(ops) or ops[k].block != ops[start].block:
            runs.append((start, k))
            start = k
    return runs


def _groups(block: Sequence[Op], targets: dict[str, Any], sequential: bool) -> list[list[Op]]:
    """The block's linears in the groups they are calibrated and pruned in: one group (all from
    one pass of the dense block), or with ``sequential`` one group per distinct input, in op order."""
    lin = [op for op in block if op.name in targets]
    if not lin:
        return []
    if not sequential:
        return [lin]
    by_input: dict[str, list[Op]] = {}
    for op in lin:
        by_input.setdefault(op.inputs[0], []).append(op)
    return list(by_input.values())


def _check_int(name: str, v: object, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if int(v) < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v}")
    return int(v)


def _check_untrained(op: Op, layer: LoRSLinear) -> None:
    """Sparsify prunes the base, so the op must compute with the base alone.

    Frozen and full-fine-tuning ops do; an op that runs the layer's adapter computes with
    W + s·(B A) ⊙ M, equal to the base only while the adapter is untrained (B = 0, and a DoRA
    magnitude still the base's row norms).
    """
    if getattr(op, "mode", None) in ("frozen", "base"):
        return
    trained = bool(np.any(layer.B != 0))
    if layer.magnitude is not None and not layer.merged:
        trained |= not np.allclose(layer.magnitude, _row_norms(layer.base.to_dense()), rtol=1e-5, atol=1e-30)
    if trained:
        raise ValueError(
            f"model: layer {op.name!r} carries a trained adapter; sparsify prunes base weights, so "
            "merge the adapters first (model.merge_adapters()) or sparsify before adding them"
        )


def _row_norms(W: np.ndarray) -> np.ndarray:
    W64 = W.astype(np.float64)
    return np.sqrt(np.einsum("ij,ij->i", W64, W64)).astype(np.float32)


def _rebuilt(layer: LoRSLinear, W: np.ndarray, mask: np.ndarray) -> tuple[LoRSLinear, dict[str, np.ndarray]]:
    """The layer state with base (W, mask), and a copy of ``layer`` holding it (``layer`` itself is
    not changed; the copy computes the next blocks' calibration inputs).

    Loading the state rebuilds the base in the format its mask calls for; adapter, bias and
    settings are carried over.
    """
    new = copy.copy(layer)
    state = {
        "lora_A.weight": layer.A,
        "lora_B.weight": layer.B,
        "base_layer.weight": np.ascontiguousarray(W, dtype=np.float32),
        "base_layer.weight_mask": mask,
    }
    if layer.magnitude is not None:
        # the adapter is untrained (checked): m = the new row norms keeps the output the pruned base's
        state["lora_magnitude_vector"] = _row_norms(state["base_layer.weight"])
    new.load_state_dict(state)
    return new, state


def _prune_one(
    W: np.ndarray,
    gram: Gram | None,
    method: str,
    sparsity: float,
    nm: tuple[int, int] | None,
    blocksize: int,
    percdamp: float,
) -> tuple[np.ndarray, np.ndarray]:
    if method == "sparsegpt":
        assert gram is not None
        return sparsegpt(W, gram, sparsity, nm=nm, blocksize=blocksize, percdamp=percdamp)
    if method == "wanda":
        assert gram is not None
        # Wanda's score |W_ij|·‖X_:j‖ needs only the column norms: one row holding them has the same norms
        mask = prune.wanda(W, gram.column_norms()[None, :], sparsity, nm=nm)
    elif nm is not None:
        mask = prune.nm(W, *nm)
    else:
        mask = prune.magnitude(W, sparsity)
    return np.where(mask, W, np.float32(0.0)), mask


def _calibration(model: Any, calib: Any, nsamples: int, seq_len: int | None, seed: int) -> np.ndarray:
    """The calibration batch input: (samples, seq) int64 ids for a language model, or the given
    array for a model without a vocabulary (e.g. features (samples, in) for an MLP)."""
    cfg = getattr(model, "config", None)
    vocab = getattr(cfg, "vocab_size", None)
    max_len = getattr(cfg, "seq_len", None)
    if vocab is None or max_len is None:
        if not isinstance(calib, np.ndarray):
            raise TypeError(
                f"calib: expected a numpy.ndarray of model inputs (samples, ...), got {type(calib).__name__}"
            )
        if calib.ndim < 1 or calib.shape[0] < 1:
            raise ValueError(f"calib: expected at least one sample along axis 0, got shape {calib.shape}")
        return calib
    T = min(max_len, DEFAULT_SEQ_LEN) if seq_len is None else _check_int("seq_len", seq_len, 1)
    if T > max_len:
        raise ValueError(f"seq_len: expected at most the model's seq_len {max_len}, got {T}")
    if isinstance(calib, np.ndarray) and calib.ndim == 2:
        if calib.dtype == np.bool_ or not np.issubdtype(calib.dtype, np.integer):
            raise TypeError(f"calib: expected integer token ids (samples, seq), got dtype {calib.dtype}")
        if calib.shape[0] < 1 or not 1 <= calib.shape[1] <= max_len:
            raise ValueError(
                f"calib: expected token ids (samples >= 1, 1 <= seq <= {max_len}), got shape {calib.shape}"
            )
        lo, hi = int(calib.min()), int(calib.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"calib: token ids must be in [0, {vocab}), got min {lo}, max {hi}")
        return calib.astype(np.int64)
    from sparseft.data import tokenize

    ids = tokenize(calib, getattr(model, "tokenizer", None), vocab, name="calib")
    if ids.size < T:
        raise ValueError(
            f"calib: too short, {ids.size} tokens for calibration windows of seq_len = {T} tokens "
            "(give more text or a smaller seq_len)"
        )
    # the papers' recipe: random windows of the calibration text
    starts = np.sort(np.random.default_rng(seed).integers(0, ids.size - T + 1, size=nsamples))
    return ids[starts[:, None] + np.arange(T)[None, :]]


class _Pass:
    """Runs the ops block by block on calibration chunks, keeping only the activations a later
    op reads (the state between runs)."""

    def __init__(self, ops: Sequence[Op], chunks: list[np.ndarray]) -> None:
        self.ops = ops
        self.last: dict[str, int] = {}
        for k, op in enumerate(ops):
            for i in op.inputs:
                self.last[i] = k
        self.states: list[dict[str, Act]] = [{"input": c} for c in chunks]

    def run(self, start: int, stop: int, grams: dict[str, Gram] | None, advance: bool) -> None:
        """Forward ops[start:stop] on every chunk; add each captured linear's input to ``grams``;
        with ``advance`` keep the results as the new states (else the states stay as they were)."""
        for c, state in enumerate(self.states):
            acts = dict(state)
            added: list[Gram] = []  # a Gram shared by several linears takes the input once
            for k in range(start, stop):
                op = self.ops[k]
                try:
                    xs = [acts[i] for i in op.inputs]
                except KeyError as e:
                    raise ValueError(
                        f"model: op {op.name!r} reads {e.args[0]!r}, which calibration cannot supply"
                    ) from None
                g = None if grams is None else grams.get(op.name)
                if g is not None and all(g is not h for h in added):
                    g.add(primary(xs[0]))
                    added.append(g)
                acts[op.name] = op.forward(*xs)
                for i in op.inputs:
                    if self.last.get(i, -1) <= k:
                        acts.pop(i, None)
            if advance:
                self.states[c] = {n: a for n, a in acts.items() if self.last.get(n, -1) >= stop}


def sparsify(
    model: Any,
    sparsity: float | None = None,
    *,
    nm: tuple[int, int] | None = None,
    method: str = "magnitude",
    calib: Any = None,
    nsamples: int = 128,
    seq_len: int | None = None,
    batch_size: int = 4,
    seed: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    sequential: bool = False,
    progress: bool = False,
) -> SparsifyReport:
    """Prune every block linear of a model with magnitude, Wanda or SparseGPT.

    Parameters
    ----------
    model : Model
        A model of the op protocol (:class:`sparseft.models.GPT`, :class:`~sparseft.models.Llama`, or
        any :class:`sparseft.models.Model`): every op with a ``block`` index that holds a
        :class:`~sparseft.LoRSLinear` as ``op.layer`` (and has one input) is pruned. Changed in place.
    sparsity : float in [0, 1), optional
        Fraction pruned in every linear (0.5 when neither it nor ``nm`` is given). Magnitude and
        Wanda prune it in every output row (as the Wanda paper does), SparseGPT over each block of
        columns (as its paper does); every layer loses exactly ``round(sparsity * in)`` weights
        per row, respectively ``round(sparsity * out * in)`` in all.
    nm : (n, m), optional
        N:M sparsity instead (e.g. ``(2, 4)``: keep 2 of every 4 consecutive inputs); every pruned
        layer's input dimension must be a multiple of ``m``.
    method : {"magnitude", "wanda", "sparsegpt"}
        ``"magnitude"``: keep the largest ``|W|`` (no calibration needed). ``"wanda"``: keep the
        largest ``|W_ij|·‖X_:j‖`` (Sun et al. 2023). ``"sparsegpt"``: OBS updates of the remaining
        weights (Frantar & Alistarh 2023, see :func:`sparseft.sparsegpt.sparsegpt`).
    calib : str, bytes, path, numpy.ndarray or None
        Calibration data, required by Wanda and SparseGPT (with magnitude it only serves the
        reported errors). For a language model: text, bytes or a text file (through the model's
        tokenizer, byte-level without one), or 1-D token ids, from which ``nsamples`` random
        windows of ``seq_len`` tokens are drawn; or a 2-D integer array (samples, seq) of ids used
        as is. For another model: an array of its inputs (samples, ...).
    nsamples : int
        Calibration windows drawn from text or 1-D ids (the papers use 128).
    seq_len : int, optional
        Window length, at most the model's ``config.seq_len``; default that or 2048 tokens (the
        papers' window), whichever is smaller.
    batch_size : int
        Calibration samples per forward (bounds the activation memory).
    seed : int
        Seed of the window positions.
    blocksize, percdamp
        SparseGPT's column block and damping (see :func:`sparseft.sparsegpt.sparsegpt`).
    sequential : bool
        False (both papers' default): all linears of a block are calibrated from one pass of the
        block with its dense weights. True (SparseGPT's "true sequential" option): group by group in
        op order, linears reading the same input forming a group (Llama: q/k/v, o, gate/up, down),
        each group calibrated on the inputs computed with the earlier groups of its block pruned.
    progress : bool
        Show a progress bar over the blocks (tqdm).

    Returns
    -------
    SparsifyReport
        Per-layer sparsity and reconstruction error (``print(report)`` shows a table).

    Raises
    ------
    TypeError
        ``model`` without ops, wrong argument types, ``calib`` of a type the model cannot use.
    ValueError
        ``sparsity`` outside [0, 1), both ``sparsity`` and ``nm``, an ``nm`` whose ``m`` does not
        divide a layer's input dimension, an unknown ``method``, missing or too short ``calib``,
        a model without block linears, or a layer with a trained adapter (merge it first).
        The model is unchanged after any error.
    """
    if not callable(getattr(model, "ops", None)):
        raise TypeError(f"model: expected a sparseft model (with ops()), got {type(model).__name__}")
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if sparsity is not None and nm is not None:
        raise ValueError(f"sparsity, nm: give one of them, got sparsity={sparsity!r} and nm={nm!r}")
    s, pair = check_sparsity_nm(0.5 if sparsity is None else sparsity, nm, None)
    nsamples = _check_int("nsamples", nsamples, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    blocksize, percdamp = check_options(blocksize, percdamp)
    for flag, value in (("sequential", sequential), ("progress", progress)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag}: expected a bool, got {type(value).__name__}")
    ops = model.ops()
    check_ops(ops)
    targets: dict[str, tuple[Op, LoRSLinear]] = {}
    for op in ops:
        layer = _linear_of(op)
        if layer is None or op.block is None:
            continue
        if pair is not None and layer.in_features % pair[1]:
            raise ValueError(
                f"nm: m = {pair[1]} does not divide the input dimension {layer.in_features} of layer {op.name!r}"
            )
        _check_untrained(op, layer)
        targets[op.name] = (op, layer)
    if not targets:
        raise ValueError("model: has no block linears (ops with a LoRSLinear `layer` and a block index)")
    if calib is None and method != "magnitude":
        raise ValueError(f"calib: method={method!r} needs calibration data (text or token ids), got None")

    def prune_layer(name: str, gram: Gram | None) -> None:
        layer = targets[name][1]
        W = layer.base.to_dense()  # the weight the op computes with (an adapter, if any, is untrained)
        Wn, mask = _prune_one(W, gram, method, s, pair, blocksize, percdamp)
        err = None if gram is None else reconstruction_error(W, Wn, gram)
        reports[name] = LayerReport(
            name, (layer.out_features, layer.in_features), float(1.0 - mask.mean()), err
        )
        new[name] = _rebuilt(layer, Wn, mask)

    reports: dict[str, LayerReport] = {}
    new: dict[str, tuple[LoRSLinear, dict[str, np.ndarray]]] = {}
    tokens = 0
    if calib is None:
        for name in targets:
            prune_layer(name, None)
    else:
        X = _calibration(model, calib, nsamples, seq_len, seed)
        chunks = [X[k : k + batch_size] for k in range(0, X.shape[0], batch_size)]
        runs = _runs(ops)
        last_run = max(k for k, (a, b) in enumerate(runs) if any(op.name in targets for op in ops[a:b]))
        passer = _Pass(ops, chunks)
        swapped: list[tuple[Op, LoRSLinear]] = []
        try:
            for k, (a, b) in enumerate(_progress(runs[: last_run + 1], progress)):
                for group in _groups(ops[a:b], targets, sequential):
                    grams: dict[str, Gram] = {}
                    shared: dict[str, Gram] = {}  # linears reading the same activation share its Gram
                    for op in group:
                        if op.inputs[0] not in shared:
                            shared[op.inputs[0]] = Gram(targets[op.name][1].in_features)
                        grams[op.name] = shared[op.inputs[0]]
                    # the group's inputs: earlier blocks (and groups) pruned, the group itself dense
                    passer.run(a, a + ops[a:b].index(group[-1]) + 1, grams, advance=False)
                    for name, g in grams.items():
                        tokens = tokens or g.tokens
                        prune_layer(name, g)
                        op, layer = targets[name]
                        swapped.append((op, layer))
                        op.layer = new[name][0]  # type: ignore[attr-defined]
                if k < last_run:
                    passer.run(a, b, None, advance=True)  # the next block's inputs, this block pruned
        finally:
            for op, layer in swapped:  # put back; installed below only once everything succeeded
                op.layer = layer  # type: ignore[attr-defined]
    for name, (op, _) in targets.items():
        _install(op, new[name][1])
    return SparsifyReport(method, s, pair, tokens, [reports[name] for name in targets])


def _install(op: Op, state: dict[str, np.ndarray]) -> None:
    """Load the pruned state into the op's own layer (the same object, so references to it stay
    valid); an op training its base values (``mode == "base"``) takes them afresh."""
    layer = _linear_of(op)
    assert layer is not None
    set_mode = getattr(op, "set_mode", None)
    if getattr(op, "mode", None) == "base" and callable(set_mode):
        set_mode("frozen")
        layer.load_state_dict(state)
        set_mode("base")
    else:
        layer.load_state_dict(state)


def _progress(runs: list[tuple[int, int]], on: bool) -> Iterator[tuple[int, int]]:
    if not on:
        return iter(runs)
    from tqdm.auto import tqdm

    return iter(tqdm(runs, desc="sparsify", unit="block"))
