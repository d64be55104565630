"""Score predictions with local ``evaluate`` modules and summarise latency and throughput."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import evaluate
import numpy as np

METRICS_DIR = Path(__file__).parent / "metrics"


@cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load a shipped metric by path: works offline, never touches the Hub."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        raise ValueError(f"no local metric module {name!r} in {METRICS_DIR}")
    return evaluate.load(str(path))


def per_example_scores(
    metrics: list[str], predictions: list[str], references: list[str]
) -> dict[str, list[float]]:
    if not predictions:
        return {m: [] for m in metrics}
    return {
        m: load_metric(m).compute(predictions=predictions, references=references)["scores"] for m in metrics
    }


def latency_summary(latencies_s: list[float], new_tokens: list[int]) -> dict[str, float]:
    if not latencies_s:
        return {}
    ms = np.asarray(latencies_s) * 1000.0
    total_s = float(np.sum(latencies_s))
    return {
        "latency_mean_ms": float(ms.mean()),
        "latency_p50_ms": float(np.percentile(ms, 50)),
        "latency_p95_ms": float(np.percentile(ms, 95)),
        "latency_p99_ms": float(np.percentile(ms, 99)),
        "generation_seconds": total_s,
        "new_tokens": int(np.sum(new_tokens)),
        "tokens_per_s": float(np.sum(new_tokens) / total_s) if total_s > 0 else 0.0,
    }


def strategy_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of numeric per-example values a strategy reported in ``extra["metrics"]``
    (e.g. retrieval recall@k, faithfulness); missing values are skipped, not counted as zero."""
    values: dict[str, list[float]] = {}
    for rec in records:
        for key, value in ((rec.get("extra") or {}).get("metrics") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(key, []).append(float(value))
    return {k: float(np.mean(v)) for k, v in sorted(values.items())}


def score_strategy(metrics: list[str], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate and per-example scores for one strategy's prediction records (sorted by example id)."""
    records = sorted(records, key=lambda r: r["example_id"])
    per = per_example_scores(metrics, [r["prediction"] for r in records], [r["reference"] for r in records])
    aggregate = {m: float(np.mean(v)) if v else 0.0 for m, v in per.items()}
    by_tag: dict[str, dict[str, Any]] = {}
    for i, rec in enumerate(records):
        for tag in rec.get("tags") or ["untagged"]:
            slot = by_tag.setdefault(tag, {"n": 0, **{m: 0.0 for m in metrics}})
            slot["n"] += 1
            for m in metrics:
                slot[m] += per[m][i]
    for slot in by_tag.values():
        for m in metrics:
            slot[m] /= slot["n"]
    return {
        "n": len(records),
        "metrics": aggregate,
        "strategy_metrics": strategy_metrics(records),
        "latency": latency_summary([r["latency_s"] for r in records], [r["new_tokens"] for r in records]),
        "by_tag": dict(sorted(by_tag.items())),
        "prompt_truncated": sum(1 for r in records if r.get("prompt_truncated")),
        "per_example": {r["example_id"]: {m: per[m][i] for m in metrics} for i, r in enumerate(records)},
    }
