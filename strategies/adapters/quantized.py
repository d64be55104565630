"""The base the adapter is trained on: a fresh copy from the backend, 4-bit NF4 (QLoRA) or full precision.

Never the shared inference model: ``TrainableBase.training_copy(quantization)`` loads a separate copy. A
4-bit failure (no bitsandbytes backend for the device, ...) falls back to full-precision LoRA, loudly: a
warning in the log and the reason in the training record and the manifest.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from harness.backends.base import TrainableBase
from strategies.adapters.params import TrainParams

log = logging.getLogger("adaptbench.training")


def _load_4bit(backend: TrainableBase) -> Any:
    """Fresh 4-bit NF4 (double-quant) copy of the base for training; raises if bitsandbytes can't."""
    loaded = backend.training_copy("4bit")
    if not getattr(loaded.model, "is_loaded_in_4bit", False):
        raise RuntimeError("bitsandbytes did not quantise the model to 4-bit")
    return loaded


def _load_full(backend: TrainableBase) -> Any:
    return backend.training_copy("none")


def load_training_base(backend: TrainableBase, params: TrainParams) -> tuple[Any, str, str | None]:
    """A separate, freshly loaded base for training (a ``LoadedModel``: ``.model``, ``.tokenizer``).

    Returns (loaded, quantization actually used, fallback reason or None).
    """
    if params.quantization == "4bit":
        try:
            return _load_4bit(backend), "4bit", None
        except Exception as exc:  # noqa: BLE001 - any bitsandbytes/backend failure means "no 4-bit here"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            reason = f"4-bit NF4 load failed on {backend.device} ({type(exc).__name__}: {first})"
            log.warning("%s; falling back to LoRA on the full-precision base", reason)
            gc.collect()
            return _load_full(backend), "none", reason
    return _load_full(backend), "none", None


def keep_4bit_layers_differentiable(model: Any) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel during training.

    On CPUs with AVX512-BF16, the first forward pass in eval mode without grad (trainer.evaluate, or a
    generate call) repacks every ``Linear4bit`` for ``gemv_4bit``, which has no autograd: from then on,
    backward silently drops the gradient through the frozen base weights and LoRA layers below the
    top get wrong (smaller) gradients. Training therefore keeps the differentiable dequantise path.
    """
    from harness.optional import require_module

    bnb = require_module("bitsandbytes", "4-bit QLoRA training")

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def prepare_for_training(model: Any, quantization: str, checkpointing: bool) -> Any:
    """``prepare_model_for_kbit_training`` for a 4-bit base (norms in fp32, frozen base, and gradient
    checkpointing when ``checkpointing``: the resolved setting, ``trainer.with_checkpointing``)."""
    if quantization != "4bit":
        return model
    from peft import prepare_model_for_kbit_training

    keep_4bit_layers_differentiable(model)
    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
