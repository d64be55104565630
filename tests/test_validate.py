"""`adaptbench validate` finds, without a model, what a run would only find after loading one."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from harness.cli import main
from tests.conftest import TOY_SET


def _set(tmp_path, train: int = 0, kb: bool = True):
    root = tmp_path / "set"
    root.mkdir()
    (root / "test.jsonl").write_text('{"id":"t1","question":"Q?","answer":"A."}\n')
    if train:
        (root / "train.jsonl").write_text(
            "".join(
                json.dumps({"id": f"r{i}", "question": "Q?", "answer": "A."}) + "\n" for i in range(train)
            )
        )
    if kb:
        (root / "kb").mkdir()
        (root / "kb" / "doc.txt").write_text("Some fact.")
    return root


CASES = [
    ("few-shot without train", {"strategies": [{"name": "prompt", "shots": 2}]}, {}, "strategies[0].shots: 2 demonstrations"),
    ("qlora without train", {"strategies": [{"name": "qlora"}]}, {}, "strategies[0].train_split: adapter training needs a 'train' split"),
    ("rag+qlora, 1 train example", {"strategies": [{"name": "rag+qlora"}]}, {"train": 1}, "strategies[0].validation_split"),
    ("rag with empty KB", {"strategies": [{"name": "rag"}]}, {"kb": False}, "strategies[0].name: rag needs a knowledge base"),
    ("model folder missing", {"model": {"id": "./no-such-dir"}}, {}, "model.id: folder not found"),
    ("wrong split name", {"eval_set": {"split": "dev"}}, {}, "eval_set.split: 'dev' is not a split"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "overrides", "set_args", "message"), CASES, ids=[c[0] for c in CASES])
def test_validate_reports_each_problem_with_its_field(
    tmp_path, write_config, label, overrides, set_args, message
):
    root = _set(tmp_path, **set_args)
    cfg = write_config(eval_set={"path": str(root), **overrides.pop("eval_set", {})}, **overrides)
    result = CliRunner().invoke(main, ["validate", str(cfg)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_model_folder_without_tokenizer(tmp_path, write_config):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    cfg = write_config(model={"id": str(tmp_path / "m")})
    result = CliRunner().invoke(main, ["validate", str(cfg)])
    assert result.exit_code == 2 and "model.id:" in result.output and "no tokenizer files" in result.output


def test_adapter_base_model_mismatch(tmp_path, write_config):
    ad = tmp_path / "adapter"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/other-model"}))
    (ad / "adapter_model.safetensors").write_bytes(b"x")
    cfg = write_config(strategies=[{"name": "qlora", "adapter_path": str(ad)}])
    result = CliRunner().invoke(main, ["validate", str(cfg)])
    assert (
        result.exit_code == 2
        and "strategies[0].adapter_path: adapter was trained on 'org/other-model'" in result.output
    )


def test_valid_config_passes_and_hub_id_is_not_fetched(tmp_path, write_config, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a download attempt would fail: the model is not local
    cfg = write_config(model={"id": "Qwen/Qwen2.5-7B-Instruct"}, eval_set={"path": str(TOY_SET)})
    result = CliRunner().invoke(main, ["validate", str(cfg)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok:")
