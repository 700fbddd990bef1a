"""The Trainer: fine-tuning with LoRS adapters under a memory budget that the Planner's schedule enforces."""

from sparseft.train.executor import ActivationStore, execute
from sparseft.train.optim import AdamW, clip_grad_norm, lr_at
from sparseft.train.stepgraph import StepGraph, block_checkpoint_steps, build_step_graph
from sparseft.train.trainer import History, Trainer, evaluate, parse_bytes

__all__ = [
    "ActivationStore",
    "AdamW",
    "History",
    "StepGraph",
    "Trainer",
    "block_checkpoint_steps",
    "build_step_graph",
    "clip_grad_norm",
    "evaluate",
    "execute",
    "lr_at",
    "parse_bytes",
]
