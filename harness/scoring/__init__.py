"""Scoring: the metric registry, the local ``evaluate`` metric modules and the scorer.

Names are exported lazily so that importing the registry (config validation) stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "MetricSpec": "harness.scoring.registry",
    "register_metric": "harness.scoring.registry",
    "get_metric": "harness.scoring.registry",
    "available_metrics": "harness.scoring.registry",
    "default_metrics": "harness.scoring.registry",
    "load_metric": "harness.scoring.score",
    "score_records": "harness.scoring.score",
    "score_run": "harness.scoring.score",
    "ScoringInputs": "harness.scoring.score",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'harness.scoring' has no attribute {name!r}")
