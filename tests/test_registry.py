"""A new strategy is one class + @register: the harness runs it without any change."""

from __future__ import annotations

import pytest
from pydantic import Field

from harness import plugin as registry
from harness.config import load_config
from harness.errors import ConfigError
from harness.plugin import Answer, Params, Strategy
from harness.runner import run


class EchoParams(Params):
    suffix: str = Field("!", min_length=1)


class EchoStrategy(Strategy):
    """Answers with the question itself: no model call, so the harness plumbing is all that is tested."""

    name = "echo-test"
    Params = EchoParams

    def predict(self, batch):
        return [
            Answer(
                text=ex["question"] + self.params.suffix,
                new_tokens=1,
                prompt_tokens=0,
                extra={"metrics": {"echo": 1.0}},
            )
            for ex in batch
        ]


@pytest.fixture()
def echo_registered():
    registry.register(EchoStrategy)
    yield
    registry._REGISTRY.pop("echo-test", None)


def test_builtin_prompt_is_registered():
    assert "prompt" in registry.available()


def test_duplicate_name_rejected(echo_registered):
    class Other(EchoStrategy):
        name = "echo-test"

    with pytest.raises(ValueError, match="registered twice"):
        registry.register(Other)


def test_registered_strategy_runs_end_to_end(echo_registered, write_config, tmp_path):
    cfg_path = write_config(strategies=[{"name": "echo-test", "id": "echo", "suffix": "?!"}])
    result = run(load_config(cfg_path), config_path=cfg_path, run_dir=tmp_path / "run", progress=False)
    s = result.scores["strategies"]["echo"]
    assert s["n"] == 6 and s["name"] == "echo-test"
    # the question is never the answer (scores.json holds per-example scores; means are the analysis's)
    assert all(row["exact_match"] == 0.0 for row in s["per_example"].values())


def test_registered_strategy_params_validated(echo_registered, write_config):
    cfg_path = write_config(strategies=[{"name": "echo-test", "suffix": ""}])
    with pytest.raises(ConfigError, match=r"strategies\[0\]\.suffix"):
        run(load_config(cfg_path), config_path=cfg_path, progress=False)
