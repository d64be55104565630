"""Whole pipeline with the tiny in-process model: CLI -> run folder -> report; resume; clear CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from harness.cli import main
from harness.rundir import load_predictions


def test_cli_run_writes_complete_run_folder(write_config, tmp_path):
    cfg = write_config(
        strategies=[{"name": "prompt", "id": "zero"}, {"name": "prompt", "id": "few", "shots": 2}]
    )
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", str(cfg), "--out", str(out), "--limit", "5", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "run folder:" in res.output and "zero" in res.output
    for name in ("config.yaml", "manifest.json", "predictions.jsonl", "scores.json", "report.html"):
        assert (out / name).is_file(), name
    preds = load_predictions(out / "predictions.jsonl")
    assert sorted((p["strategy"], p["example_id"]) for p in preds) == sorted(
        (s, f"te-{i}") for s in ("zero", "few") for i in range(1, 6)
    )
    few = next(p for p in preds if p["strategy"] == "few")
    assert len(few["extra"]["shot_ids"]) == 2 and all(i.startswith("tr-") for i in few["extra"]["shot_ids"])
    assert all(p["new_tokens"] <= 6 and p["latency_s"] > 0 for p in preds)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["seed"] == 0
    assert manifest["packages"]["torch"] and manifest["hardware"]["cpu_count"] >= 1
    assert len(manifest["data"]["content_hash"]) == 64 and "test.jsonl" in manifest["data"]["files"]
    assert manifest["model"]["parameters"] > 0 and manifest["model"]["trust_remote_code"] is False
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["strategies"]) == {"zero", "few"}
    assert scores["strategies"]["zero"]["latency"]["tokens_per_s"] > 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["eval_set"]["limit"] == 5
    html = (out / "report.html").read_text()
    assert "What capacity does the Stratus battery have?" in html


def test_same_seed_same_predictions_and_resume_computes_only_missing(write_config, tmp_path):
    cfg = write_config()
    out = tmp_path / "run"
    runner = CliRunner()
    assert (
        runner.invoke(main, ["run", str(cfg), "--out", str(out), "--limit", "3", "--no-progress"]).exit_code
        == 0
    )
    first = {p["example_id"]: p for p in load_predictions(out / "predictions.jsonl")}
    # Simulate a crash that tore the last line, then resume with the full split.
    with (out / "predictions.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"strategy": "zero_shot", "example_id": "te-4", "predic')
    res = runner.invoke(main, ["run", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    lines = (out / "predictions.jsonl").read_text().splitlines()
    ids = [json.loads(line)["example_id"] for line in lines]
    assert sorted(ids) == [f"te-{i}" for i in range(1, 7)]  # each example exactly once
    after = {p["example_id"]: p for p in load_predictions(out / "predictions.jsonl")}
    for eid, rec in first.items():
        assert after[eid]["latency_s"] == rec["latency_s"]  # reused, not recomputed
    # Deterministic: a fresh run gives identical predictions.
    fresh = tmp_path / "fresh"
    assert runner.invoke(main, ["run", str(cfg), "--out", str(fresh), "--no-progress"]).exit_code == 0
    again = {p["example_id"]: p["prediction"] for p in load_predictions(fresh / "predictions.jsonl")}
    assert again == {k: v["prediction"] for k, v in after.items()}


def test_resume_refuses_a_different_config(write_config, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    assert (
        runner.invoke(
            main, ["run", str(write_config()), "--out", str(out), "--limit", "2", "--no-progress"]
        ).exit_code
        == 0
    )
    other = write_config(name="other.yaml", generation={"max_new_tokens": 9})
    res = runner.invoke(main, ["run", str(other), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2 and "holds a run with a different generation" in res.output


def test_report_command_rerenders(write_config, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    assert (
        runner.invoke(
            main, ["run", str(write_config()), "--out", str(out), "--limit", "2", "--no-progress"]
        ).exit_code
        == 0
    )
    (out / "report.html").unlink()
    res = runner.invoke(main, ["report", str(out)])
    assert res.exit_code == 0 and (out / "report.html").is_file()


def test_validate_does_not_load_a_model(write_config, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a Hub id that is not downloaded: validate must not fetch it
    cfg = write_config(model={"id": "some-org/not-downloaded-model"})
    res = CliRunner().invoke(main, ["validate", str(cfg)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("ok: ") and "test=6" in res.output
    # a local path that does not exist is now caught here (issue 14), naming the field
    cfg = write_config(model={"id": "/definitely/not/a/model"}, name="missing.yaml")
    res = CliRunner().invoke(main, ["validate", str(cfg)])
    assert res.exit_code == 2 and "model.id: folder not found" in res.output


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d, p: d["generation"].update(batch_size=0), "generation.batch_size: must be > 0"),
        (lambda d, p: d["eval_set"].update(path=str(p / "missing")), "eval_set.path: directory not found"),
        (lambda d, p: d["model"].update(id=str(p)), "model.id: cannot load"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(write_config, tmp_path, mutate, expected):
    cfg = write_config()
    data = yaml.safe_load(cfg.read_text())
    mutate(data, tmp_path)
    cfg.write_text(yaml.safe_dump(data))
    proc = _cli("run", str(cfg), "--no-progress")
    assert proc.returncode == 2
    err_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1 and expected in err_lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_dataset_missing_answer(write_config, tmp_path):
    import shutil

    from .conftest import TOY_SET

    data_dir = tmp_path / "set"
    shutil.copytree(TOY_SET, data_dir)
    (data_dir / "test.jsonl").write_text('{"id": "x", "question": "q"}\n', encoding="utf-8")
    cfg = write_config(eval_set={"path": str(data_dir)})
    proc = _cli("run", str(cfg))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "test.jsonl:1: missing field 'answer'" in proc.stderr
