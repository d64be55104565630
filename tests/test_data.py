"""Eval-set loading and validation: clear file:line errors, datasets-backed splits, KB overlay."""

from __future__ import annotations

import json
import shutil

import datasets
import pytest

from harness.data import load_eval_set
from harness.errors import DataError

from .conftest import TOY_SET


@pytest.fixture()
def toy_copy(tmp_path):
    dst = tmp_path / "set"
    shutil.copytree(TOY_SET, dst)
    return dst


def test_loads_toy_set():
    es = load_eval_set(TOY_SET)
    assert set(es.splits) == {"train", "validation", "test"}
    assert isinstance(es.splits["test"], datasets.Dataset)
    assert len(es.splits["test"]) == 6 and len(es.documents) == 5
    doc = {d.id: d for d in es.documents}["battery"]
    assert doc.title == "Battery care" and "540 Wh" in doc.text and not doc.text.startswith("#")
    current = {d.id: d for d in es.current_documents()}
    assert "60 days" in current["returns"].text  # kb_updates overlay replaces the base document
    assert len(es.content_hash) == 64


def test_hash_changes_with_content(toy_copy):
    before = load_eval_set(toy_copy).content_hash
    (toy_copy / "kb" / "battery.md").write_text("# Battery\n\nNew text.\n", encoding="utf-8")
    assert load_eval_set(toy_copy).content_hash != before


def _rewrite_test(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_missing_answer_names_file_and_line(toy_copy):
    _rewrite_test(
        toy_copy / "test.jsonl", [{"id": "a", "question": "q", "answer": "x"}, {"id": "b", "question": "q"}]
    )
    with pytest.raises(DataError, match=r"test\.jsonl:2: missing field 'answer'"):
        load_eval_set(toy_copy)


def test_duplicate_ids_across_splits(toy_copy):
    _rewrite_test(toy_copy / "test.jsonl", [{"id": "tr-1", "question": "q", "answer": "a"}])
    with pytest.raises(
        DataError, match=r"test\.jsonl:1: duplicate example id 'tr-1' \(also at train\.jsonl:1\)"
    ):
        load_eval_set(toy_copy)


def test_empty_split(toy_copy):
    (toy_copy / "validation.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"validation\.jsonl: split is empty"):
        load_eval_set(toy_copy)


def test_non_utf8_row(toy_copy):
    good = (toy_copy / "test.jsonl").read_bytes()
    (toy_copy / "test.jsonl").write_bytes(good + b'{"id": "x", "question": "caf\xe9", "answer": "a"}\n')
    with pytest.raises(DataError, match=r"test\.jsonl:7: not valid UTF-8"):
        load_eval_set(toy_copy)


def test_malformed_json_line(toy_copy):
    with (toy_copy / "train.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"id": "x", "question": \n')
    with pytest.raises(DataError, match=r"train\.jsonl:7: malformed JSON"):
        load_eval_set(toy_copy)


def test_unknown_context_id(toy_copy):
    _rewrite_test(
        toy_copy / "test.jsonl", [{"id": "z", "question": "q", "answer": "a", "context_ids": ["nope"]}]
    )
    with pytest.raises(DataError, match=r"test\.jsonl:1: example 'z' cites unknown document 'nope'"):
        load_eval_set(toy_copy)


def test_csv_split_and_kb_jsonl(tmp_path):
    root = tmp_path / "csvset"
    root.mkdir()
    (root / "kb.jsonl").write_text(
        json.dumps({"id": "d1", "title": "Doc", "text": "Body"}) + "\n", encoding="utf-8"
    )
    (root / "test.csv").write_text(
        "id,question,answer,context_ids,tags\n1,Q?,A,d1,knowledge;style\n", encoding="utf-8"
    )
    es = load_eval_set(root)
    row = es.splits["test"][0]
    assert row["context_ids"] == ["d1"] and row["tags"] == ["knowledge", "style"] and row["id"] == "1"
    (root / "test.csv").write_text("id,question\n1,Q?\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"test\.csv:2: missing field 'answer'"):
        load_eval_set(root)


def test_missing_directory_and_no_splits(tmp_path):
    with pytest.raises(DataError, match="eval set directory not found"):
        load_eval_set(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no split files found"):
        load_eval_set(tmp_path / "empty")


def test_key_fact_fields_kept_and_normalised(toy_copy):
    _rewrite_test(
        toy_copy / "test.jsonl",
        [
            {
                "id": "f1",
                "question": "q",
                "answer": "Sixty days.",
                "must_include": ["60 days", ["30%", "thirty percent"]],
                "must_not_include": ["45 days"],
            },
            {"id": "f2", "question": "q", "answer": "a", "unknown_field": 1},
        ],
    )
    es = load_eval_set(toy_copy)
    f1, f2 = es.splits["test"]
    assert f1["must_include"] == [["60 days"], ["30%", "thirty percent"]]
    assert f1["must_not_include"] == ["45 days"]
    assert f2["must_include"] is None and f2["must_not_include"] is None and "unknown_field" not in f2
    # splits that never use the fields do not get the columns
    assert "must_include" not in es.splits["train"].column_names


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("must_include", "60 days", r"field 'must_include' must be a non-empty list"),
        ("must_include", [], r"field 'must_include' must be a non-empty list"),
        ("must_include", ["60 days", 60], r"field 'must_include' item 1 must be a non-empty string"),
        ("must_include", [["60 days", ""]], r"field 'must_include' item 0 must be"),
        ("must_include", [[]], r"field 'must_include' item 0 must be"),
        ("must_include", ["..."], r"field 'must_include' item 0 must be"),
        ("must_include", [[["nested"]]], r"field 'must_include' item 0 must be"),
        (
            "must_not_include",
            "45 days",
            r"field 'must_not_include' must be a non-empty list of non-empty strings",
        ),
        ("must_not_include", [["45 days", "forty-five days"]], r"field 'must_not_include' must be"),
        ("must_not_include", [" "], r"field 'must_not_include' must be"),
    ],
)
def test_key_fact_field_errors_name_file_line_and_field(toy_copy, field, value, message):
    _rewrite_test(
        toy_copy / "test.jsonl",
        [
            {"id": "a", "question": "q", "answer": "x"},
            {"id": "b", "question": "q", "answer": "x", field: value},
        ],
    )
    with pytest.raises(DataError, match=r"test\.jsonl:2: " + message) as info:
        load_eval_set(toy_copy)
    assert "\n" not in str(info.value)


def test_csv_empty_fact_cells_are_absent(tmp_path):
    root = tmp_path / "csvset"
    root.mkdir()
    (root / "test.csv").write_text("id,question,answer,must_include\n1,Q?,A,\n", encoding="utf-8")
    assert "must_include" not in load_eval_set(root).splits["test"].column_names
