"""LoRA / QLoRA training with peft + trl ``SFTTrainer``, into the adapter cache.

Pipeline: tokenised rows (``data``) -> a fresh training base (``quantized``: 4-bit NF4 or full precision)
-> LoRA via ``peft`` -> ``trl.SFTTrainer`` (cosine schedule with warm-up, gradient clipping, gradient
checkpointing, paged 8-bit AdamW on CUDA, early stopping on validation loss) -> adapter safetensors and
its training record, published atomically into the content-addressed cache (``cache``).
"""

from __future__ import annotations

import gc
import logging
import math
import re
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness import distributed, signals
from harness.backends.base import TrainableBase, require
from harness.errors import DataError
from harness.locks import build_lock
from harness.memory import PeakMemory, freed_memory_returned
from harness.oom import retry_halving
from harness.optional import require_module
from harness.phases import phase
from harness.plugin import RunContext
from harness.rundir import STORAGE_ERRNOS, atomic_write_json, read_json, storage_error
from strategies.adapters import cache
from strategies.adapters.data import PromptBuilder, TrainData, build_data
from strategies.adapters.fused_head import compact_lm_head_on_cpu
from strategies.adapters.params import TRAIN_KEYS, TrainParams
from strategies.adapters.quantized import load_training_base, prepare_for_training
from strategies.adapters.settings import (
    checkpointing_args,
    compute_dtype_name,
    lora_config,
    optimizer_name,
    planned_steps,
    precision_flags,
    with_checkpointing,
)
from strategies.adapters.validation import with_token_validation

log = logging.getLogger("adaptbench.training")
# peft and trl read the model's ``is_gradient_checkpointing``, which transformers 5.25 deprecated: a warning
# about the libraries' own calls that the user can do nothing about.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


@dataclass
class TrainResult:
    adapter_dir: Path
    record: dict[str, Any]
    cache_hit: bool
    data: TrainData | None = None


def progress_callback(logger: logging.Logger, label: str):
    """Compact progress lines in the adaptbench log (tqdm bars are disabled for training)."""
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        """Also times the optimizer steps alone (no evaluation or checkpointing) for tokens/s."""

        step_seconds = 0.0
        _t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_seconds += time.perf_counter() - self._t0

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            for key, what in (("eval_loss", "val loss"), ("loss", "loss")):
                if key in logs:
                    logger.info(
                        "%s: step %d/%d %s %.4f", label, state.global_step, state.max_steps, what, logs[key]
                    )
                    break

    return LogCallback()


def step_timer(trainer: Any) -> Any:
    """The trainer's log callback, which also sums the time spent in optimizer steps."""
    return next(cb for cb in trainer.callback_handler.callbacks if hasattr(cb, "step_seconds"))


def build_trainer(
    model: Any,
    tokenizer: Any,
    params: TrainParams,
    data: TrainData,
    device: str,
    out_dir: Path,
    seed: int,
    label: str,
    evaluate: bool = True,
    dtype: str = "float32",
):
    """The trl ``SFTTrainer`` for ``params``; ``evaluate=False`` (benchmarks) skips validation passes.

    ``dtype``: the base's load dtype (``ModelInfo.dtype``), which sets the mixed precision."""
    params = with_checkpointing(params, device, dtype)
    from datasets import Dataset
    from transformers import EarlyStoppingCallback, PrinterCallback

    trl = require_module("trl", "adapter training")
    SFTConfig, SFTTrainer = trl.SFTConfig, with_token_validation(trl.SFTTrainer)

    steps = planned_steps(params, len(data.train))
    per_epoch = max(1, math.ceil(len(data.train) / (params.batch_size * params.grad_accum)))
    eval_steps = params.eval_steps or max(1, per_epoch // 2)
    eval_steps = min(eval_steps, steps)
    early = evaluate and params.early_stopping_patience > 0
    args = SFTConfig(
        output_dir=str(out_dir),
        seed=seed,
        data_seed=seed,
        max_steps=params.max_steps or -1,
        num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        gradient_accumulation_steps=params.grad_accum,
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler,
        warmup_steps=params.warmup_ratio,
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        optim=optimizer_name(params, device),
        **checkpointing_args(SFTConfig, params.gradient_checkpointing),
        max_length=params.max_seq_length,
        packing=params.packing,
        packing_strategy=params.packing_strategy,
        eval_packing=False,
        completion_only_loss=True,
        eval_strategy="steps" if evaluate else "no",
        # Validation needs the loss only. Without this, every evaluation runs a second forward pass for
        # the full logits and keeps them for the whole validation set (rows x length x vocab floats:
        # gigabytes for a 49k vocabulary), which is most of the demo's peak memory.
        prediction_loss_only=True,
        eval_steps=eval_steps,
        save_strategy="steps" if early else "no",
        save_steps=eval_steps,
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=max(1, steps // 50),
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        use_cpu=device == "cpu",
        ddp_find_unused_parameters=False,  # DDP (torchrun): every LoRA weight is used in each forward
        dataloader_num_workers=0,
        **precision_flags(device, dtype),
    )
    callbacks: list[Any] = [progress_callback(log, label)]
    if early:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=params.early_stopping_patience))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(data.validation) if evaluate else None,
        processing_class=tokenizer,
        peft_config=lora_config(params),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # raw metric dicts on stdout; our callback logs instead
    if device == "cpu":
        # trl stores QLoRA adapter weights in bf16 (paper recipe for GPUs); on CPU they stay fp32 (master
        # weights under bf16 autocast, or fp32 compute): bf16 weights are too coarse for small AdamW updates.
        for p in trainer.model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    return trainer


# -- results -------------------------------------------------------------------------------------


def loss_curve(history: list[dict[str, Any]], val_loss_base: float) -> dict[str, list[Any]]:
    """Train and validation loss by optimizer step; validation starts with the untrained base at step 0."""
    train = [{"step": h["step"], "loss": round(h["loss"], 5)} for h in history if "loss" in h]
    val = [{"step": h["step"], "loss": round(h["eval_loss"], 5)} for h in history if "eval_loss" in h]
    return {"train": train, "validation": [{"step": 0, "loss": round(val_loss_base, 5)}, *val]}


def final_val_loss(trainer: Any, history: list[dict[str, Any]]) -> float:
    """Validation loss of the adapter being saved, without a redundant evaluation pass when known."""
    state = trainer.state
    if trainer.args.load_best_model_at_end and state.best_metric is not None:
        return float(state.best_metric)
    evals = [h for h in history if "eval_loss" in h]
    if evals and evals[-1]["step"] == state.global_step:
        return float(evals[-1]["eval_loss"])
    return float(trainer.evaluate()["eval_loss"])


def _best_step(state: Any) -> int | None:
    ckpt = getattr(state, "best_model_checkpoint", None)
    if not ckpt:
        return None
    m = re.search(r"checkpoint-(\d+)$", str(ckpt))
    return int(m.group(1)) if m else None


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# -- training ------------------------------------------------------------------------------------


def train_adapter(
    ctx: RunContext,
    params: TrainParams,
    prompts: PromptBuilder,
    key_extra: Any = None,
    label: str = "adapter",
) -> TrainResult:
    """Train (or fetch from the cache) a LoRA adapter for the run's base model."""
    require(ctx.backend, TrainableBase, "adapter training")
    data = build_data(ctx, params, prompts)
    if not data.train:
        raise DataError(f"{ctx.eval_set.root}: no training examples for {label}")
    key = cache.cache_key(ctx, params, data, key_extra)
    target = cache.adapter_dir(ctx.cache_dir, key)
    # Under DDP rank 0 decides (broadcast) and holds the lock: every rank then trains together or none.
    if distributed.broadcast_object(params.cache and cache.is_cached(target)):
        log.info("%s: adapter cache hit %s", label, target)
        return TrainResult(target, read_json(target / cache.RECORD_FILE), True, data)
    # a twin run training the same adapter: wait, then hit
    with build_lock(target, "adapter") if distributed.is_main() else nullcontext():
        if distributed.broadcast_object(params.cache and cache.is_cached(target)):
            log.info("%s: adapter cache hit %s (trained by another process)", label, target)
            return TrainResult(target, read_json(target / cache.RECORD_FILE), True, data)
        with signals.immediate():  # no safe midpoint: an interrupt abandons the staging folder
            return _train_halving(ctx, params, data, key, target, label)


def _train_halving(
    ctx: RunContext, params: TrainParams, data: TrainData, key: str, target: Path, label: str
) -> TrainResult:
    """Train; on out-of-memory halve the per-device batch (doubling accumulation keeps the effective
    batch) and retry down to 1. The cache key stays that of the configured params."""
    grad_accum = params.grad_accum

    def attempt(size: int) -> TrainResult:
        factor = params.batch_size // size
        tried = params.model_copy(update={"batch_size": size, "grad_accum": grad_accum * factor})
        return _train_once(ctx, tried, data, key, target, label)

    try:
        result, events = retry_halving(f"{label} training", params.batch_size, attempt)
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        raise storage_error(target, exc) from None  # the staging folder is gone; nothing published
    if events and distributed.is_main():
        result.record["oom_retries"] = events
        atomic_write_json(target / cache.RECORD_FILE, result.record)
    return result


def _train_once(
    ctx: RunContext, params: TrainParams, data: TrainData, key: str, target: Path, label: str
) -> TrainResult:
    backend: Any = ctx.backend
    device = backend.device
    with phase("train"), cache.staging_dir(target) as tmp:
        import transformers

        transformers.set_seed(ctx.seed)
        with (
            freed_memory_returned() as mmap_fixed,
            compact_lm_head_on_cpu() as compact,
            PeakMemory(device) as mem,
        ):
            load_start = time.perf_counter()
            loaded, quant, fallback = load_training_base(backend, params)
            dtype = loaded.info.dtype
            checkpointing = with_checkpointing(params, device, dtype).gradient_checkpointing
            model = prepare_for_training(loaded.model, quant, checkpointing)
            tokenizer = loaded.tokenizer
            load_seconds = time.perf_counter() - load_start
            log.info(
                "%s: training LoRA r=%d on %s (%s base) with %d sequences (%d KB chunks), %d validation",
                label, params.r, device, "4-bit NF4" if quant == "4bit" else "full-precision",
                len(data.train), data.kb_chunks, len(data.validation),
            )  # fmt: skip
            trainer = build_trainer(
                model, tokenizer, params, data, device, tmp / "checkpoints", ctx.seed, label, dtype=dtype
            )
            timer = step_timer(trainer)
            trainable, total = trainer.model.get_nb_trainable_parameters()
            base_eval = trainer.evaluate()
            if distributed.active():
                # evaluate() marks the model as accelerate-prepared (evaluation mode, unwrapped), and
                # train() then skips the DDP wrapping: ranks would train apart, unsynchronised.
                trainer.model._is_accelerate_prepared = False
            start = time.perf_counter()
            out = trainer.train()
            train_seconds = time.perf_counter() - start
            history = list(trainer.state.log_history)
            final_loss = final_val_loss(trainer, history)
            if distributed.is_main():
                trainer.model.save_pretrained(str(tmp))
        if not distributed.is_main():  # DDP: rank 0 writes the record and publishes; then read it
            del trainer, model, loaded
            _free(device)
            distributed.barrier()
            return TrainResult(target, read_json(target / cache.RECORD_FILE), False, data)
        state = trainer.state
        tokens = int(state.num_input_tokens_seen or 0)
        val_base = float(base_eval["eval_loss"])
        record = {
            "format": cache.CACHE_FORMAT,
            "key": key,
            "label": label,
            "base_model": {**backend.base_fingerprint(), "source": ctx.backend.describe().get("source")},
            "device": device,
            "quantization_requested": params.quantization,
            "quantization": quant,
            "fallback_reason": fallback,
            "base_dtype": dtype,
            "compute_dtype": compute_dtype_name(device, dtype),
            "optimizer": optimizer_name(params, device),
            "gradient_checkpointing": checkpointing,
            "params": params.model_dump(mode="json", include=set(TRAIN_KEYS)),
            "seed": ctx.seed,
            "world_size": distributed.world_size(),
            "global_batch": params.batch_size * params.grad_accum * distributed.world_size(),
            "n_train_sequences": len(data.train),
            "n_kb_chunks": data.kb_chunks,
            "n_validation": len(data.validation),
            "n_truncated": data.n_truncated,
            "validation_source": data.validation_source,
            "planned_steps": planned_steps(params, len(data.train)),
            "steps": int(state.global_step),
            "epochs": round(float(state.epoch or 0.0), 3),
            "early_stopped": int(state.global_step) < int(state.max_steps),
            "best_step": _best_step(state),
            "tokens_seen": tokens,
            "train_seconds": round(train_seconds, 3),
            "step_seconds": round(timer.step_seconds, 3),
            "load_seconds": round(load_seconds, 3),
            "tokens_per_s": round(tokens / timer.step_seconds, 1) if timer.step_seconds > 0 else None,
            "peak_memory_bytes": int(mem.peak),
            "peak_memory_kind": mem.kind,
            "malloc_mmap_threshold_fixed": mmap_fixed,
            "compact_lm_head": compact,
            "rss_before_bytes": int(mem.start_rss),
            "trainable_params": int(trainable),
            "total_params": int(total),
            "trainable_share": round(trainable / total, 6) if total else None,
            "val_loss_base": round(val_base, 5),
            "val_loss_final": round(final_loss, 5),
            "train_loss_mean": round(float(out.training_loss), 5),
            "loss_curve": loss_curve(history, val_base),
            "adapter_bytes": (tmp / cache.ADAPTER_WEIGHTS).stat().st_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
        atomic_write_json(tmp / cache.RECORD_FILE, record)
        del trainer, model, loaded
        _free(device)
        cache.publish(tmp, target)
        distributed.barrier()  # the other DDP ranks read the published adapter now
    log.info(
        "%s: trained %d steps in %.1f s; val loss %.4f -> %.4f; adapter %s",
        label, record["steps"], record["train_seconds"], record["val_loss_base"], record["val_loss_final"], target,
    )  # fmt: skip
    return TrainResult(target, record, False, data)
