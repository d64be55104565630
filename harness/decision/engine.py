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
4. **Sensitivity**: which single constraint (tightened or relaxed) or weight change flips the
   recommendation, found by re-running steps 1-3 at the crossover points.
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


def _fmt(name: str, value: float | None) -> str:
    return format_value(name, value)


def _lc(label: str) -> str:
    """Lower-case a label's first letter for use mid-sentence, unless it is an acronym (ROUGE-L, LLM)."""
    if len(label) > 1 and label[1].isupper():
        return label
    return label[:1].lower() + label[1:]


def _material(name: str, a: float, b: float) -> bool:
    """A difference worth a sensitivity note: visible at display precision and at least 1% apart
    (sampled memory or timing jitter between otherwise identical strategies is not a trade-off)."""
    if not (math.isfinite(a) and math.isfinite(b)) or _fmt(name, a) == _fmt(name, b):
        return False
    return abs(a - b) >= 0.01 * max(abs(a), abs(b))


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
                f"{c.text} (measured {_fmt(c.name, self.value(sid, c.name))})"
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

    def _cost_text(self, sid: str) -> str:
        setup = self.value(sid, "setup_time_min")
        text = f"{_fmt(COST_KEY, self.value(sid, COST_KEY))} per 1,000 queries"
        return text + (f", {setup:.1f} min setup" if math.isfinite(setup) else "")

    # -- words ---------------------------------------------------------------------------------
    def _ci_text(self, sid: str, name: str) -> str:
        c = self.ci.get(sid, {}).get(name)
        v = self.value(sid, name)
        if c is not None and c.low is not None and math.isfinite(c.low) and c.low != c.high:
            cl = int(round(100 * self.cfg.confidence_level))
            return f"{_fmt(name, v)} ({cl}% CI {_fmt(name, c.low)} to {_fmt(name, c.high)})"
        return _fmt(name, v)

    def _explain(self, d: Decision) -> None:
        cl = int(round(100 * self.cfg.confidence_level))
        lines: list[str] = []
        if d.reason == "no_feasible":
            d.headline = "No strategy meets the constraints"
            d.detail = "Constraints: " + "; ".join(d.constraints) + "."
            for e in d.excluded:
                lines.append(f"{e['strategy']} breaks {', '.join(e['violations'])}.")
            lines.append("Relax a constraint (see the sensitivity notes) or add a cheaper strategy.")
            d.rationale = lines
            return
        rec, top = d.recommended, d.top
        by = {r["strategy"]: r for r in d.ranking}
        weights_txt = ", ".join(f"{measure(m).label} {100 * w:.0f}%" for m, w in d.weights.items())
        p = self.primary
        plabel = measure(p).label
        if d.reason == "single_candidate":
            d.headline = f"Recommendation: {rec}, the only strategy within the constraints"
            d.detail = (
                f"{rec}: {plabel} {self._ci_text(rec, p)}, p95 latency "
                f"{_fmt('latency_p95_ms', self.value(rec, 'latency_p95_ms'))}, "
                f"{_fmt(COST_KEY, self.value(rec, COST_KEY))} per 1,000 queries."
            )
        else:
            runner = d.lead[0]
            r2 = runner["vs"]
            padj = runner["p_adjusted"]
            if d.reason == "significant":
                d.headline = f"Recommendation: {rec}, significantly ahead of {r2}"
                d.detail = (
                    f"Weighted score {by[rec]['score']:.3f} vs {by[r2]['score']:.3f}: a lead of "
                    f"{runner['diff']:+.3f} ({cl}% CI {runner['low']:+.3f} to {runner['high']:+.3f}, "
                    f"Holm-adjusted p = {padj:.3g}). {plabel} {_fmt(p, self.value(rec, p))} vs "
                    f"{_fmt(p, self.value(r2, p))}."
                )
            else:
                d.headline = f"No significant difference; prefer the cheaper: {rec}"
                cheap = (
                    f"{rec} is the cheapest of the tied strategies ({self._cost_text(rec)}; "
                    f"{top}: {self._cost_text(top)})"
                    if rec != top
                    else f"{rec} is also the cheapest of them ({self._cost_text(rec)})"
                )
                d.detail = (
                    f"{top} ranks first ({by[top]['score']:.3f} vs {by[r2]['score']:.3f} for {r2}) but its lead "
                    f"is not significant (Holm-adjusted p = {padj:.3g}); {cheap}."
                )
            lines.append(
                f"Weighted score (weights: {weights_txt}): "
                + "; ".join(
                    f"{r['strategy']} {r['score']:.3f} ({cl}% CI {r['low']:.3f} to {r['high']:.3f})"
                    for r in d.ranking
                )
                + "."
            )
            lines.append(f"{plabel}: " + "; ".join(f"{s} {self._ci_text(s, p)}" for s in by) + ".")
            if d.confidence is not None:
                lines.append(
                    f"{top} ranks first in {100 * d.confidence:.0f}% of {self.cfg.bootstrap_resamples} bootstrap "
                    f"resamples of the examples (confidence: {d.confidence_label})."
                )
            other = r2 if rec == top else top
            lines.append(self._tradeoff(rec, other))
        for e in d.excluded:
            lines.append(f"Excluded {e['strategy']}: breaks {', '.join(e['violations'])}.")
        for m, why in d.weights_dropped.items():
            lines.append(f"{measure(m).label} carries weight but is {why}; it is left out of the score.")
        d.rationale = [x for x in lines if x]

    def _tradeoff(self, a: str, b: str) -> str:
        parts = []
        for name in (
            "latency_p95_ms",
            "serving_cost_per_1k_usd",
            "train_time_min",
            "index_build_time_min",
            "peak_memory_gb",
        ):
            va, vb = self.value(a, name), self.value(b, name)
            if not (math.isfinite(va) and math.isfinite(vb)) or (va == 0 and vb == 0):
                continue
            parts.append(f"{_lc(measure(name).label)} {_fmt(name, va)} vs {_fmt(name, vb)}")
        return f"Cost side, {a} vs {b}: " + "; ".join(parts) + "." if parts else ""

    # -- sensitivity -----------------------------------------------------------------------------
    def sensitivity(self, base: Decision) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        rec = base.recommended
        constraints = [parse_constraint(c) for c in base.constraints]
        weights = dict(self.cfg.weights or default_weights(self.primary))
        if rec is not None:
            names = list(
                dict.fromkeys(
                    [c.name for c in constraints]
                    + ["latency_p95_ms", "peak_memory_gb", "train_time_min", COST_KEY, self.primary]
                )
            )
            for name in names:
                v = self.value(rec, name)
                if not math.isfinite(v):
                    continue
                m = measure(name)
                op = ">" if m.higher_is_better else "<"
                new = self.decide(constraints + [Constraint(name, op, v)], weights, explain=False)
                vn = self.value(new.recommended, name) if new.recommended else float("nan")
                if new.recommended and new.recommended != rec and _material(name, v, vn):
                    bound = "above" if m.higher_is_better else "under"
                    out.append(
                        {
                            "kind": "constraint",
                            "measure": name,
                            "threshold": v,
                            "winner": new.recommended,
                            "text": f"{new.recommended} would be recommended if {_lc(m.label)} had to be {bound} "
                            f"{_fmt(name, v)} ({rec} measures {_fmt(name, v)}, {new.recommended} {_fmt(name, vn)}).",
                        }
                    )
        for i, c in enumerate(constraints):  # relax constraints that exclude strategies
            for e in base.excluded:
                s = e["strategy"]
                vs = self.value(s, c.name)
                if c.check(vs) or not math.isfinite(vs):
                    continue
                relaxed = Constraint(c.name, {"<": "<=", ">": ">="}.get(c.op, c.op), vs)
                trial = constraints[:i] + [relaxed] + constraints[i + 1 :]
                new = self.decide(trial, weights, explain=False)
                if new.recommended and new.recommended != rec:
                    out.append(
                        {
                            "kind": "relax",
                            "measure": c.name,
                            "threshold": vs,
                            "winner": new.recommended,
                            "text": f"{new.recommended} would be recommended if the limit {c.text} were relaxed to "
                            f"{relaxed.op} {_fmt(c.name, vs)} (what {s} measures).",
                        }
                    )
        if base.ranking and len(base.ranking) > 1:
            out.extend(self._weight_flips(base, constraints, weights))
        if not out:
            out.append(
                {
                    "kind": "robust",
                    "text": "No single tightened constraint, relaxed constraint or weight change flips the recommendation.",
                }
            )
        return out

    def _weight_flips(self, base: Decision, constraints, weights) -> list[dict[str, Any]]:
        """For each measure, the nearest weight (others fixed) at which the recommendation changes.

        Tried in order of distance from the current weight: the exact ranking crossovers (a little past
        them) and a grid from 0 to 3x the total weight (a flip can also come from a lead becoming
        significant, which has no closed form)."""
        feasible = [r["strategy"] for r in base.ranking]
        candidates = list(dict.fromkeys(list(weights) + list(default_weights(self.primary))))
        candidates = [m for m in candidates if all(math.isfinite(self.value(s, m)) for s in feasible)]
        active = {m: w for m, w in weights.items() if m in base.weights}
        total = sum(active.values()) or 1.0
        utils = {r["strategy"]: r["utilities"] for r in base.ranking}
        flips = []
        for m in candidates:
            w = active.get(m, 0.0)
            pts = [self.value(s, m) for s in feasible]
            u = {s: float(utility(m, self.value(s, m), pts)) for s in feasible}
            rest = {s: sum(active[k] * utils[s][k] for k in active if k != m) for s in feasible}
            trials = {round(total * k / 40, 6) for k in range(0, 121)}
            for s in feasible:
                if s != base.top and u[s] != u[base.top]:
                    cross = (rest[base.top] - rest[s]) / (u[s] - u[base.top])
                    if math.isfinite(cross) and cross >= 0:
                        trials.update({cross * 1.02 + 1e-3, max(0.0, cross * 0.98 - 1e-3)})
            for trial_w in sorted(trials, key=lambda t: abs(t - w)):
                if abs(trial_w - w) < 1e-9:
                    continue
                trial = {**weights, m: trial_w}
                if not any(v > 0 for v in trial.values()):
                    continue
                new = self.decide(constraints, trial, explain=False)
                if new.recommended and new.recommended != base.recommended:
                    share = 100 * trial_w / sum(v for v in trial.values() if v > 0)
                    flips.append(
                        {
                            "kind": "weight",
                            "measure": m,
                            "threshold": trial_w,
                            "winner": new.recommended,
                            "change": abs(trial_w - w) / total,
                            "text": f"{new.recommended} would be recommended if the weight on {_lc(measure(m).label)} were "
                            f"{trial_w:.2f} instead of {w:.2f} ({share:.0f}% of the total weight"
                            + (
                                "; its lead would be significant)."
                                if new.significant
                                else f"; {new.top} would rank first without a significant lead and "
                                f"{new.recommended} is the cheapest of those tied with it)."
                                if new.top != new.recommended
                                else ")."
                            ),
                        }
                    )
                    break
        flips.sort(key=lambda f: f["change"])
        return flips[:4]


def decide(analysis: Any) -> Decision:
    """The decision for an ``harness.analysis.Analysis`` with its run's ``decision:`` config."""
    engine = Engine(analysis.point, analysis.boot, analysis.primary, analysis.decision_cfg, analysis.ci)
    d = engine.decide()
    d.sensitivity = engine.sensitivity(d)
    return d
