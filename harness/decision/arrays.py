"""An ``Engine`` straight from per-example arrays, without a run folder (tests, notebooks).

Arrays (one value per example, the same examples for every strategy) become means with bootstrap
samples on one shared index matrix; plain numbers (p95 latency, cost, memory) are constants. The test
family is computed on every array measure the way ``analysis`` does for a run folder.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.config import DecisionConfig
from harness.decision.engine import Engine
from harness.decision.stats import Interval, bootstrap_indices, family, nanmean, percentile_interval


def engine_from_arrays(
    data: dict[str, dict[str, Any]],
    primary: str,
    cfg: DecisionConfig | None = None,
    *,
    binary: set[str] | frozenset[str] = frozenset(),
    seed: int = 0,
) -> Engine:
    """``data``: strategy -> measure -> per-example array or one number. ``binary``: measures tested
    with McNemar (their values must all be 0 or 1)."""
    cfg = cfg or DecisionConfig()
    n = max((np.size(v) for ms in data.values() for v in ms.values() if np.ndim(v) == 1), default=0)
    idx = bootstrap_indices(n, cfg.bootstrap_resamples, seed)
    point: dict[str, dict[str, float]] = {}
    boot: dict[str, dict[str, np.ndarray]] = {}
    ci: dict[str, dict[str, Interval]] = {}
    per_metric: dict[str, dict[str, np.ndarray]] = {}
    for s, ms in data.items():
        point[s], boot[s], ci[s] = {}, {}, {}
        for m, v in ms.items():
            if np.ndim(v) == 1:
                x = np.asarray(v, dtype=float)
                samples = nanmean(x[idx], axis=-1)
                lo, hi = percentile_interval(samples, cfg.confidence_level)
                point[s][m], boot[s][m] = float(nanmean(x)), samples
                ci[s][m] = Interval(point[s][m], lo, hi, int(np.isfinite(x).sum()))
                per_metric.setdefault(m, {})[s] = x
            else:
                point[s][m] = float(v)
                boot[s][m] = np.full(idx.shape[0], float(v))
                ci[s][m] = Interval(float(v), float(v), float(v), n)
    comparisons = {
        m: [
            c.to_dict()
            for c in family(
                arrays,
                m,
                binary=m in binary,
                resamples=cfg.bootstrap_resamples,
                permutation_resamples=cfg.permutation_resamples,
                seed=seed,
                confidence=cfg.confidence_level,
                alpha=cfg.alpha,
            )
        ]
        for m, arrays in per_metric.items()
    }
    return Engine(point, boot, primary, cfg, ci, comparisons)
