"""``report.html``: the view model built from an analysed run and its decision, rendered with Jinja2
into one self-contained page.

Untrusted text (questions, answers, references, KB ids, strategy ids, tags) only reaches HTML through
Jinja2 autoescaping or ``markupsafe.escape`` (charts); the page also carries a Content-Security-Policy
that forbids scripts and network access, as a second line of defence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

import harness.report.charts as charts
from harness.decision.analysis import Analysis
from harness.decision.engine import Decision, parse_constraint
from harness.decision.explain import margin_text
from harness.decision.measures import MEASURES, format_value, measure
from harness.decision.weighted import scale_for
from harness.report.text import ci_text
from harness.report.text import finite as _finite

TEMPLATES = Path(__file__).parent / "templates"

TABLE_ROWS = {
    # What one user waits: the latency probe's single requests through the whole pipeline.
    "Latency per request (probe)": [
        "latency_p50_ms",
        "latency_p95_ms",
        "latency_p99_ms",
        "ttft_p50_ms",
        "ttft_p95_ms",
        "tpot_mean_ms",
    ],
    # What the hardware serves: the batched evaluation pass (drives serving cost).
    "Throughput (batched pass)": [
        "tokens_per_s",
        "batch_seconds",
    ],
    "Cost": [
        "serving_cost_per_1k_usd",
        "total_cost_per_1k_usd",
        "train_time_min",
        "index_build_time_min",
        "setup_time_min",
        "peak_memory_gb",
        "adapter_mb",
        "index_mb",
    ],
}
EXPLORER_SCORES = ("semantic_similarity", "coherence", "style_adherence", "faithfulness", "judge_score")
SHORT = {
    "token_f1": "F1",
    "exact_match": "EM",
    "rouge_l": "ROUGE-L",
    "answer_recall": "recall",
    "semantic_similarity": "similarity",
    "coherence": "coherence",
    "style_adherence": "style",
    "faithfulness": "faithful",
    "judge_score": "judge",
}


def html_env() -> jinja2.Environment:
    """Autoescaping on: questions, answers and KB text are untrusted and must render as text."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2"), default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    env.filters["num"] = lambda v, d=1: "–" if v is None else f"{v:,.{d}f}"
    env.filters["fmt"] = lambda v, name: format_value(name, v)
    return env


def _table(an: Analysis, d: Decision) -> list[dict[str, Any]]:
    constraints = [parse_constraint(c) for c in d.constraints]
    groups = {"Quality": list(an.quality), **TABLE_ROWS}
    out = []
    for group, names in groups.items():
        rows = []
        for name in names:
            vals = {s: an.point[s].get(name, float("nan")) for s in an.strategies}
            if not any(_finite(v) for v in vals.values()):
                continue
            if group == "Cost" and all((v or 0) == 0 for v in vals.values() if _finite(v)):
                continue  # e.g. no strategy trains: skip an all-zero training-time row
            m = measure(name)
            finite = [v for v in vals.values() if _finite(v)]
            best = (max if m.higher_is_better else min)(finite) if len(finite) > 1 else None
            texts = {format_value(name, v) for v in finite}
            best_text = format_value(name, best) if best is not None and len(texts) > 1 else None
            cells = []
            for s, v in vals.items():
                broken = [c.text for c in constraints if c.name == name and not c.check(v)]
                cells.append(
                    {
                        "text": format_value(name, v),
                        "ci": ci_text(name, an.ci[s].get(name)),
                        "best": best_text is not None and format_value(name, v) == best_text,
                        "broken": broken,
                    }
                )
            rows.append(
                {
                    "label": m.label,
                    "better": "higher is better" if m.higher_is_better else "lower is better",
                    "arrow": "↑" if m.higher_is_better else "↓",
                    "description": m.description,
                    "weight": d.weights.get(name),
                    "cells": cells,
                }
            )
        if rows:
            out.append({"group": group, "rows": rows})
    return out


def _charts(an: Analysis) -> dict[str, Any]:
    sids = list(an.strategies)
    out: dict[str, Any] = {}
    quality = [m for m in an.quality if MEASURES.get(m) is not None or "@" in m or m == "mrr"]
    vals = {}
    for m in quality:
        for s in sids:
            iv = an.ci[s].get(m)
            vals[(SHORT.get(m, m), s)] = (iv.estimate, iv.low, iv.high) if iv else (float("nan"), None, None)
    out["metrics"] = charts.grouped_bars(
        [SHORT.get(m, m) for m in quality],
        sids,
        vals,
        title="Quality metrics with 95% bootstrap confidence intervals",
        y_max=1.0,
    )
    p = an.primary
    pts = []
    for s in sids:
        q, lat = an.ci[s].get(p), an.ci[s].get("latency_p95_ms")
        pts.append(
            {
                "name": s,
                "x": lat.estimate if lat else float("nan"),
                "xlo": lat.low if lat else None,
                "xhi": lat.high if lat else None,
                "y": q.estimate if q else float("nan"),
                "ylo": q.low if q else None,
                "yhi": q.high if q else None,
            }
        )
    out["scatter"] = charts.scatter_ci(
        pts,
        title=f"{measure(p).label} vs p95 latency",
        x_label="p95 request latency, latency probe (ms)",
        y_label=measure(p).label,
        x_fmt=lambda v: f"{v:,.0f}",
        y_fmt=lambda v: f"{round(100 * v, 1):g}%",
    )
    cost_panels = []
    for name in (
        "serving_cost_per_1k_usd",
        "total_cost_per_1k_usd",
        "latency_p95_ms",
        "train_time_min",
        "index_build_time_min",
        "peak_memory_gb",
        "adapter_mb",
        "index_mb",
    ):
        values = [an.point[s].get(name) for s in sids]
        if not any(_finite(v) and v > 0 for v in values):
            continue
        cost_panels.append(
            charts.hbars(sids, values, title=measure(name).label, fmt=lambda v, n=name: format_value(n, v))
        )
    out["costs"] = cost_panels
    series = []
    for i, s in enumerate(sids):
        tr = an.strategies[s].training
        if not tr:
            continue
        if tr.get("train"):
            series.append({"name": s, "colour": i, "points": [(p["step"], p["loss"]) for p in tr["train"]]})
        if tr.get("validation"):
            series.append(
                {
                    "name": s,
                    "colour": i,
                    "dashed": True,
                    "points": [(p["step"], p["loss"]) for p in tr["validation"]],
                }
            )
    out["loss"] = (
        charts.line_chart(series, title="Training loss", x_label="optimizer step", y_label="loss")
        if series
        else None
    )
    tags = list(an.by_tag)
    tag_vals = {}
    for t in tags:
        for s in sids:
            iv = an.by_tag[t].get(s, {}).get(p)
            tag_vals[(f"{t} (n={an.tag_counts[t]})", s)] = (
                (iv.estimate, iv.low, iv.high) if iv else (float("nan"), None, None)
            )
    out["tags"] = charts.grouped_bars(
        [f"{t} (n={an.tag_counts[t]})" for t in tags],
        sids,
        tag_vals,
        title=f"{measure(p).label} by question tag with 95% bootstrap CIs",
        y_max=1.0,
    )
    return out


def _tag_table(an: Analysis) -> list[dict[str, Any]]:
    rows = []
    metrics = [m for m in an.quality if m in (an.primary, "semantic_similarity", "style_adherence")]
    for t in an.by_tag:
        for m in metrics:
            cells = []
            for s in an.strategies:
                iv = an.by_tag[t].get(s, {}).get(m)
                cells.append({"text": format_value(m, iv.estimate) if iv else "–", "ci": ci_text(m, iv)})
            if any(c["text"] != "–" for c in cells):
                rows.append({"tag": t, "n": an.tag_counts[t], "metric": measure(m).label, "cells": cells})
    return rows


def _chunks(extra: dict[str, Any]) -> list[dict[str, Any]]:
    """Retrieved chunks as recorded by retrieval strategies (ids, scores, optionally text)."""
    out = []
    for c in extra.get("retrieved") or extra.get("chunks") or []:
        if isinstance(c, str):
            out.append({"id": "", "doc": "", "score": None, "in_prompt": None, "text": c})
        elif isinstance(c, dict):
            out.append(
                {
                    "id": str(c.get("chunk_id") or c.get("id") or ""),
                    "doc": str(c.get("doc_id") or c.get("title") or ""),
                    "score": c.get("score") if _finite(c.get("score")) else None,
                    "in_prompt": c.get("in_prompt"),
                    "text": str(c.get("text") or ""),
                }
            )
    return out


def _explorer(an: Analysis) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    tags = list(an.tag_counts)
    tag_index = {t: i for i, t in enumerate(tags)}
    p = an.primary
    threshold = an.decision_cfg.disagree_threshold
    rows, n_dis = [], 0
    for i, ex in enumerate(an.examples):
        primaries = {s: sd.arrays[p][i] for s, sd in an.strategies.items() if p in sd.arrays}
        finite = [v for v in primaries.values() if _finite(v)]
        spread = (max(finite) - min(finite)) if len(finite) > 1 else 0.0
        disagree = spread >= threshold
        n_dis += disagree
        best = max(finite) if finite else None
        answers = []
        for s, sd in an.strategies.items():
            rec = an.predictions.get((s, ex["id"])) or {}
            scores = []
            v = primaries.get(s)
            for name in (p, *EXPLORER_SCORES):
                if name == p and name in EXPLORER_SCORES:
                    continue
                arr = sd.arrays.get(name)
                if arr is not None and _finite(arr[i]):
                    scores.append(
                        {"label": SHORT.get(name, name), "text": format_value(name, float(arr[i]), 0)}
                    )
            answers.append(
                {
                    "strategy": s,
                    "text": rec.get("prediction", ""),
                    "scores": scores,
                    "best": best is not None and _finite(v) and v == best and spread > 0,
                    "latency": f"{rec.get('latency_s', 0) * 1000:,.0f} ms batch share",
                    "chunks": _chunks(rec.get("extra") or {}),
                    "truncated": bool(rec.get("prompt_truncated")),
                }
            )
        rows.append(
            {
                "id": ex["id"],
                "question": ex["question"],
                "reference": ex["reference"],
                "tags": ex["tags"],
                "classes": " ".join(f"t{tag_index[t]}" for t in ex["tags"]) + (" dis" if disagree else ""),
                "disagree": disagree,
                "answers": answers,
            }
        )
    filters = [{"id": f"t{tag_index[t]}", "tag": t, "n": an.tag_counts[t]} for t in tags]
    return rows, filters, n_dis


def _comparisons(an: Analysis) -> list[dict[str, Any]]:
    out = []
    order = [an.primary] + [m for m in an.comparisons if m != an.primary]
    for m in order:
        for c in an.comparisons.get(m, []):
            if not _finite(c["diff"]):
                continue
            out.append(
                {
                    "metric": measure(m).label,
                    "primary": m == an.primary,
                    "a": c["a"],
                    "b": c["b"],
                    "diff": f"{100 * c['diff']:+.1f} pts",
                    "ci": f"{100 * c['low']:+.1f} to {100 * c['high']:+.1f}",
                    "test": {"mcnemar": "McNemar (exact)", "sign-flip": "sign-flip"}.get(
                        c.get("test", "sign-flip"), c.get("test")
                    ),
                    "p": f"{c['p_value']:.3g}",
                    "p_adj": f"{c['p_adjusted']:.3g}",
                    "significant": c["significant"],
                }
            )
    return out


def build_view(an: Analysis, d: Decision) -> dict[str, Any]:
    explorer, filters, n_dis = _explorer(an)
    manifest = an.manifest
    strategies = [
        {
            "id": s,
            "name": sd.name,
            "colour": charts.colour(i),
            "notes": sd.notes,
            "training": sd.training,
        }
        for i, (s, sd) in enumerate(an.strategies.items())
    ]
    weights = [{"label": measure(m).label, "share": f"{100 * w:.0f}%"} for m, w in d.weights.items()]
    scales = [
        {"label": measure(m).label, "worst": format_value(m, lo), "best": format_value(m, hi)}
        for m in d.weights
        for lo, hi in [scale_for(an.decision_cfg.scales, m)]
    ]
    return {
        "run_name": an.run_name,
        "manifest": manifest,
        "model": manifest.get("model") or {},
        "data": manifest.get("data") or {},
        "hardware": manifest.get("hardware") or {},
        "packages": {k: v for k, v in (manifest.get("packages") or {}).items() if v},
        "primary_label": measure(an.primary).label,
        "decision": d,
        "weights": weights,
        "scales": scales,
        "margin_text": margin_text(an.primary, d.margin),
        "strategies": strategies,
        "table": _table(an, d),
        "charts": _charts(an),
        "tag_table": _tag_table(an),
        "comparisons": _comparisons(an),
        "explorer": explorer,
        "filters": filters,
        "n_disagree": n_dis,
        "n_examples": len(an.examples),
        "cfg": an.decision_cfg,
        "scoring_cfg": an.scoring_cfg,
        "price": an.price_per_hour,
        "device": an.device,
        "warnings": an.warnings,
        "judge": an.scores.get("judge"),
        "resamples": an.decision_cfg.bootstrap_resamples,
        "truncated": truncated_counts(an),
        "confidence_pct": int(round(100 * an.decision_cfg.confidence_level)),
    }


def truncated_counts(an: Analysis) -> dict[str, int]:
    """Per strategy, how many prompts were cut to fit the context window (only those with any)."""
    out = {}
    for sid, entry in (an.scores.get("strategies") or {}).items():
        n = int((entry or {}).get("prompt_truncated") or 0)
        if n:
            out[sid] = n
    return out


def render_html(an: Analysis, d: Decision) -> str:
    return html_env().get_template("report.html.j2").render(**build_view(an, d))
