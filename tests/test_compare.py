"""``adaptbench compare``: paired differences, verdict words, flips, deltas, mismatch refusal, outputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.gate.compare import compare_runs
from harness.gate.runs import load
from tests.support.gate_runs import set_clusters, set_manifest, set_scores
from tests.support.synthetic_run import XSS_ANSWER, write_synthetic_run

N = 80


@pytest.fixture()
def pair(tmp_path):
    a = write_synthetic_run(tmp_path / "a", n=N, strategies=("rag",), seed=0)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    return a, b


def _shift(run, delta, sd, seed=0, metric="token_f1"):
    noise = np.random.default_rng(seed).normal(0, sd, N)
    set_scores(run, "rag", metric, lambda i, e, v: v + delta + noise[i])


def _row(res, metric="token_f1"):
    return next(r for r in res["strategies"]["rag"]["metrics"] if r["metric"] == metric)


@pytest.mark.parametrize(
    ("delta", "sd", "word"),
    [(0.15, 0.02, "better"), (-0.15, 0.02, "worse"), (0.0, 0.002, "equivalent"), (0.0, 0.2, "inconclusive")],
)
def test_each_verdict_word(pair, delta, sd, word):
    a, b = pair
    _shift(b, delta, sd)
    row = _row(compare_runs(load(a), load(b), margin=0.02))
    assert row["verdict"] == word, row
    if word == "equivalent":
        assert -0.02 <= row["low"] <= row["high"] <= 0.02 and "ruled out" in row["verdict_text"]
    if word == "inconclusive":
        assert row["mde"] > 0.05 and "minimum detectable effect" in row["verdict_text"]
        assert row["power"].startswith(f"n = {N}: differences ≥ ")
    if word in ("better", "worse"):
        assert row["significant"] and row["p_adjusted"] < 0.05
        assert (row["diff"] > 0) == (word == "better")


def test_holm_across_metrics_and_binary_mcnemar(pair):
    a, b = pair
    # exact_match: 10 examples flip wrong -> right, 2 right -> wrong (McNemar p = 158/4096).
    set_scores(a, "rag", "exact_match", lambda i, e, v: 1.0 if 10 <= i < 12 else 0.0)
    set_scores(b, "rag", "exact_match", lambda i, e, v: 1.0 if i < 10 else 0.0)
    res = compare_runs(load(a), load(b))
    rows = res["strategies"]["rag"]["metrics"]
    em = _row(res, "exact_match")
    assert em["test"] == "mcnemar" and em["p_value"] == pytest.approx(158 / 4096)
    ps = sorted(r["p_value"] for r in rows)
    assert em["p_adjusted"] == pytest.approx(min(1.0, 158 / 4096 * (len(ps) - ps.index(em["p_value"]))))
    assert not em["significant"]  # 0.039 alone would be significant; Holm across the metrics is not


def test_flips_list_both_answers_and_escape(pair, tmp_path):
    a, b = pair
    set_scores(a, "rag", "token_f1", lambda i, e, v: 0.9)
    set_scores(b, "rag", "token_f1", lambda i, e, v: 0.1 if i == 0 else 0.9)
    res = compare_runs(load(a), load(b))
    flips = res["strategies"]["rag"]["flips"]
    assert flips["kind"] == "continuous" and flips["counts"] == {"largest_drops": 1, "largest_gains": 0}
    item = flips["groups"]["largest_drops"][0]
    assert item["id"] == "ex-000" and item["a_answer"] == XSS_ANSWER == item["b_answer"]
    out = tmp_path / "cmp"
    r = CliRunner().invoke(main, ["compare", str(a), str(b), "--out", str(out)])
    assert r.exit_code == 0, r.output
    html = (out / "compare.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    md = (out / "compare.md").read_text()
    assert "<script>" not in md and "largest drops" in md
    data = json.loads((out / "compare.json").read_text())
    assert data["strategies"]["rag"]["flips"]["counts"]["largest_drops"] == 1
    deltas = {d["measure"]: d for d in data["strategies"]["rag"]["deltas"]}
    assert deltas["latency_p95_ms"]["delta"] == pytest.approx(0.0) and "total_cost_per_1k_usd" in deltas


def test_binary_primary_flips_right_to_wrong(pair):
    a, b = pair
    for run in (a, b):
        scores = json.loads((run / "scores.json").read_text())
        scores["primary_metric"] = "exact_match"
        (run / "scores.json").write_text(json.dumps(scores))
    set_scores(a, "rag", "exact_match", lambda i, e, v: 1.0 if i < 5 else 0.0)
    set_scores(b, "rag", "exact_match", lambda i, e, v: 1.0 if 3 <= i < 9 else 0.0)
    flips = compare_runs(load(a), load(b))["strategies"]["rag"]["flips"]
    assert flips["counts"] == {"right_to_wrong": 3, "wrong_to_right": 4}
    assert [x["id"] for x in flips["groups"]["right_to_wrong"]] == ["ex-000", "ex-001", "ex-002"]


def test_latency_deltas_from_the_probe(pair):
    a, b = pair
    lines = [json.loads(x) for x in (b / "latency.jsonl").read_text().splitlines()]
    for rec in lines:
        rec["e2e_s"] *= 2
    (b / "latency.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    d = {x["measure"]: x for x in compare_runs(load(a), load(b))["strategies"]["rag"]["deltas"]}
    assert d["latency_p95_ms"]["relative"] == pytest.approx(1.0)
    assert d["ttft_p50_ms"]["relative"] == pytest.approx(0.0)


def test_clustered_compare_reports_clusters_and_widening(pair):
    a, b = pair
    shift = np.repeat(np.random.default_rng(5).normal(0, 0.1, 10), 8)
    set_scores(b, "rag", "token_f1", lambda i, e, v: v + shift[i])
    for run in (a, b):
        set_clusters(run, lambda i, e: f"doc{i // 8}")
    clustered = _row(compare_runs(load(a), load(b)))
    flat = _row(compare_runs(load(a), load(b), cluster_by="none"))
    assert clustered["n_clusters"] == 10 and flat["n_clusters"] == N
    assert clustered["widening"] > 1.5 and flat["widening"] is None
    assert "in 10 clusters" in clustered["power"]


def test_mismatch_refused_unless_allowed(pair, tmp_path):
    a, b = pair
    set_manifest(a, content_hash="a" * 64)
    set_manifest(b, content_hash="b" * 64)
    r = CliRunner().invoke(main, ["compare", str(a), str(b), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert len(r.output.strip().splitlines()) == 1 and "eval-set content hash differs" in r.output
    r = CliRunner().invoke(
        main, ["compare", str(a), str(b), "--allow-mismatch", "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert data["mismatches"] and "content hash" in data["mismatches"][0]
    assert "mismatch" in (tmp_path / "o" / "compare.md").read_text()


def test_example_ids_and_metric_definitions_mismatch(pair, tmp_path):
    a, b = pair
    scores = json.loads((b / "scores.json").read_text())
    del scores["strategies"]["rag"]["per_example"]["ex-003"]
    (b / "scores.json").write_text(json.dumps(scores))
    r = CliRunner().invoke(main, ["compare", str(a), str(b)])
    assert r.exit_code == 2 and "example ids differ for rag: 1 only in a" in r.output
    # A baseline whose metric definition differs (token_f1 direction flipped).
    base = tmp_path / "base.json"
    assert CliRunner().invoke(main, ["baseline", "export", str(a), "-o", str(base)]).exit_code == 0
    data = json.loads(base.read_text())
    data["metrics"]["token_f1"]["higher_is_better"] = False
    base.write_text(json.dumps(data))
    r = CliRunner().invoke(main, ["compare", str(base), str(a)])
    assert r.exit_code == 2 and "metric definition of token_f1 differs (higher_is_better)" in r.output


def test_baseline_file_compares_like_its_run(pair, tmp_path):
    a, b = pair
    _shift(b, -0.05, 0.05)
    base = tmp_path / "base.json"
    assert CliRunner().invoke(main, ["baseline", "export", str(a), "-o", str(base)]).exit_code == 0
    data = json.loads(base.read_text())
    assert data["schema_version"] == 1 and set(data["strategies"]["rag"]) == {"scores", "answers", "measures"}
    from_run = compare_runs(load(a), load(b))
    from_file = compare_runs(load(base), load(b))
    assert from_run["strategies"] == from_file["strategies"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**data, "schema_version": 99}))
    r = CliRunner().invoke(main, ["compare", str(bad), str(b)])
    assert r.exit_code == 2 and "schema_version 99" in r.output
