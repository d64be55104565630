"""Clustered uncertainty: resampling clusters of examples, not examples (Miller 2024)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.decision.stats import mcnemar_p_value
from harness.gate.clustered import (
    cluster_sign_flip,
    detectable,
    noninferiority_p,
    paired_test,
    standard_error,
)


def _planted(n_clusters=10, size=8, sd_cluster=0.1, sd_noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    keys = np.repeat([f"doc{g}" for g in range(n_clusters)], size)
    a = rng.uniform(0.2, 0.8, n_clusters * size)
    b = a + np.repeat(rng.normal(0, sd_cluster, n_clusters), size) + rng.normal(0, sd_noise, a.size)
    return a, b, keys


def test_cluster_effect_widens_the_interval():
    a, b, keys = _planted()
    flat = paired_test(a, b)
    clustered = paired_test(a, b, clusters=keys)
    assert flat.test == "sign-flip" and clustered.test == "cluster sign-flip"
    assert clustered.n_clusters == 10 and clustered.n == 80
    assert clustered.diff == pytest.approx(flat.diff)
    assert clustered.high - clustered.low > 1.8 * (flat.high - flat.low)
    assert clustered.widening == pytest.approx((clustered.high - clustered.low) / (flat.high - flat.low))
    assert clustered.se > 2 * flat.se
    assert clustered.p_value > flat.p_value  # per-example independence overstates the evidence


def test_singleton_clusters_are_the_unclustered_family():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(size=30), rng.uniform(size=30)
    one = paired_test(a, b, clusters=np.array([f"k{i}" for i in range(30)], dtype=object))
    assert one == paired_test(a, b) and one.widening is None


def test_binary_unclustered_reuses_exact_mcnemar():
    # 10 examples only B gets right, 2 only A: exact two-sided binomial p = 2 * (1 + 12 + 66) / 4096.
    a = np.array([0] * 10 + [1] * 2 + [1] * 20 + [0] * 8, dtype=float)
    b = np.array([1] * 10 + [0] * 2 + [1] * 20 + [0] * 8, dtype=float)
    res = paired_test(a, b, binary=True)
    assert res.test == "mcnemar"
    assert res.p_value == pytest.approx(158 / 4096) == pytest.approx(mcnemar_p_value(10, 2))
    assert res.diff == pytest.approx(8 / 40)


def test_cluster_sign_flip_exact_enumeration():
    d = np.array([0.1, 0.2, 0.1, 0.3, 0.2, 0.1, 0.4, 0.2])
    codes = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    # 4 positive cluster sums: only all-plus and all-minus are as extreme, 2 of 16 sign patterns.
    assert cluster_sign_flip(d, codes) == pytest.approx(2 / 16)
    assert cluster_sign_flip(d, codes, alternative="greater") == pytest.approx(1 / 16)


def test_noninferiority_p_is_small_only_beyond_the_margin():
    rng = np.random.default_rng(3)
    small = -0.01 + rng.normal(0, 0.05, 200)  # a 1-point drop, margin 2 points
    big = -0.10 + rng.normal(0, 0.05, 200)
    assert noninferiority_p(small, 0.02) > 0.5
    assert noninferiority_p(big, 0.02) < 0.001


def test_power_normal_approximation():
    d = np.array([0.1, -0.1] * 50)
    se = standard_error(d)
    assert se == pytest.approx(np.std(d, ddof=1) / 10)
    # (z_0.975 + z_0.8) * se = 2.8016 * se
    assert detectable(se, 0.05) == pytest.approx(2.8016 * se, rel=1e-3)
    assert detectable(se, 0.05, one_sided=True) == pytest.approx((1.6449 + 0.8416) * se, rel=1e-3)
