"""Render a run folder into ``report.html`` (self-contained), ``summary.md``, ``scores.csv`` and
``decision.json``, from the folder's files alone (so ``adaptbench report RUN_DIR`` needs no model).

Every number comes from one ``harness.decision.analysis.Analysis`` of the folder (point estimates over
the examples every strategy answered); the CLI summary table reads the same numbers from
``decision.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.decision import decide
from harness.decision.analysis import analyze
from harness.report.exports import decision_record, scores_frame
from harness.report.html import render_html
from harness.report.markdown import summary_markdown
from harness.rundir import atomic_write_json, atomic_write_text

__all__ = ["write_report"]


def write_report(run_dir: Path, decision_overrides: dict[str, Any] | None = None) -> Path:
    """Write report.html, summary.md, scores.csv and decision.json; return the report path.

    ``decision_overrides`` replaces keys of the run's ``decision:`` section for this rendering only
    (what-if constraints or weights from ``adaptbench report --constraint/--weight``)."""
    run_dir = Path(run_dir)
    an = analyze(run_dir, decision_overrides)
    d = decide(an)
    out = run_dir / "report.html"
    atomic_write_text(out, render_html(an, d))
    atomic_write_text(run_dir / "summary.md", summary_markdown(an, d))
    atomic_write_text(run_dir / "scores.csv", scores_frame(an).to_csv(index=False))
    atomic_write_json(run_dir / "decision.json", decision_record(an, d))
    return out
