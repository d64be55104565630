"""The words of a decision: headline, one-paragraph detail and the rationale bullets.

Written from the engine's point estimates, confidence intervals and the decision's ranking and lead,
so the prose and the numbers in the report can never disagree.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from harness.decision.engine import COST_KEY
from harness.decision.measures import format_value, measure

if TYPE_CHECKING:
    from harness.decision.engine import Decision, Engine


def lc(label: str) -> str:
    """Lower-case a label's first letter for use mid-sentence, unless it is an acronym (ROUGE-L, LLM)."""
    if len(label) > 1 and label[1].isupper():
        return label
    return label[:1].lower() + label[1:]


def ci_text(eng: Engine, sid: str, name: str) -> str:
    c = eng.ci.get(sid, {}).get(name)
    v = eng.value(sid, name)
    if c is not None and c.low is not None and math.isfinite(c.low) and c.low != c.high:
        cl = int(round(100 * eng.cfg.confidence_level))
        return (
            f"{format_value(name, v)} ({cl}% CI {format_value(name, c.low)} to {format_value(name, c.high)})"
        )
    return format_value(name, v)


def margin_text(name: str, margin: float) -> str:
    """A margin in the metric's units: points for [0, 1] scores ("2 points"), units otherwise."""
    if measure(name).unit == "":
        pts = 100 * margin
        return f"{pts:g} point" + ("" if pts == 1 else "s")
    return format_value(name, margin)


def points(name: str, diff: float) -> str:
    """A signed difference of a measure: percentage points for [0, 1] scores."""
    if not math.isfinite(diff):
        return "n/a"
    if measure(name).unit == "":
        return f"{100 * diff:+.1f} points"
    return ("+" if diff >= 0 else "-") + format_value(name, abs(diff))


def explain(eng: Engine, d: Decision) -> None:
    lines: list[str] = []
    if d.reason == "no_feasible":
        d.headline = "No strategy meets the constraints"
        d.detail = "Constraints: " + "; ".join(d.constraints) + "."
        for e in d.excluded:
            lines.append(f"{e['strategy']} breaks {', '.join(e['violations'])}.")
        lines.append("Relax a constraint (see the sensitivity notes) or add a cheaper strategy.")
        d.rationale = lines
        return
    if d.mode == "quality_first":
        from harness.decision.explain_quality import explain_quality_first

        explain_quality_first(eng, d)
        return
    explain_weighted(eng, d)


def explain_weighted(eng: Engine, d: Decision) -> None:
    cl = int(round(100 * eng.cfg.confidence_level))
    lines: list[str] = [f"Decision rule ({d.rule})."]
    rec, top = d.recommended, d.top
    by = {r["strategy"]: r for r in d.ranking}
    weights_txt = ", ".join(f"{measure(m).label} {100 * w:.0f}%" for m, w in d.weights.items())
    p = eng.primary
    plabel = measure(p).label
    if d.reason == "single_candidate":
        d.headline = f"Recommendation: {rec}, the only strategy within the constraints"
        d.detail = (
            f"{rec}: {plabel} {ci_text(eng, rec, p)}, p95 latency "
            f"{format_value('latency_p95_ms', eng.value(rec, 'latency_p95_ms'))}, "
            f"{format_value(COST_KEY, eng.value(rec, COST_KEY))} per 1,000 queries."
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
                f"Holm-adjusted p = {padj:.3g}). {plabel} {format_value(p, eng.value(rec, p))} vs "
                f"{format_value(p, eng.value(r2, p))}."
            )
        else:
            why, rival = tiebreak(eng, rec, d.tie_set)
            d.headline = {
                "cost": f"No significant difference; prefer the cheaper: {rec}",
                "latency": f"No significant difference; prefer the faster at the same cost: {rec}",
                "order": f"No significant difference; same cost and latency, first in the config: {rec}",
            }[why]
            if why == "cost":
                cheap = (
                    f"{rec} is the cheapest of the tied strategies ({cost_text(eng, rec)}; "
                    f"{top}: {cost_text(eng, top)})"
                    if rec != top
                    else f"{rec} is also the cheapest of them ({cost_text(eng, rec)})"
                )
            else:
                cheap = (
                    f"{rec} and {rival} cost the same to two significant digits, and {rec} "
                    + ("is the faster" if why == "latency" else "comes first in the config")
                    + f" ({costs_and_latencies(eng, rec, rival)})"
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
        lines.append(f"{plabel}: " + "; ".join(f"{s} {ci_text(eng, s, p)}" for s in by) + ".")
        if d.confidence is not None:
            lines.append(
                f"{top} ranks first in {100 * d.confidence:.0f}% of {eng.cfg.bootstrap_resamples} bootstrap "
                f"resamples of the examples (confidence: {d.confidence_label})."
            )
        other = r2 if rec == top else top
        lines.append(tradeoff(eng, rec, other))
        table = eng.pair_table()
        better = [s for s in by if s != rec and table.better(s, rec)]
        if better:
            lines.append(
                f"Note: {', '.join(better)} {'is' if len(better) == 1 else 'are'} significantly better than "
                f"{rec} on {plabel} (paired test, Holm); the weights put {rec} first "
                "(decision.mode: quality_first would not)."
            )
    for e in d.excluded:
        lines.append(f"Excluded {e['strategy']}: breaks {', '.join(e['violations'])}.")
    for m, why in d.weights_dropped.items():
        lines.append(f"{measure(m).label} carries weight but is {why}; it is left out of the score.")
    d.rationale = [x for x in lines if x]


def tradeoff(eng: Engine, a: str, b: str) -> str:
    parts = []
    for name in (
        "latency_p95_ms",
        "serving_cost_per_1k_usd",
        "train_time_min",
        "index_build_time_min",
        "peak_memory_gb",
    ):
        va, vb = eng.value(a, name), eng.value(b, name)
        if not (math.isfinite(va) and math.isfinite(vb)) or (va == 0 and vb == 0):
            continue
        parts.append(f"{lc(measure(name).label)} {format_value(name, va)} vs {format_value(name, vb)}")
    return f"Cost side, {a} vs {b}: " + "; ".join(parts) + "." if parts else ""


def tiebreak(eng: Engine, rec: str, tied: list[str]) -> tuple[str, str | None]:
    """``(what decided, the runner-up)`` for ``rec`` among the ``tied`` strategies (``rec`` among them or
    not), in ``Engine.cost_key``'s order:
    ``"cost"`` (cheaper per 1,000 queries at two significant digits), ``"latency"`` (as cheap to that
    precision, lower p95) or ``"order"`` (as cheap and as fast: first in the config). The text must name the
    one that decided: "cheaper" beside $0.0104 vs $0.0101 (equal at two digits, the faster won) contradicts
    its own numbers."""
    others = [s for s in tied if s != rec]
    if not others:
        return "cost", None
    rival = min(others, key=eng.cost_key)
    mine, theirs = eng.cost_key(rec), eng.cost_key(rival)
    if mine[0] != theirs[0]:
        return "cost", rival
    return ("latency" if mine[1] != theirs[1] else "order"), rival


def costs_and_latencies(eng: Engine, a: str, b: str) -> str:
    """``a``'s cost and p95 latency, then ``b``'s: the numbers a tie broken by latency or order rests on."""

    def one(sid: str) -> str:
        latency = format_value("latency_p95_ms", eng.value(sid, "latency_p95_ms"))
        return f"{cost_text(eng, sid)}, p95 latency {latency}"

    return f"{one(a)}; {b}: {one(b)}"


def cost_text(eng: Engine, sid: str) -> str:
    setup = eng.value(sid, "setup_time_min")
    text = f"{format_value(COST_KEY, eng.value(sid, COST_KEY))} per 1,000 queries"
    # The setup as every table prints it (``format_value``): "0.0 min" read as none for a 3 s training.
    return text + (f", {format_value('setup_time_min', setup)} setup" if math.isfinite(setup) else "")
