"""Score prediction records with the configured metrics (local ``evaluate`` modules, loaded by path).

For each metric the scorer passes exactly the inputs its ``MetricSpec.needs`` names: record fields
(``references``, ``questions``, ``contexts``, ``retrieved_ids``, ``context_ids``, ``tags``) and run-level
inputs (``backend``, ``embedding_model``, ``scoring``). A record lacking a record input the metric needs
(no ``contexts`` for faithfulness, no ``retrieved_ids`` for recall@k), or lacking the tag named by
``tag_option``, gets ``None`` for that metric: not applicable, left out of every mean.

Key facts (``facts``): prediction records do not carry the eval set's ``must_include`` /
``must_not_include``, so the scorer attaches them by ``example_id`` (``attach_facts``): ``score_run``
reads them from the run's eval set (only when a configured metric needs ``facts``) and passes them as
``ScoringInputs.facts``; a record that already has a ``facts`` field, or ``must_include`` /
``must_not_include`` fields of its own, keeps those. Examples with neither field get no ``facts``, so
the fact metrics score them ``None``.

``scores.json`` holds per-example scores and diagnostics only; every aggregate (means, confidence
intervals, per-tag breakdowns) is computed by the analysis over the examples all strategies answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from harness.config import RunConfig, ScoringConfig
from harness.scoring.registry import RECORD_INPUTS, MetricSpec, get_metric
from harness.scoring.semantic import shared_embeddings


@cache
def load_module(path: str):
    """Load an evaluate module folder by path: works offline, never touches the Hub."""
    import evaluate

    return evaluate.load(path)


def load_metric(name: str):
    """The loaded evaluate module of a registered metric."""
    try:
        spec = get_metric(name)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    return load_module(str(spec.path))


@dataclass
class ScoringInputs:
    """Run-level metric inputs: the run's backend (perplexity, judge) and the ``scoring:`` options."""

    backend: Any = None
    scoring: ScoringConfig | None = None
    facts: dict[str, dict[str, Any]] | None = None  # example id -> {"must_include", "must_not_include"}

    def value(self, need: str) -> Any:
        scoring = self.scoring or ScoringConfig()
        if need == "backend":
            return self.backend
        if need == "embedding_model":
            return scoring.embedding_model
        if need == "scoring":
            return scoring
        raise KeyError(need)


def _facts_of(row: dict[str, Any]) -> dict[str, Any] | None:
    include, exclude = row.get("must_include"), row.get("must_not_include")
    if not include and not exclude:
        return None
    return {"must_include": list(include or []), "must_not_include": list(exclude or [])}


def attach_facts(records: list[dict[str, Any]], facts: dict[str, dict[str, Any]] | None) -> list[dict]:
    """Records with a ``facts`` field where their example has key facts (see the module docstring)."""
    out = []
    for r in records:
        found = r.get("facts") or _facts_of(r) or _facts_of((facts or {}).get(r["example_id"]) or {})
        out.append({**r, "facts": found} if found else r)
    return out


def eval_set_facts(config: RunConfig) -> dict[str, dict[str, Any]]:
    """example id -> key facts of the run's eval-set split (examples without facts are left out)."""
    from harness.data import open_eval_set

    ds = open_eval_set(config.eval_set).split(config.eval_set.split)
    if "must_include" not in ds.column_names and "must_not_include" not in ds.column_names:
        return {}
    return {row["id"]: f for row in ds if (f := _facts_of(row))}


def applies(spec: MetricSpec, record: dict[str, Any], scoring: ScoringConfig) -> bool:
    if any(record.get(RECORD_INPUTS[k]) is None for k in spec.record_inputs):
        return False
    if spec.tag_option:
        return getattr(scoring, spec.tag_option) in (record.get("tags") or [])
    return True


def score_metric(
    spec: MetricSpec, records: list[dict[str, Any]], inputs: ScoringInputs
) -> tuple[list[float | None], dict[str, list[Any]]]:
    """(per-example scores, per-example diagnostics) of one metric; ``None`` where it does not apply."""
    scoring = inputs.scoring or ScoringConfig()
    idx = [i for i, r in enumerate(records) if applies(spec, r, scoring)]
    column: list[float | None] = [None] * len(records)
    diagnostics: dict[str, list[Any]] = {}
    if not idx:
        return column, diagnostics
    chosen = [records[i] for i in idx]
    kwargs: dict[str, Any] = {"predictions": [r["prediction"] for r in chosen]}
    for need in spec.record_inputs:
        kwargs[need] = [r[RECORD_INPUTS[need]] for r in chosen]
    for need in sorted(spec.needs - set(RECORD_INPUTS)):
        kwargs[need] = inputs.value(need)
    out = load_module(str(spec.path)).compute(**kwargs)
    for i, value in zip(idx, out["scores"], strict=True):
        column[i] = None if value is None else float(value)
    for name, values in (out.get("diagnostics") or {}).items():
        full: list[Any] = [None] * len(records)
        for i, value in zip(idx, values, strict=True):
            full[i] = value
        diagnostics[name] = full
    return column, diagnostics


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


def score_records(
    metrics: list[str], records: list[dict[str, Any]], inputs: ScoringInputs | None = None
) -> dict[str, Any]:
    """Per-example scores (and diagnostics, e.g. coherence's perplexity) of one strategy's records,
    keyed by example id, plus its latency summary."""
    return score_strategies(metrics, {"": records}, inputs)[""]


def score_strategies(
    metrics: list[str], records: dict[str, list[dict[str, Any]]], inputs: ScoringInputs | None = None
) -> dict[str, dict[str, Any]]:
    """``score_records`` for several strategies at once: each metric scores every strategy's records in
    one call (every metric scores a record on its own), so a model-based metric batches across them and
    the answer perplexity runs each question's context once for all strategies' answers to it."""
    inputs = inputs or ScoringInputs()
    ordered = {
        sid: attach_facts(sorted(recs, key=lambda r: r["example_id"]), inputs.facts)
        for sid, recs in records.items()
    }
    flat = [r for recs in ordered.values() for r in recs]
    per: dict[str, list[float | None]] = {}
    diagnostics: dict[str, list[Any]] = {}
    with shared_embeddings():  # metrics embedding the same answers and references share the vectors
        for name in metrics:
            per[name], diag = score_metric(get_metric(name), flat, inputs)
            diagnostics.update(diag)
    out: dict[str, dict[str, Any]] = {}
    start = 0
    for sid, recs in ordered.items():
        rows = range(start, start + len(recs))
        start += len(recs)
        out[sid] = {
            "n": len(recs),
            "latency": latency_summary(
                [r["latency_s"] for r in recs],
                [r["new_tokens"] for r in recs],
                [r["batch_seconds"] for r in recs if r.get("batch_seconds") is not None],
            ),
            "prompt_truncated": sum(1 for r in recs if r.get("prompt_truncated")),
            "per_example": {
                flat[i]["example_id"]: {
                    **{m: per[m][i] for m in metrics},
                    **{k: values[i] for k, values in diagnostics.items()},
                }
                for i in rows
            },
        }
    return out


def score_run(
    run_dir: Path,
    config: RunConfig,
    manifest: dict[str, Any],
    order: list[str],
    backend: Any = None,
) -> dict[str, Any]:
    """Score every strategy of a run folder's predictions and write ``scores.json``."""
    from harness.rundir import PredictionLog, atomic_write_json

    preds = PredictionLog(Path(run_dir) / "predictions.jsonl")
    result: dict[str, Any] = {
        "primary_metric": config.primary_metric,
        "metrics": list(config.metrics),
        "strategies": {},
    }
    if "judge_score" in config.metrics:
        result["judge"] = config.scoring.judge.model_dump()
    inputs = ScoringInputs(backend=backend, scoring=config.scoring)
    if any("facts" in get_metric(m).needs for m in config.metrics):
        inputs.facts = eval_set_facts(config)
    scored = score_strategies(config.metrics, {sid: preds.for_strategy(sid) for sid in order}, inputs)
    for sid in order:
        info = manifest.get("strategies", {}).get(sid, {})
        result["strategies"][sid] = {"name": info.get("name"), "cost": info.get("cost", {}), **scored[sid]}
    atomic_write_json(Path(run_dir) / "scores.json", result)
    return result
