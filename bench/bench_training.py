"""Training benchmark: adaptbench's trainer (trl SFTTrainer, QLoRA) vs a plain transformers.Trainer + peft LoRA.

    python bench/bench_training.py [--model smollm2-135m-instruct|tiny|PATH] [--shape 1b|7b] [--device cpu|cuda]
                                   [--steps 4] [--batch-size 4] [--gradient-checkpointing]
                                   [--dtype auto|float32|bfloat16] [--arms sft_qlora@float32,sft_qlora@bfloat16]

Arms (same base model, same tokenised data from the demo train split, same batch size and steps, each in a
fresh subprocess so peak memory is that arm's own):

  baseline        transformers.Trainer + peft LoRA on the full-precision base, padding collator
  sft_lora        adaptbench trainer (trl SFTTrainer), LoRA on the full-precision base (bf16 on CUDA)
  sft_qlora       adaptbench trainer, 4-bit NF4 + double quant base (QLoRA) -- the ``qlora`` strategy default
  sft_qlora_allpos  sft_qlora with trl's own CPU layout of its fused LM head (every position projected,
                  prompt and padding too); the harness projects labelled positions only (fused_head.py)
  sft_qlora_pack  the same as sft_qlora with sequence packing (bfd) on

An arm name may end in ``@<dtype>`` to load that arm's base in that dtype (``model.dtype``; bf16 also turns
on the trainer's bf16 autocast); others use ``--dtype`` (default ``auto``: bf16 on CUDA and on CPUs with
native bf16, else fp32). The first ``baseline`` arm is the baseline of the ratios.

Reported: trained (non-padding) tokens/s over the optimizer steps alone, wall seconds of ``train()``, peak memory
while loading and during ``train()`` (process RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA) and ratios
against the baseline measured in this run. ``--shape 1b|7b``: a random-init Llama of that size
(bench/shapes.py) for GPU sizing; Liger kernels are used on CUDA when the ``liger_kernel`` package is
installed (``--liger``).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARMS = ("baseline", "sft_lora", "sft_qlora", "sft_qlora_allpos", "sft_qlora_pack")
SYSTEM = (
    "You are the customer-support assistant of Nimbus Cycles, an e-bike company. "
    "Answer the customer's question in one short, factual sentence."
)


def model_config(args, dtype: str = "auto"):
    from harness.config import ModelConfig

    if getattr(args, "shape", None):
        from bench.shapes import model_dir

        return ModelConfig(id=str(model_dir(args.shape)), device=args.device, dtype=dtype)
    if args.model == "tiny":
        from tests.support.tiny_model import build_tiny_model

        folder = Path(tempfile.gettempdir()) / "adaptbench-bench-tiny"
        if not (folder / "config.json").is_file():
            build_tiny_model(folder)
        return ModelConfig(id=str(folder), device=args.device, dtype=dtype)
    return ModelConfig(id=args.model, device=args.device, dtype=dtype)


def training_rows(loaded, n: int, max_len: int):
    """The demo train split as (prompt, answer) chat examples, tokenised exactly as the qlora strategy does."""
    from harness.backends.hf import TransformersBackend
    from harness.data import load_eval_set
    from strategies.adapters.data import TrainData, encode_example

    backend = TransformersBackend(loaded)
    rows = list(load_eval_set(REPO / "eval_sets" / "nimbus_support").split("train"))[:n]
    enc = [
        encode_example(
            loaded.tokenizer,
            backend.render,
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["question"]}],
            r["answer"],
            max_len,
        )
        for r in rows
    ]
    return TrainData(enc, [], 0, "none", "bench")


def worker(arm: str, args) -> dict:
    import torch
    from transformers import set_seed

    from harness.backends.loading import cache_root, load_model, resolve_device
    from harness.memory import PeakMemory
    from strategies.adapters.fused_head import compact_lm_head_on_cpu
    from strategies.adapters.params import TrainParams
    from strategies.adapters.quantized import prepare_for_training
    from strategies.adapters.trainer import build_trainer, step_timer

    device = resolve_device(args.device)
    set_seed(0)
    label = arm
    arm, _, dtype = arm.partition("@")
    quant = "4bit" if arm.startswith("sft_qlora") else "none"
    compact = compact_lm_head_on_cpu() if arm != "sft_qlora_allpos" else nullcontext(False)
    with PeakMemory(device) as load_mem:
        loaded = load_model(model_config(args, dtype or args.dtype), cache_root(), quantization=quant)
        data = training_rows(loaded, args.batch_size * args.steps, args.max_len)
        params = TrainParams(
            quantization=quant,
            max_steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=2e-4,
            gradient_checkpointing=args.gradient_checkpointing,
            packing=arm.endswith("_pack"),
            max_seq_length=args.max_len,
            warmup_ratio=0.0,
            dropout=args.dropout,
        )
    if getattr(args, "liger", False) and device == "cuda":
        from bench.shapes import accelerators

        if accelerators()["liger_kernel"]:  # RMSNorm/RoPE/SwiGLU kernels; trl fuses the LM head itself
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(model=loaded.model, fused_linear_cross_entropy=False)
    with tempfile.TemporaryDirectory() as out:
        if arm == "baseline":
            trainer = baseline_trainer(loaded, params, data, device, Path(out))
        else:
            model = prepare_for_training(loaded.model, quant, params.gradient_checkpointing)
            trainer = build_trainer(
                model, loaded.tokenizer, params, data, device, Path(out), 0, arm, evaluate=False,
                dtype=loaded.info.dtype,
            )  # fmt: skip
        timer = step_timer(trainer)
        with PeakMemory(device) as train_mem, compact as compact_head:
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
    tokens = int(trainer.state.num_input_tokens_seen)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "arm": label,
        "device": device,
        "dtype": loaded.info.dtype,
        "last_loss": round(losses[-1], 4) if losses else None,
        "quantization": quant,
        "steps": int(trainer.state.global_step),
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "step_seconds": round(timer.step_seconds, 2),
        "tokens_per_s": round(tokens / timer.step_seconds, 1),
        "load_peak_bytes": int(load_mem.peak),
        "peak_memory_bytes": int(train_mem.peak),
        "memory_kind": train_mem.kind,
        "torch_threads": torch.get_num_threads(),
        "compact_lm_head": compact_head and arm != "baseline",
    }


def baseline_trainer(loaded, params, data, device: str, out: Path):
    """Plain transformers.Trainer + peft LoRA: right padding, labels -100 outside the answer."""
    from peft import get_peft_model
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from harness.backends.likelihood import pad_rows, rows_from_masks
    from strategies.adapters.settings import checkpointing_args, lora_config, optimizer_name, precision_flags
    from strategies.adapters.trainer import progress_callback

    model = get_peft_model(loaded.model, lora_config(params))
    pad = loaded.tokenizer.pad_token_id

    def collate(rows):
        return pad_rows(rows_from_masks(rows), pad)

    targs = TrainingArguments(
        output_dir=str(out),
        max_steps=params.max_steps,
        per_device_train_batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler,
        max_grad_norm=params.max_grad_norm,
        optim=optimizer_name(params, device),
        **checkpointing_args(TrainingArguments, params.gradient_checkpointing),
        include_num_input_tokens_seen="non_padding",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=10_000,
        use_cpu=device == "cpu",
        remove_unused_columns=False,
        seed=0,
        **precision_flags(device, loaded.info.dtype),
    )
    timer = progress_callback(logging.getLogger("bench"), "baseline")
    trainer = Trainer(
        model=model, args=targs, train_dataset=data.train, data_collator=collate, callbacks=[timer]
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def run_arm(arm: str, argv: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", arm, *argv], capture_output=True, text=True, cwd=REPO
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        return {"arm": arm, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model id/path, or 'tiny'")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--shape", choices=["1b", "7b"], help="random-init Llama of this size instead of --model")
    ap.add_argument("--liger", action="store_true", help="Liger kernels (CUDA, when installed)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout (the TrainParams default)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="model.dtype")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma list; an arm may end in @<dtype>")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results to this file")
    args, _ = ap.parse_known_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    argv = [
        "--model", args.model, "--device", args.device, "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--max-len", str(args.max_len), "--dropout", str(args.dropout),
        "--dtype", args.dtype,
    ] + (["--gradient-checkpointing"] if args.gradient_checkpointing else [])  # fmt: skip
    argv += (["--shape", args.shape] if args.shape else []) + (["--liger"] if args.liger else [])
    results = [run_arm(arm, argv) for arm in args.arms.split(",")]
    base = next((r for r in results if r["arm"].startswith("baseline") and "error" not in r), None)
    print(
        f"model={args.model} device={args.device} steps={args.steps} batch={args.batch_size} "
        f"gradient_checkpointing={args.gradient_checkpointing} dropout={args.dropout}"
    )
    print(
        f"{'arm':<26}{'dtype':>9}{'tokens':>8}{'seconds':>9}{'tok/s':>9}{'x base':>8}"
        f"{'load MiB':>10}{'train MiB':>11}{'x base':>8}{'last loss':>10}"
    )
    for r in results:
        if "error" in r:
            print(f"{r['arm']:<26} failed: {r['error']}")
            continue
        speed = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else "-"
        memory = f"{r['peak_memory_bytes'] / base['peak_memory_bytes']:.2f}" if base else "-"
        print(
            f"{r['arm']:<26}{r['dtype']:>9}{r['tokens']:>8}{r['seconds']:>9.1f}{r['tokens_per_s']:>9.1f}{speed:>8}"
            f"{r['load_peak_bytes'] / 2**20:>10.0f}{r['peak_memory_bytes'] / 2**20:>11.0f}{memory:>8}"
            f"{r['last_loss'] if r['last_loss'] is not None else '-':>10}"
        )
    print(
        f"memory = {results[0].get('memory_kind', '?')} of each arm's own process: peak while loading the model "
        "and peak during train() (the ratio is on the latter)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
