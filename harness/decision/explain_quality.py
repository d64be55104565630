"""The words of a ``quality_first`` decision: the headline names the mode's reason (best on the
primary metric, significantly ahead / tied within the margin and cheaper / the constraint that forced
it) and the rationale lists the family tests it read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.decision.explain import (
    ci_text,
    cost_text,
    costs_and_latencies,
    margin_text,
    points,
    tiebreak,
    tradeoff,
)
from harness.decision.measures import format_value, measure

if TYPE_CHECKING:
    from harness.decision.engine import Decision, Engine

TEST_NAMES = {"mcnemar": "exact McNemar", "sign-flip": "sign-flip permutation"}


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def test_line(eng: Engine, s: str, t: str) -> str:
    """One family row, oriented ``s - t``."""
    p, cl = eng.primary, int(round(100 * eng.cfg.confidence_level))
    c = eng.pair_table().get(s, t)
    if c is None:
        return f"{s} vs {t}: no paired values on {measure(p).label}."
    sign = eng.pair_table().sign
    lo, hi = sorted([sign * c["low"], sign * c["high"]])
    verdict = "significant" if c["significant"] else "not significant"
    return (
        f"{s} − {t}: {points(p, sign * c['adv'])} ({cl}% CI {points(p, lo)} to {points(p, hi)}), "
        f"{TEST_NAMES.get(c['test'], c['test'])} p = {c['p_value']:.3g}, Holm p = {c['p_adjusted']:.3g}: {verdict}"
    )


def explain_quality_first(eng: Engine, d: Decision) -> None:
    p, cl = eng.primary, int(round(100 * eng.cfg.confidence_level))
    plabel = measure(p).label
    rec, leader = d.recommended, d.top
    assert rec is not None and leader is not None

    def val(s: str) -> str:
        return format_value(p, eng.value(s, p))

    within = f"±{margin_text(p, d.margin)}"
    lead = {c["vs"]: c for c in d.lead}
    if d.reason == "single_candidate":
        head = f"Recommendation: {rec}, the only strategy within the constraints"
        detail = (
            f"{rec}: {plabel} {ci_text(eng, rec, p)}, p95 latency "
            f"{format_value('latency_p95_ms', eng.value(rec, 'latency_p95_ms'))}, {cost_text(eng, rec)}."
        )
    elif d.reason == "tie" and rec != leader:
        c = eng.pair_table().get(rec, leader)
        why, rival = tiebreak(eng, rec, d.tie_set)  # the leader is tied: a runner-up exists
        head = (
            f"Recommendation: {rec} — tied with {leader} on {plabel} within {within} "
            f"({val(rec)} vs {val(leader)}); "
            + {"cost": "cheaper", "latency": "as cheap and faster", "order": "as cheap and as fast"}[why]
        )
        picked = {
            "cost": f"Cheapest of the tied: {rec} ({cost_text(eng, rec)}; {leader}: {cost_text(eng, leader)}).",
            "latency": f"{rec} and {rival} cost the same to two significant digits; {rec} is the faster ("
            f"{costs_and_latencies(eng, rec, rival)}).",
            "order": f"{rec} and {rival} cost the same and answer as fast; {rec} comes first in the config.",
        }[why]
        detail = (
            f"{leader} has the best {plabel} ({val(leader)}) but {rec} is within {within} of it: {rec} − {leader} "
            f"= {points(p, eng.value(rec, p) - eng.value(leader, p))}, {cl}% lower bound "
            f"{points(p, (c or {}).get('low', float('nan')))}, and it is not significantly worse than any "
            f"strategy within the constraints. {picked}"
        )
    else:
        runner = d.lead[0]
        r2 = runner["vs"]
        if d.reason == "significant":
            ahead = _and([f"{c['vs']} ({val(c['vs'])})" for c in d.lead])
            head = f"Recommendation: {rec} — best on {plabel} ({val(rec)}), significantly ahead of {ahead}"
        elif d.reason == "tie":
            others = _and([s for s in d.tie_set if s != rec])
            why, _ = tiebreak(eng, rec, d.tie_set)
            head = (
                f"Recommendation: {rec} — best on {plabel} ({val(rec)}); tied within {within} with {others}, "
                f"and {rec} is "
                + {
                    "cost": "the cheapest",
                    "latency": "as cheap and the fastest",
                    "order": "as cheap and as fast",
                }[why]
            )
        else:
            close = [c for c in d.lead if not c["significant"]]
            head = (
                f"Recommendation: {rec} — best on {plabel} ({val(rec)}), not significantly ahead of "
                + _and([f"{c['vs']} ({val(c['vs'])})" for c in close])
            )
        detail = (
            f"{plabel} {ci_text(eng, rec, p)} vs {val(r2)} for {r2}: a lead of {points(p, runner['diff'])} "
            f"({cl}% CI {points(p, runner['low'])} to {points(p, runner['high'])}, "
            f"{TEST_NAMES.get(runner['test'], runner['test'])} Holm p = {runner['p_adjusted']:.3g}). "
            f"Cost: {rec} {cost_text(eng, rec)}; {r2} {cost_text(eng, r2)}."
        )
    for f in d.forced:
        head += (
            f". {f['strategy']} scores higher on {plabel} ({val(f['strategy'])}, significantly) but is "
            f"excluded by the constraint {'; '.join(f['violations'])}"
        )
    d.headline, d.detail = head, detail
    lines = [
        f"Decision rule ({d.rule}).",
        f"{plabel}: "
        + "; ".join(f"{r['strategy']} {ci_text(eng, r['strategy'], p)}" for r in d.ranking)
        + ".",
    ]
    feasible = [r["strategy"] for r in d.ranking]
    pairs = [(a, b) for i, a in enumerate(feasible) for b in feasible[i + 1 :]]
    pairs += [(f["strategy"], leader) for f in d.forced]
    if pairs:
        lines.append(
            f"Paired tests on {plabel} read by the decision (the table under 'Are the differences real?'): "
            + "; ".join(test_line(eng, a, b) for a, b in pairs)
            + "."
        )
    if d.confidence is not None:
        lines.append(
            f"{leader} has the best {plabel} in {100 * d.confidence:.0f}% of {eng.cfg.bootstrap_resamples} "
            f"bootstrap resamples of the examples (confidence: {d.confidence_label})."
        )
    rec_cost = eng.cost_key(rec)
    for s in feasible:
        c = lead.get(s)
        if s in d.tie_set or c is None or eng.cost_key(s) >= rec_cost:
            continue
        if c.get("in_pool"):
            lines.append(
                f"{s} is cheaper ({cost_text(eng, s)}) and not significantly worse, but not a tie: the {cl}% "
                f"lower bound of {s} − {leader} is {points(p, -c['high'])}, beyond −{margin_text(p, d.margin)}."
            )
        else:
            lines.append(f"{s} is cheaper ({cost_text(eng, s)}) but significantly worse on {plabel}.")
    if len(feasible) > 1:
        other = leader if rec != leader else feasible[1] if feasible[0] == rec else feasible[0]
        lines.append(tradeoff(eng, rec, other))
    for e in d.excluded:
        lines.append(f"Excluded {e['strategy']}: breaks {', '.join(e['violations'])}.")
    d.rationale = [x for x in lines if x]
