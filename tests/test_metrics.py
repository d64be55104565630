"""Local evaluate modules against hand-computed values."""

from __future__ import annotations

import pytest

from harness.scoring.score import latency_summary, load_metric, score_records


def compute(name, preds, refs):
    return load_metric(name).compute(predictions=preds, references=refs)


def test_exact_match_normalises_case_punctuation_articles():
    out = compute(
        "exact_match", ["The 45 Days!", "45 days", "46 days"], ["45 days", "a 45   days.", "45 days"]
    )
    assert out["scores"] == [1.0, 1.0, 0.0]
    assert out["score"] == pytest.approx(2 / 3)


def test_token_f1_known_value():
    # pred tokens: return window is 45 days (5); ref: 45 days (2); overlap 2 -> P=2/5, R=1 -> F1=4/7
    out = compute("token_f1", ["The return window is 45 days."], ["45 days"])
    assert out["scores"][0] == pytest.approx(4 / 7)
    assert compute("token_f1", ["nothing"], ["45 days"])["score"] == 0.0


def test_rouge_l_known_value():
    # LCS("a b c d", "a c d e") = "a c d" (3): P=3/4, R=3/4 -> F=0.75
    out = compute("rouge_l", ["alpha beta gamma delta"], ["alpha gamma delta epsilon"])
    assert out["scores"][0] == pytest.approx(0.75)


def test_answer_recall_known_value():
    out = compute("answer_recall", ["Sure, it is 45 days from delivery", "no idea"], ["45 days", "45 days"])
    assert out["scores"] == [1.0, 0.0]


def test_latency_summary_percentiles_and_throughput():
    out = latency_summary([0.1, 0.2, 0.3, 0.4], [10, 10, 10, 10])
    assert out["latency_p50_ms"] == pytest.approx(250.0)
    assert out["latency_mean_ms"] == pytest.approx(250.0)
    assert out["tokens_per_s"] == pytest.approx(40 / 1.0)


def test_score_records_writes_per_example_scores_only():
    recs = [
        {
            "example_id": "b",
            "prediction": "45 days",
            "reference": "45 days",
            "tags": ["knowledge"],
            "latency_s": 0.1,
            "new_tokens": 3,
            "extra": {"metrics": {"recall@3": 1.0}},
        },
        {
            "example_id": "a",
            "prediction": "no",
            "reference": "yes",
            "tags": ["style"],
            "latency_s": 0.1,
            "new_tokens": 1,
            "extra": {"metrics": {"recall@3": 0.0}},
        },
        {
            "example_id": "c",
            "prediction": "x",
            "reference": "x",
            "tags": ["knowledge"],
            "latency_s": 0.1,
            "new_tokens": 1,
        },
    ]
    out = score_records(["exact_match"], recs)
    assert {k: v["exact_match"] for k, v in out["per_example"].items()} == {"a": 0.0, "b": 1.0, "c": 1.0}
    assert list(out["per_example"]) == ["a", "b", "c"]
    # One aggregation path: means, per-tag breakdowns and strategy-reported extras are the analysis's job.
    assert not {"metrics", "by_tag", "strategy_metrics"} & set(out)
    assert "recall@3" not in out["per_example"]["b"]
