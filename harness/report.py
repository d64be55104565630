"""Render ``report.html`` from a run folder alone (so ``adaptbench report RUN_DIR`` needs no model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from harness.rundir import atomic_write_text, load_predictions, read_json

TEMPLATES = Path(__file__).parent / "templates"


def html_env() -> jinja2.Environment:
    """Autoescaping on: questions, answers and KB text are untrusted and must render as text."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2"), default=True),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    env.filters["num"] = lambda v, d=1: "–" if v is None else f"{v:,.{d}f}"
    return env


def load_run(run_dir: Path) -> dict[str, Any]:
    scores = read_json(run_dir / "scores.json")
    manifest = read_json(run_dir / "manifest.json")
    predictions = load_predictions(run_dir / "predictions.jsonl")
    by_example: dict[str, dict[str, Any]] = {}
    for rec in predictions:
        row = by_example.setdefault(
            rec["example_id"],
            {
                "id": rec["example_id"],
                "question": rec["question"],
                "reference": rec["reference"],
                "tags": rec["tags"],
                "answers": {},
            },
        )
        per = scores["strategies"].get(rec["strategy"], {}).get("per_example", {}).get(rec["example_id"], {})
        row["answers"][rec["strategy"]] = {"text": rec["prediction"], "scores": per}
    return {
        "scores": scores,
        "manifest": manifest,
        "examples": sorted(by_example.values(), key=lambda r: r["id"]),
    }


def write_report(run_dir: Path) -> Path:
    data = load_run(run_dir)
    html = html_env().get_template("report.html.j2").render(run_name=run_dir.name, **data)
    out = run_dir / "report.html"
    atomic_write_text(out, html)
    return out
