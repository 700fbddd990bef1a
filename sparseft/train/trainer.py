"""The Trainer: fine-tune a model on the model-op protocol, under a memory budget it executes.

See ``docs/training.md`` for the step graph, the executor and the checkpoint format.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import pathlib
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sparseft.adapters import LoRSConfig
from sparseft.data.corpus import ArrayData, TokenData, as_dataset
from sparseft.distributed import DataParallel
from sparseft.models.graph import BATCH_NAMES, Model, check_ops, primary
from sparseft.remat import Planner, Schedule
from sparseft.remat.planner import SOLVERS
from sparseft.train import checkpoint as ckpt
from sparseft.train.executor import ActivationStore, execute
from sparseft.train.optim import SCHEDULES, AdamW, clip_grad_norm, lr_at
from sparseft.train.pool import BufferPool
from sparseft.train.stepgraph import (
    StepGraph,
    block_checkpoint_steps,
    build_step_graph,
    check_once,
    liveness_steps,
    schedule_of,
    typical_durations,
)

__all__ = ["History", "Trainer", "evaluate", "parse_bytes"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_FRACTION_RE = re.compile(r"^\s*([0-9]*\.[0-9]+|[0-9]+(?:\.[0-9]*)?(?=\s*%))\s*(%)?\s*$")
_BYTES_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([kmg]i?b|b)?\s*$", re.IGNORECASE)


def parse_bytes(value: Any, name: str = "memory_budget") -> int | float:
    """A byte count from an int or a str such as ``"64MiB"``/``"1.5GB"``/``"4096"``, or a fraction of
    the no-recompute activation peak from a float in (0, 1] or a str such as ``"0.5"``/``"50%"``.

    A fraction is returned as a float.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected bytes (int or str like '64MiB') or a fraction in (0, 1], got bool")
    if isinstance(value, (int, np.integer)):
        if value <= 0:
            raise ValueError(f"{name}: expected a positive number of bytes, got {value}")
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not (0.0 < float(value) <= 1.0):
            raise ValueError(f"{name}: a float is a fraction of the no-recompute peak in (0, 1], got {value}")
        return float(value)
    if isinstance(value, str):
        frac = _FRACTION_RE.match(value)
        if frac is not None:
            f = float(frac.group(1)) / (100.0 if frac.group(2) else 1.0)
            if not 0.0 < f <= 1.0:
                raise ValueError(
                    f"{name}: a fraction of the no-recompute peak must be in (0, 1], got {value!r}"
                )
            return f
        m = _BYTES_RE.match(value)
        if m is None:
            raise ValueError(f"{name}: expected a size like '64MiB', '512KB' or '1.5GiB', got {value!r}")
        n = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
        if n <= 0:
            raise ValueError(f"{name}: expected a positive size, got {value!r}")
        return n
    raise TypeError(
        f"{name}: expected bytes (int or str like '64MiB') or a fraction in (0, 1], got {type(value).__name__}"
    )


def _number(name: str, value: Any, lo: float, lo_open: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < lo or (lo_open and v == lo):
        raise ValueError(f"{name}: expected a finite number {'>' if lo_open else '>='} {lo}, got {value!r}")
    return v


def _int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= {lo}, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {value}")
    return int(value)


@dataclasses.dataclass
class History:
    """What :meth:`Trainer.fit` records: one entry per optimizer step, and one per evaluation.

    Attributes
    ----------
    step, loss, lr, tokens_per_s, peak_bytes, grad_norm : list
        Per optimizer step: its 1-based number, mean training loss over its micro-batches, the
        learning rate used, tokens (or rows) per second of the whole step, the activation
        store's peak bytes, and the gradient norm before clipping.
    eval_step, eval_loss, eval_metric : list
        Per evaluation: the step, the loss, and perplexity (tokens) or accuracy (arrays).
    """

    step: list[int] = dataclasses.field(default_factory=list)
    loss: list[float] = dataclasses.field(default_factory=list)
    lr: list[float] = dataclasses.field(default_factory=list)
    tokens_per_s: list[float] = dataclasses.field(default_factory=list)
    peak_bytes: list[int] = dataclasses.field(default_factory=list)
    grad_norm: list[float] = dataclasses.field(default_factory=list)
    eval_step: list[int] = dataclasses.field(default_factory=list)
    eval_loss: list[float] = dataclasses.field(default_factory=list)
    eval_metric: list[float] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, list[Any]]:
        """The lists by name (JSON-ready)."""
        return dataclasses.asdict(self)

    def __len__(self) -> int:
        return len(self.step)


def _count(v: Any, name: str) -> int:
    """A saved step counter: an int in [0, 2**62] (not a bool, str or float)."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 2**62:
        raise ValueError(f"{name}: expected an int in [0, 2**62], got {v!r}")
    return v


def _history_of(d: Any) -> History:
    """A saved :class:`History`: lists of numbers, the per-step lists of one length and the
    per-evaluation lists of another."""
    if not isinstance(d, dict):
        raise TypeError(f"history: expected an object, got {type(d).__name__}")
    h = History(**d)
    lists = dataclasses.asdict(h)
    for k, v in lists.items():
        if not isinstance(v, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v
        ):
            raise ValueError(f"history.{k}: expected a list of numbers")
    for group in (
        ("step", "loss", "lr", "tokens_per_s", "peak_bytes", "grad_norm"),
        ("eval_step", "eval_loss", "eval_metric"),
    ):
        if len({len(lists[k]) for k in group}) > 1:
            raise ValueError(f"history: {', '.join(group)} have different lengths")
    return h


def _model_ops(model: Any) -> list[Any]:
    if not isinstance(model, Model):
        raise TypeError(f"model: expected a sparseft.models.graph.Model, got {type(model).__name__}")
    ops = model.ops()
    check_ops(ops)
    return ops


def _attach_adapter(model: Model, adapter: LoRSConfig | None) -> None:
    """Make the model train LoRS adapters (``adapter``) or its own sparse weights (None).

    With an adapter: ``model.add_adapters(adapter, target_modules)`` (GPT/Llama); ``target_modules``
    comes from the config (None: every block linear). Without one, a model
    that has no trainable parameters yet and a ``train_base()`` (GPT/Llama) switches to sparse full
    fine-tuning; a model that already has trainable parameters trains them as they are.
    """
    if adapter is not None:
        hook = getattr(model, "add_adapters", None)
        if hook is None:
            raise TypeError(
                f"adapter: {type(model).__name__} has no add_adapters(), so it cannot take LoRS adapters"
            )
        if adapter.init == "lors":  # A from the gradient SVD later (Trainer.init_lors); "lora" until then
            adapter = dataclasses.replace(adapter, init="lora")
        hook(adapter, adapter.target_modules)
    elif not model.parameters() and hasattr(model, "train_base"):
        model.train_base(True)


def _vocab_size(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    v = getattr(cfg, "vocab_size", None) if cfg is not None else getattr(model, "vocab_size", None)
    return int(v) if isinstance(v, (int, np.integer)) else None


POOL_SHARE = 0.8
"""The buffer pool's limit as a share of the schedule's planned activation peak: live + pooled
bytes stay within it. The rest is headroom for the allocator's own free blocks (glibc keeps freed
arrays for reuse too): on the benchmark GPT the process's peak RSS rose about 2.5% with the whole
peak, 1% with 0.9, and matched the run without a pool within noise with 0.8 (benchmarks/RESULTS.md)."""


def _pool_limit(sched: Schedule) -> int:
    """The buffer pool's limit (bytes) for a schedule: ``POOL_SHARE`` of its simulated peak."""
    peak = sched.peak_memory
    return 0 if peak is None else int(POOL_SHARE * int(peak))


class Trainer:
    """Fine-tune a model's sparse weights or its LoRS adapters, under an executed memory budget.

    Parameters
    ----------
    model : sparseft.models.graph.Model
        A GPT-2/Llama (:mod:`sparseft.models`), the MLP, or any model on the model-op protocol.
    adapter : LoRSConfig or None
        Train sparsity-preserving LoRS adapters with these settings on every block linear (the
        base stays frozen); None trains the model's own parameters (for a pruned GPT/Llama: the
        sparse base weights, masks kept).
    lr : float
        Peak learning rate.
    weight_decay : float
        Decoupled AdamW weight decay (on matrices only, see :class:`~sparseft.train.optim.AdamW`).
    schedule : {"cosine", "linear", "constant"}
        Learning-rate decay after the warmup, over the ``steps`` of :meth:`fit`.
    warmup : int
        Linear warmup steps.
    grad_clip : float or None
        Clip the global gradient norm to this (None: no clipping).
    accumulate : int
        Micro-batches per optimizer step (gradients averaged).
    memory_budget : int, str, float or None
        Bytes of activations a step may hold: an int, a size such as ``"64MiB"``, or a float in
        (0, 1] (a fraction of the step's no-recompute activation peak). None: no budget (keep
        every activation until its backward). With a budget the Planner's schedule is executed:
        activations are freed and recomputed as planned, with bit-identical results.
    planner : str
        The Planner's solver (``"moccasin"``, ``"checkmate"``, ``"chen"``, ``"greedy"``, ...).
    seed : int
        Seed of the batch sampler (and the planner). Runs are deterministic for a fixed seed and
        thread count.
    plan_time_limit : float
        Seconds the Planner may spend on one batch shape (plans are cached per shape and budget).
    comm : mpi4py.MPI.Intracomm or sparseft.distributed.DataParallel, optional
        Train data-parallel over these MPI ranks (e.g. :func:`sparseft.distributed.init` under
        ``mpirun``/``srun``): every rank runs this same program, takes its slice of each global
        batch, and the trainable gradients are averaged across ranks, so P ranks with a global
        batch B follow the single-process run with batch B. Rank 0 writes checkpoints and
        exports and shows the progress bar; ``memory_budget`` applies per rank. See
        ``docs/distributed.md``. Needs ``pip install "sparseft[mpi]"``.
    sync_weights : {"check", "broadcast"}
        With ``comm``: compare a SHA-256 of every rank's weights at start and raise if they
        differ ("check"), or copy rank 0's weights to the ranks that differ ("broadcast").
    reuse_buffers : bool or "auto"
        Keep the buffers of freed activations and hand them back as the outputs of later ops
        (the norms, attention, residual adds, activations and gradient sums), instead of fresh
        memory that page-faults on first touch: a :class:`~sparseft.train.pool.BufferPool` that
        only takes buffers nothing else references, and holds them only while the live
        activations plus the pooled bytes stay within 80% of the schedule's planned peak
        (released at the end of :meth:`fit` and before an evaluation). Results are bit-identical either way;
        False allocates every output afresh. ``"auto"`` (the default) reuses when the executed
        schedule recomputes nothing (no budget, or one the whole step fits in): there it saves
        most page faults; under a recomputing budget the allocator already recycles the memory
        the schedule keeps freeing, and a pool only adds resident memory (measured in
        benchmarks/RESULTS.md).

    Attributes
    ----------
    plan : Schedule or None
        The schedule executed by the last step.
    peak_activation_bytes : int
        The activation store's measured peak over the last :meth:`fit` (bytes).
    step : int
        Optimizer steps taken so far.
    history : History
    reuse_stats : dict
        The buffer pool's counters over the last :meth:`fit` (``hits``, ``misses``,
        ``reused_bytes``, ``released``, see :meth:`sparseft.train.pool.BufferPool.stats`); empty
        with ``reuse_buffers=False``.
    """

    def __init__(
        self,
        model: Model,
        adapter: LoRSConfig | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        schedule: str = "cosine",
        warmup: int = 0,
        grad_clip: float | None = 1.0,
        accumulate: int = 1,
        memory_budget: int | str | float | None = None,
        planner: str = "moccasin",
        seed: int = 0,
        plan_time_limit: float = 30.0,
        comm: Any = None,
        sync_weights: str = "check",
        reuse_buffers: bool | str = "auto",
    ) -> None:
        _model_ops(model)
        if sync_weights not in ("check", "broadcast"):
            raise ValueError(f"sync_weights: expected 'check' or 'broadcast', got {sync_weights!r}")
        self.dp: DataParallel | None = (
            comm if comm is None or isinstance(comm, DataParallel) else DataParallel(comm)
        )
        if adapter is not None and not isinstance(adapter, LoRSConfig):
            raise TypeError(f"adapter: expected a sparseft.LoRSConfig or None, got {type(adapter).__name__}")
        self.lr = _number("lr", lr, 0.0, lo_open=True)
        self.weight_decay = _number("weight_decay", weight_decay, 0.0)
        if not isinstance(schedule, str) or schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
        self.schedule = schedule
        self.warmup = _int("warmup", warmup, 0)
        self.grad_clip = None if grad_clip is None else _number("grad_clip", grad_clip, 0.0, lo_open=True)
        self.accumulate = _int("accumulate", accumulate, 1)
        self.memory_budget = None if memory_budget is None else parse_bytes(memory_budget)
        if not isinstance(planner, str) or planner not in SOLVERS:
            raise ValueError(f"planner: expected one of {SOLVERS}, got {planner!r}")
        self.planner = planner
        self.seed = _int("seed", seed, 0)
        self.plan_time_limit = _number("plan_time_limit", plan_time_limit, 0.0, lo_open=True)
        if not isinstance(reuse_buffers, (bool, str)):
            raise TypeError(f"reuse_buffers: expected a bool or 'auto', got {type(reuse_buffers).__name__}")
        if isinstance(reuse_buffers, str) and reuse_buffers != "auto":
            raise ValueError(f"reuse_buffers: expected True, False or 'auto', got {reuse_buffers!r}")
        self.reuse_buffers = reuse_buffers
        self.adapter = adapter
        _attach_adapter(model, adapter)
        self._lors_pending = adapter is not None and adapter.init == "lors"  # fit() runs init_lors first
        self.model = model
        params = model.parameters()
        if not params:
            raise ValueError("model: has no trainable parameters")
        if self.dp is not None:
            self._sync_weights(sync_weights == "broadcast")
        self.optimizer = AdamW(params, weight_decay=self.weight_decay)  # type: ignore[arg-type]
        self.rng = np.random.default_rng(self.seed)
        self.step = 0
        self.history = History()
        self.plan: Schedule | None = None
        self.peak_activation_bytes = 0
        self.reuse_stats: dict[str, int] = {}
        self._plans: dict[tuple[int, int, int | float | None], tuple[StepGraph, Schedule]] = {}
        self._profiled: set[tuple[int, int, int | float | None]] = (
            set()
        )  # plans solved with measured durations

    # ------------------------------------------------------------------ config
    def config(self) -> dict[str, Any]:
        """The constructor's settings (JSON-ready, without the model and adapter)."""
        return {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "schedule": self.schedule,
            "warmup": self.warmup,
            "grad_clip": self.grad_clip,
            "accumulate": self.accumulate,
            "memory_budget": self.memory_budget,
            "planner": self.planner,
            "seed": self.seed,
            "plan_time_limit": self.plan_time_limit,
            "reuse_buffers": self.reuse_buffers,
        }

    # ---------------------------------------------------------------- ranks
    @property
    def rank(self) -> int:
        """This process's rank (0 without ``comm``)."""
        return 0 if self.dp is None else self.dp.rank

    @property
    def world_size(self) -> int:
        """The number of data-parallel ranks (1 without ``comm``)."""
        return 1 if self.dp is None else self.dp.size

    def _sync_weights(self, broadcast: bool) -> None:
        assert self.dp is not None
        params = self.model.parameters()
        state = {f"state.{k}": np.ascontiguousarray(v) for k, v in self.model.state_dict().items()}
        arrays = {f"param.{k}": v for k, v in params.items()} | state
        if self.dp.check_weights(arrays, broadcast):
            self.model.load_state_dict({k[len("state.") :]: v for k, v in state.items()})
            for k, v in params.items():
                v[...] = arrays[f"param.{k}"]

    def _on_rank0(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only; every rank returns its result or raises its error."""
        if self.dp is None:
            return fn()
        result: Any = None
        failure: Exception | None = None
        if self.dp.rank == 0:
            try:
                result = fn()
            except Exception as e:
                failure = e
        error = None if failure is None else f"{type(failure).__name__}: {failure}"
        result, error = self.dp.comm.bcast((result, error), root=0)
        if failure is not None:
            raise failure
        if error is not None:
            raise RuntimeError(f"{what} failed on rank 0: {error}")
        return result

    # ---------------------------------------------------------------- planning
    def _reuses(self, sched: Schedule) -> bool:
        """Whether steps by ``sched`` draw outputs from a buffer pool (see ``reuse_buffers``)."""
        if self.reuse_buffers == "auto":
            return sched.solver == "none"  # a schedule that recomputes nothing
        return bool(self.reuse_buffers)

    def _unbudgeted(self, sg: StepGraph) -> Schedule:
        steps = liveness_steps(sg.graph, [*range(sg.n_ops), *sg.backward_nodes()])
        peak = sg.graph.peak_memory()
        return schedule_of(sg, steps, peak, "none", "optimal")

    def _budget_bytes(self, sg: StepGraph) -> int:
        b = self.memory_budget
        assert b is not None
        peak = sg.graph.peak_memory()
        value = math.floor(b * peak) if isinstance(b, float) else int(b)
        need, node = sg.graph.min_budget()
        if value < need:
            raise ValueError(
                f"memory_budget: {value} bytes is below the minimum {need} bytes any schedule of this step "
                f"needs (at batch {sg.batch} x {sg.seq}: computing {sg.graph.label(node)!r} holds its output and "
                f"inputs); the no-recompute peak is {peak} bytes"
            )
        return value

    def _solve(self, sg: StepGraph, budget: int, time_limit: float, use_planner: bool = True) -> Schedule:
        """The best valid schedule within ``budget``: no recomputation when it fits, else the
        Planner's or per-block checkpointing (the Planner only when ``use_planner`` or when
        per-block checkpointing does not fit)."""
        candidates: list[Schedule] = []
        free = self._unbudgeted(sg)
        if free.peak_memory is not None and free.peak_memory <= budget:
            return Schedule(sg.graph, free.codes, status="optimal", solver="none", budget=budget)
        try:
            blocks = schedule_of(sg, block_checkpoint_steps(sg), budget, "blocks", "feasible")
            if blocks.peak_memory is not None and blocks.peak_memory <= budget:
                candidates.append(blocks)
        except ValueError:
            pass
        if candidates and not use_planner:
            return candidates[0]
        plan = Planner(sg.graph, budget, solver=self.planner, time_limit=time_limit, seed=self.seed).solve()
        if plan.steps:
            try:
                check_once(sg, plan.steps)  # type: ignore[arg-type]
                candidates.append(plan)
            except ValueError:
                pass  # a planner without exactly-once support recomputed a gradient accumulation
        if not candidates:
            raise ValueError(
                f"memory_budget: no schedule of this step fits {budget} bytes (planner {self.planner!r}, "
                f"status {plan.status!r}, {time_limit:g} s); the no-recompute peak is {free.peak_memory} bytes"
            )
        return min(candidates, key=lambda s: (s.duration or 0, s.peak_memory or 0))

    def plan_for(self, batch_size: int, seq_len: int) -> tuple[StepGraph, Schedule]:
        """The step graph and schedule for this batch shape (cached per shape and budget).

        Raises
        ------
        ValueError
            If the budget is below the minimum any schedule needs (the message names it), or no
            schedule within it is found.
        """
        key = (batch_size, seq_len, self.memory_budget)
        if key not in self._plans:
            sg = build_step_graph(_model_ops(self.model), batch_size, seq_len)
            if self.memory_budget is None:
                sched = self._unbudgeted(sg)
            else:
                # a first schedule without a profile (per-block checkpointing where it fits);
                # fit() re-plans with the durations measured in its first step
                sched = self._solve(sg, self._budget_bytes(sg), self.plan_time_limit, use_planner=False)
            self._plans[key] = (sg, sched)
        return self._plans[key]

    def _replan_with_profile(self, key: tuple[int, int, Any], durations: dict[int, int]) -> None:
        sg, old = self._plans[key]
        if self.memory_budget is None or old.solver == "none":
            return  # nothing is recomputed: durations cannot change the schedule
        # typical durations (the median of each kind of node): stable plans on a noisy host
        sg2 = build_step_graph(sg.ops, sg.batch, sg.seq, typical_durations(sg, durations))
        self._plans[key] = (sg2, self._solve(sg2, old.budget, self.plan_time_limit))

    # ---------------------------------------------------------------- training
    def _check_fit_args(self, steps: Any, batch_size: Any, seq_len: Any) -> tuple[int, int, int]:
        return _int("steps", steps, 1), _int("batch_size", batch_size, 1), _int("seq_len", seq_len, 1)

    def _dataset(self, data: Any, name: str) -> TokenData | ArrayData:
        return as_dataset(data, getattr(self.model, "tokenizer", None), _vocab_size(self.model), name)

    def fit(
        self,
        data: Any,
        steps: int,
        batch_size: int = 8,
        seq_len: int = 64,
        progress: bool = True,
        eval_data: Any = None,
        eval_every: int | None = None,
        callbacks: Sequence[Callable[[Trainer, dict[str, Any]], bool | None]] = (),
    ) -> History:
        """Train until optimizer step ``steps`` (the run's length and the schedule's horizon).

        A trainer loaded from a checkpoint at step k continues with step k + 1: calling ``fit``
        with the same arguments resumes the run bit-identically.

        Parameters
        ----------
        data : token ids, bytes, str, path, or (X, y)
            See :func:`sparseft.data.as_dataset` (text goes through the model's tokenizer when it
            has one, bytes otherwise).
        steps : int
            Total optimizer steps of the run.
        batch_size, seq_len : int
            Rows per micro-batch and tokens per row (``seq_len`` is ignored for ``(X, y)`` data).
        progress : bool
            Show a tqdm bar with loss, tokens/s and peak activation memory.
        eval_data : optional
            Evaluated every ``eval_every`` steps and at the end (see :meth:`evaluate`).
        eval_every : int, optional
            Steps between evaluations (default: only at the end).
        callbacks : sequence of callables
            ``cb(trainer, record)`` after each step (``record``: that step's history entry);
            returning ``False`` stops the run after the step.

        With ``comm``, every rank calls ``fit`` with the same arguments: ``batch_size`` is the
        global batch (a multiple of the number of ranks; each rank computes ``batch_size / P``
        rows of it), the history records the loss averaged over the ranks and the tokens/s of
        the whole job, callbacks run on every rank, and an exception on any rank aborts all.

        Returns
        -------
        History
            This trainer's history (every step so far, across resumed runs).

        Raises
        ------
        TypeError, ValueError
            Before the first step: wrong types, empty or too-short data, ids outside the
            vocabulary, a memory budget below the minimum.
        """
        steps, batch_size, seq_len = self._check_fit_args(steps, batch_size, seq_len)
        ds = self._dataset(data, "data")
        if isinstance(ds, ArrayData):
            seq_len = 1
        _check_seq_len(self.model, seq_len)
        ds.check(batch_size, seq_len, "data")
        eval_ds = None
        if eval_data is not None:
            eval_ds = self._dataset(eval_data, "eval_data")
            eval_ds.check(1, seq_len, "eval_data")
        if eval_every is not None:
            eval_every = _int("eval_every", eval_every, 1)
        for cb in callbacks:
            if not callable(cb):
                raise TypeError(f"callbacks: expected callables, got {type(cb).__name__}")
        if self._lors_pending and self.step == 0:
            self.init_lors(ds, batch_size=batch_size, seq_len=seq_len)
        dp = self.dp
        rows = slice(0, batch_size) if dp is None else dp.shard(batch_size)
        key = (rows.stop - rows.start, seq_len, self.memory_budget)
        fresh = key not in self._profiled
        sg, sched = self.plan_for(rows.stop - rows.start, seq_len)
        self.plan = sched
        pool = BufferPool(_pool_limit(sched)) if self._reuses(sched) else None
        store = ActivationStore(pool)
        self.peak_activation_bytes = 0
        tokens = batch_size * seq_len * self.accumulate
        bar = None
        if progress and self.step < steps and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, initial=self.step, desc="fit", unit="step")
        if dp is not None:
            dp.prepare(sg.ops, self.model.gradients())
        try:
            while self.step < steps:
                t0 = time.perf_counter()
                store.peak = 0
                self.model.zero_grad()
                total = 0.0
                durations: dict[int, int] | None = {} if fresh else None
                for micro in range(self.accumulate):
                    x, y = ds.sample(self.rng, batch_size, seq_len)
                    hook = None
                    if dp is not None:  # this rank's rows; gradients all-reduced in the last backward
                        x, y = x[rows], y[rows]
                        if micro == self.accumulate - 1:
                            dp.arm()
                            hook = dp.on_backward
                    total += execute(sg, sched.codes, x, y, store, durations, hook)
                if dp is not None:
                    total = dp.finish(total)
                grads = self.model.gradients()
                if self.accumulate > 1:
                    inv = np.float32(1.0 / self.accumulate)
                    for g in grads.values():
                        g *= inv
                norm = clip_grad_norm(grads, self.grad_clip)
                lr = lr_at(self.step, self.lr, steps, self.warmup, self.schedule)
                self.optimizer.step(grads, lr)
                self.step += 1
                dt = time.perf_counter() - t0
                loss = total / self.accumulate
                h = self.history
                h.step.append(self.step)
                h.loss.append(loss)
                h.lr.append(lr)
                h.tokens_per_s.append(tokens / dt)
                h.peak_bytes.append(int(store.peak))
                h.grad_norm.append(norm)
                self.peak_activation_bytes = max(self.peak_activation_bytes, int(store.peak))
                record: dict[str, Any] = {
                    "step": self.step,
                    "loss": loss,
                    "lr": lr,
                    "tokens_per_s": tokens / dt,
                    "peak_bytes": int(store.peak),
                    "grad_norm": norm,
                }
                if fresh and durations is not None:
                    self._replan_with_profile(key, durations)
                    self._profiled.add(key)
                    sg, sched = self._plans[key]
                    self.plan = sched
                    if pool is not None:
                        pool.set_limit(_pool_limit(sched) if self._reuses(sched) else 0)
                    fresh = False
                if eval_ds is not None and (
                    (eval_every is not None and self.step % eval_every == 0) or self.step == steps
                ):
                    if pool is not None:
                        pool.clear()  # the evaluation allocates its own; the pool refills next step
                    ev = self.evaluate(eval_ds, batch_size=batch_size, seq_len=seq_len)
                    h.eval_step.append(self.step)
                    h.eval_loss.append(ev["loss"])
                    metric = ev.get("perplexity", ev.get("accuracy"))
                    h.eval_metric.append(float(metric) if metric is not None else float("nan"))
                    record["eval"] = ev
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{loss:.4f}", tok_s=f"{tokens / dt:.0f}", peak=f"{store.peak / 2**20:.1f}MiB"
                    )
                    bar.update(1)
                stop = [cb(self, record) for cb in callbacks]
                if any(s is False for s in stop):
                    break
        except BaseException as e:
            if dp is not None:
                dp.abort(e)
            raise
        finally:
            if bar is not None:
                bar.close()
            if pool is not None:
                self.reuse_stats = pool.stats()
                pool.clear()  # nothing is held between fits
        return self.history

    def init_lors(
        self,
        data: Any,
        batches: int = 4,
        batch_size: int = 8,
        seq_len: int = 64,
        lors_scale: str | float = "lora",
    ) -> dict[str, float]:
        """The "lors" gradient-SVD init of every adapter: A from the SVD of G ⊙ M estimated over
        ``batches`` calibration batches run by this trainer's step; B = 0. ``fit`` runs it (4
        batches of its batch shape) when the adapter config says ``init="lors"`` and this has not
        run; see :func:`sparseft.train.lors_init.init_lors` for the arguments and errors."""
        from sparseft.train.lors_init import init_lors

        norms = init_lors(self, data, batches, batch_size, seq_len, lors_scale)
        self._lors_pending = False
        return norms

    # -------------------------------------------------------------- evaluation
    def evaluate(self, data: Any, batch_size: int = 8, seq_len: int = 64) -> dict[str, float]:
        """:func:`evaluate` on this trainer's model (with ``comm``: the windows shared out across
        the ranks and the sums reduced, the same result on every rank)."""
        return evaluate(self.model, data, batch_size, seq_len, comm=self.dp)

    # ---------------------------------------------------------------- shipping
    def merge(self) -> Model:
        """Fold the adapters into the sparse bases (every pruned zero kept) and return the model.

        The model then holds no adapters; ``model.save_pretrained(dir)`` writes the merged, still
        sparse weights that ``transformers`` loads. The trainer cannot train afterwards.

        Raises
        ------
        ValueError
            If the trainer has no adapter (nothing to merge).
        """
        if self.adapter is None:
            raise ValueError(
                "merge: the trainer trains the model's own weights (adapter=None); nothing to merge"
            )
        merger = getattr(self.model, "merge_adapters", None)
        if merger is None:
            raise TypeError(f"model: {type(self.model).__name__} has no merge_adapters()")
        merger()
        self._plans.clear()
        self._profiled.clear()
        self.optimizer = AdamW({}, weight_decay=self.weight_decay)
        return self.model

    def export_peft(
        self, path: str | os.PathLike[str], base_model_name_or_path: str | None = None
    ) -> list[str]:
        """Write the adapters as a PEFT adapter directory (``adapter_config.json`` and
        ``adapter_model.safetensors``) that ``peft.PeftModel.from_pretrained`` loads onto the
        ``transformers`` model; returns the adapted module names.

        PEFT's forward adds the UNMASKED product s·B A, so the PEFT model fills in the pruned zeros
        and is not the sparse model trained here; a UserWarning says so at every export. To keep
        the sparsity, ship :meth:`merge` + ``save_pretrained``. See
        :func:`sparseft.train.peft_export.export_peft`.
        """
        from sparseft.train.peft_export import export_peft

        if self.adapter is None:
            raise ValueError("export_peft: the trainer has no adapter (adapter=None trains the base weights)")
        return self._on_rank0("export_peft", lambda: export_peft(self.model, path, base_model_name_or_path))

    # ---------------------------------------------------------------- checkpoints
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a checkpoint directory atomically (a temporary sibling renamed into place).

        Holds the model (``model/`` via ``save_pretrained`` when the model has it, else
        ``model.npz`` of its state dict), the trainable parameters and AdamW moments
        (``state.npz``), and ``trainer.json``: settings, adapter config, step, sampler state,
        history and the size and SHA-256 of every file. With ``comm`` every rank calls it and
        rank 0 writes (the ranks hold the same weights); the others wait until it is written.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        self._on_rank0("save", lambda: self._write(path))

    def _write(self, path: str | os.PathLike[str]) -> None:
        arrays = {f"param.{k}": v for k, v in self.model.parameters().items()}
        arrays.update(self.optimizer.state())
        with ckpt.atomic_dir(path) as tmp:
            saver = getattr(self.model, "save_pretrained", None)
            if saver is not None:
                saver(tmp / "model")
            else:
                ckpt.write_arrays(tmp / "model.npz", self.model.state_dict())
            ckpt.write_arrays(tmp / "state.npz", arrays)
            ckpt.write_manifest(
                tmp,
                {
                    "trainer": self.config(),
                    "adapter": None if self.adapter is None else dataclasses.asdict(self.adapter),
                    "model_class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
                    "step": self.step,
                    "optimizer_t": self.optimizer.t,
                    "rng": self.rng.bit_generator.state,
                    "history": self.history.as_dict(),
                },
            )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model: Model | None = None,
        comm: Any = None,
        sync_weights: str = "check",
    ) -> Trainer:
        """Restore a trainer saved by :meth:`save`; training then continues bit-identically.

        Parameters
        ----------
        path : str or os.PathLike
        model : Model, optional
            The model to load into (required for models without ``save_pretrained``); by default
            ``sparseft.models.from_pretrained(path / "model")``.
        comm, sync_weights : optional
            As for :class:`Trainer`: every rank loads the same checkpoint (from a shared file
            system); the number of ranks may differ from the run that saved it.

        Raises
        ------
        ValueError
            Naming the file: a missing, truncated or corrupted file, or arrays that do not match
            the model.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        root = pathlib.Path(path)
        doc = ckpt.read_manifest(root)
        try:
            conf = dict(doc["trainer"])
            adapter_d = doc["adapter"]
            step, opt_t, rng_state, hist = doc["step"], doc["optimizer_t"], doc["rng"], doc["history"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"checkpoint file {str(root / ckpt.MANIFEST)!r}: missing entry {e}") from None
        if model is None:
            if not (root / "model").is_dir():
                raise ValueError(
                    f"model: the checkpoint {str(root)!r} holds no model/ directory; pass model="
                )
            from sparseft import models

            model = models.from_pretrained(root / "model")  # type: ignore[attr-defined]
        elif (root / "model.npz").is_file():
            model.load_state_dict(ckpt.read_arrays(root / "model.npz"))
        elif (root / "model").is_dir():
            from sparseft import models

            model.load_state_dict(models.from_pretrained(root / "model").state_dict())
        try:
            adapter = None if adapter_d is None else LoRSConfig(**adapter_d)
            trainer = cls(model, adapter=adapter, **conf, comm=comm, sync_weights=sync_weights)
        except TypeError as e:
            raise ValueError(f"checkpoint file {str(root / ckpt.MANIFEST)!r}: bad settings: {e}") from None
        arrays = ckpt.read_arrays(root / "state.npz")
        params = trainer.model.parameters()
        expected = {f"param.{k}" for k in params} | set(trainer.optimizer.state())
        if set(arrays) != expected:
            missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
            raise ValueError(
                f"checkpoint file {str(root / 'state.npz')!r} does not match the model: missing {missing[:5]}, "
                f"unexpected {extra[:5]}"
            )
        live = {f"param.{k}": v for k, v in params.items()} | trainer.optimizer.state()
        for k, dst in live.items():
            src = arrays[k]
            if src.shape != dst.shape or src.dtype != dst.dtype:
                raise ValueError(
                    f"checkpoint file {str(root / 'state.npz')!r}: {k} has {src.dtype}{src.shape}, "
                    f"expected {dst.dtype}{dst.shape}"
                )
        try:
            history = _history_of(hist)
            trainer.rng.bit_generator.state = rng_state
            step, opt_t = _count(step, "step"), _count(opt_t, "optimizer_t")
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(
                f"checkpoint file {str(root / ckpt.MANIFEST)!r}: bad trainer state: {e}"
            ) from None
        for k, dst in live.items():
            dst[...] = arrays[k]
        trainer.step = step
        trainer.optimizer.t = opt_t
        trainer.history = history
        if trainer.dp is not None:  # every rank read the same files: make sure they agree
            trainer.dp.check_weights(live, sync_weights == "broadcast")
        return trainer


def evaluate(
    model: Model, data: Any, batch_size: int = 8, seq_len: int = 64, comm: Any = None
) -> dict[str, float]:
    """Mean loss of ``model`` over every non-overlapping window of ``data`` (forward only; nothing
    trained, the model is not changed).

    Parameters
    ----------
    model : Model
    data : token ids, bytes, str, path, or (X, y)
        As for :meth:`Trainer.fit`.
    batch_size, seq_len : int
        Windows per forward and tokens per window (``seq_len`` is ignored for ``(X, y)``).
    comm : mpi4py.MPI.Intracomm or sparseft.distributed.DataParallel, optional
        Share the batches out across the ranks (batch k on rank k mod P) and sum the losses
        and counts over them; every rank returns the same result.

    Returns
    -------
    dict
        ``loss`` and ``perplexity`` = exp(loss) for token data; ``loss`` and ``accuracy``
        (argmax of the loss op's input) for ``(X, y)`` data.
    """
    ops = _model_ops(model)
    batch_size = _int("batch_size", batch_size, 1)
    seq_len = _int("seq_len", seq_len, 1)
    ds = as_dataset(data, getattr(model, "tokenizer", None), _vocab_size(model), "data")
    if isinstance(ds, ArrayData):
        seq_len = 1
    _check_seq_len(model, seq_len)
    ds.check(1, seq_len, "data")
    dp = comm if comm is None or isinstance(comm, DataParallel) else DataParallel(comm)
    total, count, correct = 0.0, 0, 0
    batches = ds.windows(batch_size, seq_len)
    if dp is not None:
        batches = batches[dp.rank :: dp.size]
    for x, y in batches:
        loss, logits = _forward_only(ops, x, y)
        total += loss * y.size
        count += y.size
        if isinstance(ds, ArrayData) and logits is not None and logits.shape == (y.size, logits.shape[-1]):
            correct += int((logits.argmax(axis=1) == y).sum())
    if dp is not None:
        red = dp.allreduce_sum(np.array([total, count, correct]), "evaluation")
        total, count, correct = float(red[0]), int(red[1]), int(red[2])
    mean = total / count
    out = {"loss": mean}
    if isinstance(ds, ArrayData):
        out["accuracy"] = correct / count
    else:
        out["perplexity"] = math.exp(min(mean, 700.0))
    return out


def _check_seq_len(model: Any, seq_len: int) -> None:
    limit = getattr(getattr(model, "config", None), "seq_len", None)
    if isinstance(limit, int) and seq_len > limit:
        raise ValueError(f"seq_len: the model has {limit} positions, got seq_len={seq_len}")


def _forward_only(ops: list[Any], x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray | None]:
    """The loss of one batch with every activation freed after its last forward read; also the
    primary input of the loss op (logits, for accuracy)."""
    last: dict[str, int] = {}
    for i, op in enumerate(ops):
        for s in op.inputs:
            last[s] = i
    acts: dict[str, Any] = {"input": x, "target": y}
    loss_in = ops[-1].inputs[0]
    logits = None
    for i, op in enumerate(ops):
        out = op.forward(*(acts[s] for s in op.inputs))
        for s in set(op.inputs):
            if last[s] == i and s not in BATCH_NAMES:
                if s == loss_in:
                    logits = primary(acts[s])
                del acts[s]
        acts[op.name] = out
    return float(primary(acts[ops[-1].name])), logits
