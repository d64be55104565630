"""`adaptbench init`: spreadsheet exports and document folders -> eval set + starter config."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from harness.cli import main
from harness.data import load_eval_set
from harness.init import parse_split, resolve_columns, stratified_split

SHEET = b'\xef\xbb\xbfQuestion Text;Model Answer;Category;Source\n"How do I reset?";"Line one.\nLine two.";setup;reset.txt\nWhat is the fee?;It is $5.;billing;fees.html\nCan I return it?;Yes.;billing;\nWho are you?;A bot.;setup;\n'


@pytest.fixture()
def inputs(tmp_path):
    (tmp_path / "qa.csv").write_bytes(SHEET)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "reset.txt").write_text("Hold the button for 10 s.")
    (docs / "fees.html").write_text("<title>F</title><h1>Fees</h1><p>The fee is $5.</p><script>x</script>")
    return tmp_path


@pytest.mark.parametrize(
    ("columns", "given", "expected"),
    [
        (["Q", "A"], {}, {"question": "Q", "answer": "A"}),
        (["Prompt", "Response", "ID"], {}, {"question": "Prompt", "answer": "Response", "id": "ID"}),
        (["Question Text", "Model Answer"], {}, {"question": "Question Text", "answer": "Model Answer"}),
        (["x", "y"], {"question": "x", "answer": "y"}, {"question": "x", "answer": "y"}),
    ],
)
def test_resolve_columns(columns, given, expected):
    assert resolve_columns(columns, given, None, "f.csv") == expected


def test_unguessable_column_is_one_line_listing_columns():
    with pytest.raises(
        Exception,
        match=r"cannot tell which column is the question \(columns: foo, bar\); pass --question-col",
    ):
        resolve_columns(["foo", "bar"], {}, None, "f.csv")


@pytest.mark.parametrize("bad", ["0.5,0.5", "0.5,0.6,0.2", "a,b,c", "1,0,0"])
def test_bad_split(bad):
    with pytest.raises(Exception, match="--split"):
        parse_split(bad)


def test_split_is_deterministic_and_stratified():
    rows = [{"id": str(i), "tags": ["a" if i % 2 else "b"]} for i in range(40)]
    one, two = stratified_split(rows, (0.6, 0.15, 0.25), 7), stratified_split(rows, (0.6, 0.15, 0.25), 7)
    assert one == two and {k: len(v) for k, v in one.items()} == {"train": 24, "validation": 6, "test": 10}
    assert sum(r["tags"] == ["a"] for r in one["test"]) == 5


def test_init_spreadsheet_and_docs(inputs):
    out = inputs / "my_set"
    result = CliRunner().invoke(
        main,
        [
            "init",
            "--qa",
            str(inputs / "qa.csv"),
            "--docs",
            str(inputs / "docs"),
            "--out",
            str(out),
            "--split",
            "0.5,0,0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    es = load_eval_set(out)
    rows = {r["id"]: r for s in es.splits.values() for r in s}
    assert rows["q-0001"]["answer"] == "Line one.\nLine two." and rows["q-0001"]["context_ids"] == ["reset"]
    assert rows["q-0002"]["context_ids"] == ["fees"]
    assert {d.id: d.title for d in es.documents} == {"fees": "Fees", "reset": "Reset"}
    assert "<script>" not in (out / "kb" / "fees.md").read_text() and "x" not in es.documents[0].text.split()
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert [s["name"] for s in cfg["strategies"]] == ["prompt", "rag", "qlora"]
    assert CliRunner().invoke(main, ["validate", str(out / "config.yaml")]).exit_code == 0


def test_init_gpu_config_and_jsonl_input(tmp_path):
    (tmp_path / "qa.jsonl").write_text(
        "".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(10))
    )
    result = CliRunner().invoke(
        main,
        [
            "init",
            "--qa",
            str(tmp_path / "qa.jsonl"),
            "--out",
            str(tmp_path / "s"),
            "--gpu",
            "--model",
            "org/m",
        ],
    )
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert cfg["model"] == {"id": "org/m", "quantization": "4bit", "device": "cuda", "dtype": "bfloat16"}
    assert cfg["strategies"][-1]["packing"] is True and cfg["strategies"][-1]["learning_rate"] == 2e-4


def test_init_unguessable_columns_without_tty_fails_in_one_line(tmp_path):
    (tmp_path / "qa.csv").write_text("foo,bar\n1,2\n")
    result = CliRunner().invoke(
        main, ["init", "--qa", str(tmp_path / "qa.csv"), "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "columns: foo, bar" in result.output


@pytest.mark.slow
def test_spreadsheet_to_run_end_to_end(inputs, tiny_model_dir, cache_dir):
    out = inputs / "my_set"
    ok = CliRunner().invoke(
        main,
        [
            "init",
            "--qa",
            str(inputs / "qa.csv"),
            "--docs",
            str(inputs / "docs"),
            "--out",
            str(out),
            "--split",
            "0.5,0,0.5",
            "--model",
            str(tiny_model_dir),
        ],
    )
    assert ok.exit_code == 0, ok.output
    cfg = out / "config.yaml"
    data = yaml.safe_load(cfg.read_text())
    data["strategies"] = [s for s in data["strategies"] if s["name"] != "qlora"]
    data["generation"].update(max_new_tokens=4, batch_size=2)
    data["latency_probe"] = {"requests": 0}
    cfg.write_text(yaml.safe_dump(data))
    assert CliRunner().invoke(main, ["validate", str(cfg)]).exit_code == 0
    run = CliRunner().invoke(main, ["run", str(cfg), "--out", str(inputs / "run"), "--no-progress"])
    assert run.exit_code == 0, run.output
    lines = (inputs / "run" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2  # 2 test examples x (zero_shot, rag)
