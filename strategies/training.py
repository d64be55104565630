"""LoRA / QLoRA adapter training inside the harness (peft + trl ``SFTTrainer``), shared by adapter strategies.

Not a strategy itself (no ``@register``): ``qlora`` and ``rag+qlora`` mix in ``AdapterMixin`` and only say how
an eval-set row becomes a chat prompt (``training_prompts``).

Pipeline: rows -> chat prompt rendered with the *same* chat template the inference backend uses ->
token ids with a completion mask (loss only on the answer and its end-of-turn token) -> a freshly loaded
training base (4-bit NF4 + double quantisation through bitsandbytes, or full precision as fallback) ->
``prepare_model_for_kbit_training`` -> LoRA via ``peft`` -> ``trl.SFTTrainer`` (cosine schedule with warm-up,
gradient clipping, gradient checkpointing, paged 8-bit AdamW on CUDA, early stopping on validation loss) ->
adapter safetensors in a content-addressed cache -> attached to the run's already loaded inference base.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil
import torch
from pydantic import Field, field_validator

from harness.backends.base import AdapterHost, Prompt, TrainableBase, require
from harness.backends.likelihood import rows_from_masks, token_mean_nll
from harness.data import Document
from harness.errors import ConfigError, DataError, ModelError
from harness.plugin import Params, RunContext
from harness.rundir import atomic_write_json, read_json

log = logging.getLogger("adaptbench.training")

RECORD_FILE = "training_record.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CACHE_FORMAT = 1

# (prompt, reference answer) pairs for one split; ``split`` is "train" or "validation".
PromptBuilder = Callable[[list[dict[str, Any]], str], list[tuple[Prompt, str]]]


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
    gradient_checkpointing: bool = True
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


class AdapterParams(Params):
    """Inference-side options of adapter strategies (not part of the training cache key)."""

    adapter_path: str | None = Field(
        None, description="evaluate this trained adapter directory instead of training (CLI: --adapter)"
    )
    merge: bool = Field(
        False, description="merge LoRA weights into the base while this strategy generates (not for 4-bit)"
    )

    @field_validator("adapter_path")
    @classmethod
    def _adapter_folder(cls, value: str | None) -> str | None:
        if value is not None:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise ValueError(f"adapter folder not found: {path}")
            if not (path / ADAPTER_CONFIG).is_file() or not any(path.glob("adapter_model.*")):
                raise ValueError(
                    f"{path} is not a peft adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}); "
                    "use the path `adaptbench train` printed"
                )
        return value


TRAIN_KEYS = tuple(TrainParams.model_fields)


@dataclass
class TrainData:
    train: list[dict[str, list[int]]]
    validation: list[dict[str, list[int]]]
    kb_chunks: int
    validation_source: str
    digest: str
    n_truncated: int = 0


@dataclass
class TrainResult:
    adapter_dir: Path
    record: dict[str, Any]
    cache_hit: bool
    data: TrainData | None = None


# -- data ----------------------------------------------------------------------------------------


def completion_text(tokenizer: Any, render: Callable[[Prompt], str], prompt: Prompt, answer: str) -> str:
    """The text the model must produce after the rendered prompt: answer + the template's end of turn."""
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": answer}], tokenize=False
        )
        head = render(prompt)
        if full.startswith(head):
            return full[len(head) :].rstrip()
    return " " + answer + (tokenizer.eos_token or "")


def encode_example(
    tokenizer: Any, render: Callable[[Prompt], str], prompt: Prompt, answer: str, max_len: int
) -> dict[str, list[int]]:
    """Token ids + completion mask, tokenised exactly as the backend tokenises prompts at inference.

    An over-long prompt loses its start (the backend keeps the end of long prompts too).
    """
    p_ids = tokenizer(render(prompt), add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion_text(tokenizer, render, prompt, answer), add_special_tokens=False)[
        "input_ids"
    ]
    c_ids = c_ids[: max_len - 8]
    p_ids = p_ids[-(max_len - len(c_ids)) :]
    return {"input_ids": p_ids + c_ids, "completion_mask": [0] * len(p_ids) + [1] * len(c_ids)}


def kb_chunks(tokenizer: Any, documents: list[Document], max_len: int) -> list[dict[str, list[int]]]:
    """Knowledge-base documents as plain language-modelling text (every token trained)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = []
    for doc in documents:
        ids = tokenizer(f"# {doc.title}\n\n{doc.text}", add_special_tokens=False)["input_ids"] + eos
        for i in range(0, len(ids), max_len):
            piece = ids[i : i + max_len]
            if len(piece) > 8:
                out.append({"input_ids": piece, "completion_mask": [1] * len(piece)})
    return out


def split_rows(ctx: RunContext, params: TrainParams) -> tuple[list[dict], list[dict], str]:
    train, validation, source = _split_rows(ctx, params)
    if params.validation_limit and len(validation) > params.validation_limit:
        validation = validation[: params.validation_limit]
        source += f" (first {params.validation_limit})"
    return train, validation, source


def _split_rows(ctx: RunContext, params: TrainParams) -> tuple[list[dict], list[dict], str]:
    es = ctx.eval_set
    if params.train_split not in es.splits:
        have = ", ".join(sorted(es.splits)) or "none"
        raise DataError(
            f"{es.root}: adapter training needs a {params.train_split!r} split (have: {have}); "
            "add train.jsonl or set train_split"
        )
    train = list(es.splits[params.train_split])
    if params.validation_split in es.splits:
        return train, list(es.splits[params.validation_split]), params.validation_split
    if len(train) < 2:
        raise DataError(f"{es.root}: {params.train_split!r} needs at least 2 examples to hold out validation")
    idx = list(range(len(train)))
    random.Random(ctx.seed).shuffle(idx)
    n_val = max(1, len(train) // 10)
    held = set(idx[:n_val])
    return (
        [r for i, r in enumerate(train) if i not in held],
        [r for i, r in enumerate(train) if i in held],
        f"{n_val} held out of {params.train_split!r}",
    )


def build_data(ctx: RunContext, params: TrainParams, prompts: PromptBuilder) -> TrainData:
    tokenizer = _tokenizer(ctx)
    render = ctx.backend.render
    train_rows, val_rows, val_source = split_rows(ctx, params)

    def encode(rows: list[dict[str, Any]], split: str) -> list[dict[str, list[int]]]:
        return [
            encode_example(tokenizer, render, prompt, answer, params.max_seq_length)
            for prompt, answer in prompts(rows, split)
        ]

    train = encode(train_rows, "train")
    validation = encode(val_rows, "validation")
    cut = sum(len(r["input_ids"]) >= params.max_seq_length for r in train + validation)
    if cut:
        log.warning(
            "%d training/validation prompts fill max_seq_length=%d and lost their start; raise max_seq_length",
            cut,
            params.max_seq_length,
        )
    kb = kb_chunks(tokenizer, ctx.eval_set.documents, params.max_seq_length) if params.include_kb else []
    h = hashlib.sha256()
    for name, rows in (("train", train + kb), ("validation", validation)):
        h.update(name.encode())
        for r in rows:
            h.update(json.dumps(r, separators=(",", ":")).encode())
    return TrainData(train + kb, validation, len(kb), val_source, h.hexdigest(), cut)


def _tokenizer(ctx: RunContext) -> Any:
    return require(ctx.backend, TrainableBase, "adapter strategies").tokenizer


# -- cache ---------------------------------------------------------------------------------------


def base_fingerprint(ctx: RunContext) -> dict[str, Any]:
    """Identity of the base weights the adapter is trained on (the backend's ``base_fingerprint``)."""
    return require(ctx.backend, TrainableBase, "adapter strategies").base_fingerprint()


def cache_key(ctx: RunContext, params: TrainParams, data: TrainData, key_extra: Any = None) -> str:
    material = {
        "format": CACHE_FORMAT,
        "base": base_fingerprint(ctx),
        "train": params.model_dump(mode="json", include=set(TRAIN_KEYS) - {"cache"}),
        "data": data.digest,
        "seed": ctx.seed,
        "device": ctx.backend.device,
        "extra": key_extra,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def adapter_dir(cache_dir: Path, key: str) -> Path:
    return cache_dir / "adapters" / key[:24]


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file() and (path / ADAPTER_WEIGHTS).is_file()


# -- memory --------------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory of a block: CUDA max allocated, or the process RSS sampled every 20 ms on CPU."""

    def __init__(self, device: str, interval: float = 0.02):
        self.device = device
        self.interval = interval
        self.peak = 0
        self.start_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device == "cuda" else "process_rss"

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.start_rss = psutil.Process().memory_info().rss
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = self.start_rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss)


# -- model ---------------------------------------------------------------------------------------


def _load_4bit(ctx: RunContext):
    """Fresh 4-bit NF4 (double-quant) copy of the base for training; raises if bitsandbytes can't."""
    loaded = ctx.backend.training_copy("4bit")
    if not getattr(loaded.model, "is_loaded_in_4bit", False):
        raise RuntimeError("bitsandbytes did not quantise the model to 4-bit")
    return loaded


def keep_4bit_layers_differentiable(model: Any) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel during training.

    On CPUs with AVX512-BF16, the first forward pass in eval mode without grad (trainer.evaluate, or a
    generate call) repacks every ``Linear4bit`` for ``gemv_4bit``, which has no autograd: from then on,
    backward silently drops the gradient through the frozen base weights and LoRA layers below the
    top get wrong (smaller) gradients. Training therefore keeps the differentiable dequantise path.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def prepare_for_training(model: Any, quantization: str, params: TrainParams) -> Any:
    """``prepare_model_for_kbit_training`` for a 4-bit base (norms in fp32, frozen base, checkpointing)."""
    if quantization != "4bit":
        return model
    from peft import prepare_model_for_kbit_training

    keep_4bit_layers_differentiable(model)
    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=params.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def _load_full(ctx: RunContext):
    return require(ctx.backend, TrainableBase, "adapter strategies").training_copy("none")


def load_training_base(ctx: RunContext, params: TrainParams) -> tuple[Any, str, str | None]:
    """A separate, freshly loaded base for training (never the shared inference model).

    Returns (loaded, quantization actually used, fallback reason or None). A 4-bit failure falls back to
    full-precision LoRA, loudly: warning in the log, reason in the training record and the manifest.
    """
    if params.quantization == "4bit":
        try:
            return _load_4bit(ctx), "4bit", None
        except Exception as exc:  # noqa: BLE001 - any bitsandbytes/backend failure means "no 4-bit here"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            reason = f"4-bit NF4 load failed on {ctx.backend.device} ({type(exc).__name__}: {first})"
            log.warning("%s; falling back to LoRA on the full-precision base", reason)
            gc.collect()
            return _load_full(ctx), "none", reason
    return _load_full(ctx), "none", None


def lora_config(params: TrainParams):
    from peft import LoraConfig

    return LoraConfig(
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=params.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def precision_flags(device: str) -> dict[str, bool]:
    if device == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return {"bf16": bf16, "fp16": not bf16}
    return {"bf16": False, "fp16": False}


def compute_dtype_name(device: str) -> str:
    flags = precision_flags(device)
    return "bfloat16" if flags["bf16"] else "float16" if flags["fp16"] else "float32"


def optimizer_name(params: TrainParams, device: str) -> str:
    if params.optimizer != "auto":
        return params.optimizer
    return "paged_adamw_8bit" if device == "cuda" else "adamw_torch"


def planned_steps(params: TrainParams, n_train: int) -> int:
    if params.max_steps:
        return params.max_steps
    per_epoch = max(1, math.ceil(n_train / (params.batch_size * params.grad_accum)))
    return max(1, math.ceil(per_epoch * params.epochs))


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
):
    """The trl ``SFTTrainer`` for ``params``; ``evaluate=False`` (benchmarks) skips validation passes."""
    from datasets import Dataset
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTConfig, SFTTrainer

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
        gradient_checkpointing=params.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if params.gradient_checkpointing else None,
        max_length=params.max_seq_length,
        packing=params.packing,
        packing_strategy=params.packing_strategy,
        eval_packing=False,
        completion_only_loss=True,
        eval_strategy="steps" if evaluate else "no",
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
        dataloader_num_workers=0,
        **precision_flags(device),
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
        # trl stores QLoRA adapter weights in bf16 (paper recipe for GPUs); on CPU the compute dtype is fp32,
        # and bf16 weights there are both slower and too coarse for small AdamW updates.
        for p in trainer.model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    return trainer


def loss_curve(history: list[dict[str, Any]], val_loss_base: float) -> dict[str, list[Any]]:
    """Train and validation loss by optimizer step; validation starts with the untrained base at step 0."""
    train = [{"step": h["step"], "loss": round(h["loss"], 5)} for h in history if "loss" in h]
    val = [{"step": h["step"], "loss": round(h["eval_loss"], 5)} for h in history if "eval_loss" in h]
    return {"train": train, "validation": [{"step": 0, "loss": round(val_loss_base, 5)}, *val]}


def completion_loss(model: Any, rows: list[dict[str, list[int]]], pad_id: int, batch_size: int = 8) -> float:
    """Token-weighted cross-entropy on completion tokens (the same rows the trainer validates on)."""
    return token_mean_nll(model, rows_from_masks(rows), pad_id, batch_size)


def train_adapter(
    ctx: RunContext,
    params: TrainParams,
    prompts: PromptBuilder,
    key_extra: Any = None,
    label: str = "adapter",
) -> TrainResult:
    """Train (or fetch from the cache) a LoRA adapter for the run's base model."""
    data = build_data(ctx, params, prompts)
    if not data.train:
        raise DataError(f"{ctx.eval_set.root}: no training examples for {label}")
    key = cache_key(ctx, params, data, key_extra)
    target = adapter_dir(ctx.cache_dir, key)
    if params.cache and is_adapter_dir(target) and (target / RECORD_FILE).is_file():
        log.info("%s: adapter cache hit %s", label, target)
        return TrainResult(target, read_json(target / RECORD_FILE), True, data)

    device = ctx.backend.device
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        import transformers

        transformers.set_seed(ctx.seed)
        with PeakMemory(device) as mem:
            load_start = time.perf_counter()
            loaded, quant, fallback = load_training_base(ctx, params)
            model, tokenizer = prepare_for_training(loaded.model, quant, params), loaded.tokenizer
            load_seconds = time.perf_counter() - load_start
            log.info(
                "%s: training LoRA r=%d on %s (%s base) with %d sequences (%d KB chunks), %d validation",
                label, params.r, device, "4-bit NF4" if quant == "4bit" else "full-precision",
                len(data.train), data.kb_chunks, len(data.validation),
            )  # fmt: skip
            trainer = build_trainer(
                model, tokenizer, params, data, device, tmp / "checkpoints", ctx.seed, label
            )
            timer = step_timer(trainer)
            trainable, total = trainer.model.get_nb_trainable_parameters()
            base_eval = trainer.evaluate()
            start = time.perf_counter()
            out = trainer.train()
            train_seconds = time.perf_counter() - start
            history = list(trainer.state.log_history)
            final_loss = final_val_loss(trainer, history)
            trainer.model.save_pretrained(str(tmp))
        state = trainer.state
        tokens = int(state.num_input_tokens_seen or 0)
        record = {
            "format": CACHE_FORMAT,
            "key": key,
            "label": label,
            "base_model": {**base_fingerprint(ctx), "source": ctx.backend.describe().get("source")},
            "device": device,
            "quantization_requested": params.quantization,
            "quantization": quant,
            "fallback_reason": fallback,
            "compute_dtype": compute_dtype_name(device),
            "optimizer": optimizer_name(params, device),
            "params": params.model_dump(mode="json", include=set(TRAIN_KEYS)),
            "seed": ctx.seed,
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
            "rss_before_bytes": int(mem.start_rss),
            "trainable_params": int(trainable),
            "total_params": int(total),
            "trainable_share": round(trainable / total, 6) if total else None,
            "val_loss_base": round(float(base_eval["eval_loss"]), 5),
            "val_loss_final": round(final_loss, 5),
            "train_loss_mean": round(float(out.training_loss), 5),
            "loss_curve": loss_curve(history, float(base_eval["eval_loss"])),
            "adapter_bytes": (tmp / ADAPTER_WEIGHTS).stat().st_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
        atomic_write_json(tmp / RECORD_FILE, record)
        del trainer, model, loaded
        _free(device)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "%s: trained %d steps in %.1f s; val loss %.4f -> %.4f; adapter %s",
        label, record["steps"], record["train_seconds"], record["val_loss_base"], record["val_loss_final"], target,
    )  # fmt: skip
    return TrainResult(target, record, False, data)


def step_timer(trainer: Any) -> Any:
    """The trainer's log callback, which also sums the time spent in optimizer steps."""
    return next(cb for cb in trainer.callback_handler.callbacks if hasattr(cb, "step_seconds"))


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


# -- existing adapters (--adapter PATH) ----------------------------------------------------------


def check_adapter(ctx: RunContext, path: Path) -> dict[str, Any]:
    """Validate an adapter directory against the run's base; return its training record (or {})."""
    from harness.backends.loading import BUILTIN_MODELS, resolve_source

    where = f"adapter {path}"
    try:
        peft_cfg = read_json(path / ADAPTER_CONFIG)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: unreadable {ADAPTER_CONFIG} ({exc})") from None
    record = read_json(path / RECORD_FILE) if (path / RECORD_FILE).is_file() else {}
    model_cfg = ctx.backend.model_cfg  # adapters are a transformers-backend feature
    model_id = model_cfg.id
    if record:
        trained_for = record.get("base_model", {}).get("id")
        if trained_for and trained_for != model_id:
            raise ModelError(
                f"{where}: trained for base model {trained_for!r}, but this run uses {model_id!r}; "
                "evaluate it with that model (--model) or retrain"
            )
        return record
    base = peft_cfg.get("base_model_name_or_path")
    if base:
        source, _ = resolve_source(model_cfg, ctx.cache_dir)
        accepted = {model_id, source, str(Path(source).resolve())}
        builtin = BUILTIN_MODELS.get(model_id, "")
        accepted.add(builtin.split(" ")[0])
        if base.rstrip("/") not in {a.rstrip("/") for a in accepted if a}:
            raise ModelError(
                f"{where}: adapter_config.json says base_model_name_or_path={base!r}, but this run uses "
                f"{model_id!r}; pass the matching --model or retrain"
            )
    return record


# -- strategy mixin ------------------------------------------------------------------------------


def adapter_name(strategy_id: str, adapter_path: Path) -> str:
    """A peft adapter name unique per strategy and adapter (peft names must not contain dots)."""
    digest = hashlib.sha256(str(adapter_path.resolve()).encode()).hexdigest()[:8]
    return re.sub(r"\W", "_", strategy_id) + "_" + digest


@dataclass
class _Attached:
    name: str
    merged: bool
    notes: list[str] = field(default_factory=list)


class AdapterMixin:
    """Train-or-load an adapter in ``prepare``, attach it to the shared base, record training cost.

    The host class is a ``Strategy`` whose params subclass ``TrainParams`` and ``AdapterParams`` and which
    implements ``training_prompts(rows, split)``; ``adaptbench train`` calls ``train(ctx)`` directly.
    """

    def training_prompts(self, rows: list[dict[str, Any]], split: str) -> list[tuple[Prompt, str]]:
        raise NotImplementedError

    def setup(self, ctx: RunContext) -> None:
        """Per-run state ``training_prompts`` needs (templates, retriever); called before training."""

    def training_key_extra(self) -> Any:
        return None

    def train(self, ctx: RunContext) -> TrainResult:
        self.setup(ctx)
        result = train_adapter(
            ctx, self.params, self.training_prompts, key_extra=self.training_key_extra(), label=self.id
        )
        self.write_training_record(ctx, result, source="cache" if result.cache_hit else "trained")
        return result

    def attach(self, ctx: RunContext) -> None:
        """Adapter from ``adapter_path`` or training; attached to the run's loaded base (no second copy)."""
        params = self.params
        if params.adapter_path:
            path = Path(params.adapter_path).expanduser().resolve()
            record = check_adapter(ctx, path)
            self.setup(ctx)
            result = TrainResult(path, record, True, None)
            self.write_training_record(ctx, result, source="--adapter")
        else:
            result = self.train(ctx)
        name = adapter_name(self.id, result.adapter_dir)
        try:
            ctx.backend.load_adapter(str(result.adapter_dir), name)
        except (RuntimeError, ValueError, KeyError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelError(
                f"adapter {result.adapter_dir}: does not fit this run's base model {ctx.backend.describe().get('id')!r} ({first})"
            ) from None
        self.adapter = name
        info = ctx.backend.describe()
        served = result.record.get("inference_base") or {}
        if (served.get("dtype"), served.get("quantization")) != (info.get("dtype"), info.get("quantization")):
            data = result.data or build_data(ctx, params, self.training_prompts)
            result.record = {
                **result.record,
                "inference_base": inference_val_loss(ctx, name, data.validation),
            }
            if not params.adapter_path:  # our cache entry: remember it (never write into a user's folder)
                atomic_write_json(result.adapter_dir / RECORD_FILE, result.record)
        self.write_training_record(ctx, result, source=self.training_record["source"])
        notes = self.cost.setdefault("notes", [])
        rec = result.record
        if rec.get("quantization") == "4bit" and info.get("quantization") != "4bit":
            notes.append(
                f"LoRA trained on the 4-bit NF4 base, served on the {info.get('dtype')} base (standard QLoRA deployment)"
            )
        if rec.get("fallback_reason"):
            notes.append(f"4-bit unavailable, trained full-precision LoRA: {rec['fallback_reason']}")
        if params.merge:
            if info.get("quantization") != "none":
                msg = f"merge ignored: the inference base is {info.get('quantization')}-quantised"
                log.warning("%s: %s", self.id, msg)
                notes.append(msg)
            else:
                ctx.backend.merge_adapter(name)
                notes.append("LoRA merged into the base while this strategy generates")

    def write_training_record(self, ctx: RunContext, result: TrainResult, source: str) -> None:
        rec = dict(result.record)
        rec.update(adapter_dir=str(result.adapter_dir), source=source)
        atomic_write_json(ctx.run_dir / "training" / f"{self.id}.json", rec)
        self.training_record = rec
        self.cost.update(
            train_seconds=rec.get("train_seconds"),
            peak_memory_bytes=rec.get("peak_memory_bytes"),
            adapter_bytes=_adapter_bytes(result.adapter_dir),
            training={
                k: rec.get(k)
                for k in (
                    "source",
                    "adapter_dir",
                    "device",
                    "quantization",
                    "fallback_reason",
                    "steps",
                    "epochs",
                    "tokens_seen",
                    "tokens_per_s",
                    "peak_memory_kind",
                    "trainable_params",
                    "trainable_share",
                    "val_loss_base",
                    "val_loss_final",
                    "inference_base",
                    "loss_curve",
                )
            },
        )


def inference_val_loss(ctx: RunContext, name: str, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
    """Validation loss on the run's own inference base, without and with the adapter attached.

    The adapter may have been trained on a 4-bit copy; this shows it still helps the base it is served on.
    """
    host = require(ctx.backend, AdapterHost, "adapter strategies")
    base = host.adapter_nll(None, rows)
    adapted = host.adapter_nll(name, rows)
    info = ctx.backend.describe()
    return {
        "dtype": info.get("dtype"),
        "quantization": info.get("quantization"),
        "val_loss_base": round(base, 5),
        "val_loss_adapter": round(adapted, 5),
    }


def _adapter_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("adapter_model.*"))
