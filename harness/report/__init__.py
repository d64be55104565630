"""Render a run folder into ``report.html``, ``summary.md``, ``scores.csv`` and ``decision.json``."""

from harness.report.html import write_report

__all__ = ["write_report"]
