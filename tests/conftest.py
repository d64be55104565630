"""Shared fixtures: a tiny in-process Llama model and the toy eval set (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"
TOY_SET = FIXTURES / "toy_set"
REPO = Path(__file__).resolve().parents[1]


def _corpus() -> list[str]:
    texts = [p.read_text(encoding="utf-8") for p in sorted(TOY_SET.rglob("*.md"))]
    texts += [p.read_text(encoding="utf-8") for p in sorted(TOY_SET.glob("*.jsonl"))]
    return texts


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tests.support.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), corpus=_corpus())


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(path))
    return path


@pytest.fixture()
def write_config(tmp_path, tiny_model_dir):
    """Write a YAML run config for the tiny model + toy set; extra keys override the defaults."""
    import yaml

    def _write(strategies=None, name="config.yaml", **overrides) -> Path:
        data = {
            "model": {"id": str(tiny_model_dir)},
            "eval_set": {"path": str(TOY_SET)},
            "strategies": strategies or [{"name": "prompt", "id": "zero_shot"}],
            "generation": {"max_new_tokens": 6, "batch_size": 4},
            "latency_probe": {"requests": 2, "warmup": 0},  # exercised, but cheap
            "output_dir": str(tmp_path / "reports"),
            "cache_dir": str(tmp_path / "cache"),
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return path

    return _write
