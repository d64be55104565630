"""``adaptbench compare RUN_A RUN_B``: what changed from A (baseline) to B (candidate), per metric.

Every difference is ``B - A`` on the example ids both runs answered, paired: exact McNemar for binary
metrics, sign-flip for continuous ones, paired bootstrap CI, Holm across the metrics of a strategy;
with clusters (first ``context_ids`` entry, or a ``group`` field) the interval and test resample
clusters instead (``clustered``). Runs on another eval set (content hash), other example ids or other
metric definitions are refused unless ``allow_mismatch``, and the mismatch is recorded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.decision.stats import holm_fast
from harness.errors import DataError
from harness.gate.clustered import detectable, paired_test
from harness.gate.runs import POINT_MEASURES, RunData
from harness.gate.verdict import power_note, verdict

CLUSTER_BY = ("context", "group", "none")
FLIP_LIMIT = 15


def mismatches(a: RunData, b: RunData, strategies: list[str]) -> list[str]:
    """One line per difference that makes the runs incomparable (empty: comparable)."""
    out = []
    if a.content_hash and b.content_hash and a.content_hash != b.content_hash:
        out.append(
            f"eval-set content hash differs ({a.content_hash[:12]} in {a.name} vs {b.content_hash[:12]} in {b.name})"
        )
    for sid in strategies:
        ia, ib = set(a.ids(sid)), set(b.ids(sid))
        if ia != ib:
            out.append(
                f"example ids differ for {sid}: {len(ia - ib)} only in {a.name}, {len(ib - ia)} only in {b.name}"
            )
    for m in sorted(set(a.metrics) & set(b.metrics)):
        if a.metrics[m] != b.metrics[m]:
            keys = sorted(k for k in a.metrics[m] if a.metrics[m].get(k) != b.metrics[m].get(k))
            out.append(f"metric definition of {m} differs ({', '.join(keys) or 'fields'})")
    return out


def shared_strategies(a: RunData, b: RunData, strategy: str | None) -> list[str]:
    shared = [s for s in b.strategies if s in a.strategies]
    if strategy is not None:
        if strategy not in shared:
            raise DataError(
                f"--strategy {strategy}: not in both runs (shared: {', '.join(shared) or 'none'})"
            )
        return [strategy]
    if not shared:
        raise DataError(
            f"{a.name} and {b.name} share no strategy ({', '.join(a.strategies)} vs {', '.join(b.strategies)})"
        )
    return shared


def check(a: RunData, b: RunData, strategies: list[str], allow_mismatch: bool) -> list[str]:
    diffs = mismatches(a, b, strategies)
    if diffs and not allow_mismatch:
        more = f" (+{len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise DataError(f"runs are not comparable: {diffs[0]}{more}; pass --allow-mismatch to compare anyway")
    return diffs


def cluster_keys(a: RunData, b: RunData, ids: list[str], by: str) -> np.ndarray | None:
    if by not in CLUSTER_BY:
        raise DataError(f"cluster_by {by!r}: use one of {', '.join(CLUSTER_BY)}")
    if by == "none":
        return None
    field = "context_id" if by == "context" else "group"
    keys = [(b.examples.get(e) or a.examples.get(e) or {}).get(field) for e in ids]
    if all(k is None for k in keys):
        return None
    return np.array(keys, dtype=object)


def values(run: RunData, sid: str, metric: str, ids: list[str]) -> np.ndarray:
    per = run.scores.get(sid, {})
    return np.array(
        [np.nan if (v := (per.get(e) or {}).get(metric)) is None else float(v) for e in ids], dtype=float
    )


def settings(a: RunData, alpha: float | None) -> dict[str, Any]:
    s = a.settings
    al = float(alpha if alpha is not None else s.get("alpha", 0.05))
    return {
        "alpha": al,
        "confidence": 1 - al,
        "resamples": int(s.get("resamples", 2000)),
        "permutation_resamples": int(s.get("permutation_resamples", 10000)),
        "seed": int(s.get("seed", 0)),
    }


def paired_metric_test(
    xa: np.ndarray, xb: np.ndarray, clusters: np.ndarray | None, spec: dict[str, Any], st: dict[str, Any]
):
    """``xb - xa`` for one metric with the run's test settings (``settings``): the one place compare
    and gate choose McNemar vs sign-flip and pass resamples, seed and confidence."""
    return paired_test(
        xa,
        xb,
        clusters=clusters,
        binary=bool(spec.get("binary")),
        resamples=st["resamples"],
        permutation_resamples=st["permutation_resamples"],
        seed=st["seed"],
        confidence=st["confidence"],
    )


def metric_rows(
    a: RunData, b: RunData, sid: str, ids: list[str], clusters, margin: float, st: dict[str, Any]
) -> list[dict[str, Any]]:
    rows = []
    for m in [x for x in b.metrics if x in a.metrics]:
        xa, xb = values(a, sid, m, ids), values(b, sid, m, ids)
        if not np.isfinite(xa - xb).any():
            continue
        spec = b.metrics[m]
        res = paired_metric_test(xa, xb, clusters, spec, st)
        rows.append(
            {
                "metric": m,
                "label": spec.get("label", m),
                "unit": spec.get("unit", ""),
                "higher_is_better": bool(spec.get("higher_is_better", True)),
                "a": float(np.nanmean(xa)),
                "b": float(np.nanmean(xb)),
                **res.to_dict(),
                "mde": detectable(res.se, st["alpha"]),
            }
        )
    reject, adjusted = holm_fast([r["p_value"] for r in rows], st["alpha"])
    for r, rej, adj in zip(rows, reject, adjusted, strict=True):
        r["p_adjusted"], r["significant"] = adj, rej
        word, why = verdict(
            r["diff"] if r["diff"] is not None else float("nan"),
            r["low"] if r["low"] is not None else float("nan"),
            r["high"] if r["high"] is not None else float("nan"),
            rej,
            margin if r["unit"] == "" else 0.0,
            r["mde"],
            higher_is_better=r["higher_is_better"],
            unit=r["unit"],
        )
        r["verdict"], r["verdict_text"] = word, why
        r["power"] = power_note(r["n"], r["mde"], r["unit"], clusters=r["n_clusters"])
    return rows


def flips(a: RunData, b: RunData, sid: str, ids: list[str], metric: str) -> dict[str, Any]:
    """Binary metric: examples that went right -> wrong and wrong -> right; continuous: largest
    drops and gains. Each with the question, the reference and both answers."""
    if metric not in a.metrics or metric not in b.metrics:
        return {"metric": metric, "kind": "none", "groups": {}}
    xa, xb = values(a, sid, metric, ids), values(b, sid, metric, ids)
    sign = 1.0 if b.metrics[metric].get("higher_is_better", True) else -1.0
    d = sign * (xb - xa)

    def item(i: int) -> dict[str, Any]:
        e = ids[i]
        ex = b.examples.get(e) or a.examples.get(e) or {}
        return {
            "id": e,
            "question": ex.get("question", ""),
            "reference": ex.get("reference", ""),
            "a_answer": a.answers.get(sid, {}).get(e, ""),
            "b_answer": b.answers.get(sid, {}).get(e, ""),
            "a": float(xa[i]),
            "b": float(xb[i]),
        }

    ok = np.isfinite(d)
    if b.metrics[metric].get("binary"):
        groups = {
            "right_to_wrong": [i for i in range(len(ids)) if ok[i] and d[i] < 0],
            "wrong_to_right": [i for i in range(len(ids)) if ok[i] and d[i] > 0],
        }
        kind = "binary"
    else:
        order = np.argsort(np.where(ok, d, 0.0), kind="mergesort")
        groups = {
            "largest_drops": [int(i) for i in order if ok[i] and d[i] < 0],
            "largest_gains": [int(i) for i in order[::-1] if ok[i] and d[i] > 0],
        }
        kind = "continuous"
    return {
        "metric": metric,
        "kind": kind,
        "counts": {k: len(v) for k, v in groups.items()},
        "groups": {k: [item(i) for i in v[:FLIP_LIMIT]] for k, v in groups.items()},
    }


def deltas(a: RunData, b: RunData, sid: str) -> list[dict[str, Any]]:
    """Latency, throughput and cost: point values (and intervals) of each run, and the change."""
    out = []
    for m in POINT_MEASURES:
        va = (a.measures.get(sid) or {}).get(m) or {}
        vb = (b.measures.get(sid) or {}).get(m) or {}
        ea, eb = va.get("estimate"), vb.get("estimate")
        if ea is None and eb is None:
            continue
        delta = None if ea is None or eb is None else eb - ea
        rel = None if delta is None or not ea else delta / abs(ea)
        out.append({"measure": m, "a": va, "b": vb, "delta": delta, "relative": rel})
    return out


def compare_runs(
    a: RunData,
    b: RunData,
    *,
    strategy: str | None = None,
    allow_mismatch: bool = False,
    margin: float = 0.02,
    cluster_by: str = "context",
    alpha: float | None = None,
) -> dict[str, Any]:
    """The whole comparison, JSON-ready (``compare.json``; the md and html are rendered from it)."""
    sids = shared_strategies(a, b, strategy)
    diffs = check(a, b, sids, allow_mismatch)
    st = settings(a, alpha)
    out: dict[str, Any] = {
        "a": {"name": a.name, "source": a.source, "kind": a.kind, "content_hash": a.content_hash},
        "b": {"name": b.name, "source": b.source, "kind": b.kind, "content_hash": b.content_hash},
        "direction": "B - A (candidate minus baseline)",
        "primary": b.primary,
        "margin": margin,
        "cluster_by": cluster_by,
        "settings": st,
        "mismatches": diffs,
        "strategies": {},
    }
    for sid in sids:
        ids = sorted(set(a.ids(sid)) & set(b.ids(sid)))
        clusters = cluster_keys(a, b, ids, cluster_by)
        rows = metric_rows(a, b, sid, ids, clusters, margin, st)
        out["strategies"][sid] = {
            "n": len(ids),
            "metrics": rows,
            "flips": flips(a, b, sid, ids, b.primary),
            "deltas": deltas(a, b, sid),
        }
    return out
