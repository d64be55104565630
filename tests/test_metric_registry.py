"""The metric registry: one MetricSpec per metric, read by config validation, the scorer and the measures."""

from __future__ import annotations

import json
import textwrap

import pytest
import yaml

from harness.config import RunConfig, load_config
from harness.decision.measures import format_value, measure
from harness.errors import ConfigError
from harness.rundir import PredictionLog
from harness.scoring import registry
from harness.scoring.registry import (
    MetricSpec,
    available_metrics,
    default_metrics,
    read_spec,
    register_metric,
)
from harness.scoring.retrieval_metrics import retrieval_metrics
from harness.scoring.score import score_records, score_run

TOY = '''
"""Toy metric: words in the answer (a plugin written by a test, nothing in harness/ knows it)."""

from harness.scoring import base
from harness.scoring.registry import MetricSpec

SPEC = MetricSpec(
    name="toy_words",
    label="Answer words",
    higher_is_better=False,
    unit="words",
    needs=frozenset({"questions", "tags"}),
    default=False,
    description=__doc__,
)
DIAGNOSTICS = ("question_words",)


def score(predictions, questions, tags):
    return {
        "scores": [float(len(p.split())) for p in predictions],
        "question_words": [len(q.split()) for q in questions],
    }


class ToyWords(base.MetricModule):
    pass
'''


@pytest.fixture()
def toy_metric(tmp_path):
    folder = tmp_path / "plugins" / "toy_words"
    folder.mkdir(parents=True)
    (folder / "toy_words.py").write_text(textwrap.dedent(TOY), encoding="utf-8")
    spec = register_metric(read_spec(folder / "toy_words.py"))
    yield spec
    registry.unregister_metric("toy_words")


def _record(eid, prediction, reference="45 days", **fields):
    return {
        "strategy": "s",
        "example_id": eid,
        "question": "How many days?",
        "reference": reference,
        "tags": ["knowledge"],
        "prediction": prediction,
        "latency_s": 0.1,
        "batch_seconds": 0.2,
        "new_tokens": 2,
        **fields,
    }


def test_shipped_specs_and_default_list():
    specs = available_metrics()
    assert default_metrics() == [
        "exact_match",
        "token_f1",
        "rouge_l",
        "answer_recall",
        "semantic_similarity",
        "coherence",
        "style_adherence",
        "faithfulness",
        "fact_recall",
        "fact_accuracy",
        "recall_at_k",
        "mrr",
    ]
    assert specs["judge_score"].default is False
    assert specs["exact_match"].binary and specs["style_adherence"].tag_option == "style_tag"
    assert specs["faithfulness"].needs == {"contexts", "scoring"}
    assert specs["fact_accuracy"].binary and specs["fact_recall"].needs == {"facts"}
    assert specs["recall_at_k"].label == "recall@k"
    for name, spec in specs.items():
        assert (spec.path / f"{name}.py").is_file()
    assert RunConfig.model_validate(
        {"eval_set": {"path": "x"}, "strategies": [{"name": "prompt"}]}
    ).metrics == (default_metrics())


def test_spec_rejects_unknown_inputs():
    with pytest.raises(ValueError, match="unknown needs"):
        MetricSpec(name="bad", label="Bad", needs=frozenset({"answers"}))


def _config_file(tmp_path, **extra):
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "c.yaml"
    data = {"eval_set": {"path": "data"}, "strategies": [{"name": "prompt"}], **extra}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_config_names_the_unknown_metric_entry(tmp_path):
    path = _config_file(tmp_path, metrics=["exact_match", "blue"])
    with pytest.raises(ConfigError, match=r"metrics\[1\]: unknown metric 'blue' \(known: exact_match, "):
        load_config(path)
    path = _config_file(tmp_path, metrics=["exact_match"], primary_metric="f1")
    with pytest.raises(ConfigError, match=r"primary_metric: unknown metric 'f1'"):
        load_config(path)


def test_faithfulness_and_retrieval_metrics_are_configurable(tmp_path):
    cfg = load_config(
        _config_file(
            tmp_path, metrics=["token_f1", "faithfulness", "recall_at_k", "mrr"], primary_metric="mrr"
        )
    )
    assert cfg.metrics == ["token_f1", "faithfulness", "recall_at_k", "mrr"]


def test_judge_enabled_adds_the_judge_metric(tmp_path):
    cfg = load_config(_config_file(tmp_path, metrics=["token_f1"], scoring={"judge": {"enabled": True}}))
    assert cfg.metrics == ["token_f1", "judge_score"]


def test_faithfulness_and_retrieval_apply_only_where_records_have_their_inputs():
    ranked = ["a", "b", "a", "c"]
    recs = [
        _record("closed", "45 days"),
        _record(
            "rag",
            "It is 45 days.",
            contexts=["Returns: 45 days."],
            retrieved_ids=ranked,
            context_ids=["c", "b"],
        ),
        _record("nogold", "45 days", contexts=[], retrieved_ids=ranked, context_ids=[]),
    ]
    per = score_records(["faithfulness", "recall_at_k", "mrr"], recs)["per_example"]
    assert per["closed"] == {"faithfulness": None, "recall_at_k": None, "mrr": None}
    want = retrieval_metrics(ranked, ["c", "b"], len(ranked))
    assert per["rag"]["recall_at_k"] == want["recall@4"] == 1.0 and per["rag"]["mrr"] == want["mrr"] == 0.5
    assert per["rag"]["faithfulness"] == 1.0
    # no gold documents: retrieval is not scored; empty contexts: nothing grounded
    assert per["nogold"]["recall_at_k"] is None and per["nogold"]["mrr"] is None
    assert per["nogold"]["faithfulness"] == 0.0


def test_plugin_metric_is_validated_scored_and_labelled(toy_metric, tmp_path):
    cfg = load_config(
        _config_file(tmp_path, metrics=["exact_match", "toy_words"], primary_metric="toy_words")
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    PredictionLog(run_dir / "predictions.jsonl").append(
        [_record("e1", "45 days"), _record("e2", "about forty five days")]
    )
    scores = score_run(run_dir, cfg, {"strategies": {"s": {"name": "prompt"}}}, ["s"])
    per = json.loads((run_dir / "scores.json").read_text())["strategies"]["s"]["per_example"]
    assert per == scores["strategies"]["s"]["per_example"]
    assert per["e1"] == {"exact_match": 1.0, "toy_words": 2.0, "question_words": 3}
    assert per["e2"]["toy_words"] == 4.0
    m = measure("toy_words")
    assert (m.label, m.unit, m.higher_is_better, m.group) == ("Answer words", "words", False, "quality")
    assert format_value("toy_words", 2.0) == "2.00 words"


def test_entry_point_metrics_are_discovered(toy_metric, monkeypatch):
    import importlib.metadata

    spec = MetricSpec(**{**toy_metric.__dict__, "name": "toy_words_ep"})
    (spec.path / "toy_words_ep.py").write_text(
        (spec.path / "toy_words.py").read_text().replace('name="toy_words"', 'name="toy_words_ep"')
    )

    class EntryPoint:
        name, value = "toy", "toy_plugin:SPEC"

        def load(self):
            return spec

    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda group: [EntryPoint()] if group == registry.ENTRY_POINT_GROUP else [],
    )
    try:
        registry._discover_entry_points()
        assert available_metrics()["toy_words_ep"] == spec
    finally:
        registry.unregister_metric("toy_words_ep")


@pytest.mark.slow
def test_plugin_metric_in_a_full_run(toy_metric, write_config, tmp_path):
    from harness.runner import run

    cfg_path = write_config(
        metrics=["token_f1", "toy_words"], generation={"max_new_tokens": 4, "batch_size": 8}
    )
    result = run(load_config(cfg_path), config_path=cfg_path, run_dir=tmp_path / "run", progress=False)
    per = result.scores["strategies"]["zero_shot"]["per_example"]
    assert len(per) == 6 and all(isinstance(row["toy_words"], float) for row in per.values())
    assert "Answer words" in (result.run_dir / "report.html").read_text(encoding="utf-8")
