"""Model layer and generation backend on the tiny model: quantised loading, padding, truncation, stops."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from harness.backends.base import cut_at_stop
from harness.backends.hf import TransformersBackend
from harness.backends.loading import load_model
from harness.config import GenerationConfig, ModelConfig
from harness.errors import ModelError

PROMPTS = [
    [{"role": "user", "content": "What is the return window?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How big is the battery of the Stratus?"},
    ],
]


def test_full_precision_load_and_batched_generation_matches_single(tiny_model_dir, tmp_path):
    loaded = load_model(ModelConfig(id=str(tiny_model_dir), dtype="float32"), tmp_path)
    assert (
        loaded.info.device == "cpu" and loaded.info.dtype == "float32" and loaded.info.context_window == 512
    )
    assert loaded.tokenizer.padding_side == "left"
    backend = TransformersBackend(loaded)
    params = GenerationConfig(max_new_tokens=5)
    batch = backend.generate(PROMPTS, params)
    assert len(batch.generations) == 2 and batch.seconds > 0
    assert all(0 < g.new_tokens <= 5 for g in batch.generations)
    # Left padding must not change greedy output: each prompt alone gives the same text.
    for prompt, gen in zip(PROMPTS, batch.generations, strict=True):
        assert backend.generate([prompt], params).generations[0].text == gen.text
    assert "<|im_start|>assistant" in backend.render(PROMPTS[0])


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_on_cpu_is_bf16_only_where_the_cpu_multiplies_bf16(
    tiny_model_dir, tmp_path, monkeypatch, native
):
    import torch

    from harness.backends.loading import resolve_dtype
    from harness.manifest import hardware

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    want = "bfloat16" if native else "float32"
    assert resolve_dtype("auto", "cpu") == getattr(torch, want)
    assert resolve_dtype("float32", "cpu") == torch.float32  # an explicit dtype always wins
    assert hardware()["cpu_native_bf16"] is native  # the manifest says why auto chose what it chose
    loaded = load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path)
    assert loaded.info.dtype == want and next(loaded.model.parameters()).dtype == getattr(torch, want)


@pytest.mark.parametrize(("quant", "layer_cls"), [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_bitsandbytes_quantised_loading(tiny_model_dir, tmp_path, quant, layer_cls):
    loaded = load_model(ModelConfig(id=str(tiny_model_dir), quantization=quant), tmp_path)
    assert type(loaded.model.model.layers[0].self_attn.q_proj).__name__ == layer_cls
    assert loaded.info.quantization == quant
    out = TransformersBackend(loaded).generate(PROMPTS, GenerationConfig(max_new_tokens=3))
    assert all(g.new_tokens > 0 for g in out.generations)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_quantised_cpu_copy_does_not_keep_the_weights_file_mapped(tiny_model_dir, tmp_path, quant):
    """The weights bitsandbytes leaves unquantized own their memory: the safetensors file is unmapped, so the
    pages the quantizer read leave the resident set, and tied weights stay tied."""
    import gc

    import psutil

    loaded = load_model(ModelConfig(id=str(tiny_model_dir), quantization=quant), tmp_path)
    gc.collect()
    files = {str(p.resolve()) for p in Path(tiny_model_dir).glob("*.safetensors")}
    assert files
    mapped = [m.path for m in psutil.Process().memory_maps() if m.path in files]
    assert mapped == []
    model = loaded.model
    if getattr(model.config, "tie_word_embeddings", False):
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    out = TransformersBackend(loaded).generate(PROMPTS, GenerationConfig(max_new_tokens=3))
    assert all(g.new_tokens > 0 for g in out.generations)


def test_tokenizer_without_pad_or_chat_template(tiny_model_dir, tmp_path):
    import json

    copy = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, copy)
    cfg_path = copy / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    loaded = load_model(ModelConfig(id=str(copy)), tmp_path)
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token  # handled, not an error
    backend = TransformersBackend(loaded)
    assert backend.render(PROMPTS[1]).endswith("User: How big is the battery of the Stratus?\n\nAssistant:")
    assert len(backend.generate(PROMPTS, GenerationConfig(max_new_tokens=2)).generations) == 2


def test_over_long_prompt_is_truncated_from_the_left(tiny_model_dir, tmp_path):
    loaded = load_model(ModelConfig(id=str(tiny_model_dir), max_context=64), tmp_path)
    backend = TransformersBackend(loaded)
    long_prompt = [{"role": "user", "content": "filler words " * 200 + "What is the return window?"}]
    out = backend.generate([long_prompt, PROMPTS[0]], GenerationConfig(max_new_tokens=4))
    assert out.generations[0].prompt_truncated and out.generations[0].prompt_tokens == 64 - 4
    assert not out.generations[1].prompt_truncated


def test_not_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"model\.id: cannot load"):
        load_model(ModelConfig(id=str(tmp_path / "junk")), tmp_path)


def test_cuda_requested_without_cuda(tiny_model_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ModelError, match="no CUDA device"):
        load_model(ModelConfig(id=str(tiny_model_dir), device="cuda"), tmp_path)


def test_cut_at_stop():
    assert cut_at_stop("45 days.\n\nAnything else?", ["\n\n"]) == "45 days."
    assert cut_at_stop("no stop here", ["###"]) == "no stop here"
