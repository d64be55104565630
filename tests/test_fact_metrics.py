"""fact_recall / fact_accuracy as registry metrics, and how the scorer finds an example's key facts."""

from __future__ import annotations

import json

import yaml

from harness.config import load_config
from harness.rundir import PredictionLog
from harness.scoring.score import ScoringInputs, attach_facts, load_metric, score_records, score_run


def _rec(eid, pred, **fields):
    return {
        "strategy": "s",
        "example_id": eid,
        "question": "Q?",
        "prediction": pred,
        "reference": "ref",
        "tags": ["knowledge"],
        "latency_s": 0.1,
        "new_tokens": 2,
        **fields,
    }


FACTS = {
    "a": {"must_include": [["60 days", "sixty days"], ["$17.99"]], "must_not_include": ["30 days"]},
    "b": {"must_include": [], "must_not_include": ["version 3.3"]},
}


def test_fact_metrics_score_per_example_and_none_without_facts():
    preds = [
        "Returns: sixty days; the pump costs $17.99.",
        "Returns: 60 days.",
        "Returns: 30 days or 60 days.",
    ]
    facts = [FACTS["a"], FACTS["a"], FACTS["a"]]
    recall = load_metric("fact_recall").compute(predictions=preds + ["x"], facts=facts + [None])
    accuracy = load_metric("fact_accuracy").compute(predictions=preds + ["x"], facts=facts + [None])
    assert recall["scores"] == [1.0, 0.5, 0.5, None]
    assert accuracy["scores"] == [1.0, 0.0, 0.0, None]  # the hedge stating the stale value fails


def test_scorer_attaches_eval_set_facts_by_example_id():
    recs = [_rec("a", "60 days, $17.99"), _rec("b", "We run version 3.3"), _rec("c", "anything")]
    per = score_records(["fact_recall", "fact_accuracy"], recs, ScoringInputs(facts=FACTS))["per_example"]
    assert per["a"] == {"fact_recall": 1.0, "fact_accuracy": 1.0}
    assert per["b"] == {"fact_recall": None, "fact_accuracy": 0.0}  # only a forbidden fact
    assert per["c"] == {"fact_recall": None, "fact_accuracy": None}


def test_record_fields_win_over_the_eval_set():
    own = _rec("a", "x", must_include=[["x"]])
    assert attach_facts([own], FACTS)[0]["facts"] == {"must_include": [["x"]], "must_not_include": []}
    assert "facts" not in attach_facts([_rec("z", "x")], FACTS)[0]


def test_score_run_reads_facts_from_the_eval_set(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [
        {"id": "e1", "question": "Q1", "answer": "60 days", "must_include": ["60 days"]},
        {"id": "e2", "question": "Q2", "answer": "v3.4", "must_not_include": ["3.3"]},
        {"id": "e3", "question": "Q3", "answer": "free"},
    ]
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "eval_set": {"path": "data"},
                "strategies": [{"name": "prompt"}],
                "metrics": ["exact_match", "fact_recall", "fact_accuracy"],
                "primary_metric": "fact_accuracy",
            }
        ),
        encoding="utf-8",
    )
    cfg = load_config(cfg_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    PredictionLog(run_dir / "predictions.jsonl").append(
        [_rec("e1", "It is 60 days."), _rec("e2", "Still 3.3, sorry."), _rec("e3", "free")]
    )
    per = score_run(run_dir, cfg, {"strategies": {"s": {"name": "prompt"}}}, ["s"])["strategies"]["s"][
        "per_example"
    ]
    assert per["e1"]["fact_recall"] == 1.0 and per["e1"]["fact_accuracy"] == 1.0
    assert per["e2"]["fact_recall"] is None and per["e2"]["fact_accuracy"] == 0.0
    assert per["e3"]["fact_recall"] is None and per["e3"]["fact_accuracy"] is None
