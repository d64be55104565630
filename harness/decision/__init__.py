"""From a run folder's numbers to a recommendation.

* ``measures``: names, directions and units of everything that can be constrained, weighted, charted;
* ``stats``: seeded bootstrap intervals, paired comparisons, Holm adjustment;
* ``analysis``: the run folder's files -> point estimates, bootstrap samples and CIs (``analyze``);
* ``engine``: constraints, then the decision mode (``Engine``, ``Decision``);
* ``quality``: ``decision.mode: quality_first`` (default), read from the test family;
* ``weighted``: ``decision.mode: weighted``, utilities on the absolute scales of ``decision.scales``;
* ``arrays``: an ``Engine`` straight from per-example arrays (tests, notebooks);
* ``sensitivity``: which constraint, margin or weight change flips the recommendation;
* ``explain``: the headline, detail and rationale prose.

Attributes are imported lazily so that ``harness.config`` can import ``harness.decision.measures``
without pulling numpy/scipy/statsmodels in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.decision.analysis import Analysis, analyze
    from harness.decision.arrays import engine_from_arrays
    from harness.decision.engine import Constraint, Decision, Engine, parse_constraint
    from harness.decision.weighted import utility

_LAZY = {
    "Analysis": "analysis",
    "analyze": "analysis",
    "Constraint": "engine",
    "Decision": "engine",
    "Engine": "engine",
    "parse_constraint": "engine",
    "utility": "weighted",
    "engine_from_arrays": "arrays",
}

__all__ = [
    "Analysis",
    "Constraint",
    "Decision",
    "Engine",
    "analyze",
    "decide",
    "engine_from_arrays",
    "parse_constraint",
    "utility",
]


def decide(analysis: Analysis) -> Decision:
    """The decision, with its prose and sensitivity notes, for an analysed run and its ``decision:`` config."""
    from harness.decision.engine import Engine
    from harness.decision.sensitivity import sensitivity

    engine = Engine(
        analysis.point,
        analysis.boot,
        analysis.primary,
        analysis.decision_cfg,
        analysis.ci,
        analysis.comparisons,
    )
    d = engine.decide()
    d.sensitivity = sensitivity(engine, d)
    return d


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"harness.decision.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'harness.decision' has no attribute {name!r}")
