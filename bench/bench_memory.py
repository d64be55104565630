"""Memory benchmark: peak RSS per phase of the demo, and the adapter validation pass with/without logits.

    python bench/bench_memory.py [--limit 16] [--strategies qlora,rag_qlora] [--skip-demo] [--onednn-lengths 60]
                                 [--train-shapes 2x2,1x4 [--dtype float32]]

1. Phases: the demo (configs/demo.yaml, fresh cache, first ``--limit`` test examples; training and index
   build do not depend on the limit) in a subprocess; peak and end-of-phase RSS per phase from
   ``manifest["phases"]`` (see bench/bench_demo.py). ``end MiB`` after ``train`` shows whether the 4-bit
   training copy was released (it should return to about the level before training).
2. Training steps: ``--train-steps`` optimizer steps of each adapter strategy's real trainer (its demo
   params), in a fresh subprocess per arm: ``malloc_fixed`` (the harness default,
   ``harness.memory.return_freed_memory_to_os``) vs ``malloc_glibc`` (``ADAPTBENCH_MALLOC=0``: glibc's dynamic
   mmap threshold). Prints peak RSS, seconds per step and the ratios (the fix must not cost speed).
   With ``--train-shapes 2x2,1x4`` the arms are instead batch size x accumulation shapes (the same sequences
   per optimizer step; ``--dtype`` sets ``model.dtype``; a shape may end in ``:gc`` or ``:nogc``, gradient
   checkpointing on or off): loss, s/step, peak RSS and ratios to the first.
3. Validation pass: for each adapter strategy of the demo, one ``trainer.evaluate()`` on its validation rows
   over the 4-bit training base, in a fresh subprocess per arm: ``loss_only`` (the trainer's setting,
   ``prediction_loss_only=True``) vs ``with_logits`` (the transformers default, which adds a forward pass
   for the full logits and keeps them for the whole validation set). Prints peak RSS and the ratio.
4. oneDNN / ideep caches (CPUs with native bf16, where ``dtype: auto`` is bf16): greedy generation of 8
   tokens for ``--onednn-lengths`` prompts of distinct lengths (40, 60, ... tokens), each alone, then 16
   batches of 16 rows, then 8 forward + backward passes of distinct lengths (training shapes), in a fresh
   subprocess per arm: ``defaults_1024`` (oneDNN's primitive cache and ideep's ``LRU_CACHE_CAPACITY`` at their
   default 1024), ``onednn_128`` (only oneDNN's capped at 128: the harness until the seventh session) and
   ``harness_32`` (both at the harness default, ``harness.memory.cap_onednn_primitive_cache``). Prints the
   resident set after ``malloc_trim`` (what stays), seconds, and the ratios to ``defaults_1024``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEMO = REPO / "configs" / "demo.yaml"


def demo_strategy(strategy_id: str, cache: Path, dtype: str = "auto"):
    """(run context, set-up strategy) of one demo strategy, with ``cache`` as the cache folder."""
    from harness import plugin
    from harness.config import load_config
    from harness.data import load_eval_set
    from harness.runner import open_context

    cfg = load_config(DEMO, {"model.dtype": dtype})
    cfg.cache_dir = cache
    index = next(i for i, s in enumerate(cfg.strategies) if s.key == strategy_id)
    strategy = plugin.build(cfg.strategies[index], index)
    ctx = open_context(cfg, load_eval_set(cfg.eval_set.path), cache / "run")
    strategy.setup(ctx)
    return ctx, strategy


def demo_trainer(ctx, params, data, cache: Path, label: str, evaluate: bool = True):
    """(trainer, params with ``auto`` decided) as the harness builds them: the training base (4-bit for
    QLoRA), gradient checkpointing as configured, the base's mixed precision."""
    from strategies.adapters.quantized import load_training_base, prepare_for_training
    from strategies.adapters.settings import with_checkpointing
    from strategies.adapters.trainer import build_trainer

    loaded, quant, _ = load_training_base(ctx.backend, params)
    params = with_checkpointing(params, ctx.backend.device, loaded.info.dtype)
    model = prepare_for_training(loaded.model, quant, params.gradient_checkpointing)
    trainer = build_trainer(
        model, loaded.tokenizer, params, data, ctx.backend.device, cache / "ckpt", 0, label,
        evaluate=evaluate, dtype=loaded.info.dtype,
    )  # fmt: skip
    return trainer, params


def eval_worker(strategy_id: str, arm: str, cache: Path) -> dict:
    import time

    from harness.memory import PeakMemory
    from strategies.adapters.data import build_data

    ctx, strategy = demo_strategy(strategy_id, cache)
    params = strategy.params
    data = build_data(ctx, params, strategy.training_prompts)
    trainer, _ = demo_trainer(ctx, params, data, cache, arm)
    trainer.args.prediction_loss_only = arm == "loss_only"
    with PeakMemory(ctx.backend.device) as mem:
        start = time.perf_counter()
        loss = trainer.evaluate()["eval_loss"]
        seconds = time.perf_counter() - start
    return {
        "strategy": strategy_id,
        "arm": arm,
        "rows": len(data.validation),
        "eval_loss": loss,
        "seconds": round(seconds, 2),
        "rss_before_bytes": mem.start_rss,
        "peak_bytes": mem.peak,
        "kind": mem.kind,
    }


def train_worker(strategy_id: str, steps: int, cache: Path, shape: str = "", dtype: str = "auto") -> dict:
    """``steps`` optimizer steps of the strategy's trainer on its demo params (``shape`` "BxA": batch size x
    accumulation steps instead of the demo's, optionally ":gc" / ":nogc" for gradient checkpointing on / off);
    peak RSS, s/step and the training loss."""
    import time

    from harness.memory import PeakMemory, return_freed_memory_to_os
    from strategies.adapters.data import build_data

    fixed = return_freed_memory_to_os()
    ctx, strategy = demo_strategy(strategy_id, cache, dtype)
    update: dict = {"max_steps": steps}
    if shape:
        dims, _, checkpointing = shape.partition(":")
        batch, accum = (int(x) for x in dims.split("x"))
        update |= {"batch_size": batch, "grad_accum": accum}
        if checkpointing:
            update["gradient_checkpointing"] = {"gc": True, "nogc": False}[checkpointing]
    params = strategy.params.model_copy(update=update)
    data = build_data(ctx, params, strategy.training_prompts)
    with PeakMemory(ctx.backend.device) as mem:
        trainer, params = demo_trainer(ctx, params, data, cache, "bench", evaluate=False)
        start = time.perf_counter()
        loss = trainer.train().training_loss
        seconds = time.perf_counter() - start
    return {
        "strategy": strategy_id,
        "malloc_fixed": fixed,
        "shape": f"{params.batch_size}x{params.grad_accum}"
        + ("" if params.gradient_checkpointing else " nogc"),
        "dtype": str(ctx.backend.loaded.info.dtype),
        "loss": loss,
        "steps": steps,
        "seconds_per_step": round(seconds / steps, 2),
        "rss_before_bytes": mem.start_rss,
        "peak_bytes": mem.peak,
    }


def train_section(strategies: list[str], steps: int) -> None:
    print(f"\n== adapter training, {steps} steps: peak RSS with a fixed vs glibc's dynamic mmap threshold ==")
    print_train_header()
    with tempfile.TemporaryDirectory(prefix="bench-memory-train-") as cache:
        for sid in strategies:
            cmd = [sys.executable, __file__, "--train-worker", sid, str(steps), cache]
            rows = env_arms(
                cmd,
                (("malloc_glibc", {"ADAPTBENCH_MALLOC": "0"}), ("malloc_fixed", {"ADAPTBENCH_MALLOC": "1"})),
            )
            print_train_arms(sid, rows, "train")


def shapes_section(strategies: list[str], steps: int, shapes: list[str], dtype: str) -> None:
    """The same optimizer steps at several batch x accumulation shapes (equal sequences per step)."""
    print(f"\n== adapter training, {steps} steps, model.dtype {dtype}: batch x accumulation shapes ==")
    print_train_header()
    with tempfile.TemporaryDirectory(prefix="bench-memory-shapes-") as cache:
        for sid in strategies:
            cmd = [sys.executable, __file__, "--train-worker", sid, str(steps), cache]
            print_train_arms(
                sid, {shape: subprocess_json([*cmd, shape, dtype]) for shape in shapes}, "shapes"
            )


def print_train_header() -> None:
    print(
        f"{'strategy':<12}{'arm':<14}{'loss':>9}{'s/step':>8}{'before MiB':>12}{'peak MiB':>10}{'peak x':>8}{'time x':>8}"
    )


def print_train_arms(sid: str, rows: dict[str, dict], section: str) -> None:
    """One line per training arm; ratios are to the first arm (the baseline)."""
    base = next(iter(rows.values()))
    for arm, r in rows.items():
        if "error" in r:
            print(f"{sid:<12}{arm:<14} failed: {r['error']}")
            continue
        print(
            f"{sid:<12}{arm:<14}{r['loss']:>9.5f}{r['seconds_per_step']:>8.1f}"
            f"{r['rss_before_bytes'] / 2**20:>12.0f}{r['peak_bytes'] / 2**20:>10.0f}"
            f"{ratio(r, base, 'peak_bytes'):>8}{ratio(r, base, 'seconds_per_step'):>8}"
        )
        print(json.dumps({"section": section, "arm": arm, **r}))


def onednn_worker(lengths: int) -> dict:
    """Generate for prompts of ``lengths`` distinct lengths; resident set before and after, seconds."""
    import time

    import psutil
    import torch

    from harness.backends import open_backend
    from harness.config import load_config
    from harness.memory import release_free_heap
    from harness.rundir import cache_root

    backend = open_backend(load_config(DEMO).model, cache_root())
    model = backend.model
    if model.dtype != torch.bfloat16:
        return {"skipped": f"model dtype {model.dtype} (no native bf16 on this CPU)"}
    proc = psutil.Process()
    release_free_heap()
    before = proc.memory_info().rss
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    shapes = [(1, 40 + 20 * i) for i in range(lengths)] + [(16, 40 + 40 * i) for i in range(16)]
    with torch.no_grad():
        for rows, width in shapes:
            ids = torch.randint(100, 40000, (rows, width), generator=gen)
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for w in weights:
        w.requires_grad_(True)
    for i in range(8):  # training shapes: every sequence length is a new forward and backward shape
        ids = torch.randint(100, 40000, (1, 300 + 37 * i), generator=gen)
        model(input_ids=ids, labels=ids).loss.backward()
    for w in weights:
        w.grad = None
        w.requires_grad_(False)
    seconds = time.perf_counter() - start
    release_free_heap()
    return {"rss_before_bytes": before, "rss_after_bytes": proc.memory_info().rss, "seconds": seconds}


def onednn_section(lengths: int) -> None:
    print(
        f"\n== oneDNN / ideep caches: {lengths} prompt lengths alone + 16 batches of 16 (8 new tokens)"
        " + 8 training shapes =="
    )
    print(
        f"{'arm':<15}{'seconds':>9}{'before MiB':>12}{'after MiB':>11}{'kept MiB':>10}{'x 1024':>8}{'time x':>8}"
    )
    cmd = [sys.executable, __file__, "--onednn-worker", str(lengths)]
    from harness.memory import IDEEP_CACHE_ENV as lru
    from harness.memory import ONEDNN_CACHE_CAPACITY
    from harness.memory import ONEDNN_CACHE_ENV as dnnl

    rows = env_arms(
        cmd,
        (
            ("defaults_1024", {lru: "1024", dnnl: "1024"}),
            ("onednn_128", {lru: "1024", dnnl: "128"}),
            ("harness_32", {lru: str(ONEDNN_CACHE_CAPACITY), dnnl: str(ONEDNN_CACHE_CAPACITY)}),
        ),
    )
    for r in rows.values():
        if "rss_after_bytes" in r:
            r["kept_bytes"] = r["rss_after_bytes"] - r["rss_before_bytes"]
    base = rows["defaults_1024"]
    for arm, r in rows.items():
        if "error" in r or "skipped" in r:
            print(f"{arm:<15} {r.get('error') or r.get('skipped')}")
            continue
        print(
            f"{arm:<15}{r['seconds']:>9.1f}{r['rss_before_bytes'] / 2**20:>12.0f}{r['rss_after_bytes'] / 2**20:>11.0f}"
            f"{r['kept_bytes'] / 2**20:>10.0f}{ratio(r, base, 'kept_bytes'):>8}{ratio(r, base, 'seconds'):>8}"
        )
        print(json.dumps({"section": "onednn", "arm": arm, **r}))


def env_arms(cmd: list[str], arms: tuple[tuple[str, dict[str, str]], ...]) -> dict[str, dict]:
    """Run ``cmd`` once per arm in a fresh interpreter with the arm's environment variables set (process-wide
    settings, such as malloc's or oneDNN's, cannot be switched back inside one process)."""
    import os

    return {arm: subprocess_json(cmd, env={**os.environ, **env}) for arm, env in arms}


def ratio(row: dict, base: dict, key: str) -> str:
    """``row[key] / base[key]`` for the table, or ``-`` when the baseline arm failed."""
    if key not in row or key not in base or not base[key]:
        return "-"
    return f"{row[key] / base[key]:.2f}"


def subprocess_json(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: " + " | ".join(proc.stderr.strip().splitlines()[-5:])}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--strategies", default="qlora,rag_qlora")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--train-steps", type=int, default=3, help="0 skips the training section")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--onednn-lengths", type=int, default=60, help="0 skips the oneDNN cache section")
    ap.add_argument("--onednn-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--eval-worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument(
        "--train-shapes",
        help="e.g. 2x2,1x4 or 4x2:gc,4x2:nogc: training peak and time per batch x accumulation shape, with or"
        " without gradient checkpointing (first = baseline)",
    )
    ap.add_argument(
        "--dtype", default="auto", help="model.dtype for --train-shapes (float32: CPUs without bf16)"
    )
    ap.add_argument("--train-worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.train_worker:
        sid, steps, cache, *rest = args.train_worker
        print(json.dumps(train_worker(sid, int(steps), Path(cache), *rest)))
        return
    if args.onednn_worker:
        print(json.dumps(onednn_worker(args.onednn_worker)))
        return
    if args.eval_worker:
        sid, arm, cache = args.eval_worker
        print(json.dumps(eval_worker(sid, arm, Path(cache))))
        return

    if not args.skip_demo:
        from bench.bench_demo import print_results

        with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
            demo = REPO / "bench" / "bench_demo.py"
            res = subprocess_json(
                [sys.executable, str(demo), "--worker", "current", "--cache", "fresh", "--out", tmp]
                + ["--limit", str(args.limit)]
            )
        print(f"== demo phases (fresh cache, limit {args.limit}) ==")
        print_results([{"arm": "current", **res}])

    if args.train_shapes:
        shapes_section(args.strategies.split(","), args.train_steps, args.train_shapes.split(","), args.dtype)
    elif args.train_steps:
        train_section(args.strategies.split(","), args.train_steps)
    if args.onednn_lengths:
        onednn_section(args.onednn_lengths)
    if args.skip_eval:
        return
    print("\n== adapter validation pass: trainer.evaluate() peak memory ==")
    print(
        f"{'strategy':<12}{'arm':<13}{'rows':>6}{'eval_loss':>11}{'seconds':>9}{'before MiB':>12}{'peak MiB':>10}{'x loss_only':>12}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-memory-eval-") as cache:
        for sid in args.strategies.split(","):
            rows = {}
            for arm in ("loss_only", "with_logits"):
                rows[arm] = subprocess_json([sys.executable, __file__, "--eval-worker", sid, arm, cache])
            base = rows["loss_only"]
            for arm, r in rows.items():
                if "error" in r:
                    print(f"{sid:<12}{arm:<13} failed: {r['error']}")
                    continue
                ratio = f"{r['peak_bytes'] / base['peak_bytes']:.2f}" if "error" not in base else "-"
                print(
                    f"{sid:<12}{arm:<13}{r['rows']:>6}{r['eval_loss']:>11.4f}{r['seconds']:>9.1f}"
                    f"{r['rss_before_bytes'] / 2**20:>12.0f}{r['peak_bytes'] / 2**20:>10.0f}{ratio:>12}"
                )
    print("eval_loss must be equal in both arms (the setting changes memory and time, not the number).")


if __name__ == "__main__":
    main()
