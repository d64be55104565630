"""Decision engine: constraint parsing and filtering, weighted mode (absolute scales), significance,
sensitivity. The quality_first mode (the default) has its own tests in tests/test_quality_first.py; the
weighted-mode tests here were converted from the old best/value utilities to explicit ``decision.scales``
(latency [500, 100] gives the same utilities as before for these numbers)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from harness.config import DecisionConfig, load_config
from harness.decision import Constraint, Engine, decide, parse_constraint, utility
from harness.decision.analysis import analyze
from harness.decision.measures import format_value
from harness.decision.sensitivity import sensitivity
from harness.decision.weighted import scale_for
from harness.errors import ConfigError
from tests.support.synthetic_run import write_synthetic_run

B = 400


def _engine(point: dict[str, dict[str, float]], spread: dict[str, float] | None = None, **cfg) -> Engine:
    """Bootstrap samples = point estimate + seeded noise of the given per-strategy spread."""
    rng = np.random.default_rng(0)
    boot = {}
    for s, ms in point.items():
        noise = rng.normal(0, (spread or {}).get(s, 0.0), B)
        boot[s] = {m: np.full(B, v) + (noise if m == "token_f1" else 0.0) for m, v in ms.items()}
    cfg.setdefault("mode", "weighted")
    return Engine(point, boot, "token_f1", DecisionConfig(**cfg))


LATENCY_SCALE = {"latency_p95_ms": [500.0, 100.0]}


POINT = {
    "prompt": {
        "token_f1": 0.30,
        "latency_p95_ms": 100.0,
        "peak_memory_gb": 2.0,
        "total_cost_per_1k_usd": 0.004,
    },
    "rag": {"token_f1": 0.55, "latency_p95_ms": 400.0, "peak_memory_gb": 2.5, "total_cost_per_1k_usd": 0.010},
    "qlora": {
        "token_f1": 0.50,
        "latency_p95_ms": 120.0,
        "peak_memory_gb": 20.0,
        "total_cost_per_1k_usd": 0.006,
    },
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("latency_p95_ms <= 800", Constraint("latency_p95_ms", "<=", 800.0)),
        ("peak_memory_gb<16", Constraint("peak_memory_gb", "<", 16.0)),
        ("  token_f1 >= .3 ", Constraint("token_f1", ">=", 0.3)),
        ("recall@5 > 1e-1", Constraint("recall@5", ">", 0.1)),
    ],
)
def test_parse_constraint(text, expected):
    assert parse_constraint(text) == expected


def test_bad_constraints_and_weights_are_one_line_config_errors(tmp_path):
    for decision, needle in [
        ({"constraints": ["latency_p95 <= 800"]}, "decision.constraints: [0] unknown measure 'latency_p95'"),
        (
            {"constraints": ["latency_p95_ms == 800"]},
            "decision.constraints: [0] 'latency_p95_ms == 800': write",
        ),
        ({"weights": {"token_f1": -1}}, "decision.weights: weight of 'token_f1' must be >= 0"),
        ({"weights": {"tokn_f1": 1}}, "unknown measure 'tokn_f1'"),
        ({"bootstrap_resamples": 10}, "decision.bootstrap_resamples: must be >= 100"),
    ]:
        path = tmp_path / "c.yaml"
        path.write_text(
            yaml.safe_dump(
                {"eval_set": {"path": "d"}, "strategies": [{"name": "prompt"}], "decision": decision}
            )
        )
        with pytest.raises(ConfigError) as exc:
            load_config(path)
        assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_utilities_on_absolute_scales():
    # [0, 1] scores count as measured; everything else maps linearly from [worst, best], clipped.
    assert utility("token_f1", 0.4, scale_for({}, "token_f1")) == pytest.approx(0.4)
    lat = utility("latency_p95_ms", np.array([2000.0, 200.0, 1100.0, 3000.0, 100.0]), (2000.0, 200.0))
    assert lat.tolist() == [0.0, 1.0, 0.5, 0.0, 1.0]
    assert utility("tokens_per_s", 50.0, (0.0, 100.0)) == pytest.approx(0.5)
    # No ratio to the best candidate: a utility does not depend on the other strategies' values.
    assert scale_for({"total_cost_per_1k_usd": [1.0, 0.0]}, "total_cost_per_1k_usd") == (1.0, 0.0)
    with pytest.raises(ConfigError, match=r"decision\.scales\.latency_p95_ms"):
        scale_for({}, "latency_p95_ms")


def test_constraints_filter_and_weighted_ranking():
    eng = _engine(
        POINT,
        constraints=["peak_memory_gb <= 16"],
        weights={"token_f1": 0.6, "latency_p95_ms": 0.4},
        scales=LATENCY_SCALE,
    )
    d = eng.decide()
    assert d.excluded == [{"strategy": "qlora", "violations": ["peak_memory_gb <= 16 (measured 20.0 GB)"]}]
    # Hand-computed on the scale [500, 100] ms: prompt 0.6*0.30 + 0.4*1 = 0.58; rag 0.6*0.55 + 0.4*0.25 = 0.43.
    scores = {r["strategy"]: r["score"] for r in d.ranking}
    assert scores == {"prompt": pytest.approx(0.58), "rag": pytest.approx(0.43)}
    assert [r["strategy"] for r in d.ranking] == ["prompt", "rag"] and d.top == "prompt"
    assert d.weights == {"token_f1": pytest.approx(0.6), "latency_p95_ms": pytest.approx(0.4)}
    assert d.mode == "weighted" and d.rule.startswith("weighted:")
    # Without the latency weight rag is first.
    d2 = eng.decide(weights={"token_f1": 1.0})
    assert d2.top == "rag" and d2.recommended == "rag"


def test_significant_lead_is_reported_as_such():
    d = _engine(
        POINT, spread={"prompt": 0.01, "rag": 0.01, "qlora": 0.01}, weights={"token_f1": 1.0}
    ).decide()
    assert d.reason == "significant" and d.significant and d.recommended == "rag"
    assert d.confidence == pytest.approx(1.0) and d.confidence_label == "high"
    assert d.headline == "Recommendation: rag, significantly ahead of qlora"
    assert all(c["significant"] and c["low"] > 0 for c in d.lead)
    assert "Token F1 55.0% vs 50.0%" in d.detail


def test_no_significant_difference_prefers_the_cheaper():
    point = {s: dict(v) for s, v in POINT.items()}
    point["qlora"]["token_f1"] = 0.545  # within noise of rag, and cheaper
    d = _engine(
        point, spread={"prompt": 0.05, "rag": 0.05, "qlora": 0.05}, weights={"token_f1": 1.0}
    ).decide()
    assert d.top == "rag" and not d.significant and d.reason == "not_significant"
    assert d.recommended == "qlora" and d.confidence_label == "low"
    assert d.headline == "No significant difference; prefer the cheaper: qlora"
    assert "qlora is the cheapest of the tied strategies ($0.0060" in d.detail
    assert set(d.tie_set) >= {"rag", "qlora"}


def test_sub_cent_costs_that_decide_a_tie_are_printed_apart():
    """A fast model on a GPU costs fractions of a cent per 1,000 queries; the tie-break tells costs apart at
    two significant digits, so the text must too (four decimals printed both as $0.0001)."""
    point = {s: dict(v) for s, v in POINT.items()}
    point["rag"]["total_cost_per_1k_usd"] = 0.000091
    point["qlora"].update(token_f1=0.545, total_cost_per_1k_usd=0.000087, peak_memory_gb=2.0)
    d = _engine(
        point, spread={"prompt": 0.05, "rag": 0.05, "qlora": 0.05}, weights={"token_f1": 1.0}
    ).decide()
    assert d.recommended == "qlora" and d.reason == "not_significant"
    assert "$0.000087" in d.detail and "$0.0001 " not in d.detail
    assert format_value("total_cost_per_1k_usd", 0.000091) == "$0.000091"
    assert format_value("total_cost_per_1k_usd", 0.006) == "$0.0060"  # two significant digits already
    assert format_value("total_cost_per_1k_usd", 0.0) == "$0.0000"


def test_weighted_tie_broken_by_latency_says_faster_not_cheaper():
    point = {s: dict(v) for s, v in POINT.items()}
    point["rag"]["total_cost_per_1k_usd"] = 0.0101
    point["qlora"].update(
        token_f1=0.545, total_cost_per_1k_usd=0.0104, peak_memory_gb=2.0
    )  # 0.010 at 2 digits
    d = _engine(
        point, spread={"prompt": 0.05, "rag": 0.05, "qlora": 0.05}, weights={"token_f1": 1.0}
    ).decide()
    assert d.recommended == "qlora" and d.reason == "not_significant"
    assert d.headline == "No significant difference; prefer the faster at the same cost: qlora"
    assert "qlora and rag cost the same to two significant digits, and qlora is the faster" in d.detail
    assert "p95 latency 120 ms" in d.detail and "cheapest" not in d.detail


def test_no_feasible_strategy():
    d = _engine(POINT, constraints=["latency_p95_ms <= 50"]).decide()
    assert d.recommended is None and d.reason == "no_feasible" and len(d.excluded) == 3
    assert d.headline == "No strategy meets the constraints"


def test_unmeasured_values_break_constraints_and_drop_weights():
    point = {s: dict(v) for s, v in POINT.items()}
    point["rag"]["faithfulness"] = 0.8
    for s in ("prompt", "qlora"):
        point[s]["faithfulness"] = float("nan")
    eng = _engine(point, weights={"token_f1": 1.0, "faithfulness": 1.0})
    d = eng.decide()
    assert d.weights == {"token_f1": 1.0}
    assert d.weights_dropped == {"faithfulness": "not measured for prompt, qlora (only for rag)"}
    assert any(
        "faithfulness carries weight" in r.lower() or "Faithfulness carries weight" in r for r in d.rationale
    )
    d2 = eng.decide(constraints=[Constraint("faithfulness", ">=", 0.5)])
    assert [e["strategy"] for e in d2.excluded] == ["prompt", "qlora"] and d2.recommended == "rag"


def test_sensitivity_names_the_flipping_constraint_and_weight():
    eng = _engine(
        POINT,
        spread={s: 0.005 for s in POINT},
        weights={"token_f1": 0.7, "latency_p95_ms": 0.3},
        scales=LATENCY_SCALE,
    )
    d = eng.decide()
    # On [500, 100] ms: rag 0.7*.55+0.3*.25 = .46; qlora 0.7*.5+0.3*.95 = .635; prompt .21+.3 = .51
    assert d.recommended == "qlora"
    notes = sensitivity(eng, d)
    lat = next(n for n in notes if n["kind"] == "constraint" and n["measure"] == "latency_p95_ms")
    assert lat["winner"] == "prompt" and lat["threshold"] == pytest.approx(120.0)
    assert lat["text"] == (
        "prompt would be recommended if p95 request latency had to be under qlora's 120 ms "
        f"(prompt measures {format_value('latency_p95_ms', eng.value('prompt', 'latency_p95_ms'))})."
    )
    mem = next(n for n in notes if n["kind"] == "constraint" and n["measure"] == "peak_memory_gb")
    assert mem["winner"] == "prompt"
    weight = next(n for n in notes if n["kind"] == "weight" and n["measure"] == "latency_p95_ms")
    # Flipping weight really flips the decision when applied.
    flipped = eng.decide(weights={"token_f1": 0.7, "latency_p95_ms": weight["threshold"]})
    assert flipped.recommended == weight["winner"] != "qlora"
    # A constraint that excludes qlora, relaxed to its value, brings it back.
    d2 = eng.decide(constraints=[Constraint("peak_memory_gb", "<=", 16.0)])
    relax = [n for n in sensitivity(eng, d2) if n["kind"] == "relax"]
    assert relax and relax[0]["winner"] == "qlora" and "relaxed to <= 20.0 GB" in relax[0]["text"]


def test_decision_on_a_run_folder_with_planted_difference(tmp_path):
    run = write_synthetic_run(tmp_path / "run", decision={})  # quality_first, the default
    an = analyze(run)
    d = decide(an)
    assert d.mode == "quality_first" and d.recommended == "rag" and d.reason == "significant"
    # The decision reads the report's own family table: same differences, same Holm p-values.
    table = {frozenset((c["a"], c["b"])): c for c in an.comparisons["token_f1"]}
    for c in d.lead:
        row = table[frozenset(("rag", c["vs"]))]
        assert c["p_adjusted"] == row["p_adjusted"] and abs(c["diff"]) == pytest.approx(abs(row["diff"]))
    assert an.comparisons["exact_match"][0]["test"] == "mcnemar"
    assert an.comparisons["token_f1"][0]["test"] == "sign-flip"
    # rag's planted +0.25 on 32 of 40 examples (~+0.2 overall) shows up in the primary metric's paired tests.
    cmp = {(c["a"], c["b"]): c for c in an.comparisons["token_f1"]}
    assert cmp[("prompt", "rag")]["significant"] and cmp[("prompt", "rag")]["diff"] == pytest.approx(
        -0.2, abs=0.05
    )
    assert not cmp[("prompt", "qlora")]["significant"] or cmp[("prompt", "qlora")]["p_adjusted"] < 0.05
    # Deterministic: the same folder gives the same numbers.
    again = decide(analyze(run))
    assert again.to_dict() == d.to_dict()


def test_constraint_in_config_excludes_strategy_in_run_folder(tmp_path):
    run = write_synthetic_run(tmp_path / "run", decision={"constraints": ["latency_p95_ms <= 300"]})
    d = decide(analyze(run))
    assert [e["strategy"] for e in d.excluded] == ["rag"]
    assert d.recommended in ("qlora", "prompt")
    # rag is significantly better on the primary metric: the headline says which constraint removed it.
    assert [f["strategy"] for f in d.forced] == ["rag"]
    assert "rag scores higher on Token F1" in d.headline and "latency_p95_ms <= 300" in d.headline
    assert any(n["kind"] == "relax" and n["winner"] == "rag" for n in d.sensitivity)


def test_sensitivity_ignores_jitter_below_display_precision():
    point = {
        "a": {
            "token_f1": 0.50,
            "latency_p95_ms": 100.0,
            "peak_memory_gb": 0.6201,
            "total_cost_per_1k_usd": 0.004,
        },
        "b": {
            "token_f1": 0.30,
            "latency_p95_ms": 90.0,
            "peak_memory_gb": 0.6199,
            "total_cost_per_1k_usd": 0.004,
        },
    }
    eng = _engine(point, weights={"token_f1": 1.0})
    notes = sensitivity(eng, eng.decide())
    assert not any(n.get("measure") == "peak_memory_gb" for n in notes)
    lat = next(n for n in notes if n.get("measure") == "latency_p95_ms")
    assert lat["winner"] == "b" and "under a's 100 ms (b measures 90 ms)" in lat["text"]


def test_identical_strategies_are_a_tie_not_a_confident_win():
    same = {"token_f1": 0.4, "latency_p95_ms": 100.0, "total_cost_per_1k_usd": 0.004}
    d = _engine({"a": dict(same), "b": dict(same)}, weights={"token_f1": 1.0}).decide()
    assert d.reason == "not_significant" and d.confidence == pytest.approx(0.5)
    assert d.lead[0]["p_value"] == 1.0 and d.recommended == "a"
