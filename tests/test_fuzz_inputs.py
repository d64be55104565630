"""Fuzzed bad input: the config parser and the eval-set loader answer every file with one
``ConfigError``/``DataError`` line naming the file (and line or field), never another exception, never a hang."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from harness.config import load_config  # noqa: E402
from harness.data import load_eval_set  # noqa: E402
from harness.errors import ConfigError, DataError  # noqa: E402

TOY = Path(__file__).parent / "fixtures" / "toy_set"
FUZZ = settings(
    max_examples=60,
    deadline=2000,  # ms per example: a hang or quadratic blow-up fails
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=12,
)
row_keys = st.sampled_from(["id", "question", "answer", "context_ids", "tags", "must_include", "x"])
rows = st.dictionaries(row_keys, json_values, max_size=6)


def _one_line(exc: Exception, name: str) -> None:
    msg = str(exc)
    assert "\n" not in msg, msg
    assert name in msg, msg


def _check_data(root: Path, name: str) -> None:
    try:
        load_eval_set(root)
    except DataError as exc:
        _one_line(exc, name)


def _fresh_set() -> Path:
    root = Path(tempfile.mkdtemp(prefix="fuzz-set-"))
    shutil.copytree(TOY, root / "set")
    return root / "set"


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_as_split_file(data):
    root = _fresh_set()
    try:
        (root / "test.jsonl").write_bytes(data)
        _check_data(root, "test.jsonl")
    finally:
        shutil.rmtree(root.parent)


@FUZZ
@given(st.lists(rows | json_values, min_size=1, max_size=5))
def test_random_json_rows(items):
    root = _fresh_set()
    try:
        text = "".join(json.dumps(i, allow_nan=True) + "\n" for i in items)
        (root / "test.jsonl").write_text(text, encoding="utf-8")
        _check_data(root, "test.jsonl")
    finally:
        shutil.rmtree(root.parent)


@FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_random_csv(text):
    root = _fresh_set()
    try:
        (root / "test.jsonl").unlink()
        (root / "test.csv").write_text("id,question,answer,tags\n" + text, encoding="utf-8")
        _check_data(root, "test.csv")
    finally:
        shutil.rmtree(root.parent)


@FUZZ
@given(st.binary(max_size=300))
def test_random_kb_document_bytes(data):
    root = _fresh_set()
    try:
        (root / "kb" / "battery.md").write_bytes(data)
        _check_data(root, "battery.md")
    finally:
        shutil.rmtree(root.parent)


def _check_config(text: str | bytes) -> None:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-cfg-"))
    try:
        path = folder / "fuzz.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        try:
            load_config(path)
        except ConfigError as exc:
            _one_line(exc, "fuzz.yaml")
    finally:
        shutil.rmtree(folder)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_as_config(data):
    _check_config(data)


@FUZZ
@given(st.text(max_size=300))
def test_random_text_as_config(text):
    _check_config(text)


config_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=10,
)


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "model": config_values,
            "eval_set": st.just({"path": str(TOY)}) | config_values,
            "strategies": st.just([{"name": "prompt"}]) | config_values,
            "generation": config_values,
            "metrics": config_values,
            "decision": config_values,
            "scoring": config_values,
            "seed": config_values,
            "output_dir": config_values,
        },
    )
)
def test_random_yaml_mapping_as_config(data):
    import yaml

    _check_config(yaml.safe_dump(data, allow_unicode=True))


def test_yaml_bomb_and_deep_nesting_are_errors(tmp_path):
    deep = "a: " + "[" * 5000 + "]" * 5000
    _check_config(deep)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    _check_config(bomb)
