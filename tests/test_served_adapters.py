"""Adapter strategies on backends that cannot train or host adapters: one clear line at validate and
before a run loads anything, unless the strategy names an adapter a server serves (``served_adapter``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness.config import RunConfig, load_config
from harness.errors import ConfigError, ModelError
from harness.runner import run
from harness.validate import validate_config
from tests.conftest import TOY_SET
from tests.support.fake_openai import FakeOpenAI


@pytest.fixture()
def fake():
    server = FakeOpenAI(models=("tiny", "support-lora")).start()
    yield server
    server.stop()


def config(tmp_path: Path, model: dict, strategy: dict) -> Path:
    data = {
        "model": model,
        "eval_set": {"path": str(TOY_SET)},
        "strategies": [{"name": "prompt", "id": "zero_shot"}, strategy],
        "generation": {"max_new_tokens": 6, "batch_size": 2},
        "latency_probe": {"requests": 0},
        "metrics": ["token_f1"],
        "primary_metric": "token_f1",
        "output_dir": str(tmp_path / "reports"),
        "cache_dir": str(tmp_path / "cache"),
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def problems(cfg: RunConfig) -> list[str]:
    return validate_config(cfg, "c.yaml").problems


SERVED = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "id": "tiny"}


@pytest.mark.parametrize("name", ["qlora", "rag+qlora"])
def test_validate_adapter_strategy_on_served_backend_says_what_to_do(tmp_path, name):
    cfg = load_config(config(tmp_path, SERVED, {"name": name, "id": "tuned"}))
    found = [p for p in problems(cfg) if "strategies[1]" in p]
    assert len(found) == 1 and "\n" not in found[0]
    assert "needs a backend with AdapterHost; model.backend 'openai' has none" in found[0]
    assert "served_adapter" in found[0] and "backend: transformers" in found[0]


def test_validate_served_adapter_accepted_on_openai_rejected_elsewhere(tmp_path):
    served = {"name": "qlora", "id": "tuned", "served_adapter": "support-lora"}
    assert problems(load_config(config(tmp_path, SERVED, served))) == []  # no train split needed either
    for backend in ({}, {"backend": "llama_cpp"}):
        (line,) = problems(load_config(config(tmp_path, backend, served)))
        assert "needs a backend with ServedAdapters" in line and "use model.backend: openai" in line


def test_validate_llama_cpp_model_must_be_gguf(tmp_path):
    (tmp_path / "m.bin").write_text("x")
    cfg = load_config(
        config(tmp_path, {"backend": "llama_cpp", "id": str(tmp_path / "m.bin")}, {"name": "rag"})
    )
    assert [p for p in problems(cfg) if "model.id" in p] == [
        f"c.yaml: model.id: the llama_cpp backend needs a .gguf file; '{tmp_path / 'm.bin'}' is not one"
    ]
    (tmp_path / "m.gguf").write_text("x")
    cfg = load_config(
        config(tmp_path, {"backend": "llama_cpp", "id": str(tmp_path / "m.gguf")}, {"name": "rag"})
    )
    assert not [p for p in problems(cfg) if "model.id" in p]


def test_run_refuses_adapter_strategy_before_asking_the_server(tmp_path, fake):
    path = config(tmp_path, {**SERVED, "base_url": fake.url}, {"name": "qlora", "id": "tuned"})
    with pytest.raises(ConfigError, match=r"strategies\[1\]: 'qlora' needs a backend with AdapterHost"):
        run(load_config(path), config_path=path, progress=False)
    assert fake.requests == []  # nothing generated for strategies[0] before the refusal


def test_run_with_served_adapter_sends_its_name(tmp_path, fake):
    strategy = {"name": "qlora", "id": "tuned", "served_adapter": "support-lora"}
    path = config(tmp_path, {**SERVED, "base_url": fake.url}, strategy)
    result = run(load_config(path), config_path=path, progress=False)
    recs = [json.loads(x) for x in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    by_strategy = {r["strategy"] for r in recs}
    assert by_strategy == {"zero_shot", "tuned"}
    models = {r["model"] for r in fake.requests if r.get("path", "").endswith("/completions")}
    assert models == {"tiny", "support-lora"}
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    notes = manifest["strategies"]["tuned"]["cost"]["notes"]
    assert any("served by the server as 'support-lora'" in n for n in notes)


def test_run_with_unlisted_served_adapter_fails_clearly(tmp_path, fake):
    strategy = {"name": "qlora", "id": "tuned", "served_adapter": "nope"}
    path = config(tmp_path, {**SERVED, "base_url": fake.url}, strategy)
    with pytest.raises(
        ModelError, match=r"served_adapter: 'nope' is not served at .*served: tiny, support-lora"
    ):
        run(load_config(path), config_path=path, progress=False)


@pytest.mark.parametrize("backend", [SERVED, {"backend": "llama_cpp"}])
def test_validate_coherence_needs_log_likelihoods(tmp_path, backend):
    path = config(tmp_path, backend, {"name": "rag"})
    data = yaml.safe_load(path.read_text())
    data["metrics"] = ["token_f1", "coherence"]
    path.write_text(yaml.safe_dump(data))
    (line,) = problems(load_config(path))
    assert (
        f"metrics: 'coherence' needs a backend with LogLikelihood; model.backend '{backend['backend']}'"
        in line
    )
