"""``decision.mode: weighted``: the weighted mean of utilities on absolute scales the user states.

Each weighted measure maps linearly from ``[worst, best]`` to utility ``[0, 1]``, clipped
(``decision.scales``, e.g. ``latency_p95_ms: [2000, 200]``); [0, 1] quality scores default to
``[0, 1]``. A weighted measure with neither is a configuration error (``DecisionConfig`` rejects it
up front; ``scale_for`` repeats the check for what-if weights). The top strategy's lead over each
other candidate is tested on the paired bootstrap distribution of the score difference, Holm-adjusted;
without a significant lead the cheapest of the strategies tied with the top one is recommended.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.decision.measures import natural_scale
from harness.decision.stats import bootstrap_p_value, holm_fast, percentile_interval
from harness.errors import ConfigError

if TYPE_CHECKING:
    from harness.decision.engine import Decision, Engine

RULE = (
    "weighted: strategies that break a constraint are removed; the rest are ranked by the weighted mean "
    "of utilities, each measure mapped linearly from its [worst, best] scale to [0, 1] and clipped; the top "
    "strategy is recommended when its weighted-score lead over every other one is significant (paired "
    "bootstrap, Holm), otherwise the cheapest (total cost per 1,000 queries, then p95 latency) of the "
    "strategies it does not significantly beat"
)


def default_weights(primary: str) -> dict[str, float]:
    """Quality-only defaults: cost and latency need scales the user states, so they are never implied."""
    weights = {primary: 0.5, "semantic_similarity": 0.2, "coherence": 0.1}
    if primary == "semantic_similarity":
        weights[primary] = 0.7
    return weights


def scale_for(scales: dict[str, list[float]], name: str) -> tuple[float, float]:
    if name in scales:
        worst, best = scales[name]
        return float(worst), float(best)
    natural = natural_scale(name)
    if natural is None:
        raise ConfigError(
            f"decision.scales.{name}: {name} is weighted but has no natural scale; "
            "give [worst, best], e.g. latency_p95_ms: [2000, 200]"
        )
    return natural


def utility(name: str, values: np.ndarray | float, scale: tuple[float, float]) -> np.ndarray:
    """Linear utility on the absolute scale ``(worst, best)``: worst -> 0, best -> 1, clipped."""
    worst, best = scale
    v = np.asarray(values, dtype=float)
    return np.clip((v - worst) / (best - worst), 0.0, 1.0)


def decide_weighted(
    eng: Engine, feasible: list[str], base: dict[str, Any], weights: dict[str, float], explain: bool
) -> Decision:
    from harness.decision.engine import Decision

    cfg = eng.cfg
    used, dropped = {}, {}
    for name, w in weights.items():
        if w <= 0:
            continue
        missing = [s for s in feasible if not math.isfinite(eng.value(s, name))]
        if missing:
            have = [s for s in feasible if s not in missing]
            dropped[name] = f"not measured for {', '.join(missing)}" + (
                f" (only for {', '.join(have)})" if have else ""
            )
        else:
            used[name] = w
    total = sum(used.values())
    shares = {k: v / total for k, v in used.items()} if total > 0 else {}
    scales = {m: scale_for(cfg.scales, m) for m in shares}
    base = {**base, "weights": shares, "weights_dropped": dropped, "rule": RULE}
    score, score_boot, utils = {}, {}, {}
    for s in feasible:
        utils[s] = {m: float(utility(m, eng.value(s, m), scales[m])) for m in shares}
        score[s] = sum(shares[m] * utils[s][m] for m in shares)
        score_boot[s] = sum((shares[m] * utility(m, eng.boot[s][m], scales[m]) for m in shares), np.zeros(1))
    ranked = sorted(feasible, key=lambda s: (-score[s], eng.order.index(s)))
    top = ranked[0]
    ranking = []
    for rank, s in enumerate(ranked, 1):
        lo, hi = percentile_interval(score_boot[s], cfg.confidence_level) if explain else (np.nan, np.nan)
        ranking.append(
            {"strategy": s, "rank": rank, "score": score[s], "low": lo, "high": hi, "utilities": utils[s]}
        )
    if len(ranked) == 1:
        return Decision(
            top, top, "single_candidate", False, None, "only feasible strategy", ranking,
            lead=[], tie_set=[top], **base,
        )  # fmt: skip
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
    confidence = eng.first_share(ranked, score_boot)
    tie_set = [top] + [c["vs"] for c in lead if not c["significant"]]
    if significant:
        recommended, reason = top, "significant"
        label = "high" if (confidence or 0) >= 0.95 else "moderate"
    else:
        recommended, reason = min(tie_set, key=eng.cost_key), "not_significant"
        label = "low"
    return Decision(
        recommended, top, reason, significant, confidence, label, ranking, lead=lead, tie_set=tie_set, **base
    )
