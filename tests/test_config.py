"""Config parsing: every mistake is one line naming the file and YAML path."""

from __future__ import annotations

import pytest
import yaml

from harness.config import load_config, select_strategies
from harness.errors import ConfigError
from harness.runner import build_strategies


def _write(tmp_path, data) -> str:
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return str(path)


BASE = {"eval_set": {"path": "data"}, "strategies": [{"name": "prompt"}]}


def test_valid_config_resolves_paths_relative_to_file(tmp_path):
    cfg = load_config(_write(tmp_path, BASE))
    assert cfg.eval_set.path == (tmp_path / "data").resolve()
    assert cfg.output_dir == (tmp_path / "reports").resolve()
    assert cfg.generation.temperature == 0.0 and cfg.model.trust_remote_code is False
    assert cfg.strategies[0].key == "prompt"


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"generation": {"batch_size": 0}}, "generation.batch_size: must be > 0"),
        (
            {"generation": {"max_new_tokens": "many"}},
            "generation.max_new_tokens: Input should be a valid integer",
        ),
        ({"modle": {}}, "modle: unknown key"),
        ({"model": {"device": "tpu"}}, "model.device: must be one of 'auto', 'cpu' or 'cuda'"),
        ({"strategies": []}, "strategies: must not be empty"),
        ({"metrics": ["bleu"]}, "metrics[0]: unknown metric 'bleu'"),
        ({"strategies": [{"name": "prompt"}, {"name": "prompt"}]}, "duplicate strategy id 'prompt'"),
        ({"eval_set": {}}, "eval_set.path: required field is missing"),
        ({"eval_set": {"path": "nowhere"}}, "eval_set.path: directory not found"),
    ],
)
def test_config_errors_name_the_yaml_path(tmp_path, patch, expected):
    path = _write(tmp_path, {**BASE, **patch})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(path + ": ")
    assert expected in message
    assert "\n" not in message


def test_strategy_param_errors_name_the_entry(tmp_path):
    path = _write(
        tmp_path, {**BASE, "strategies": [{"name": "prompt"}, {"name": "prompt", "id": "few", "shots": -1}]}
    )
    cfg = load_config(path)
    with pytest.raises(ConfigError, match=r"strategies\[1\]\.shots: must be >= 0"):
        build_strategies(cfg, path)
    path = _write(tmp_path, {**BASE, "strategies": [{"name": "prompt", "shotz": 2}]})
    with pytest.raises(ConfigError, match=r"strategies\[0\]\.shotz: unknown key"):
        build_strategies(load_config(path), path)


def test_unknown_strategy_lists_available(tmp_path):
    path = _write(tmp_path, {**BASE, "strategies": [{"name": "magic"}]})
    with pytest.raises(
        ConfigError, match=r"strategies\[0\]\.name: unknown strategy 'magic' \(available: .*prompt"
    ):
        build_strategies(load_config(path), path)


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"line \d+: malformed YAML"):
        load_config(_write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_overrides_and_strategy_selection(tmp_path):
    data = {
        **BASE,
        "strategies": [{"name": "prompt", "id": "zero"}, {"name": "prompt", "id": "few", "shots": 2}],
    }
    cfg = load_config(_write(tmp_path, data), {"model.id": "org/model", "eval_set.limit": 5})
    assert cfg.model.id == "org/model" and cfg.eval_set.limit == 5
    assert [s.key for s in select_strategies(cfg.model_copy(deep=True), ["few"]).strategies] == ["few"]
    assert [s.key for s in select_strategies(cfg.model_copy(deep=True), ["prompt"]).strategies] == [
        "zero",
        "few",
    ]
    with pytest.raises(ConfigError, match="--strategies: 'rag' is not in the config"):
        select_strategies(cfg, ["rag"])
