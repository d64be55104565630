"""From measured numbers to a recommendation: constraints, weighted ranking, significance, sensitivity.

1. **Constraints** (``decision.constraints``, e.g. ``"latency_p95_ms <= 800"``) remove every strategy
   whose point estimate breaks one; a measure a strategy did not report (e.g. faithfulness for a
   strategy that does not retrieve) breaks a constraint on it.
2. **Weighted score** (``decision.weights``) over the remaining candidates, each measure turned into a
   utility in [0, 1]: scores in [0, 1] (accuracy, similarity, coherence...) count as measured;
   cost-type measures (latency, price, memory, time) count as ``best / value`` (the cheapest candidate
   gets 1, one twice as expensive 0.5; values below a small floor count as the floor); other
   higher-is-better measures (throughput) as ``value / best``. The score is the weighted mean of
   utilities. A weighted measure missing for some candidate is left out (and the report says so).
3. **Significance**: the top-ranked strategy's lead over each other candidate is the paired bootstrap
   distribution of the score difference (all measures recomputed on the same resampled examples);
   p-values are Holm-adjusted across those comparisons. If the lead over any candidate is not
   significant at ``alpha``, the engine says "no significant difference; prefer the cheaper" and
   recommends the cheapest strategy (total cost per 1,000 queries: serving plus amortised setup)
   among the top one and those it does not significantly beat.
4. **Sensitivity** (``harness.decision.sensitivity``): which single constraint (tightened or relaxed)
   or weight change flips the recommendation, found by re-running steps 1-3 at the crossover points.

The words (headline, detail, rationale) are written by ``harness.decision.explain``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from harness.config import DecisionConfig
from harness.decision.measures import CONSTRAINT_PATTERN, format_value, measure
from harness.decision.stats import bootstrap_p_value, holm_fast, percentile_interval
from harness.errors import ConfigError

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


def default_weights(primary: str) -> dict[str, float]:
    weights = {
        primary: 0.5,
        "semantic_similarity": 0.2,
        "coherence": 0.1,
        "latency_p95_ms": 0.1,
        COST_KEY: 0.1,
    }
    if primary == "semantic_similarity":
        weights[primary] = 0.7
    return weights


@dataclass
class Decision:
    recommended: str | None
    top: str | None
    reason: str  # significant | not_significant | single_candidate | no_feasible
    significant: bool
    confidence: float | None  # bootstrap share of resamples in which ``top`` ranks first
    confidence_label: str
    ranking: list[dict[str, Any]]
    excluded: list[dict[str, Any]]
    weights: dict[str, float]
    weights_dropped: dict[str, str]
    lead: list[dict[str, Any]]
    tie_set: list[str]
    constraints: list[str]
    alpha: float
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


def utility(name: str, values: np.ndarray | float, candidate_points: list[float]) -> np.ndarray:
    """Map a measure's values to [0, 1]-ish utilities relative to the candidates' point estimates."""
    m = measure(name)
    v = np.asarray(values, dtype=float)
    finite = [p for p in candidate_points if math.isfinite(p)]
    if m.higher_is_better:
        if m.unit == "":
            return v
        best = max(finite) if finite else float("nan")
        return v / best if best and best > 0 else np.zeros_like(v)
    ref = max(min(finite), m.floor) if finite else float("nan")
    return ref / np.maximum(v, m.floor) if m.floor > 0 else np.where(v > 0, ref / v, 1.0)


class Engine:
    """Decisions over one analysed run; cheap to re-run with other constraints or weights."""

    def __init__(
        self,
        point: dict[str, dict[str, float]],
        boot: dict[str, dict[str, np.ndarray]],
        primary: str,
        cfg: DecisionConfig,
        ci: dict[str, dict[str, Any]] | None = None,
    ):
        self.point, self.boot, self.primary, self.cfg = point, boot, primary, cfg
        self.ci = ci or {}
        self.order = list(point)

    def value(self, sid: str, name: str) -> float:
        v = self.point.get(sid, {}).get(name, float("nan"))
        return float(v) if v is not None else float("nan")

    # -- one decision ------------------------------------------------------------------------
    def decide(
        self,
        constraints: list[Constraint] | None = None,
        weights: dict[str, float] | None = None,
        explain: bool = True,
    ) -> Decision:
        cfg = self.cfg
        constraints = (
            [parse_constraint(c) for c in cfg.constraints] if constraints is None else list(constraints)
        )
        raw_weights = dict(weights if weights is not None else (cfg.weights or default_weights(self.primary)))
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
        used, dropped = {}, {}
        for name, w in raw_weights.items():
            if w <= 0:
                continue
            missing = [s for s in feasible if not math.isfinite(self.value(s, name))]
            if missing and feasible:
                have = [s for s in feasible if s not in missing]
                dropped[name] = f"not measured for {', '.join(missing)}" + (
                    f" (only for {', '.join(have)})" if have else ""
                )
            else:
                used[name] = w
        total = sum(used.values())
        shares = {k: v / total for k, v in used.items()} if total > 0 else {}
        base = dict(
            constraints=[c.text for c in constraints],
            alpha=cfg.alpha,
            weights=shares,
            weights_dropped=dropped,
            excluded=excluded,
        )
        if not feasible:
            d = Decision(None, None, "no_feasible", False, None, "none", [], lead=[], tie_set=[], **base)
            if explain:
                self._explain(d)
            return d
        points = {m: [self.value(s, m) for s in feasible] for m in shares}
        score, score_boot, utils = {}, {}, {}
        for s in feasible:
            utils[s] = {m: float(utility(m, self.value(s, m), points[m])) for m in shares}
            score[s] = sum(shares[m] * utils[s][m] for m in shares)
            score_boot[s] = sum(
                (shares[m] * utility(m, self.boot[s][m], points[m]) for m in shares), np.zeros(1)
            )
        ranked = sorted(feasible, key=lambda s: (-score[s], self.order.index(s)))
        top = ranked[0]
        ranking = []
        for rank, s in enumerate(ranked, 1):
            lo, hi = percentile_interval(score_boot[s], cfg.confidence_level) if explain else (np.nan, np.nan)
            ranking.append(
                {"strategy": s, "rank": rank, "score": score[s], "low": lo, "high": hi, "utilities": utils[s]}
            )
        if len(ranked) == 1:
            d = Decision(
                top,
                top,
                "single_candidate",
                False,
                None,
                "only feasible strategy",
                ranking,
                lead=[],
                tie_set=[top],
                **base,
            )
            if explain:
                self._explain(d)
            return d
        lead = []
        for s in ranked[1:]:
            diff = score_boot[top] - score_boot[s]
            lo, hi = percentile_interval(diff, cfg.confidence_level)
            lead.append(
                {
                    "vs": s,
                    "diff": score[top] - score[s],
                    "low": lo,
                    "high": hi,
                    "p_value": bootstrap_p_value(diff),
                }
            )
        reject, adjusted = holm_fast([c["p_value"] for c in lead], cfg.alpha)
        for c, r, p in zip(lead, reject, adjusted, strict=True):
            c["p_adjusted"], c["significant"] = p, bool(r and c["diff"] > 0)
        significant = all(c["significant"] for c in lead)
        stacked = np.vstack([np.broadcast_to(score_boot[s], score_boot[top].shape) for s in ranked])
        ok = np.all(np.isfinite(stacked), axis=0)
        confidence = None
        if ok.any():  # share of resamples in which ``top`` scores highest (exact ties count half)
            mine, best_other = stacked[0, ok], stacked[1:, ok].max(axis=0)
            confidence = float(np.mean(mine > best_other) + 0.5 * np.mean(mine == best_other))
        tie_set = [top] + [c["vs"] for c in lead if not c["significant"]]
        if significant:
            recommended, reason = top, "significant"
            label = "high" if (confidence or 0) >= 0.95 else "moderate"
        else:
            recommended, reason = min(tie_set, key=self._cost_key), "not_significant"
            label = "low"
        d = Decision(
            recommended,
            top,
            reason,
            significant,
            confidence,
            label,
            ranking,
            lead=lead,
            tie_set=tie_set,
            **base,
        )
        if explain:
            self._explain(d)
        return d

    def _cost_key(self, sid: str) -> tuple[float, float, float, int]:
        def v(name: str) -> float:
            x = self.value(sid, name)
            return x if math.isfinite(x) else float("inf")

        # Costs within 2 significant digits count as equal; then less setup, then lower p95 latency.
        cost = v(COST_KEY)
        cost = float(f"{cost:.2g}") if math.isfinite(cost) else cost
        return (cost, v("setup_time_min"), v("latency_p95_ms"), self.order.index(sid))

    def _explain(self, d: Decision) -> None:
        from harness.decision.explain import explain  # explain builds on this module: import late

        explain(self, d)
