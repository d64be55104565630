"""Orchestrates a run: config -> data -> model -> strategies -> predictions -> scores -> report.

Predictions are appended per batch, every other file is written atomically, and re-running into
an existing run folder resumes: finished (strategy, example) pairs are never recomputed.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm.auto import tqdm

from harness.config import RunConfig, dump_config
from harness.data import EvalSet, load_eval_set
from harness.errors import ConfigError
from harness.generation import TransformersBackend
from harness.manifest import hardware, now_iso, package_versions
from harness.memory import RssSampler
from harness.models import cache_root, load_model
from harness.rundir import PredictionLog, atomic_write_json, atomic_write_text, read_json
from harness.scoring import ScoringContext, score_strategy
from strategies import registry
from strategies.base import RunContext, Strategy

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
    return [registry.build(spec, i, source) for i, spec in enumerate(config.strategies)]


def _fingerprint(config: RunConfig) -> dict[str, Any]:
    """What must match for predictions in an existing run folder to be reused."""
    data = config.model_dump(mode="json")
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


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def prediction_record(strategy: Strategy, example: dict[str, Any], answer: Any) -> dict[str, Any]:
    return {
        "strategy": strategy.id,
        "strategy_name": strategy.name,
        "example_id": example["id"],
        "question": example["question"],
        "reference": example["answer"],
        "tags": list(example.get("tags") or []),
        "prediction": answer.text,
        "latency_s": answer.latency_s,
        "batch_seconds": answer.batch_seconds,
        "batch_size": answer.batch_size,
        "new_tokens": answer.new_tokens,
        "prompt_tokens": answer.prompt_tokens,
        "prompt_truncated": answer.prompt_truncated,
        **({"extra": answer.extra} if answer.extra else {}),
    }


def use_adapters(config: RunConfig, adapters: list[str]) -> RunConfig:
    """``--adapter PATH`` (every adapter strategy) or ``--adapter ID=PATH``: evaluate trained adapters.

    Sets the ``adapter_path`` param of strategies whose params have one, so they skip training; the
    path joins the strategy's fingerprint like any other param.
    """
    capable = [s for s in config.strategies if "adapter_path" in registry.get(s.name).Params.model_fields]
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


def open_context(config: RunConfig, eval_set: EvalSet, run_dir: Path) -> RunContext:
    """Seed, load the base model once and wrap it in the context every strategy shares."""
    transformers.set_seed(config.seed)
    cache = cache_root(config.cache_dir)
    loaded = load_model(config.model, cache)
    return RunContext(
        config=config,
        eval_set=eval_set,
        backend=TransformersBackend(loaded, config.model, cache),
        run_dir=run_dir,
        cache_dir=cache,
        seed=config.seed,
        loaded_model=loaded,
    )


def train(
    config: RunConfig, *, config_path: Path | None = None, run_dir: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """Train every strategy that has a ``train(ctx)`` step (adapters), without evaluating.

    Returns the folder holding their training records and ``{strategy id: train result}``.
    """
    source = str(config_path) if config_path else "config"
    eval_set = load_eval_set(config.eval_set.path)
    strategies = [s for s in build_strategies(config, source) if callable(getattr(s, "train", None))]
    if not strategies:
        names = ", ".join(sorted({s.name for s in config.strategies}))
        raise ConfigError(f"{source}: no strategy here trains anything ({names}); add e.g. a qlora strategy")
    run_dir = run_dir or (config.output_dir / make_run_id(config, config_path, "train"))
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(config))
    ctx = open_context(config, eval_set, run_dir)
    return run_dir, {s.id: s.train(ctx) for s in strategies}


def run(
    config: RunConfig,
    *,
    config_path: Path | None = None,
    run_dir: Path | None = None,
    progress: bool = True,
    on_strategy_done: Callable[[str, dict[str, Any]], None] | None = None,
) -> RunResult:
    source = str(config_path) if config_path else "config"
    eval_set = load_eval_set(config.eval_set.path)
    examples = select_examples(eval_set, config)
    strategies = build_strategies(config, source)  # validate params before the slow model load

    run_dir = run_dir or (config.output_dir / make_run_id(config, config_path))
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = check_resumable(run_dir, config, eval_set)
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
        "strategies": previous.get("strategies", {}),
    }
    atomic_write_json(run_dir / "manifest.json", manifest)

    ctx = open_context(config, eval_set, run_dir)
    manifest["model"] = ctx.loaded_model.to_manifest()
    backend = ctx.backend
    preds = PredictionLog(run_dir / "predictions.jsonl")

    for strategy in strategies:
        todo = [ex for ex in examples if not preds.done(strategy.id, ex["id"])]
        entry = manifest["strategies"].get(strategy.id, {})
        if not todo and entry.get("status") == "done":
            log.info("%s: all %d examples already in %s", strategy.id, len(examples), run_dir.name)
            continue
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        rss = RssSampler().start()
        strategy.prepare(ctx)
        prepare_seconds = time.perf_counter() - start
        bar = tqdm(
            total=len(examples),
            initial=len(examples) - len(todo),
            desc=strategy.id,
            unit="ex",
            disable=not progress,
        )
        for batch in batches(todo, config.generation.batch_size):
            answers = strategy.predict(batch)
            preds.append(prediction_record(strategy, ex, ans) for ex, ans in zip(batch, answers, strict=True))
            bar.update(len(batch))
        bar.close()
        cost = {
            "prepare_seconds": round(prepare_seconds, 3),
            "peak_rss_bytes": rss.stop(),  # this strategy's prepare + predict window
            "process_peak_rss_bytes": _peak_rss_bytes(),
            **strategy.cost,
        }
        if torch.cuda.is_available():
            cost["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
        manifest["strategies"][strategy.id] = {"name": strategy.name, "status": "done", "cost": cost}
        atomic_write_json(run_dir / "manifest.json", manifest)
        if on_strategy_done:
            on_strategy_done(strategy.id, cost)

    scores = compute_scores(run_dir, config, manifest, [s.id for s in strategies], backend=backend)
    manifest["status"] = "complete"
    manifest["finished"] = now_iso()
    atomic_write_json(run_dir / "manifest.json", manifest)
    render_reports(run_dir)
    return RunResult(run_dir=run_dir, scores=scores)


def scoring_context(config: RunConfig, backend: TransformersBackend | None) -> ScoringContext:
    """Model-based metric inputs: the run's base model scores answer perplexity (adapters off)."""
    from harness.perplexity import answer_perplexities, vocab_size

    sc = config.scoring
    ctx = ScoringContext(embedding_model=sc.embedding_model, style_tag=sc.style_tag)
    if backend is not None and "coherence" in config.metrics:
        ctx.perplexity = lambda questions, answers: answer_perplexities(
            backend, questions, answers, batch_size=sc.perplexity_batch_size
        )
        ctx.vocab_size = vocab_size(backend)
    if sc.judge.enabled:
        from harness.judge import Judge

        ctx.judge = Judge(sc.judge, config, backend).score
    return ctx


def compute_scores(
    run_dir: Path,
    config: RunConfig,
    manifest: dict[str, Any],
    order: list[str],
    backend: TransformersBackend | None = None,
) -> dict[str, Any]:
    preds = PredictionLog(run_dir / "predictions.jsonl")
    result: dict[str, Any] = {
        "primary_metric": config.primary_metric,
        "metrics": config.metrics,
        "strategies": {},
    }
    ctx = scoring_context(config, backend)
    if config.scoring.judge.enabled:
        result["judge"] = config.scoring.judge.model_dump()
    for sid in order:
        scored = score_strategy(config.metrics, preds.for_strategy(sid), ctx)
        scored["name"] = manifest["strategies"].get(sid, {}).get("name")
        scored["cost"] = manifest["strategies"].get(sid, {}).get("cost", {})
        result["strategies"][sid] = scored
    atomic_write_json(run_dir / "scores.json", result)
    return result


def render_reports(run_dir: Path) -> None:
    from harness.report import write_report

    write_report(run_dir)
