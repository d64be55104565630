"""Adapter strategy parameters: what training does (``TrainParams``) and how the adapter is served (``AdapterParams``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from harness.plugin import Params


class TrainParams(Params):
    """Adapter training hyper-parameters (all in the strategy's config entry)."""

    quantization: Literal["4bit", "none"] = Field(
        "4bit", description="4bit = QLoRA (NF4 + double quant); none = LoRA on the full-precision base"
    )
    r: int = Field(16, gt=0, description="LoRA rank")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names")
    learning_rate: float = Field(2e-4, gt=0.0)
    epochs: float = Field(3.0, gt=0.0)
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    max_seq_length: int = Field(512, ge=32, description="tokens per training sequence")
    packing: bool = False
    packing_strategy: Literal["bfd", "wrapped"] = "bfd"
    gradient_checkpointing: bool | Literal["auto"] = Field(
        True,
        description="recompute activations in the backward pass (less memory, slower); auto = off where "
        "training computes in bf16 on a CPU, on elsewhere",
    )
    optimizer: Literal["auto", "adamw_torch", "paged_adamw_8bit", "adamw_8bit"] = Field(
        "auto", description="auto = paged_adamw_8bit on CUDA, adamw_torch on CPU"
    )
    eval_steps: int | None = Field(None, gt=0, description="default: 2 validation passes per epoch")
    early_stopping_patience: int = Field(3, ge=0, description="evaluations without improvement; 0 = off")
    include_kb: bool = Field(False, description="add the knowledge base as continued-pretraining text")
    train_split: str = "train"
    validation_split: str = Field(
        "validation", description="held out from train (10%) when the eval set has no such split"
    )
    validation_limit: int | None = Field(
        None, gt=0, description="validate on the first N examples only (each pass costs a forward over them)"
    )
    cache: bool = Field(True, description="reuse an adapter trained with the same key")


# Every training hyper-parameter; all but ``cache`` enter the adapter cache key.
TRAIN_KEYS = tuple(TrainParams.model_fields)


class AdapterParams(Params):
    """Inference-side options of adapter strategies (not part of the training cache key)."""

    adapter_path: str | None = Field(
        None, description="evaluate this trained adapter directory instead of training (CLI: --adapter)"
    )
    served_adapter: str | None = Field(
        None,
        min_length=1,
        description="evaluate the adapter a server serves under this name (model.backend: openai, e.g. "
        "vllm --lora-modules NAME=/path) instead of training or loading one here",
    )
    merge: bool = Field(
        False, description="merge LoRA weights into the base while this strategy generates (not for 4-bit)"
    )

    @field_validator("adapter_path")
    @classmethod
    def _adapter_folder(cls, value: str | None) -> str | None:
        if value is not None:
            from strategies.adapters.cache import adapter_folder_problem

            problem = adapter_folder_problem(Path(value).expanduser())
            if problem:
                raise ValueError(problem)
        return value
