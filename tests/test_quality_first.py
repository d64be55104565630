"""decision.mode: quality_first (the default): the best primary metric among the feasible strategies
wins; cost only decides among strategies tied with it within decision.margin; constraints are named."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from harness.config import DecisionConfig, load_config
from harness.decision import engine_from_arrays, parse_constraint
from harness.decision.sensitivity import sensitivity
from harness.errors import ConfigError

N = 40


def _scores(offset: float, noise: float, seed: int, base_seed: int = 0) -> np.ndarray:
    base = np.random.default_rng(base_seed).uniform(0.1, 0.4, N)
    return np.clip(base + offset + np.random.default_rng(seed).normal(0, noise, N), 0, 1)


def _engine(rag_offset: float, noise: float = 0.03, **cfg):
    """The demo's defect: qlora is cheaper and faster, rag more accurate by ``rag_offset``."""
    data = {
        "prompt": {
            "token_f1": _scores(-0.05, noise, 1),
            "latency_p95_ms": 900.0,
            "total_cost_per_1k_usd": 0.02,
        },
        "rag": {
            "token_f1": _scores(rag_offset, noise, 2),
            "latency_p95_ms": 1500.0,
            "total_cost_per_1k_usd": 0.06,
        },
        "qlora": {
            "token_f1": _scores(0.0, noise, 3),
            "latency_p95_ms": 1000.0,
            "total_cost_per_1k_usd": 0.028,
        },
    }
    return engine_from_arrays(data, "token_f1", DecisionConfig(**cfg))


def test_significantly_better_rag_beats_cheaper_qlora():
    eng = _engine(0.07, margin=0.02)
    d = eng.decide()
    assert d.mode == "quality_first" and d.recommended == "rag" and d.reason == "significant"
    assert d.headline.startswith("Recommendation: rag — best on Token F1 (")
    assert "significantly ahead of qlora (" in d.headline
    assert d.rule.startswith("quality first:") and d.confidence_label == "high"
    assert any(r.startswith("Paired tests on Token F1 read by the decision") for r in d.rationale)
    assert any("qlora is cheaper" in r and "significantly worse" in r for r in d.rationale)
    # The weighted mode can trade accuracy for cost when told to, on stated scales, and says so.
    w = _engine(
        0.07,
        mode="weighted",
        weights={"token_f1": 0.2, "total_cost_per_1k_usd": 0.8},
        scales={"total_cost_per_1k_usd": [0.1, 0.0]},
    ).decide()
    assert w.recommended != "rag" and any("significantly better than" in r for r in w.rationale)


def test_tie_within_margin_prefers_the_cheaper():
    eng = _engine(0.002, noise=0.01, margin=0.02)
    d = eng.decide()
    assert d.top == "rag" and d.recommended == "qlora" and d.reason == "tie"
    assert set(d.tie_set) == {"rag", "qlora"}
    assert "tied with rag on Token F1 within ±2 points" in d.headline and d.headline.endswith("cheaper")
    # With no margin the same numbers are not a tie: the best estimate wins, and the sensitivity
    # notes say which margin would make qlora the choice.
    eng0 = _engine(0.002, noise=0.01, margin=0.0)
    d0 = eng0.decide()
    assert d0.recommended == "rag" and d0.reason == "not_significant" and "qlora" not in d0.tie_set
    notes = sensitivity(eng0, d0)
    m = next(n for n in notes if n["kind"] == "margin")
    assert m["winner"] == "qlora" and 0 < m["threshold"] < 0.02
    # Printed at two decimals of a point, rounded up (the statement "X or more" stays true), and the lower
    # bound as the rationale prints it.
    shown = float(re.search(r"decision\.margin were (\d+\.?\d{0,2}) points? or more", m["text"]).group(1))
    assert 100 * m["threshold"] <= shown < 100 * m["threshold"] + 0.01
    assert f"is -{100 * m['threshold']:.1f} points)." in m["text"]
    assert eng0.decide(margin=m["threshold"] * 1.01).recommended == "qlora"


def test_identical_strategies_tie_and_the_first_cheapest_wins():
    x = _scores(0.0, 0.03, 7)
    data = {
        "a": {"token_f1": x, "latency_p95_ms": 100.0, "total_cost_per_1k_usd": 0.0041},
        "b": {"token_f1": x.copy(), "latency_p95_ms": 90.0, "total_cost_per_1k_usd": 0.0039},
    }
    d = engine_from_arrays(data, "token_f1").decide()
    # Costs equal within 2 significant digits: the faster one.
    assert d.reason == "tie" and d.recommended == "b" and d.confidence == pytest.approx(0.5)


def test_a_tie_broken_by_latency_does_not_call_the_pick_cheaper():
    """b costs more as printed ($0.0104 vs $0.0101) but the same at the tie-break's two significant digits,
    and answers faster: the text must name latency, not claim b is cheaper than its own numbers say."""
    x = _scores(0.0, 0.03, 7)
    data = {
        "a": {"token_f1": x, "latency_p95_ms": 100.0, "total_cost_per_1k_usd": 0.0101},
        "b": {"token_f1": x.copy(), "latency_p95_ms": 90.0, "total_cost_per_1k_usd": 0.0104},
    }
    d = engine_from_arrays(data, "token_f1").decide()
    assert d.reason == "tie" and d.recommended == "b"
    assert d.headline.endswith("as cheap and faster") and "cheaper" not in d.headline
    assert "b and a cost the same to two significant digits; b is the faster ($0.0104 per 1,000" in d.detail
    assert "p95 latency 90 ms" in d.detail and "a: $0.0101 per 1,000 queries" in d.detail
    assert "Cheapest" not in d.detail
    # Cheaper at two significant digits: the cost decides and the text says so.
    data["b"]["total_cost_per_1k_usd"] = 0.0090
    d2 = engine_from_arrays(data, "token_f1").decide()
    assert (
        d2.recommended == "b" and d2.headline.endswith("cheaper") and "Cheapest of the tied: b" in d2.detail
    )
    # Same cost and latency: the config order decides, and the text says that.
    data["b"].update(total_cost_per_1k_usd=0.0101, latency_p95_ms=100.0)
    d3 = engine_from_arrays(data, "token_f1").decide()
    assert d3.recommended == "a" and d3.headline.endswith("as cheap and as fast")


def test_constraint_excluding_the_leader_is_named():
    eng = _engine(0.07, margin=0.02)
    d = eng.decide(constraints=[parse_constraint("latency_p95_ms <= 1200")])
    assert d.recommended == "qlora" and [e["strategy"] for e in d.excluded] == ["rag"]
    assert (
        "rag scores higher on Token F1" in d.headline
        and "excluded by the constraint latency_p95_ms <= 1200 (measured 1,500 ms)" in d.headline
    )
    relax = [n for n in sensitivity(eng, d) if n["kind"] == "relax"]
    assert relax and relax[0]["winner"] == "rag"
    tight = [n for n in sensitivity(eng, eng.decide()) if n["kind"] == "constraint"]
    assert any(n["measure"] == "latency_p95_ms" and n["winner"] == "qlora" for n in tight)
    assert not any(n["kind"] == "weight" for n in sensitivity(eng, eng.decide()))


def test_binary_primary_reads_mcnemar():
    rng = np.random.default_rng(4)
    good = (rng.uniform(size=60) < 0.7).astype(float)
    bad = good.copy()
    bad[np.flatnonzero(good)[:15]] = 0.0  # 15 discordant pairs, all in favour of "good"
    data = {
        "cheap": {"exact_match": bad, "total_cost_per_1k_usd": 0.01, "latency_p95_ms": 10.0},
        "good": {"exact_match": good, "total_cost_per_1k_usd": 0.05, "latency_p95_ms": 50.0},
    }
    d = engine_from_arrays(data, "exact_match", binary={"exact_match"}).decide()
    assert d.recommended == "good" and d.lead[0]["test"] == "mcnemar"
    assert d.lead[0]["p_value"] == pytest.approx(2 * 0.5**15)
    assert any("exact McNemar" in r for r in d.rationale)


def test_weighted_mode_needs_scales_for_latency(tmp_path):
    (tmp_path / "d").mkdir()
    path = tmp_path / "c.yaml"
    decision = {"mode": "weighted", "weights": {"token_f1": 0.7, "latency_p95_ms": 0.3}}
    path.write_text(
        yaml.safe_dump({"eval_set": {"path": "d"}, "strategies": [{"name": "prompt"}], "decision": decision})
    )
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "decision.scales.latency_p95_ms" in msg and "\n" not in msg
    decision["scales"] = {"latency_p95_ms": [2000, 200]}
    path.write_text(
        yaml.safe_dump({"eval_set": {"path": "d"}, "strategies": [{"name": "prompt"}], "decision": decision})
    )
    assert load_config(path).decision.scales == {"latency_p95_ms": [2000.0, 200.0]}
    # quality_first ignores weights, so it needs no scales; bad scales are still one-line errors.
    DecisionConfig(weights={"latency_p95_ms": 1.0})
    with pytest.raises(ValueError, match="two different numbers"):
        DecisionConfig(scales={"latency_p95_ms": [200, 200]})
