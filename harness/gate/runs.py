"""One in-memory form for a run folder or an exported baseline file, so ``compare`` and ``gate`` take
either. A baseline (``adaptbench baseline export``) is the small, versionable subset of a run that a
regression check needs: eval-set hash, metric definitions, per-example scores and answers per strategy,
cluster keys, and the point values (with intervals) of latency, throughput and cost.

Latency/throughput/cost numbers come from ``harness.decision.analysis.analyze`` (the one aggregation
path); per-example quality scores are read from ``scores.json`` per strategy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import DataError
from harness.rundir import load_predictions, read_json
from harness.scoring.registry import available_metrics

SCHEMA = "adaptbench.baseline"
SCHEMA_VERSION = 1
SPEC_FIELDS = ("name", "label", "higher_is_better", "unit", "binary", "needs", "tag_option")
# Point values carried for the latency/throughput/cost deltas and absolute gate rules.
POINT_MEASURES = (
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "latency_mean_ms",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "tpot_mean_ms",
    "tokens_per_s",
    "batch_seconds",
    "serving_cost_per_1k_usd",
    "total_cost_per_1k_usd",
    "train_time_min",
    "peak_memory_gb",
    "adapter_mb",
    "index_mb",
)


@dataclass
class RunData:
    """What compare and gate read, whatever the source."""

    source: str
    kind: str  # "run" or "baseline"
    name: str
    content_hash: str | None
    primary: str
    metrics: dict[str, dict[str, Any]]  # metric -> its definition (spec fields)
    scores: dict[str, dict[str, dict[str, float | None]]]  # sid -> example id -> metric -> value
    answers: dict[str, dict[str, str]]  # sid -> example id -> answer text
    examples: dict[str, dict[str, Any]]  # example id -> question, reference, context_id, group
    measures: dict[str, dict[str, dict[str, float | None]]]  # sid -> measure -> estimate/low/high
    settings: dict[str, Any] = field(default_factory=dict)  # alpha, confidence, resamples, seed
    probe_rounds: int = 0

    @property
    def strategies(self) -> list[str]:
        return list(self.scores)

    def ids(self, sid: str) -> list[str]:
        return sorted(self.scores.get(sid, {}))


def spec_fields(name: str) -> dict[str, Any] | None:
    spec = available_metrics().get(name)
    if spec is None:
        return None
    out = {k: getattr(spec, k) for k in SPEC_FIELDS}
    out["needs"] = sorted(out["needs"])
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def load(path: str | Path) -> RunData:
    """A run folder (has scores.json) or a baseline JSON file."""
    p = Path(path)
    if p.is_dir():
        return _from_run(p)
    if p.is_file():
        return _from_baseline(p)
    raise DataError(f"{p}: no such run folder or baseline file")


def _from_run(run_dir: Path) -> RunData:
    from harness.decision.analysis import analyze

    an = analyze(run_dir)  # raises DataError without scores.json
    entries = an.scores.get("strategies") or {}
    listed = list(an.scores.get("metrics") or [an.primary])
    seen = {n for e in entries.values() for per in (e.get("per_example") or {}).values() for n in per}
    names = [m for m in listed if m in seen] + sorted(m for m in seen if m not in listed)
    metrics = {m: f for m in names if (f := spec_fields(m)) is not None}
    scores = {
        sid: {
            eid: {m: _num(v.get(m)) for m in metrics if m in v}
            for eid, v in (entry.get("per_example") or {}).items()
        }
        for sid, entry in entries.items()
    }
    records = load_predictions(run_dir / "predictions.jsonl")
    answers: dict[str, dict[str, str]] = {}
    examples: dict[str, dict[str, Any]] = {}
    for r in records:
        answers.setdefault(r["strategy"], {})[r["example_id"]] = str(r.get("prediction", ""))
        ctx = r.get("context_ids") or []
        examples.setdefault(
            r["example_id"],
            {
                "question": str(r.get("question", "")),
                "reference": str(r.get("reference", "")),
                "context_id": str(ctx[0]) if ctx else None,
                "group": None if r.get("group") is None else str(r["group"]),
            },
        )
    measures = {
        sid: {
            m: {"estimate": _num(iv.estimate), "low": _num(iv.low), "high": _num(iv.high)}
            for m in POINT_MEASURES
            if (iv := an.ci[sid].get(m)) is not None
        }
        for sid in an.ci
    }
    cfg = an.decision_cfg
    seed = an.manifest.get("seed", 0)
    return RunData(
        source=str(run_dir),
        kind="run",
        name=run_dir.name,
        content_hash=(an.manifest.get("data") or {}).get("content_hash"),
        primary=an.primary,
        metrics=metrics,
        scores=scores,
        answers=answers,
        examples=examples,
        measures=measures,
        settings={
            "seed": seed if isinstance(seed, int) else 0,
            "resamples": cfg.bootstrap_resamples,
            "permutation_resamples": cfg.permutation_resamples,
            "confidence": cfg.confidence_level,
            "alpha": cfg.alpha,
        },
        probe_rounds=len(next(iter(an.strategies.values())).probe.get("e2e_ms", ())) if an.strategies else 0,
    )


def to_baseline(run: RunData) -> dict[str, Any]:
    """The baseline file's content (JSON-ready)."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "run": run.name,
        "eval_set_hash": run.content_hash,
        "primary_metric": run.primary,
        "metrics": run.metrics,
        "settings": run.settings,
        "probe_rounds": run.probe_rounds,
        "examples": run.examples,
        "strategies": {
            sid: {
                "scores": run.scores[sid],
                "answers": run.answers.get(sid, {}),
                "measures": run.measures.get(sid, {}),
            }
            for sid in run.scores
        },
    }


def export_baseline(run_dir: str | Path, out: str | Path) -> Path:
    out = Path(out)
    data = to_baseline(load(run_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def _from_baseline(path: Path) -> RunData:
    try:
        data = read_json(path)
    except ValueError as exc:
        raise DataError(
            f"{path}: not valid JSON ({exc}); export one with adaptbench baseline export"
        ) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise DataError(f"{path}: not an adaptbench baseline (schema must be {SCHEMA!r})")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(
            f"{path}: baseline schema_version {version!r} is not supported (expected {SCHEMA_VERSION}); "
            "re-export it with adaptbench baseline export"
        )
    strategies = data.get("strategies")
    if not isinstance(strategies, dict) or not strategies:
        raise DataError(f"{path}: field 'strategies' is empty; re-export the baseline")
    try:
        return RunData(
            source=str(path),
            kind="baseline",
            name=str(data.get("run") or path.stem),
            content_hash=data.get("eval_set_hash"),
            primary=str(data["primary_metric"]),
            metrics=dict(data["metrics"]),
            scores={sid: dict(s["scores"]) for sid, s in strategies.items()},
            answers={sid: dict(s.get("answers") or {}) for sid, s in strategies.items()},
            examples=dict(data.get("examples") or {}),
            measures={sid: dict(s.get("measures") or {}) for sid, s in strategies.items()},
            settings=dict(data.get("settings") or {}),
            probe_rounds=int(data.get("probe_rounds") or 0),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: baseline field {exc} is missing or malformed; re-export it") from None
