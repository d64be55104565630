"""The trainer's settings resolved for a device and base dtype: LoRA config, mixed precision, activation
checkpointing (under the argument name this transformers takes), optimizer and planned steps.

Why a module of its own: the adapter trainer and the training benches (whose plain-``Trainer`` baseline must
train with the same settings) read these, and none of them needs the trainer itself.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from harness.optional import require_module
from strategies.adapters.params import TrainParams


def lora_config(params: TrainParams):
    LoraConfig = require_module("peft", "adapter training").LoraConfig

    return LoraConfig(
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=params.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def precision_flags(device: str, dtype: str) -> dict[str, bool]:
    """The trainer's mixed precision: bf16 (fp16 without it) on CUDA; on CPU bf16 autocast exactly when the
    base itself is bf16 (``model.dtype: auto`` on a CPU with native bf16), full fp32 otherwise. LoRA
    weights and the optimizer state stay fp32 either way (``build_trainer``)."""
    if device == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return {"bf16": bf16, "fp16": not bf16}
    return {"bf16": dtype == "bfloat16", "fp16": False}


def checkpointing_args(config_cls: Any, on: bool) -> dict[str, Any]:
    """Activation checkpointing under the name this transformers takes: 5.25 renamed
    ``gradient_checkpointing`` to ``activation_checkpointing`` and warns (FutureWarning) at the old name."""
    name = (
        "activation"
        if "activation_checkpointing" in getattr(config_cls, "__dataclass_fields__", {})
        else "gradient"
    )
    return {
        f"{name}_checkpointing": on,
        f"{name}_checkpointing_kwargs": {"use_reentrant": False} if on else None,
    }


def compute_dtype_name(device: str, dtype: str) -> str:
    flags = precision_flags(device, dtype)
    return "bfloat16" if flags["bf16"] else "float16" if flags["fp16"] else "float32"


def with_checkpointing(params: TrainParams, device: str, dtype: str) -> TrainParams:
    """``params`` with ``gradient_checkpointing: auto`` decided for this device and base dtype.

    ``auto`` turns recomputation off only where training computes in bf16 on a CPU. Measured on the demo's
    adapters (docs/benchmarks.md, eighth session): there it costs 1.2-1.4x the training time, and without it
    activations add ~550 MiB at qlora's peak; in fp32 they are twice that size (qlora 1,779 -> 2,655 MiB in
    the bench worker, about 3.1 GB in the demo process), which breaks the demo's 3 GB budget, and a GPU's
    memory is the limit for the 7-8B models users train there. Either way the losses are the same
    (recomputation is exact)."""
    if params.gradient_checkpointing != "auto":
        return params
    checkpoint = not (device == "cpu" and compute_dtype_name(device, dtype) == "bfloat16")
    return params.model_copy(update={"gradient_checkpointing": checkpoint})


def optimizer_name(params: TrainParams, device: str) -> str:
    if params.optimizer != "auto":
        return params.optimizer
    return "paged_adamw_8bit" if device == "cuda" else "adamw_torch"


def planned_steps(params: TrainParams, n_train: int) -> int:
    if params.max_steps:
        return params.max_steps
    per_epoch = max(1, math.ceil(n_train / (params.batch_size * params.grad_accum)))
    return max(1, math.ceil(per_epoch * params.epochs))
