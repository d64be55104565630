"""Orchestrates a run: config -> data -> strategies -> backend -> predictions -> scores -> report.

Predictions are appended per batch, every other file is written atomically, and re-running into
an existing run folder resumes: finished (strategy, example) pairs are never recomputed.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from harness import distributed, phases, plugin, signals
from harness.backends import get_backend, open_backend
from harness.backends.base import GenerationBackend, require
from harness.batching import batch_order, restore_order
from harness.config import RunConfig, dump_config
from harness.data import EvalSet, open_eval_set
from harness.errors import ConfigError
from harness.latency import probe_latency, probe_needed
from harness.manifest import hardware, now_iso, package_versions
from harness.memory import PeakMemory, process_peak_rss_bytes, release_free_heap
from harness.oom import BatchBackoff
from harness.phases import phase
from harness.plugin import Answer, RunContext, Strategy
from harness.rundir import (
    PredictionLog,
    atomic_write_json,
    atomic_write_text,
    cache_root,
    ensure_dir,
    read_json,
)

log = logging.getLogger("adaptbench")


@dataclass
class RunResult:
    run_dir: Path
    scores: dict[str, Any]


def make_run_id(config: RunConfig, config_path: Path | None, kind: str = "") -> str:
    stem = config.name or (config_path.stem if config_path else "run")
    return f"{stem}{'-' + kind if kind else ''}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def select_examples(eval_set: EvalSet, config: RunConfig) -> list[dict[str, Any]]:
    ds = eval_set.split(config.eval_set.split)
    if config.eval_set.limit:
        ds = ds.select(range(min(config.eval_set.limit, len(ds))))
    return list(ds)


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def build_strategies(config: RunConfig, source: str) -> list[Strategy]:
    return [plugin.build(spec, i, source) for i, spec in enumerate(config.strategies)]


CONNECTION_KEYS = ("base_url", "api_key_env", "concurrency", "timeout_s", "max_retries", "retry_backoff_s")


def _fingerprint(config: RunConfig) -> dict[str, Any]:
    """What must match for predictions in an existing run folder to be reused."""
    data = config.model_dump(mode="json")
    if data["model"].get("backend") == "transformers":  # the default: folders from before the key resume
        del data["model"]["backend"]
    for key in CONNECTION_KEYS:  # where and how fast a served model is reached does not change answers
        data["model"].pop(key, None)
    return {
        "model": data["model"],
        "eval_set": {"path": data["eval_set"]["path"], "split": data["eval_set"]["split"]},
        "generation": data["generation"],
        "seed": data["seed"],
        "strategies": {s.key: s.model_dump(mode="json") for s in config.strategies},
    }


def check_resumable(run_dir: Path, config: RunConfig, eval_set: EvalSet) -> dict[str, Any]:
    """Refuse to mix results from a different config or different data in one folder."""
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.exists():
        return {}
    old = read_json(manifest_path)
    new_fp, old_fp = _fingerprint(config), old.get("fingerprint", {})
    for key in ("model", "eval_set", "generation", "seed"):
        if old_fp.get(key) != new_fp[key]:
            raise ConfigError(
                f"{run_dir}: holds a run with a different {key}; use a new --out folder to start afresh"
            )
    for sid, spec in new_fp["strategies"].items():
        if sid in old_fp.get("strategies", {}) and old_fp["strategies"][sid] != spec:
            raise ConfigError(
                f"{run_dir}: strategy {sid!r} was run with other params; give it a new id or a new --out"
            )
    if old.get("data", {}).get("content_hash") not in (None, eval_set.content_hash):
        raise ConfigError(f"{run_dir}: eval set files changed since this run; use a new --out folder")
    return old


def prediction_record(
    strategy: Strategy, example: dict[str, Any], answer: Answer, batch_seconds: float, batch_size: int
) -> dict[str, Any]:
    """One line of predictions.jsonl; ``latency_s`` is the example's share of its ``predict`` call."""
    rec: dict[str, Any] = {
        "strategy": strategy.id,
        "strategy_name": strategy.name,
        "example_id": example["id"],
        "question": example["question"],
        "reference": example["answer"],
        "tags": list(example.get("tags") or []),
        "prediction": answer.text,
        "latency_s": batch_seconds / batch_size,
        "batch_seconds": batch_seconds,
        "batch_size": batch_size,
        "new_tokens": answer.new_tokens,
        "prompt_tokens": answer.prompt_tokens,
        "prompt_truncated": answer.prompt_truncated,
    }
    if answer.generation_seconds is not None:
        rec["generation_seconds"] = answer.generation_seconds
    if answer.contexts is not None:
        rec["contexts"] = list(answer.contexts)
    if answer.retrieved_ids is not None:
        rec["retrieved_ids"] = list(answer.retrieved_ids)
    if example.get("context_ids") is not None:
        rec["context_ids"] = list(example["context_ids"])
    for key in ("must_include", "must_not_include"):  # key facts travel with the record to scoring
        if example.get(key) is not None:
            rec[key] = example[key]
    if answer.extra:
        rec["extra"] = answer.extra
    return rec


def predict_timed(strategy: Strategy, batch: list[dict[str, Any]]) -> tuple[list[Answer], float]:
    """Run ``strategy.predict(batch)``; return its answers and the call's wall time in seconds."""
    start = time.perf_counter()
    answers = strategy.predict(batch)
    seconds = time.perf_counter() - start
    if len(answers) != len(batch):
        raise RuntimeError(
            f"strategy {strategy.id!r}: predict returned {len(answers)} answers for {len(batch)}"
        )
    return answers, seconds


def use_adapters(config: RunConfig, adapters: list[str]) -> RunConfig:
    """``--adapter PATH`` (every adapter strategy) or ``--adapter ID=PATH``: evaluate trained adapters.

    Sets the ``adapter_path`` param of strategies whose params have one, so they skip training; the
    path joins the strategy's fingerprint like any other param.
    """
    capable = [s for s in config.strategies if "adapter_path" in plugin.get(s.name).Params.model_fields]
    for item in adapters:
        sid, sep, path = item.partition("=")
        if not sep:
            sid, path = "", item
        targets = [s for s in capable if s.key == sid] if sid else capable
        if not targets:
            have = ", ".join(s.key for s in capable) or "none"
            what = (
                f"strategy {sid!r} does not take an adapter" if sid else "no strategy here takes an adapter"
            )
            raise ConfigError(f"--adapter {item}: {what} (adapter strategies in the config: {have})")
        resolved = str(Path(path).expanduser().resolve())
        for spec in targets:
            spec.adapter_path = resolved
    return config


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators (every device's): what ``transformers.set_seed`` does,
    without importing its trainer utilities (they import peft and bitsandbytes: seconds at every start,
    also for runs that train nothing and for errors found on opening the model)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def open_context(config: RunConfig, eval_set: EvalSet, run_dir: Path) -> RunContext:
    """Seed, open the configured backend once (one base model) and the context every strategy shares."""
    seed_everything(config.seed)
    cache = cache_root(config.cache_dir)
    backend = open_backend(config.model, cache)
    return RunContext(
        eval_set=eval_set,
        backend=backend,
        generation=config.generation,
        seed=config.seed,
        cache_dir=cache,
        run_dir=run_dir,
    )


def train(
    config: RunConfig, *, config_path: Path | None = None, run_dir: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """Train every strategy that has a ``train(ctx)`` step (adapters), without evaluating.

    Returns the folder holding their training records and ``{strategy id: train result}``.
    """
    source = str(config_path) if config_path else "config"
    eval_set = open_eval_set(config.eval_set)
    strategies = [s for s in build_strategies(config, source) if callable(getattr(s, "train", None))]
    if not strategies:
        names = ", ".join(sorted({s.name for s in config.strategies}))
        raise ConfigError(f"{source}: no strategy here trains anything ({names}); add e.g. a qlora strategy")
    distributed.init()  # torchrun / accelerate: every rank trains (DDP); rank 0 writes
    run_dir = distributed.broadcast_object(
        run_dir or (config.output_dir / make_run_id(config, config_path, "train"))
    )
    ensure_dir(run_dir)
    signals.set_run_dir(run_dir)
    if distributed.is_main():
        atomic_write_text(run_dir / "config.yaml", dump_config(config))
    ctx = open_context(config, eval_set, run_dir)
    results = {s.id: s.train(ctx) for s in strategies}
    distributed.finish()
    return run_dir, results


def run(
    config: RunConfig,
    *,
    config_path: Path | None = None,
    run_dir: Path | None = None,
    progress: bool = True,
    on_strategy_done: Callable[[str, dict[str, Any]], None] | None = None,
) -> RunResult:
    source = str(config_path) if config_path else "config"
    phases.reset()
    eval_set = open_eval_set(config.eval_set)
    examples = select_examples(eval_set, config)
    strategies = build_strategies(config, source)  # validate params before the slow model load
    get_backend(config.model.backend)  # and the backend name
    check_strategy_capabilities(strategies, config, source)  # and that it can serve every strategy

    distributed.init()  # torchrun / accelerate: shard the examples, rank 0 writes (harness.distributed)
    main = distributed.is_main()
    progress = progress and main
    run_dir = distributed.broadcast_object(run_dir or (config.output_dir / make_run_id(config, config_path)))
    ensure_dir(run_dir)
    signals.set_run_dir(run_dir)
    previous = check_resumable(run_dir, config, eval_set)  # every rank reads, before rank 0 writes
    distributed.barrier()
    if main:
        atomic_write_text(run_dir / "config.yaml", dump_config(config))

    manifest: dict[str, Any] = {
        "adaptbench_run": run_dir.name,
        "started": previous.get("started", now_iso()),
        "status": "running",
        "config_path": str(config_path) if config_path else None,
        "fingerprint": _fingerprint(config),
        "seed": config.seed,
        "data": {
            "eval_set": eval_set.name,
            "path": str(eval_set.root),
            "split": config.eval_set.split,
            "n_examples": len(examples),
            "content_hash": eval_set.content_hash,
            "files": eval_set.file_hashes,
            "kb_documents": len(eval_set.documents),
            "kb_updates": len(eval_set.kb_updates),
        },
        "packages": package_versions(),
        "hardware": hardware(),
        "world_size": distributed.world_size(),
        "strategies": previous.get("strategies", {}),
        **({"latency_probe": previous["latency_probe"]} if "latency_probe" in previous else {}),
    }
    if main:
        atomic_write_json(run_dir / "manifest.json", manifest)

    with phase("load"):
        ctx = open_context(config, eval_set, run_dir)
    backend = ctx.backend
    manifest["model"] = backend.describe()
    check_metric_capabilities(config, backend)  # fail before generating, not after
    rank, world = distributed.rank(), distributed.world_size()
    preds = PredictionLog(run_dir / "predictions.jsonl") if main else None  # rank 0 decides what is done
    prepared: set[str] = set()

    for strategy in strategies:
        todo_ids, skip = distributed.broadcast_object(pending(strategy, examples, preds, manifest))
        todo = [ex for ex in examples if ex["id"] in todo_ids]
        if skip:
            log.info("%s: all %d examples already in %s", strategy.id, len(examples), run_dir.name)
            continue
        start = time.perf_counter()
        mem = PeakMemory("auto").start()
        with phase("prepare"):  # index / train phases are recorded inside
            strategy.prepare(ctx)
        prepared.add(strategy.id)
        prepare_seconds = time.perf_counter() - start
        signals.checkpoint(run_dir)
        bar = tqdm(
            total=len(examples),
            initial=len(examples) - len(todo),
            desc=strategy.id,
            unit="ex",
            disable=not progress,
        )
        backoff = BatchBackoff(f"strategy {strategy.id!r}", config.generation.batch_size)
        with phase("generate"):
            for batch in distributed.shard_batches(
                batch_order(strategy, todo), config.generation.batch_size, rank, world
            ):
                strategy.activate()
                records = [
                    prediction_record(strategy, ex, ans, seconds, len(part))
                    for part, (answers, seconds) in backoff.run(
                        functools.partial(predict_timed, strategy), batch
                    )
                    for ex, ans in zip(part, answers, strict=True)
                ]
                records = distributed.flatten(distributed.gather_objects(records))
                if preds is not None:
                    preds.append(records)
                    bar.update(len(records))
                signals.checkpoint(run_dir)  # Ctrl-C / SIGTERM: stop here, every answer so far is saved
        bar.close()
        mem.stop()
        release_free_heap()  # this strategy's KV caches and activations, before the next one prepares
        if preds is None:
            continue
        restore_order(preds.path, strategy.id, examples)  # example order on disk, as unsorted
        cost = {
            "prepare_seconds": round(prepare_seconds, 3),
            "peak_rss_bytes": mem.rss_peak,  # this strategy's prepare + predict window
            "process_peak_rss_bytes": process_peak_rss_bytes(),
            **strategy.cost,
            **backoff.manifest(),
        }
        if mem.cuda_peak is not None:
            cost["peak_cuda_bytes"] = mem.cuda_peak
        manifest["strategies"][strategy.id] = {"name": strategy.name, "status": "done", "cost": cost}
        atomic_write_json(run_dir / "manifest.json", manifest)
        if on_strategy_done:
            on_strategy_done(strategy.id, cost)

    signals.checkpoint(run_dir)
    if distributed.broadcast_object(probe_needed(run_dir, config, strategies, manifest)):
        for strategy in strategies:  # resumed as finished, not prepared yet; on every rank (may train)
            if strategy.id not in prepared:
                strategy.prepare(ctx)
                prepared.add(strategy.id)
    if not main:  # the rest is rank 0's: the single-request latency probe, scoring, the report
        with signals.immediate():  # torchrun stopping the job (rank 0 failed) ends the wait at once
            distributed.finish()
        return RunResult(run_dir=run_dir, scores={})
    with phase("latency_probe"):
        probe_latency(run_dir, config, strategies, examples, manifest, progress)
    # The probe's freed blocks would otherwise sit under scoring's allocations (generation's were handed
    # back after each strategy): the bf16 demo's score phase peaked at 3.1 GB without it.
    release_free_heap()
    with phase("score"):
        scores = compute_scores(run_dir, config, manifest, [s.id for s in strategies], backend=backend)
    manifest["status"] = "complete"
    manifest["finished"] = now_iso()
    atomic_write_json(run_dir / "manifest.json", manifest)
    with phase("report"):
        render_reports(run_dir)
    manifest["phases"] = phases.totals()  # this process's phases (a resumed run: only what it redid)
    atomic_write_json(run_dir / "manifest.json", manifest)
    distributed.finish()
    return RunResult(run_dir=run_dir, scores=scores)


def pending(
    strategy: Strategy, examples: list[dict[str, Any]], preds: PredictionLog | None, manifest: dict[str, Any]
) -> tuple[set[str], bool]:
    """(ids of the examples ``strategy`` still has to answer, whether it is finished) from rank 0's log."""
    if preds is None:
        return set(), False  # not rank 0: rank 0's answer is broadcast
    todo = {ex["id"] for ex in examples if not preds.done(strategy.id, ex["id"])}
    return todo, not todo and manifest["strategies"].get(strategy.id, {}).get("status") == "done"


def check_strategy_capabilities(strategies: list[Strategy], config: RunConfig, source: str) -> None:
    """Fail before the model loads when a strategy needs a capability the backend lacks (one line)."""
    from harness.validate import capability_problems

    for i, strategy in enumerate(strategies):
        problems = capability_problems(strategy, config.model.backend)
        if problems:
            raise ConfigError(f"{source}: strategies[{i}]: {problems[0]}")


def check_metric_capabilities(config: RunConfig, backend: GenerationBackend) -> None:
    """Every backend capability a configured metric declares (``MetricSpec.capabilities``) is there."""
    import harness.backends.base as protocols
    from harness.scoring.registry import get_metric

    for name in config.metrics:
        for capability in sorted(get_metric(name).capabilities):
            protocol = getattr(protocols, capability, None)
            if protocol is None:
                raise ConfigError(f"metrics: {name!r} declares an unknown backend capability {capability!r}")
            require(backend, protocol, f"the {name} metric")


def compute_scores(
    run_dir: Path,
    config: RunConfig,
    manifest: dict[str, Any],
    order: list[str],
    backend: GenerationBackend | None = None,
) -> dict[str, Any]:
    """Score the run's predictions with the configured metrics and write ``scores.json``."""
    from harness.scoring.score import score_run

    return score_run(run_dir, config, manifest, order, backend=backend)


def render_reports(run_dir: Path) -> None:
    from harness.report import write_report

    write_report(run_dir)
