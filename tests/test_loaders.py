"""Robust readers: BOM, quoted line breaks with true line numbers, delimiter sniffing, .txt/.html KB,
skipped-file warnings, 🤗 datasets folders and Parquet with a column mapping."""

from __future__ import annotations

import logging

import datasets
import pytest

from harness.data import load_eval_set
from harness.errors import DataError
from harness.loaders import html_to_text, read_csv


@pytest.mark.parametrize(
    ("raw", "suffix", "expected"),
    [
        (b"\xef\xbb\xbfid,question,answer\n1,Q?,A.\n", ".csv", [(2, {"id": "1", "question": "Q?", "answer": "A."})]),
        (b'id;question;answer\n1;Q?;"Line one.\nLine two."\n2;R?;B.\n', ".csv",
         [(2, {"id": "1", "question": "Q?", "answer": "Line one.\nLine two."}),
          (4, {"id": "2", "question": "R?", "answer": "B."})]),
        (b"id\tquestion\tanswer\n1\tQ, really?\tA.\n", ".tsv", [(2, {"id": "1", "question": "Q, really?", "answer": "A."})]),
        (b"id|question|answer\n\n1|Q?|A.\n", ".csv", [(3, {"id": "1", "question": "Q?", "answer": "A."})]),
    ],
)  # fmt: skip
def test_read_csv_cases(tmp_path, raw, suffix, expected):
    path = tmp_path / f"t{suffix}"
    path.write_bytes(raw)
    assert read_csv(path)[1] == expected


def test_line_numbers_after_quoted_newline_name_the_right_row(tmp_path):
    (tmp_path / "test.csv").write_text('id,question,answer\n1,"Q\n?",A\n2,R?,\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"test.csv:4: field 'answer' is empty"):
        load_eval_set(tmp_path)


def test_txt_and_md_kb_and_skipped_warning(tmp_path, caplog):
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "a.txt").write_text("Plain text doc.", encoding="utf-8")
    (tmp_path / "kb" / "b.md").write_text("# Bee\nBody.", encoding="utf-8")
    (tmp_path / "kb" / "c.html").write_text("<p>x</p>", encoding="utf-8")
    (tmp_path / "test.jsonl").write_text('{"id":"1","question":"Q","answer":"A","context_ids":["a"]}\n')
    with caplog.at_level(logging.WARNING, logger="adaptbench"):
        es = load_eval_set(tmp_path)
    assert [(d.id, d.title) for d in es.documents] == [("a", "A"), ("b", "Bee")]
    assert "c.html" in caplog.text and "adaptbench init" in caplog.text


def test_html_to_text_drops_scripts_and_keeps_blocks():
    title, text = html_to_text(
        "<title>T</title><h1>Head</h1><p>One &amp; two</p><script>x()</script><p>Three</p>"
    )
    assert title == "Head" and text == "Head\n\nOne & two\n\nThree"


def _rows(n: int, split: str) -> list[dict]:
    return [{"q": f"{split} question {i}?", "a": f"answer {i}", "cat": "x;y"} for i in range(n)]


@pytest.mark.parametrize("kind", ["datasets", "parquet"])
def test_table_formats_with_column_mapping(tmp_path, kind):
    root = tmp_path / "set"
    dd = datasets.DatasetDict({s: datasets.Dataset.from_list(_rows(3, s)) for s in ("train", "test")})
    if kind == "datasets":
        dd.save_to_disk(str(root))
    else:
        root.mkdir()
        for s, ds in dd.items():
            ds.to_parquet(str(root / f"{s}.parquet"))
    es = load_eval_set(root, columns={"question": "q", "answer": "a", "tags": "cat"})
    assert sorted(es.splits) == ["test", "train"]
    row = es.splits["test"][0]
    assert (row["id"], row["question"], row["tags"]) == ("test-1", "test question 0?", ["x", "y"])
    with pytest.raises(
        DataError, match=r"eval_set.columns.question: column 'query' not found \(columns: a, cat, q\)"
    ):
        load_eval_set(root, columns={"question": "query", "answer": "a"})
