"""Machine-readable outputs: ``scores.csv`` (one row per strategy and example) and ``decision.json``
(the decision, every aggregate with its CI, the comparisons and the settings)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from harness.decision.analysis import DERIVED, Analysis, is_metric
from harness.decision.engine import Decision
from harness.report.text import finite


def scores_frame(an: Analysis) -> pd.DataFrame:
    """One row per (strategy, example): tags, every per-example score, latency and tokens."""
    rows = []
    for s, sd in an.strategies.items():
        names = [n for n in sd.arrays if n not in DERIVED]
        quality = [n for n in an.quality if n in names]
        diag = [n for n in names if not is_metric(n)]
        others = [n for n in names if n not in quality and n not in diag]
        for i, ex in enumerate(an.examples):
            rec = an.predictions.get((s, ex["id"])) or {}
            row: dict[str, Any] = {"strategy": s, "example_id": ex["id"], "tags": ";".join(ex["tags"])}
            for n in quality + others + diag:
                v = sd.arrays[n][i]
                row[n] = float(v) if np.isfinite(v) else None
            share = sd.arrays["pass_ms"][i]  # the example's share of its batch's wall time (not latency)
            row["batch_share_ms"] = float(share) if np.isfinite(share) else None
            row["new_tokens"] = rec.get("new_tokens")
            row["prompt_tokens"] = rec.get("prompt_tokens")
            row["prompt_truncated"] = rec.get("prompt_truncated")
            rows.append(row)
    return pd.DataFrame(rows)


def decision_record(an: Analysis, d: Decision) -> dict[str, Any]:
    return {
        "run": an.run_name,
        "headline": d.headline,
        "detail": d.detail,
        "decision": d.to_dict(),
        "primary_metric": an.primary,
        "quality_metrics": an.quality,
        "aggregates": {
            s: {m: iv.to_dict() for m, iv in an.ci[s].items() if finite(iv.estimate)} for s in an.strategies
        },
        "by_tag": {
            t: {s: {m: iv.to_dict() for m, iv in ms.items()} for s, ms in per.items()}
            for t, per in an.by_tag.items()
        },
        "comparisons": an.comparisons,
        "settings": {
            **an.decision_cfg.model_dump(),
            "price_per_hour_usd_used": an.price_per_hour,
            "device": an.device,
            "n_examples": len(an.examples),
        },
        "warnings": an.warnings,
    }
