"""Release gates: a policy file of rules, evaluated on a run (and a baseline), pass or fail.

```yaml
alpha: 0.05              # significance level of every rule's test
cluster_by: context      # context | group | none
rules:                   # absolute rules: STRATEGY.MEASURE OP NUMBER
  - rag.fact_accuracy >= 0.60
  - {check: rag.latency_p95_ms <= 800, on: upper_bound}
max_drop:                # relative rules vs --baseline (score units: 0.02 = 2 points)
  fact_accuracy: 0.02    # every strategy in both runs
  rag.token_f1: 0.03     # one strategy
```

Absolute rules compare the point value, or with ``on:`` the bound of its (1 - alpha) interval.
Relative rules are non-inferiority checks: a rule fails only when the paired drop is significantly
larger than the margin (one-sided sign-flip on ``d + margin``, by cluster sums with clusters), so noise
does not fail a build; ``strict`` fails any point drop instead.

Holm runs across the rules whose *failure* is a significance claim (relative rules, and quality rules
judged on the lenient bound: ``>=`` on ``upper_bound``, ``<=`` on ``lower_bound``), which controls the
chance that a policy fails a build by noise at ``alpha``. Rules judged on the demanding bound (``>=`` on
``lower_bound``) must each be shown to hold; requiring all of them at once needs no correction
(intersection-union test).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.config import read_yaml, validation_message
from harness.decision.measures import MEASURES
from harness.decision.stats import holm_fast
from harness.errors import ConfigError, DataError
from harness.gate.clustered import (
    cluster_bootstrap,
    cluster_codes,
    detectable,
    noninferiority_p,
)
from harness.gate.compare import cluster_keys, mismatches, paired_metric_test, settings, values
from harness.gate.runs import RunData
from harness.gate.verdict import amount, power_note, verdict

RULE = re.compile(
    r"^\s*(?P<sid>[A-Za-z0-9_+\-]+)\.(?P<name>[a-z][a-z0-9_@]*)\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<value>[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)\s*$"
)
OPS = {"<=": np.less_equal, ">=": np.greater_equal, "<": np.less, ">": np.greater}


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    check: str
    on: Literal["point", "lower_bound", "upper_bound"] = "point"

    @field_validator("check")
    @classmethod
    def _parse(cls, v: str) -> str:
        if not RULE.match(v):
            raise ValueError(f"{v!r}: write STRATEGY.MEASURE OP NUMBER, e.g. rag.fact_accuracy >= 0.60")
        return v


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.05, gt=0, lt=0.5)
    cluster_by: Literal["context", "group", "none"] = "context"
    rules: list[Rule] = Field(default_factory=list)
    max_drop: dict[str, float] = Field(default_factory=dict)

    @field_validator("rules", mode="before")
    @classmethod
    def _strings(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare ``on`` key as the boolean True: take it back as "on".
        fix = lambda r: {("on" if k is True else k): x for k, x in r.items()} if isinstance(r, dict) else r  # noqa: E731
        return [{"check": r} if isinstance(r, str) else fix(r) for r in v] if isinstance(v, list) else v

    @field_validator("max_drop")
    @classmethod
    def _margins(cls, v: dict[str, float]) -> dict[str, float]:
        for k, m in v.items():
            if m < 0:
                raise ValueError(f"{k}: a margin is a drop size, >= 0 (got {m})")
            if not re.match(r"^([A-Za-z0-9_+\-]+\.)?[a-z][a-z0-9_]*$", k):
                raise ValueError(f"{k!r}: write METRIC or STRATEGY.METRIC")
        return v


def load_policy(path: str | Path) -> Policy:
    p = Path(path)
    data = read_yaml(p)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, str(p))) from None
    if not policy.rules and not policy.max_drop:
        raise ConfigError(f"{p}: no rules: add rules: [...] or max_drop: {{metric: margin}}")
    return policy


def _rule_value(run: RunData, sid: str, name: str, st: dict[str, Any], by: str) -> dict[str, Any]:
    """Estimate, interval and bootstrap samples (quality metrics) of one measure of one strategy."""
    if sid not in run.strategies:
        raise DataError(
            f"rule on {sid}.{name}: strategy {sid!r} not in {run.name} ({', '.join(run.strategies)})"
        )
    if name in run.metrics:
        ids = run.ids(sid)
        x = values(run, sid, name, ids)
        ok = np.isfinite(x)
        keys = cluster_keys(run, run, ids, by)
        codes = cluster_codes(list(keys[ok]) if keys is not None else [None] * int(ok.sum()))
        if not ok.any():
            raise DataError(f"rule on {sid}.{name}: {run.name} has no {name} scores for {sid}")
        lo, hi, samples = cluster_bootstrap(
            x[ok], codes, resamples=st["resamples"], seed=st["seed"], confidence=st["confidence"]
        )
        return {
            "estimate": float(x[ok].mean()),
            "low": lo,
            "high": hi,
            "samples": samples,
            "n": int(ok.sum()),
            "n_clusters": int(np.unique(codes).size),
            "unit": run.metrics[name].get("unit", ""),
        }
    if name in MEASURES:
        v = (run.measures.get(sid) or {}).get(name) or {}
        if v.get("estimate") is None:
            raise DataError(f"rule on {sid}.{name}: {run.name} has no value of {name} for {sid}")
        return {**v, "samples": None, "n": None, "n_clusters": None, "unit": MEASURES[name].unit}
    raise DataError(
        f"rule on {sid}.{name}: unknown measure (metrics of {run.name}: {', '.join(run.metrics)})"
    )


def absolute(rule: Rule, run: RunData, st: dict[str, Any], by: str) -> dict[str, Any]:
    m = RULE.match(rule.check)
    assert m is not None
    sid, name, op, thr = m["sid"], m["name"], m["op"], float(m["value"])
    v = _rule_value(run, sid, name, st, by)
    judged = {"point": v["estimate"], "lower_bound": v["low"], "upper_bound": v["high"]}[rule.on]
    lenient = (op in (">=", ">") and rule.on == "upper_bound") or (
        op in ("<=", "<") and rule.on == "lower_bound"
    )
    p = None
    if lenient and v["samples"] is not None:  # failure = a significant violation: a p-value for Holm
        s = v["samples"][np.isfinite(v["samples"])]
        ok_side = OPS[op](s, thr)
        p = float(min(1.0, 2 * (np.sum(ok_side) + 1) / (s.size + 1)))
    passed = judged is not None and bool(OPS[op](judged, thr))
    unit = v["unit"]
    where = (
        ""
        if rule.on == "point"
        else f" ({rule.on.replace('_', ' ')} of the {100 * st['confidence']:.0f}% interval)"
    )
    return {
        "name": rule.check.strip() + ("" if rule.on == "point" else f" on {rule.on}"),
        "kind": "absolute",
        "strategy": sid,
        "measure": name,
        "op": op,
        "threshold": thr,
        "on": rule.on,
        "estimate": v["estimate"],
        "low": v.get("low"),
        "high": v.get("high"),
        "judged": judged,
        "p_value": p,
        "passed": passed,
        "n": v["n"],
        "n_clusters": v["n_clusters"],
        "evidence": f"{name} of {sid} = {_fmt(judged, unit)}{where}; rule {op} {_fmt(thr, unit)}",
    }


def _clusters(n: int, g: int) -> str:
    return f" in {g} clusters" if g < n else ""


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if unit == "" else f"{v:,.4g} {unit}"


def relative(
    key: str, margin: float, run: RunData, base: RunData, st: dict[str, Any], by: str, strict: bool
) -> list[dict[str, Any]]:
    sid_part, _, metric = key.rpartition(".")
    if metric not in run.metrics or metric not in base.metrics:
        if metric in MEASURES:
            raise ConfigError(
                f"max_drop.{key}: only per-example metrics are compared paired; use an absolute rule for {metric}"
            )
        raise DataError(f"max_drop.{key}: metric {metric!r} is not in both {run.name} and {base.name}")
    sids = [sid_part] if sid_part else [s for s in run.strategies if s in base.strategies]
    out = []
    for sid in sids:
        if sid not in run.strategies or sid not in base.strategies:
            raise DataError(f"max_drop.{key}: strategy {sid!r} is not in both {run.name} and {base.name}")
        ids = sorted(set(run.ids(sid)) & set(base.ids(sid)))
        xa, xb = values(base, sid, metric, ids), values(run, sid, metric, ids)
        spec = run.metrics[metric]
        sign = 1.0 if spec.get("higher_is_better", True) else -1.0
        keys = cluster_keys(base, run, ids, by)
        res = paired_metric_test(xa, xb, keys, spec, st)
        d = sign * (xb - xa)
        p = noninferiority_p(d, margin, clusters=keys, resamples=st["permutation_resamples"], seed=st["seed"])
        drop = -sign * res.diff
        mde = margin + detectable(res.se, st["alpha"], one_sided=True)
        unit = spec.get("unit", "")
        lo_drop, hi_drop = sorted((-sign * res.low, -sign * res.high))
        word, why = verdict(
            res.diff,
            res.low,
            res.high,
            res.p_value <= st["alpha"],
            margin,
            detectable(res.se, st["alpha"]),
            higher_is_better=sign > 0,
            unit=unit,
        )
        out.append(
            {
                "name": f"{sid}.{metric} max_drop {margin:g}",
                "kind": "relative",
                "strategy": sid,
                "measure": metric,
                "margin": margin,
                "estimate": res.diff,
                "low": res.low,
                "high": res.high,
                "drop": drop,
                "drop_low": lo_drop,
                "drop_high": hi_drop,
                "p_value": p,
                "point_drop": bool(drop > 0),
                "strict": strict,
                "n": res.n,
                "n_clusters": res.n_clusters,
                "widening": res.widening,
                "test": res.test,
                "mde": mde,
                "power": power_note(res.n, mde, unit, what="drops", clusters=res.n_clusters),
                "verdict": word,
                "verdict_text": why,
                "evidence": (
                    f"{metric} of {sid}: drop {amount(drop, unit)} "
                    f"({100 * st['confidence']:.0f}% CI {amount(lo_drop, unit)} to {amount(hi_drop, unit)}; "
                    f"n = {res.n}{_clusters(res.n, res.n_clusters)}) vs margin {amount(margin, unit)}"
                ),
            }
        )
    return out


def evaluate(
    run: RunData,
    policy: Policy,
    base: RunData | None = None,
    *,
    strict: bool = False,
    allow_mismatch: bool = False,
) -> dict[str, Any]:
    """Every rule's outcome, Holm across the significance-claim rules; JSON-ready."""
    if policy.max_drop and base is None:
        raise ConfigError("policy has max_drop rules: pass --baseline RUN_DIR|baseline.json")
    st = settings(run, policy.alpha)
    diffs: list[str] = []
    if base is not None:
        shared = [s for s in run.strategies if s in base.strategies]
        diffs = mismatches(base, run, shared)
        if diffs and not allow_mismatch:
            raise DataError(
                f"run and baseline are not comparable: {diffs[0]}; pass --allow-mismatch to gate anyway"
            )
    results = [absolute(r, run, st, policy.cluster_by) for r in policy.rules]
    for key, margin in policy.max_drop.items():
        results += relative(key, margin, run, base, st, policy.cluster_by, strict)  # type: ignore[arg-type]
    family = [i for i, r in enumerate(results) if r["p_value"] is not None]
    reject, adjusted = holm_fast([results[i]["p_value"] for i in family], policy.alpha)
    for i, rej, adj in zip(family, reject, adjusted, strict=True):
        r = results[i]
        r["p_adjusted"] = adj
        if r["kind"] == "relative":
            r["passed"] = not rej and not (strict and r["point_drop"])
        elif r["passed"] is False and not rej:  # lenient bound: only a significant violation fails
            r["passed"] = True
        r["evidence"] += f"; p = {r['p_value']:.3g}, Holm-adjusted {adj:.3g} over {len(family)} rules"
    for r in results:
        r.setdefault("p_adjusted", None)
        if r["kind"] == "relative" and strict and r["point_drop"]:
            r["evidence"] += " (strict: any point drop fails)"
    return {
        "passed": all(r["passed"] for r in results),
        "run": {"name": run.name, "source": run.source},
        "baseline": None if base is None else {"name": base.name, "source": base.source, "kind": base.kind},
        "alpha": policy.alpha,
        "cluster_by": policy.cluster_by,
        "strict": strict,
        "holm_family": len(family),
        "mismatches": diffs,
        "rules": results,
    }
