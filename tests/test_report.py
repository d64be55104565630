"""report.html / summary.md / scores.csv / decision.json from a run folder: content, escaping, re-rendering."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.decision.measures import format_value
from harness.report import write_report
from tests.support.synthetic_run import XSS_ANSWER, XSS_QUESTION, write_synthetic_run

EVIL_TAG = '"><svg onload=alert(2)>'


def _poison_tags(run_dir):
    """Give the first example a tag that tries to break out of attributes and CSS."""
    path = run_dir / "predictions.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        if r["example_id"] == "ex-000":
            r["tags"] = ["knowledge", EVIL_TAG]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def run_dir(tmp_path):
    run = write_synthetic_run(tmp_path / "run", decision={"margin": 0.02})  # quality_first
    _poison_tags(run)
    write_report(run)
    return run


def test_untrusted_text_is_escaped(run_dir):
    html = (run_dir / "report.html").read_text()
    # Nothing from the data set or the answers becomes markup.
    assert "<script" not in html.lower()
    assert "<img" not in html and "<svg onload" not in html and "<b>" not in html
    assert "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    # ... it renders as text instead.
    assert (
        "Is &lt;script&gt;alert(&#34;q&#34;)&lt;/script&gt; covered? &#34;&gt;&lt;img src=x onerror=alert(1)&gt;"
        in html
    )
    assert "&lt;script&gt;alert(&#39;answer&#39;)&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt; &amp; done" in html
    assert "&#34;&gt;&lt;svg onload=alert(2)&gt;" in html  # the tag label
    assert "from &lt;b&gt;warranty&lt;/b&gt;" in html  # a retrieved chunk's document id
    # Tag filters use generated class names, never the tag text, in CSS and attributes.
    style = html.split("<style>")[1].split("</style>")[0]
    assert "svg" not in style and "onload" not in style
    assert re.search(r'class="ex (t\d+ ?)+', html)
    # Defence in depth: no script may run even if escaping failed somewhere.
    assert "default-src 'none'" in html
    summary = (run_dir / "summary.md").read_text()
    assert "<" not in summary.replace("&lt;", "")
    assert XSS_QUESTION not in summary and XSS_ANSWER not in summary


def test_report_leads_with_the_recommendation_and_its_numbers(run_dir):
    html = (run_dir / "report.html").read_text()
    decision = json.loads((run_dir / "decision.json").read_text())
    assert decision["decision"]["recommended"] == "rag"
    top = html.split('id="table"')[0]  # everything above the strategy table
    assert '<span class="rec">rag</span>' in top
    assert re.search(
        r"Recommendation: rag — best on Token F1 \(5\d\.\d%\), significantly ahead of qlora", top
    )
    assert "confidence: high" in top and "significant lead" in top
    assert re.search(r"Token F1 5\d\.\d% \(95% CI [^)]*\) vs 3\d\.\d% for qlora", top)
    # The mode and its rule in words; the decision reads the family table shown under "Are the differences real?".
    assert "Mode: <code>quality_first</code> — quality first:" in top and "margin ±2 points" in top
    assert "Paired tests on Token F1 read by the decision" in top
    assert decision["decision"]["mode"] == "quality_first" and decision["decision"]["rule"].startswith(
        "quality first"
    )
    assert "McNemar (exact)" in html  # exact match is a binary metric
    assert "on the weighted score" not in html
    assert "What would change the decision" in top
    # Sections: table with CIs, five kinds of charts, stats, tags, explorer.
    assert html.count("<svg") >= 5 and "Training loss" in html and "p95 latency" in html
    assert "Are the differences real?" in html and "Breakdown by question tag" in html
    assert html.count('<tr class="ex ') == 40
    assert 'id="f-dis"' in html and "strategies disagree (" in html
    for tag in ("knowledge", "style", "updated", "general"):
        assert f">{tag} (" in html  # a filter label with its count
    assert "retrieved chunk" in html and "battery#0" in html


def test_summary_and_scores_csv(run_dir):
    summary = (run_dir / "summary.md").read_text()
    assert summary.startswith("## adaptbench · run")
    assert "**Recommendation: rag — best on Token F1" in summary
    assert "Decision mode: `quality_first`" in summary
    assert "| **rag** |" in summary and "| strategy | rank | Token F1 |" in summary
    df = pd.read_csv(run_dir / "scores.csv")
    assert len(df) == 3 * 40 and set(df["strategy"]) == {"prompt", "rag", "qlora"}
    assert {"example_id", "tags", "token_f1", "semantic_similarity", "coherence", "batch_share_ms"} <= set(
        df.columns
    )
    # Per-example scores match scores.json; style adherence only where tagged style.
    scores = json.loads((run_dir / "scores.json").read_text())
    row = df[(df.strategy == "rag") & (df.example_id == "ex-003")].iloc[0]
    assert row.token_f1 == pytest.approx(scores["strategies"]["rag"]["per_example"]["ex-003"]["token_f1"])
    assert df[~df.tags.str.contains("style")]["style_adherence"].isna().all()
    assert (
        df[df.strategy == "rag"]["faithfulness"].notna().all()
        and df[df.strategy == "prompt"]["faithfulness"].isna().all()
    )
    assert df.groupby("strategy").token_f1.mean()["rag"] > df.groupby("strategy").token_f1.mean()["prompt"]


def test_cli_report_rerenders_from_files_alone_and_is_deterministic(tmp_path):
    # Was: default weights with best/value latency and cost utilities picked prompt ("prefer the
    # cheaper") over a significantly more accurate rag; quality_first (the default) picks rag.
    run = write_synthetic_run(tmp_path / "run")
    res = CliRunner().invoke(main, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert "Recommendation: rag — best on Token F1" in res.output
    first = {n: (run / n).read_bytes() for n in ("report.html", "summary.md", "scores.csv", "decision.json")}
    for path in run.iterdir():
        if path.name not in (
            "scores.json",
            "predictions.jsonl",
            "latency.jsonl",
            "manifest.json",
            "config.yaml",
        ):
            path.unlink()
    res = CliRunner().invoke(main, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert {n: (run / n).read_bytes() for n in first} == first


def test_cli_report_errors_are_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(main, ["report", str(empty)])
    assert res.exit_code == 2 and res.output.strip().startswith("error: ") and "no scores.json" in res.output
    run = write_synthetic_run(tmp_path / "run", decision={"constraints": ["latency_p95_ms <= 800"]})
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("latency_p95_ms <= 800", "latency <= 800"))
    res = CliRunner().invoke(main, ["report", str(run)])
    assert res.exit_code == 2 and "decision.constraints: [0] unknown measure 'latency'" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_report_with_one_strategy_and_no_feasible_choice(tmp_path):
    single = write_synthetic_run(tmp_path / "single", strategies=("prompt",))
    write_report(single)
    html = (single / "report.html").read_text()
    assert "the only strategy within the constraints" in html and "Only one strategy" in html
    none = write_synthetic_run(tmp_path / "none", decision={"constraints": ["latency_p95_ms <= 1"]})
    write_report(none)
    html = (none / "report.html").read_text()
    assert "no recommendation" in html and "No strategy meets the constraints" in html
    assert "breaks latency_p95_ms &lt;= 1" in html


@pytest.mark.slow
def test_real_run_scores_model_metrics_and_writes_all_outputs(write_config, tmp_path):
    """Tiny model end to end: the runner scores perplexity-based coherence, similarity and style,
    and writes report.html, summary.md, scores.csv and decision.json."""
    cfg = write_config(
        strategies=[{"name": "prompt", "id": "zero"}, {"name": "prompt", "id": "few", "shots": 2}],
        decision={"constraints": ["latency_p95_ms <= 60000"], "bootstrap_resamples": 200},
        scoring={"judge": {"enabled": True, "max_new_tokens": 2}},
    )
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "Recommendation" in res.output or "No significant difference" in res.output
    scores = json.loads((out / "scores.json").read_text())
    per = scores["strategies"]["zero"]["per_example"]
    assert set(per) == {f"te-{i}" for i in range(1, 7)}
    for eid, row in per.items():
        assert 0.0 <= row["semantic_similarity"] <= 1.0 and 0.0 <= row["coherence"] <= 1.0
        assert row["perplexity"] is None or row["perplexity"] > 1.0
        assert (row["style_adherence"] is not None) == (eid == "te-5")  # the only style-tagged example
        assert "judge_score" in row and (row["judge_score"] is None or 0.0 <= row["judge_score"] <= 1.0)
    assert "{answer}" in scores["judge"]["prompt"] and scores["judge"]["enabled"] is True
    for name in ("report.html", "summary.md", "scores.csv", "decision.json"):
        assert (out / name).is_file(), name
    decision = json.loads((out / "decision.json").read_text())
    assert decision["decision"]["recommended"] in ("zero", "few")
    assert decision["settings"]["bootstrap_resamples"] == 200
    assert len(pd.read_csv(out / "scores.csv")) == 12


def test_cli_report_what_if_constraints_and_weights(tmp_path):
    run = write_synthetic_run(tmp_path / "run", decision={"weights": {"token_f1": 1.0}})
    res = CliRunner().invoke(main, ["report", str(run), "--constraint", "latency_p95_ms <= 300"])
    assert res.exit_code == 0, res.output
    decision = json.loads((run / "decision.json").read_text())["decision"]
    assert decision["constraints"] == ["latency_p95_ms <= 300"] and decision["recommended"] != "rag"
    # --weight switches to the weighted mode; latency has no natural scale, so it needs decision.scales.
    res = CliRunner().invoke(main, ["report", str(run), "--weight", "latency_p95_ms=1"])
    assert res.exit_code == 2 and "decision.scales.latency_p95_ms" in res.output
    res = CliRunner().invoke(main, ["report", str(run), "--weight", "semantic_similarity=1"])
    assert res.exit_code == 0, res.output
    decision = json.loads((run / "decision.json").read_text())["decision"]
    assert decision["weights"] == {"semantic_similarity": 1.0} and decision["mode"] == "weighted"
    res = CliRunner().invoke(main, ["report", str(run), "--weight", "token_f1"])
    assert res.exit_code == 2 and "write NAME=NUMBER" in res.output
    res = CliRunner().invoke(main, ["report", str(run), "--constraint", "speed <= 3"])
    assert (
        res.exit_code == 2
        and "(with command-line overrides): decision.constraints: [0] unknown measure" in res.output
    )


def test_charts_escape_labels_and_zoom_loss_axis():
    from harness.report import charts

    evil = '<script>alert(1)</script>"'
    svg = str(
        charts.grouped_bars([evil], [evil, "ok"], {(evil, evil): (0.5, 0.4, 0.6)}, title=evil)
        + charts.scatter_ci(
            [{"name": evil, "x": 100.0, "y": 0.5}],
            title="t",
            x_label=evil,
            y_label="y",
            x_fmt=str,
            y_fmt=str,
        )
        + charts.hbars([evil], [1.0], title=evil, fmt=str)
        + charts.line_chart(
            [{"name": evil, "points": [(1, 3.0), (2, 2.5)]}], title="l", x_label="s", y_label="loss"
        )
    )
    assert "<script" not in svg and "&lt;script&gt;alert(1)&lt;/script&gt;&#34;" in svg
    assert charts.loss_range([6.30, 6.12, 6.05]) == (6.0, 6.4)  # zoomed, four round steps
    assert charts.loss_range([3.0, 0.5]) == (0.0, 4.0)


def test_loss_curves_come_from_the_training_record(tmp_path):
    run = write_synthetic_run(tmp_path / "run")
    (run / "training").mkdir()
    record = {
        "steps": 8,
        "val_loss_base": 6.25,
        "val_loss_final": 6.12,
        "loss_curve": {
            "train": [{"step": 1, "loss": 6.3}, {"step": 8, "loss": 6.0}],
            "validation": [{"step": 8, "loss": 6.1}],
        },
    }
    (run / "training" / "qlora.json").write_text(json.dumps(record))
    write_report(run)
    html = (run / "report.html").read_text()
    assert "validation loss 6.250 → 6.120" in html and "8 steps" in html
    assert 'stroke-dasharray="6 4"' in html  # the validation curve


def test_cli_summary_shows_the_report_numbers_on_the_common_examples(tmp_path):
    """The CLI table and the report share one aggregation: point estimates over the examples every
    strategy answered (here rag lost two), not each strategy's all-examples mean."""
    run = write_synthetic_run(tmp_path / "run", decision={"weights": {"token_f1": 1.0}})
    scores = json.loads((run / "scores.json").read_text())
    for eid in ("ex-001", "ex-007"):
        del scores["strategies"]["rag"]["per_example"][eid]
    (run / "scores.json").write_text(json.dumps(scores))
    res = CliRunner().invoke(main, ["report", str(run)])
    assert res.exit_code == 0, res.output
    record = json.loads((run / "decision.json").read_text())
    assert record["quality_metrics"][:2] == ["exact_match", "token_f1"]
    header, _, *rows = res.output.strip().splitlines()
    col = header.split().index("token_f1")
    shown = {r.split()[0]: r.split()[col] for r in rows[:3]}
    for sid in ("prompt", "rag", "qlora"):
        estimate = record["aggregates"][sid]["token_f1"]["estimate"]
        assert shown[sid] == f"{100 * estimate:.1f}%"
    per = scores["strategies"]["prompt"]["per_example"]
    all_examples = sum(v["token_f1"] for v in per.values()) / len(per)
    assert shown["prompt"] != f"{100 * all_examples:.1f}%"  # the common 38, not all 40


def test_weighted_mode_report_states_mode_weights_and_scales(tmp_path):
    decision = {
        "mode": "weighted",
        "weights": {"token_f1": 0.7, "latency_p95_ms": 0.3},
        "scales": {"latency_p95_ms": [2000, 200]},
    }
    run = write_synthetic_run(tmp_path / "run", decision=decision)
    write_report(run)
    html = (run / "report.html").read_text()
    record = json.loads((run / "decision.json").read_text())
    assert record["decision"]["mode"] == "weighted" and record["decision"]["rule"].startswith("weighted:")
    assert record["settings"]["scales"] == {"latency_p95_ms": [2000.0, 200.0]}
    assert "Mode: <code>weighted</code>" in html and "p95 request latency 2,000 ms → 200 ms" in html
    assert "on the weighted score" in html and "weighted score" in html
    assert "| strategy | score |" in (run / "summary.md").read_text()


def test_summary_setup_column_is_the_setup_the_text_quotes(run_dir):
    """One "setup" everywhere: the table column and every "N min setup" in the headline and reasons are the
    strategy's prepare wall time (decision.json's setup_time_min), not training + index build alone."""
    summary = (run_dir / "summary.md").read_text()
    decision = json.loads((run_dir / "decision.json").read_text())
    table = {}
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[-1].endswith(" min"):
            table[cells[0].strip("*").replace("\\_", "_")] = float(cells[-1].removesuffix(" min"))
    assert set(table) == {"prompt", "rag", "qlora"}
    points = {s: v["setup_time_min"]["estimate"] for s, v in decision["aggregates"].items()}
    assert table == {s: round(points[s], 2 if points[s] < 10 else 1) for s in table}  # as the HTML table
    # qlora's prepare (1210 s) is longer than its training alone (1200 s): 20.2, not 20.0 min.
    assert table["qlora"] == 20.2
    quoted = [float(x) for x in re.findall(r"([\d.]+) min setup", summary)]
    assert quoted and all(q in table.values() for q in quoted)
    html = (run_dir / "report.html").read_text()
    assert all(format_value("setup_time_min", points[s]) in html for s in table)
