"""Uncertainty for every number in the report: seeded bootstrap CIs and paired strategy comparisons.

* ``bootstrap_ci``: percentile bootstrap over examples (resample example indices with replacement,
  recompute the statistic, take the alpha/2 and 1-alpha/2 percentiles). Seeded: the same data,
  seed and resample count always give the same interval.
* ``paired_comparison``: strategies answered the *same* examples, so they are compared on
  per-example differences: the mean difference, its paired-bootstrap CI (the same resampled
  indices for both strategies) and a two-sided sign-flip permutation test (``scipy.stats.permutation_test``
  with ``permutation_type='samples'``) for the p-value of a continuous metric, the exact McNemar test
  (``statsmodels``) for a binary (0/1) one.
* ``family``: the one test family of the report and the decision: every pair of strategies on one
  metric, Holm-adjusted across the pairs.
* ``holm``: Holm-Bonferroni adjustment across a family of comparisons (``statsmodels``); ``holm_fast``
  is the same step-down in numpy, used in the report (statsmodels runs a full ``gc.collect()`` per call)
  and checked against ``holm`` in the tests.

Missing values (NaN) are ignored by the statistics (e.g. style adherence exists only for examples
tagged ``style``); a resample with no valid value yields NaN and is dropped from the percentiles.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import permutation_test
from statsmodels.stats.multitest import multipletests

Statistic = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()
        }


@dataclass(frozen=True)
class Comparison:
    """``a`` minus ``b`` on the examples both answered."""

    a: str
    b: str
    metric: str
    diff: float
    low: float
    high: float
    p_value: float
    n: int
    p_adjusted: float | None = None
    significant: bool | None = None
    test: str = "sign-flip"  # or "mcnemar" (binary metrics)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def nanmean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def nanpercentile(q: float) -> Statistic:
    def stat(x: np.ndarray, axis: int = -1) -> np.ndarray:
        if not np.isnan(x).any():  # the vectorised path; nanpercentile loops in Python
            return np.percentile(x, q, axis=axis)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanpercentile(x, q, axis=axis)

    stat.__name__ = f"p{q:g}"
    return stat


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, n)`` example indices drawn with replacement from ``np.random.default_rng(seed)``.

    Using one index matrix for every strategy makes all bootstrap comparisons paired."""
    if n <= 0:
        return np.zeros((resamples, 0), dtype=np.int64)
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - confidence
    lo, hi = np.percentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_ci(
    values: np.ndarray | list[float],
    *,
    statistic: Statistic = nanmean,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    indices: np.ndarray | None = None,
) -> Interval:
    """Percentile bootstrap CI of ``statistic`` (vectorised: ``statistic(x, axis=-1)``) over ``values``."""
    x = np.asarray(values, dtype=float)
    valid = int(np.isfinite(x).sum())
    if valid == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    estimate = float(statistic(x, axis=-1))
    if indices is None:
        indices = bootstrap_indices(len(x), resamples, seed)
    lo, hi = percentile_interval(statistic(x[indices], axis=-1), confidence)
    return Interval(estimate, lo, hi, valid)


def _paired(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> np.ndarray:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs aligned examples (got {a.shape} and {b.shape})")
    d = a - b
    return d[np.isfinite(d)]


def sign_flip_p_value(diffs: np.ndarray, *, resamples: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value for H0 "mean difference is 0" by randomly flipping the sign of each
    per-example difference (exact enumeration when 2^n <= resamples)."""
    d = np.asarray(diffs, dtype=float)
    if d.size < 2 or np.all(d == 0):
        return 1.0  # one difference: both signs are equally extreme, so p = 1 exactly
    res = permutation_test(
        (d,),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(min(1.0, res.pvalue))


def mcnemar_p_value(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pairs: ``b`` examples only the first
    strategy got right, ``c`` only the second (a binomial test of b against b + c at 1/2)."""
    from statsmodels.stats.contingency_tables import mcnemar

    if b + c == 0:
        return 1.0
    return float(min(1.0, mcnemar([[0, int(b)], [int(c), 0]], exact=True).pvalue))


def is_binary(*arrays: np.ndarray) -> bool:
    """Every finite value is 0 or 1."""
    for a in arrays:
        x = np.asarray(a, dtype=float)
        x = x[np.isfinite(x)]
        if x.size and not np.all((x == 0) | (x == 1)):
            return False
    return True


def paired_comparison(
    a: np.ndarray | list[float],
    b: np.ndarray | list[float],
    *,
    binary: bool = False,
    a_name: str = "a",
    b_name: str = "b",
    metric: str = "",
    resamples: int = 1000,
    permutation_resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Comparison:
    """Mean of ``a - b`` over examples both have, its paired-bootstrap CI, and the p-value of the exact
    McNemar test (``binary``: 0/1 values) or of the sign-flip permutation test (continuous)."""
    test = "mcnemar" if binary else "sign-flip"
    d = _paired(a, b)
    if d.size == 0:
        nan = float("nan")
        return Comparison(a_name, b_name, metric, nan, nan, nan, 1.0, 0, test=test)
    ci = bootstrap_ci(d, resamples=resamples, seed=seed, confidence=confidence)
    if binary:
        p = mcnemar_p_value(int(np.sum(d > 0)), int(np.sum(d < 0)))
    else:
        p = sign_flip_p_value(d, resamples=permutation_resamples, seed=seed)
    return Comparison(a_name, b_name, metric, ci.estimate, ci.low, ci.high, p, int(d.size), test=test)


def family(
    arrays: dict[str, np.ndarray],
    metric: str,
    *,
    binary: bool = False,
    resamples: int = 1000,
    permutation_resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
    alpha: float = 0.05,
) -> list[Comparison]:
    """Every pair of strategies (in the given order, ``a`` before ``b``) on one metric's per-example
    values, Holm-adjusted across the pairs. ``binary`` picks McNemar and needs every value 0 or 1."""
    ids = list(arrays)
    binary = binary and is_binary(*arrays.values())
    cmps = []
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            xa, xb = np.asarray(arrays[a], dtype=float), np.asarray(arrays[b], dtype=float)
            if not np.isfinite(xa - xb).any():
                continue
            cmps.append(
                paired_comparison(
                    xa,
                    xb,
                    binary=binary,
                    a_name=a,
                    b_name=b,
                    metric=metric,
                    resamples=resamples,
                    permutation_resamples=permutation_resamples,
                    seed=seed,
                    confidence=confidence,
                )
            )
    return adjust(cmps, alpha)


def bootstrap_p_value(diff_samples: np.ndarray) -> float:
    """Two-sided p-value from bootstrap samples of a difference: twice the smaller tail mass
    on either side of zero (with the +1 correction so it is never exactly 0)."""
    s = np.asarray(diff_samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return 1.0
    if np.all(s == 0):
        return 1.0
    below = (np.sum(s <= 0) + 1) / (s.size + 1)
    above = (np.sum(s >= 0) + 1) / (s.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def holm(p_values: list[float], alpha: float = 0.05) -> tuple[list[bool], list[float]]:
    """Holm-Bonferroni: (reject, adjusted p) per comparison, controlling the family-wise error."""
    if not p_values:
        return [], []
    reject, adjusted, _, _ = multipletests(p_values, alpha=alpha, method="holm")
    return [bool(r) for r in reject], [float(p) for p in adjusted]


def holm_fast(p_values: list[float], alpha: float = 0.05) -> tuple[list[bool], list[float]]:
    """The same Holm step-down as ``holm`` in plain numpy (statsmodels runs ``gc.collect()`` on every
    call, ~90 ms, too slow for the thousands of what-if decisions of the sensitivity analysis).
    ``tests/test_stats.py`` checks both agree."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return [], []
    order = np.argsort(p, kind="mergesort")
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * np.arange(m, 0, -1)))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return [bool(a <= alpha) for a in adjusted], [float(a) for a in adjusted]


def adjust(comparisons: list[Comparison], alpha: float = 0.05) -> list[Comparison]:
    """Return the comparisons with Holm-adjusted p-values and a significance flag."""
    reject, adjusted = holm_fast([c.p_value for c in comparisons], alpha)
    return [
        Comparison(**{**asdict(c), "p_adjusted": p, "significant": r})
        for c, p, r in zip(comparisons, adjusted, reject, strict=True)
    ]
