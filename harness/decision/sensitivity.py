"""What would change the recommendation: the nearest single tightened constraint, relaxed constraint,
margin (``quality_first``) or weight change (``weighted``) that makes the engine recommend another
strategy (found by re-deciding at the crossover points)."""

from __future__ import annotations

import math
from typing import Any

from harness.decision.engine import COST_KEY, Constraint, Decision, Engine, parse_constraint
from harness.decision.explain import lc, margin_text, points
from harness.decision.measures import format_value, measure, natural_scale
from harness.decision.weighted import default_weights, utility


def material(name: str, a: float, b: float) -> bool:
    """A difference worth a sensitivity note: visible at display precision and at least 1% apart
    (sampled memory or timing jitter between otherwise identical strategies is not a trade-off)."""
    if not (math.isfinite(a) and math.isfinite(b)) or format_value(name, a) == format_value(name, b):
        return False
    return abs(a - b) >= 0.01 * max(abs(a), abs(b))


def sensitivity(eng: Engine, base: Decision) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    rec = base.recommended
    constraints = [parse_constraint(c) for c in base.constraints]
    weights = dict(eng.cfg.weights or default_weights(eng.primary))
    margin = base.margin
    if rec is not None:
        names = list(
            dict.fromkeys(
                [c.name for c in constraints]
                + ["latency_p95_ms", "peak_memory_gb", "train_time_min", COST_KEY, eng.primary]
            )
        )
        for name in names:
            v = eng.value(rec, name)
            if not math.isfinite(v):
                continue
            m = measure(name)
            op = ">" if m.higher_is_better else "<"
            new = eng.decide(constraints + [Constraint(name, op, v)], weights, explain=False, margin=margin)
            vn = eng.value(new.recommended, name) if new.recommended else float("nan")
            if new.recommended and new.recommended != rec and material(name, v, vn):
                bound = "above" if m.higher_is_better else "under"
                out.append(
                    {
                        "kind": "constraint",
                        "measure": name,
                        "threshold": v,
                        "winner": new.recommended,
                        # "under rag's 1,659 ms": the limit is rag's own value, which may lie just below the
                        # printed number (a limit "< 1,659 ms" as printed could still admit rag).
                        "text": f"{new.recommended} would be recommended if {lc(m.label)} had to be {bound} "
                        f"{rec}'s {format_value(name, v)} ({new.recommended} measures {format_value(name, vn)}).",
                    }
                )
    for i, c in enumerate(constraints):  # relax constraints that exclude strategies
        for e in base.excluded:
            s = e["strategy"]
            vs = eng.value(s, c.name)
            if c.check(vs) or not math.isfinite(vs):
                continue
            relaxed = Constraint(c.name, {"<": "<=", ">": ">="}.get(c.op, c.op), vs)
            trial = constraints[:i] + [relaxed] + constraints[i + 1 :]
            new = eng.decide(trial, weights, explain=False, margin=margin)
            if new.recommended and new.recommended != rec:
                out.append(
                    {
                        "kind": "relax",
                        "measure": c.name,
                        "threshold": vs,
                        "winner": new.recommended,
                        "text": f"{new.recommended} would be recommended if the limit {c.text} were relaxed to "
                        f"{relaxed.op} {format_value(c.name, vs)} (what {s} measures).",
                    }
                )
    if base.ranking and len(base.ranking) > 1:
        if base.mode == "weighted":
            out.extend(weight_flips(eng, base, constraints, weights))
        else:
            out.extend(margin_flips(eng, base, constraints))
    if not out:
        out.append(
            {
                "kind": "robust",
                "text": "No single tightened constraint, relaxed constraint"
                + (" or weight change" if base.mode == "weighted" else " or larger margin")
                + " flips the recommendation.",
            }
        )
    return out


def weight_flips(eng: Engine, base: Decision, constraints, weights) -> list[dict[str, Any]]:
    """For each measure, the nearest weight (others fixed) at which the recommendation changes.

    Tried in order of distance from the current weight: the exact ranking crossovers (a little past
    them) and a grid from 0 to 3x the total weight (a flip can also come from a lead becoming
    significant, which has no closed form)."""
    feasible = [r["strategy"] for r in base.ranking]
    candidates = list(
        dict.fromkeys(list(weights) + list(default_weights(eng.primary)) + list(eng.cfg.scales))
    )
    scales = {m: _scale(eng, m) for m in candidates}
    candidates = [
        m
        for m in candidates
        if scales[m] is not None and all(math.isfinite(eng.value(s, m)) for s in feasible)
    ]
    active = {m: w for m, w in weights.items() if m in base.weights}
    total = sum(active.values()) or 1.0
    utils = {r["strategy"]: r["utilities"] for r in base.ranking}
    flips = []
    for m in candidates:
        w = active.get(m, 0.0)
        u = {s: float(utility(m, eng.value(s, m), scales[m])) for s in feasible}
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
            new = eng.decide(constraints, trial, explain=False)
            if new.recommended and new.recommended != base.recommended:
                share = 100 * trial_w / sum(v for v in trial.values() if v > 0)
                flips.append(
                    {
                        "kind": "weight",
                        "measure": m,
                        "threshold": trial_w,
                        "winner": new.recommended,
                        "change": abs(trial_w - w) / total,
                        "text": f"{new.recommended} would be recommended if the weight on {lc(measure(m).label)} were "
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


def _scale(eng: Engine, name: str) -> tuple[float, float] | None:
    if name in eng.cfg.scales:
        worst, best = eng.cfg.scales[name]
        return float(worst), float(best)
    return natural_scale(name)


def rounded_up(name: str, margin: float) -> float:
    """A margin threshold at two decimals of a point, rounded up so "``X`` or more" stays true when printed
    (5.93918 points reads 5.94); measures with units keep their value."""
    if measure(name).unit != "":
        return margin
    return math.ceil(round(margin * 1e4, 6)) / 1e4


def margin_flips(eng: Engine, base: Decision, constraints) -> list[dict[str, Any]]:
    """quality_first: the smallest larger ``decision.margin`` at which a cheaper strategy, not
    significantly worse than any feasible one, would tie with the leader and be recommended."""
    out = []
    p = eng.primary
    rec_cost = eng.cost_key(base.recommended) if base.recommended else None
    for c in base.lead:
        s = c["vs"]
        if not c.get("in_pool") or s in base.tie_set or rec_cost is None or eng.cost_key(s) >= rec_cost:
            continue
        needed = c["high"]  # the leader's lead over s, upper bound: s - leader >= -needed
        if not math.isfinite(needed) or needed <= base.margin:
            continue
        trial = needed * 1.0001 + 1e-9
        new = eng.decide(constraints, explain=False, margin=trial)
        if new.recommended and new.recommended != base.recommended:
            out.append(
                {
                    "kind": "margin",
                    "measure": p,
                    "threshold": needed,
                    "winner": new.recommended,
                    "text": f"{new.recommended} would be recommended if decision.margin were "
                    f"{margin_text(p, rounded_up(p, needed))} or more instead of {margin_text(p, base.margin)} "
                    f"(it is cheaper; the {int(round(100 * eng.cfg.confidence_level))}% lower bound of {s} − {base.top} on "
                    f"{lc(measure(p).label)} is {points(p, -needed)}).",
                }
            )
    out.sort(key=lambda n: n["threshold"])
    return out[:2]
