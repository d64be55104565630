"""Paired tests that respect clustered examples (Miller 2024, "Adding Error Bars to Evals").

Questions drawn from one KB document (or one ``group``) are not independent: a model that misreads the
document misses all of them. Resampling examples then understates the uncertainty. Here a cluster is
the unit: the bootstrap resamples clusters (with replacement) and the sign-flip test flips the sign of
each cluster's *sum* of paired differences. With every cluster of size one this is the ordinary
per-example test, so the unclustered family in ``harness.decision.stats`` (exact McNemar for binary
metrics, sign-flip for continuous ones, paired bootstrap CI) is used then, unchanged.

The power note uses the normal approximation on the paired differences: with standard error ``se``
of the mean difference, a true difference of ``(z_{1-alpha/2} + z_{0.8}) * se`` is detected 80% of
the time (``one_sided``: ``z_{1-alpha}``). With clusters, ``se`` is the cluster-robust one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm

from harness.decision.stats import paired_comparison, percentile_interval

POWER = 0.8


@dataclass(frozen=True)
class Paired:
    """``b - a`` on the examples both have (mean paired difference), with its interval and test."""

    diff: float
    low: float
    high: float
    p_value: float
    n: int
    test: str  # mcnemar | sign-flip | cluster sign-flip
    n_clusters: int
    se: float  # standard error of the mean difference (cluster-robust with clusters)
    widening: float | None = None  # clustered CI width / unclustered CI width (None: not clustered)

    def to_dict(self) -> dict[str, object]:
        return {k: _clean(v) for k, v in asdict(self).items()}


def _clean(v: object) -> object:
    return None if isinstance(v, float) and not np.isfinite(v) else v


def cluster_codes(keys: list[str | None]) -> np.ndarray:
    """Integer cluster codes; an example without a key is its own cluster."""
    seen: dict[str, int] = {}
    out = []
    for i, k in enumerate(keys):
        key = f"\x00single-{i}" if k is None else str(k)
        out.append(seen.setdefault(key, len(seen)))
    return np.asarray(out, dtype=np.int64)


def cluster_sums(d: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums of ``d`` and cluster sizes (clusters in code order)."""
    g = int(codes.max()) + 1 if codes.size else 0
    return np.bincount(codes, weights=d, minlength=g), np.bincount(codes, minlength=g).astype(float)


def standard_error(d: np.ndarray, codes: np.ndarray | None = None) -> float:
    """SE of the mean of ``d``: the usual ``sd / sqrt(n)``, or the cluster-robust (CR1-style) one."""
    n = d.size
    if n < 2:
        return float("nan")
    if codes is None or np.unique(codes).size == n:
        return float(np.std(d, ddof=1) / np.sqrt(n))
    sums, sizes = cluster_sums(d, codes)
    g = sums.size
    if g < 2:
        return float("nan")
    resid = sums - sizes * d.mean()
    return float(np.sqrt(g / (g - 1) * np.sum(resid**2)) / n)


def detectable(se: float, alpha: float, *, one_sided: bool = False, power: float = POWER) -> float:
    """Smallest true difference detected with ``power`` at ``alpha`` (normal approximation)."""
    if not np.isfinite(se):
        return float("nan")
    z_a = norm.ppf(1 - alpha) if one_sided else norm.ppf(1 - alpha / 2)
    return float((z_a + norm.ppf(power)) * se)


def cluster_bootstrap(
    d: np.ndarray, codes: np.ndarray, *, resamples: int, seed: int, confidence: float
) -> tuple[float, float, np.ndarray]:
    """Percentile CI of the mean difference, resampling whole clusters; also the samples."""
    sums, sizes = cluster_sums(d, codes)
    g = sums.size
    pick = np.random.default_rng(seed).integers(0, g, size=(resamples, g))
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = sums[pick].sum(axis=1) / sizes[pick].sum(axis=1)
    lo, hi = percentile_interval(samples, confidence)
    return lo, hi, samples


def cluster_sign_flip(
    d: np.ndarray,
    codes: np.ndarray,
    *,
    resamples: int = 10000,
    seed: int = 0,
    alternative: str = "two-sided",
    shift: float = 0.0,
) -> float:
    """p-value of H0 "mean of d is ``-shift``" by flipping the signs of cluster sums of ``d + shift``
    (exact enumeration when 2^clusters <= resamples). ``alternative="less"``: H1 mean below it."""
    sums, _ = cluster_sums(d + shift, codes)
    g = sums.size
    if g == 0 or np.all(sums == 0):
        return 1.0
    if 2**g <= resamples:
        signs = ((np.arange(2**g)[:, None] >> np.arange(g)) & 1) * 2 - 1
    else:
        signs = np.random.default_rng(seed).choice([-1, 1], size=(resamples, g))
        signs = np.vstack([np.ones(g, dtype=int), signs])  # the observed assignment counts once
    null = signs @ sums
    obs = sums.sum()
    tol = 1e-12 * max(1.0, np.abs(sums).sum())
    if alternative == "less":
        return float(np.mean(null <= obs + tol))
    if alternative == "greater":
        return float(np.mean(null >= obs - tol))
    return float(min(1.0, np.mean(np.abs(null) >= abs(obs) - tol)))


def paired_test(
    a: np.ndarray,
    b: np.ndarray,
    *,
    clusters: np.ndarray | None = None,
    binary: bool = False,
    resamples: int = 2000,
    permutation_resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Paired:
    """``b - a`` on aligned per-example values. Without clusters (or all singletons): the test family of
    ``harness.decision.stats`` (McNemar for ``binary``, sign-flip otherwise, paired bootstrap CI).
    With clusters: cluster bootstrap CI, sign-flip on cluster sums, and how much wider the CI became."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    d = (b - a)[ok]
    flat = paired_comparison(
        a[ok],
        b[ok],
        binary=binary,
        resamples=resamples,
        permutation_resamples=permutation_resamples,
        seed=seed,
        confidence=confidence,
    )
    # paired_comparison reports a - b: turn it around to b - a.
    diff, lo, hi = -flat.diff, -flat.high, -flat.low
    codes = None if clusters is None else cluster_codes(list(np.asarray(clusters, dtype=object)[ok]))
    g = d.size if codes is None else int(np.unique(codes).size)
    if codes is None or g == d.size or d.size == 0:
        return Paired(diff, lo, hi, flat.p_value, int(d.size), flat.test, g, standard_error(d))
    clo, chi, _ = cluster_bootstrap(d, codes, resamples=resamples, seed=seed, confidence=confidence)
    p = cluster_sign_flip(d, codes, resamples=permutation_resamples, seed=seed)
    width = hi - lo
    widening = (chi - clo) / width if width > 0 else None
    return Paired(
        float(d.mean()), clo, chi, p, int(d.size), "cluster sign-flip", g, standard_error(d, codes), widening
    )


def noninferiority_p(
    d: np.ndarray,
    margin: float,
    *,
    clusters: np.ndarray | None = None,
    resamples: int = 10000,
    seed: int = 0,
) -> float:
    """One-sided p of H0 "the drop is at most ``margin``" (mean of d >= -margin) against H1 "the drop
    exceeds the margin": sign-flip on ``d + margin`` (by cluster sums with clusters). Small p = a
    significant drop beyond the margin."""
    d = np.asarray(d, dtype=float)
    ok = np.isfinite(d)
    codes = (
        np.arange(int(ok.sum()))
        if clusters is None
        else cluster_codes(list(np.asarray(clusters, dtype=object)[ok]))
    )
    return cluster_sign_flip(d[ok], codes, resamples=resamples, seed=seed, alternative="less", shift=margin)
