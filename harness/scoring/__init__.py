"""Score predictions with local ``evaluate`` modules and summarise latency and throughput."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import evaluate
import numpy as np

METRICS_DIR = Path(__file__).parent.parent / "metrics"


@cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load a shipped metric by path: works offline, never touches the Hub."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        raise ValueError(f"no local metric module {name!r} in {METRICS_DIR}")
    return evaluate.load(str(path))


# Metrics that need more than (prediction, reference) text; computed in ``model_metric_scores``.
MODEL_METRICS = ("semantic_similarity", "coherence", "style_adherence")


def per_example_scores(
    metrics: list[str], predictions: list[str], references: list[str]
) -> dict[str, list[float]]:
    metrics = [m for m in metrics if m not in MODEL_METRICS]
    if not predictions:
        return {m: [] for m in metrics}
    return {
        m: load_metric(m).compute(predictions=predictions, references=references)["scores"] for m in metrics
    }


@dataclass
class ScoringContext:
    """What the model-based metrics need beyond the records (see the metric modules' docstrings)."""

    embedding_model: str | None = None
    style_tag: str = "style"
    perplexity: Callable[[list[str], list[str]], list[float | None]] | None = None
    vocab_size: int = 32000
    judge: Callable[[list[dict[str, Any]]], list[float | None]] | None = None


def model_metric_scores(
    metrics: list[str], records: list[dict[str, Any]], ctx: ScoringContext
) -> tuple[dict[str, list[float | None]], dict[str, list[Any]]]:
    """(per-example scores, per-example diagnostics) for the model-based metrics; ``None`` = not scored
    (style adherence exists only for examples tagged ``ctx.style_tag``)."""
    preds = [r["prediction"] for r in records]
    refs = [r["reference"] for r in records]
    scores: dict[str, list[float | None]] = {}
    extra: dict[str, list[Any]] = {}
    if not records:
        return {m: [] for m in metrics if m in MODEL_METRICS}, extra
    if "semantic_similarity" in metrics:
        scores["semantic_similarity"] = load_metric("semantic_similarity").compute(
            predictions=preds, references=refs, embedding_model=ctx.embedding_model
        )["scores"]
    if "coherence" in metrics:
        ppl = ctx.perplexity([r["question"] for r in records], preds) if ctx.perplexity else None
        out = load_metric("coherence").compute(
            predictions=preds,
            perplexities=ppl,
            vocab_size=ctx.vocab_size,
            embedding_model=ctx.embedding_model,
        )
        scores["coherence"] = out["scores"]
        if ppl is not None:
            extra["perplexity"] = ppl
            extra["fluency"] = out["fluency"]
        extra["consistency"] = out["consistency"]
        extra["repetition"] = out["repetition"]
    if "style_adherence" in metrics:
        idx = [i for i, r in enumerate(records) if ctx.style_tag in (r.get("tags") or [])]
        col: list[float | None] = [None] * len(records)
        if idx:
            out = load_metric("style_adherence").compute(
                predictions=[preds[i] for i in idx],
                references=[refs[i] for i in idx],
                embedding_model=ctx.embedding_model,
            )
            for i, v in zip(idx, out["scores"], strict=True):
                col[i] = v
        scores["style_adherence"] = col
    if ctx.judge is not None:
        scores["judge_score"] = ctx.judge(records)
    return scores, extra


def latency_summary(
    latencies_s: list[float], new_tokens: list[int], batch_seconds: list[float] | None = None
) -> dict[str, float]:
    if not latencies_s:
        return {}
    ms = np.asarray(latencies_s) * 1000.0
    total_s = float(np.sum(latencies_s))
    out = {
        "latency_mean_ms": float(ms.mean()),
        "latency_p50_ms": float(np.percentile(ms, 50)),
        "latency_p95_ms": float(np.percentile(ms, 95)),
        "latency_p99_ms": float(np.percentile(ms, 99)),
        "generation_seconds": total_s,
        "new_tokens": int(np.sum(new_tokens)),
        "tokens_per_s": float(np.sum(new_tokens) / total_s) if total_s > 0 else 0.0,
    }
    if batch_seconds:
        # Examples of one batch share its wall time, so distinct values are the batches.
        batches = sorted(set(batch_seconds))
        out["batches"] = len(batches)
        out["batch_seconds_mean"] = float(np.mean(batches))
    return out


def _reported_metrics(rec: dict[str, Any]) -> dict[str, Any]:
    """Per-example metrics a strategy reported (``extra["metrics"]``) plus those derived from its record's
    ``contexts`` / ``retrieved_ids`` (faithfulness, recall@k, MRR; set by ``_derive_retrieval_metrics``)."""
    return {**((rec.get("extra") or {}).get("metrics") or {}), **(rec.get("_derived") or {})}


def _derive_retrieval_metrics(records: list[dict[str, Any]]) -> None:
    """Bridge until the metric registry lands: faithfulness from ``contexts``, recall@k / MRR from
    ``retrieved_ids`` + ``context_ids`` (k = the strategy's ``top_k``), stored under ``_derived``."""
    from harness.scoring.retrieval_metrics import retrieval_metrics

    grounded = [r for r in records if r.get("contexts") is not None]
    if grounded:
        scores = load_metric("faithfulness").compute(
            predictions=[r["prediction"] for r in grounded], contexts=[r["contexts"] for r in grounded]
        )["scores"]
        for r, s in zip(grounded, scores, strict=True):
            r.setdefault("_derived", {})["faithfulness"] = s
    for r in records:
        if r.get("retrieved_ids") is not None:
            k = int((r.get("extra") or {}).get("top_k") or len(r["retrieved_ids"]))
            r.setdefault("_derived", {}).update(retrieval_metrics(r["retrieved_ids"], r["context_ids"], k))


def strategy_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of numeric per-example values a strategy reported in ``extra["metrics"]``
    (e.g. retrieval recall@k, faithfulness); missing values are skipped, not counted as zero."""
    values: dict[str, list[float]] = {}
    for rec in records:
        for key, value in _reported_metrics(rec).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(key, []).append(float(value))
    return {k: float(np.mean(v)) for k, v in sorted(values.items())}


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def score_strategy(
    metrics: list[str], records: list[dict[str, Any]], ctx: ScoringContext | None = None
) -> dict[str, Any]:
    """Aggregate and per-example scores for one strategy's prediction records (sorted by example id).

    ``per_example`` also keeps each example's strategy-reported metrics (``extra["metrics"]``, e.g.
    faithfulness) and the coherence diagnostics, so the report can recompute every statistic from
    the run folder alone. A metric that does not apply to an example (style adherence outside the
    style tag) is ``None`` there and is left out of means."""
    records = sorted((dict(r) for r in records), key=lambda r: r["example_id"])
    _derive_retrieval_metrics(records)
    per: dict[str, list[Any]] = dict(
        per_example_scores(metrics, [r["prediction"] for r in records], [r["reference"] for r in records])
    )
    diagnostics: dict[str, list[Any]] = {}
    if any(m in MODEL_METRICS for m in metrics) or (ctx and ctx.judge):
        model_scores, diagnostics = model_metric_scores(metrics, records, ctx or ScoringContext())
        per.update(model_scores)
    names = [m for m in metrics if m in per] + [m for m in per if m not in metrics]
    aggregate = {m: (_mean(per[m]) if per[m] else 0.0) for m in names}
    by_tag: dict[str, dict[str, Any]] = {}
    for i, rec in enumerate(records):
        for tag in rec.get("tags") or ["untagged"]:
            slot = by_tag.setdefault(tag, {"n": 0, **{m: [] for m in names}})
            slot["n"] += 1
            for m in names:
                if per[m][i] is not None:
                    slot[m].append(per[m][i])
    for slot in by_tag.values():
        for m in names:
            vals = slot.pop(m)
            if vals:
                slot[m] = float(np.mean(vals))
    per_example: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(records):
        row: dict[str, Any] = {m: per[m][i] for m in names}
        for key, value in _reported_metrics(r).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in row:
                row[key] = float(value)
        for key, values in diagnostics.items():
            row[key] = values[i]
        per_example[r["example_id"]] = row
    return {
        "n": len(records),
        "metrics": aggregate,
        "strategy_metrics": strategy_metrics(records),
        "latency": latency_summary(
            [r["latency_s"] for r in records],
            [r["new_tokens"] for r in records],
            [r["batch_seconds"] for r in records if r.get("batch_seconds") is not None],
        ),
        "by_tag": dict(sorted(by_tag.items())),
        "prompt_truncated": sum(1 for r in records if r.get("prompt_truncated")),
        "per_example": per_example,
    }
