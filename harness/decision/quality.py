"""``decision.mode: quality_first`` (the default): quality decides, cost only breaks ties.

Read from the test family (``Engine.comparisons[primary]``: every pair of strategies on the primary
metric, exact McNemar or sign-flip permutation, paired-bootstrap CI of the difference, Holm across the
pairs) after the constraints removed strategies:

1. *Pool*: the feasible strategies that are not significantly worse than any other feasible strategy.
2. *Leader*: the pool's best point estimate on the primary metric (config order breaks exact ties).
3. *Ties*: pool members whose paired difference (strategy - leader) has its lower confidence bound at
   or above ``-decision.margin`` (in the metric's units).
4. The cheapest of the leader and its ties (total cost per 1,000 queries, equal within two significant
   digits), then the fastest (p95 latency), then config order, is recommended.

So a strategy significantly worse on the primary metric than a feasible one is never recommended; when
a constraint removed a significantly better strategy, ``forced`` names it and the constraint it breaks.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from harness.decision.measures import measure

if TYPE_CHECKING:
    from harness.decision.engine import Decision, Engine


def rule_text(primary: str, margin: float, cl: int) -> str:
    from harness.decision.explain import margin_text

    return (
        f"quality first: strategies that break a constraint are removed; among the rest the best "
        f"{measure(primary).label} leads; a strategy ties with it when the {cl}% lower confidence bound of its "
        f"paired difference to the leader is at least -{margin_text(primary, margin)} and it is not "
        "significantly worse (paired test, Holm) than any remaining strategy; the cheapest of the tied "
        "(total cost per 1,000 queries, then p95 latency, then config order) is recommended"
    )


class PairTable:
    """The primary metric's family rows, read as "advantage of s over t" in the better direction."""

    def __init__(self, rows: list[dict[str, Any]], higher_is_better: bool = True):
        self.rows = {(r["a"], r["b"]): r for r in rows}
        self.sign = 1.0 if higher_is_better else -1.0

    def get(self, s: str, t: str) -> dict[str, Any] | None:
        row = self.rows.get((s, t))
        flip = 1.0
        if row is None:
            row, flip = self.rows.get((t, s)), -1.0
        if row is None or not _finite(row.get("diff")):
            return None
        k = flip * self.sign
        ends = sorted([k * _num(row.get("low")), k * _num(row.get("high"))])
        adv = k * row["diff"]
        return {
            "row": row,
            "adv": adv,
            "low": ends[0],
            "high": ends[1],
            "p_value": row.get("p_value", 1.0),
            "p_adjusted": row.get("p_adjusted", row.get("p_value", 1.0)),
            "significant": bool(row.get("significant")),
            "test": row.get("test", "sign-flip"),
        }

    def better(self, s: str, t: str) -> bool:
        """``s`` is significantly better than ``t``."""
        c = self.get(s, t)
        return c is not None and c["significant"] and c["adv"] > 0


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _num(v: Any) -> float:
    return float(v) if _finite(v) else float("nan")


def decide_quality_first(
    eng: Engine, feasible: list[str], base: dict[str, Any], margin: float, explain: bool
) -> Decision:
    from harness.decision.engine import Decision

    p, cfg = eng.primary, eng.cfg
    table = eng.pair_table()
    sign = table.sign

    def key(s: str) -> tuple[float, int]:
        v = eng.value(s, p)
        return (-sign * v if math.isfinite(v) else math.inf, eng.order.index(s))

    ranked = sorted(feasible, key=key)
    pool = [s for s in ranked if not any(table.better(t, s) for t in feasible if t != s)] or ranked
    leader = pool[0]
    base = {**base, "rule": rule_text(p, margin, int(round(100 * cfg.confidence_level)))}
    ranking = []
    for rank, s in enumerate(ranked, 1):
        c = eng.ci.get(s, {}).get(p)
        lo, hi = (c.low, c.high) if c is not None else (math.nan, math.nan)
        ranking.append(
            {"strategy": s, "rank": rank, "score": eng.value(s, p), "low": lo, "high": hi, "utilities": {}}
        )
    forced = []
    for e in base["excluded"]:
        if not table.better(e["strategy"], leader):
            continue
        c = table.get(e["strategy"], leader)
        forced.append({**e, "vs": leader, "diff": c["adv"], "p_adjusted": c["p_adjusted"]})
    base["forced"] = forced
    if len(ranked) == 1:
        return Decision(
            leader, leader, "single_candidate", False, None, "only feasible strategy", ranking,
            lead=[], tie_set=[leader], **base,
        )  # fmt: skip
    lead = []
    for s in ranked:
        if s == leader:
            continue
        c = table.get(leader, s)
        lead.append(
            {
                "vs": s,
                "diff": c["adv"] if c else math.nan,
                "low": c["low"] if c else math.nan,
                "high": c["high"] if c else math.nan,
                "p_value": c["p_value"] if c else 1.0,
                "p_adjusted": c["p_adjusted"] if c else 1.0,
                "significant": bool(c and c["significant"] and c["adv"] > 0),
                "test": c["test"] if c else "none",
                "in_pool": s in pool,
            }
        )
    ties = []
    for s in pool[1:]:
        c = table.get(s, leader)
        if c is not None and _finite(c["low"]) and c["low"] >= -margin - 1e-12:
            ties.append(s)
    tie_set = [leader] + ties
    recommended = min(tie_set, key=eng.cost_key)
    if all(c["significant"] for c in lead):
        reason, label = "significant", "high"
    elif ties:
        reason, label = "tie", "moderate"
    else:
        reason, label = "not_significant", "low"
    confidence = eng.first_share(ranked, {s: eng.boot[s][p] * sign for s in ranked}, first=leader)
    return Decision(
        recommended, leader, reason, reason == "significant", confidence, label, ranking,
        lead=lead, tie_set=tie_set, **base,
    )  # fmt: skip
