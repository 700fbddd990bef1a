"""Export trained LoRS adapters as a PEFT LoRA (or DoRA) adapter directory.

``adapter_config.json`` and ``adapter_model.safetensors`` as ``peft.PeftModel.from_pretrained``
reads them: keys ``base_model.model.<module>.lora_A.weight`` (r, in), ``lora_B.weight`` (out, r)
and, with magnitudes, ``lora_magnitude_vector`` (out,); ``fan_in_fan_out`` true for GPT-2's
Conv1D layers. PEFT's forward adds the *unmasked* product s·B A to the base weight, so the loaded
model is not the sparse model sparseft trained (whose update is s·(B A) ⊙ M): the pruned zeros
of the base are filled in. Ship ``trainer.merge()`` + ``save_pretrained`` to keep the sparsity.
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings
from typing import Any

import numpy as np

from sparseft.train.checkpoint import atomic_dir

__all__ = ["UNMASKED_WARNING", "export_peft"]

UNMASKED_WARNING = (
    "PEFT adds the UNMASKED adapter product s*(B A) to the base weight, so a model loaded with "
    "peft.PeftModel.from_pretrained fills in the pruned zeros and differs from the sparse model sparseft "
    "trained (s*(B A)*M); to keep the sparsity, ship trainer.merge() and model.save_pretrained() instead"
)


def export_peft(
    model: Any, path: str | os.PathLike[str], base_model_name_or_path: str | None = None
) -> list[str]:
    """Write ``model``'s adapters as a PEFT adapter directory (atomically); returns the module names.

    Parameters
    ----------
    model : sparseft.models.Decoder
        A GPT-2/Llama with adapters (``add_adapters`` or a :class:`~sparseft.Trainer` with ``adapter=``).
    path : str or os.PathLike
        Output directory (replaced atomically if it exists).
    base_model_name_or_path : str, optional
        Recorded in ``adapter_config.json``.

    Raises
    ------
    TypeError
        If ``model`` has no block linears (not a GPT/Llama).
    ValueError
        If no layer carries an (unmerged) adapter, or the adapters differ in rank, scale or kind
        (PEFT's config holds one r, alpha and use_dora).

    Warns
    -----
    UserWarning
        Always: PEFT adds the unmasked adapter (see :data:`UNMASKED_WARNING`).
    """
    linear_ops = getattr(model, "_linear_ops", None)
    prefix = getattr(model, "hf_prefix", None)
    if linear_ops is None or prefix is None:
        raise TypeError(f"model: expected a sparseft GPT or Llama model, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    adapted = [op for op in linear_ops() if op.mode == "adapter"]
    if not adapted:
        raise ValueError(
            "model: has no adapters to export (train with adapter=LoRSConfig(...); merged ones are gone)"
        )
    layers = [op.layer for op in adapted]
    kinds = {(lay.r, lay.alpha, lay.use_rslora, lay.magnitude is not None) for lay in layers}
    if len(kinds) != 1:
        raise ValueError(
            f"model: adapters with different r/alpha/use_rslora/magnitude cannot share one PEFT config: {kinds}"
        )
    if any(lay.merged for lay in layers):
        raise ValueError("model: an adapter is merged into its base; export before merge()")
    r, alpha, rslora, dora = kinds.pop()
    conv1d = {bool(op.conv1d) for op in adapted}
    tensors: dict[str, np.ndarray] = {}
    modules = []
    for op in adapted:
        mod = prefix + op.name
        modules.append(mod)
        key = f"base_model.model.{mod}"
        tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(op.layer.A, dtype=np.float32)
        tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(op.layer.B, dtype=np.float32)
        if dora:
            tensors[f"{key}.lora_magnitude_vector"] = np.ascontiguousarray(
                op.layer.magnitude, dtype=np.float32
            )
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": int(r),
        "lora_alpha": float(alpha),
        "lora_dropout": 0.0,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": conv1d == {True},
        "use_rslora": bool(rslora),
        "use_dora": bool(dora),
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise ImportError("export_peft needs the safetensors package: pip install safetensors") from None
    warnings.warn(UNMASKED_WARNING, UserWarning, stacklevel=3)
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (pathlib.Path(tmp) / "adapter_config.json").write_text(
            json.dumps(config, indent=2) + "\n", encoding="utf-8"
        )
    return modules
