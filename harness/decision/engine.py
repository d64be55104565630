"""From measured numbers to a recommendation: constraints, then one of two decision modes.

1. **Constraints** (``decision.constraints``, e.g. ``"latency_p95_ms <= 800"``) remove every strategy
   whose point estimate breaks one; a measure a strategy did not report (e.g. faithfulness for a
   strategy that does not retrieve) breaks a constraint on it.
2. **Mode** (``decision.mode``):
   * ``quality_first`` (default, ``harness.decision.quality``): the best primary metric among the
     feasible strategies leads; strategies tied with it (lower confidence bound of the paired
     difference at or above ``-decision.margin``, and not significantly worse than any feasible
     strategy in the test family) compete on cost; the cheapest wins.
   * ``weighted`` (``harness.decision.weighted``): the weighted mean of utilities on absolute scales
     (``decision.scales``), with a paired-bootstrap test of the top strategy's lead.
3. **Sensitivity** (``harness.decision.sensitivity``): which single constraint (tightened or relaxed),
   margin or weight change flips the recommendation, found by re-deciding at the crossover points.

The test family (``Engine.comparisons``) is the report's pairwise table (``harness.decision.stats.family``):
every pair of strategies per quality metric, exact McNemar for binary metrics, sign-flip permutation
otherwise, paired-bootstrap CIs, Holm within the metric. The words (headline, detail, rationale) are
written by ``harness.decision.explain``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from harness.config import DecisionConfig
from harness.decision.measures import CONSTRAINT_PATTERN, format_value, measure
from harness.decision.quality import PairTable, decide_quality_first
from harness.decision.weighted import decide_weighted, default_weights, utility
from harness.errors import ConfigError

__all__ = ["COST_KEY", "Constraint", "Decision", "Engine", "default_weights", "parse_constraint", "utility"]

OPS = {
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
}
COST_KEY = "total_cost_per_1k_usd"


@dataclass(frozen=True)
class Constraint:
    name: str
    op: str
    value: float

    @property
    def text(self) -> str:
        return f"{self.name} {self.op} {self.value:g}"

    def check(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return OPS[self.op](value, self.value)


def parse_constraint(text: str) -> Constraint:
    m = CONSTRAINT_PATTERN.match(text)
    if not m:
        raise ConfigError(
            f"decision.constraints: {text!r}: write '<measure> <= <number>', e.g. 'latency_p95_ms <= 800'"
        )
    return Constraint(m["name"], m["op"], float(m["value"]))


@dataclass
class Decision:
    recommended: str | None
    top: str | None
    reason: str  # significant | not_significant | tie | single_candidate | no_feasible
    significant: bool
    confidence: float | None  # share of bootstrap resamples in which ``top`` ranks first
    confidence_label: str
    ranking: list[dict[str, Any]]
    excluded: list[dict[str, Any]]
    weights: dict[str, float]
    weights_dropped: dict[str, str]
    lead: list[dict[str, Any]]
    tie_set: list[str]
    constraints: list[str]
    alpha: float
    mode: str = "quality_first"
    rule: str = ""  # the decision rule in words
    margin: float = 0.0
    forced: list[dict[str, Any]] = field(default_factory=list)  # better strategies a constraint excluded
    headline: str = ""
    detail: str = ""
    rationale: list[str] = field(default_factory=list)
    sensitivity: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


class Engine:
    """Decisions over one analysed run; cheap to re-run with other constraints, margin or weights."""

    def __init__(
        self,
        point: dict[str, dict[str, float]],
        boot: dict[str, dict[str, np.ndarray]],
        primary: str,
        cfg: DecisionConfig,
        ci: dict[str, dict[str, Any]] | None = None,
        comparisons: dict[str, list[dict[str, Any]]] | None = None,
    ):
        self.point, self.boot, self.primary, self.cfg = point, boot, primary, cfg
        self.ci = ci or {}
        self.comparisons = comparisons or {}
        self.order = list(point)

    def value(self, sid: str, name: str) -> float:
        v = self.point.get(sid, {}).get(name, float("nan"))
        return float(v) if v is not None else float("nan")

    def pair_table(self) -> PairTable:
        return PairTable(self.comparisons.get(self.primary, []), measure(self.primary).higher_is_better)

    # -- one decision ------------------------------------------------------------------------
    def decide(
        self,
        constraints: list[Constraint] | None = None,
        weights: dict[str, float] | None = None,
        explain: bool = True,
        margin: float | None = None,
    ) -> Decision:
        cfg = self.cfg
        constraints = (
            [parse_constraint(c) for c in cfg.constraints] if constraints is None else list(constraints)
        )
        margin = cfg.margin if margin is None else margin
        feasible, excluded = [], []
        for sid in self.order:
            broken = [
                f"{c.text} (measured {format_value(c.name, self.value(sid, c.name))})"
                for c in constraints
                if not c.check(self.value(sid, c.name))
            ]
            if broken:
                excluded.append({"strategy": sid, "violations": broken})
            else:
                feasible.append(sid)
        base: dict[str, Any] = dict(
            constraints=[c.text for c in constraints],
            alpha=cfg.alpha,
            weights={},
            weights_dropped={},
            excluded=excluded,
            mode=cfg.mode,
            margin=margin,
        )
        if not feasible:
            d = Decision(None, None, "no_feasible", False, None, "none", [], lead=[], tie_set=[], **base)
        elif cfg.mode == "weighted":
            raw = dict(weights if weights is not None else (cfg.weights or default_weights(self.primary)))
            d = decide_weighted(self, feasible, base, raw, explain)
        else:
            d = decide_quality_first(self, feasible, base, margin, explain)
        if explain:
            from harness.decision.explain import explain as write  # explain imports this module

            write(self, d)
        return d

    def first_share(
        self, ranked: list[str], samples: dict[str, np.ndarray], first: str | None = None
    ) -> float | None:
        """Share of bootstrap resamples in which ``first`` (default ``ranked[0]``) scores highest
        (exact ties count half); ``None`` without usable samples."""
        first = first or ranked[0]
        others = [s for s in ranked if s != first]
        if not others or any(samples.get(s) is None for s in ranked):
            return None
        size = max(np.size(samples[s]) for s in ranked)
        stacked = np.vstack([np.broadcast_to(samples[s], (size,)) for s in [first, *others]])
        ok = np.all(np.isfinite(stacked), axis=0)
        if not ok.any():
            return None
        mine, best_other = stacked[0, ok], stacked[1:, ok].max(axis=0)
        return float(np.mean(mine > best_other) + 0.5 * np.mean(mine == best_other))

    def cost_key(self, sid: str) -> tuple[float, float, int]:
        """Cheaper first: total cost per 1,000 queries (equal within 2 significant digits), then p95
        latency, then config order."""

        def v(name: str) -> float:
            x = self.value(sid, name)
            return x if math.isfinite(x) else float("inf")

        cost = v(COST_KEY)
        cost = float(f"{cost:.2g}") if math.isfinite(cost) else cost
        return (cost, v("latency_p95_ms"), self.order.index(sid))
