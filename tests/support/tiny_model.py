"""A tiny Llama-architecture model + tokenizer built in-process (no downloads).

Used by the test suite and by CI examples the way ``transformers`` uses tiny-random models:
it exercises every code path (chat template, batching, 4-bit loading, LoRA) in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        unk_token="<unk>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.model_max_length = 512
    return fast


def build_tiny_model(out_dir: str | Path, corpus: Iterable[str] | None = None, seed: int = 0) -> Path:
    """Write a randomly initialised ~0.2M-parameter Llama and its tokenizer to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    text = list(corpus or []) or [
        "What is the return window? The return window is 45 days from delivery.",
        "Hi there! You can pause your membership in the app. — Support Team",
    ]
    tokenizer = build_tokenizer(text)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def randomised_backend(model_dir: str | Path, cache: Path, dtype: str):
    """A transformers backend over the tiny model with weights large enough (N(0, 0.3), norms kept) that
    its greedy answers differ by prompt; the prefix cache off (a prefix computed alone rounds differently
    in bf16, which tests of generation kernels do not test)."""

    from harness.backends.hf import TransformersBackend
    from harness.backends.loading import load_model
    from harness.config import ModelConfig

    backend = TransformersBackend(load_model(ModelConfig(id=str(model_dir), dtype=dtype), cache))
    randomise_weights(backend.model)
    backend.prefix_cache = None
    return backend


def randomise_weights(model, seed: int = 0, draw_dtype=None) -> None:
    """Every weight but the norms redrawn from N(0, 0.3) (seeded, drawn in ``draw_dtype``, float32 by
    default): the tiny model's own init writes the same token whatever the prompt, which would make "same
    tokens" prove nothing."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=draw_dtype) * 0.3)


def attach_strong_adapter(backend, model_dir: str | Path, tmp_path: Path, name: str = "a") -> None:
    """Load a random LoRA adapter (all linear layers, r=4) into ``backend`` as ``name``, the model in float64
    and the adapter's weights scaled 4x, so that its answers differ from the base's."""
    import torch
    from peft import LoraConfig, get_peft_model

    from harness.backends.loading import load_model
    from harness.config import ModelConfig

    donor = load_model(ModelConfig(id=str(model_dir)), tmp_path / "donor").model
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(donor, lora).save_pretrained(tmp_path / "adapter")
    backend.load_adapter(str(tmp_path / "adapter"), name)
    backend.model.to(torch.float64)
    with torch.no_grad():
        for pname, param in backend.model.named_parameters():
            if "lora_" in pname:
                param.mul_(4.0)
