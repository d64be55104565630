"""The one seam through which strategies generate text.

``TransformersBackend`` does left-padded, batched, greedy (or sampled) generation with the KV cache.
A vLLM or llama.cpp backend implements the same ``GenerationBackend`` protocol in its own module.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from harness.config import GenerationConfig
from harness.models import LoadedModel

Message = dict[str, str]
Prompt = list[Message]


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    new_tokens: int
    prompt_truncated: bool = False


@dataclass
class BatchGeneration:
    generations: list[Generation]
    seconds: float

    @property
    def new_tokens(self) -> int:
        return sum(g.new_tokens for g in self.generations)


class GenerationBackend(Protocol):
    context_window: int

    def render(self, prompt: Prompt) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def generate(
        self, prompts: list[Prompt], params: GenerationConfig, adapter: str | None = None
    ) -> BatchGeneration: ...


def cut_at_stop(text: str, stops: list[str]) -> str:
    cut = len(text)
    for stop in stops:
        idx = text.find(stop)
        if 0 <= idx < cut:
            cut = idx
    return text[:cut].strip()


class TransformersBackend:
    """Generation with a loaded transformers model; optional peft adapters selected per call."""

    name = "transformers"

    def __init__(self, loaded: LoadedModel, model_cfg: Any = None, cache_dir: Any = None):
        self.loaded = loaded
        self.model_cfg = model_cfg  # ModelConfig and cache folder: needed for training copies only
        self.cache_dir = cache_dir
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.context_window = loaded.info.context_window
        self.device = loaded.info.device
        self.merged_adapter: str | None = None

    # -- prompts -------------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str:
        """Chat template when the tokenizer has one; otherwise a plain 'Role: text' transcript."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in prompt]
        return "\n\n".join(lines) + "\n\nAssistant:"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def describe(self) -> dict[str, Any]:
        return {**self.loaded.to_manifest(), "backend": self.name}

    # -- training (TrainableBase) ----------------------------------------------------------------
    def training_copy(self, quantization: str) -> LoadedModel:
        """A separate, freshly loaded copy of the base (never the shared inference model)."""
        from harness.models import load_model

        if self.model_cfg is None:
            raise RuntimeError("this backend was opened without a model config: no training copies")
        return load_model(self.model_cfg, self.cache_dir, quantization=quantization)

    def base_fingerprint(self) -> dict[str, Any]:
        """Identity of the base weights (id, revision, parameters; local folder, config hash, file sizes)."""
        import hashlib
        from pathlib import Path

        from harness.models import resolve_source

        info = self.loaded.info
        fp: dict[str, Any] = {"id": info.id, "revision": info.revision, "parameters": info.parameters}
        if self.model_cfg is not None:
            path = Path(resolve_source(self.model_cfg, self.cache_dir)[0])
            if path.is_dir():
                cfg_file = path / "config.json"
                fp["path"] = str(path.resolve())
                fp["config_sha256"] = (
                    hashlib.sha256(cfg_file.read_bytes()).hexdigest() if cfg_file.is_file() else None
                )
                fp["weights"] = sorted((p.name, p.stat().st_size) for p in path.glob("*.safetensors"))
        return fp

    # -- adapters ------------------------------------------------------------------------------
    def load_adapter(self, path: str, name: str) -> None:
        """Attach a peft adapter to the shared base (no second copy of the base weights)."""
        from peft import PeftModel

        self._unmerge()
        if isinstance(self.model, PeftModel):
            if name not in self.model.peft_config:
                self.model.load_adapter(path, adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        self.model.eval()

    def merge_adapter(self, name: str) -> None:
        """Fold adapter ``name`` into the base weights for faster generation with it (full-precision bases).

        Any other request (another adapter, or none) unmerges first, restoring the base up to float rounding.
        """
        self._unmerge()
        self.model.set_adapter(name)
        self.model.merge_adapter([name])
        self.merged_adapter = name

    def adapter_nll(self, name: str | None, rows: list[dict[str, list[int]]], batch_size: int = 8) -> float:
        """Token-weighted mean completion NLL of ``rows`` with adapter ``name`` active (None = base)."""
        from harness.backends.likelihood import completion_tokens, masked_mean_nll

        with self._adapter_context(name):
            means = masked_mean_nll(self.model, rows, self.tokenizer.pad_token_id, batch_size)
        weights = [completion_tokens(r) for r in rows]
        return sum(m * w for m, w in zip(means, weights, strict=True) if w) / max(1, sum(weights))

    def _unmerge(self) -> None:
        if self.merged_adapter is not None:
            self.model.unmerge_adapter()
            self.merged_adapter = None

    def _adapter_context(self, adapter: str | None):
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            if adapter is not None:
                raise ValueError(f"adapter {adapter!r} requested but none is loaded")
            return contextlib.nullcontext()
        if adapter is not None and adapter == self.merged_adapter:
            return contextlib.nullcontext()
        self._unmerge()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    # -- generation ----------------------------------------------------------------------------
    def _encode(
        self, prompts: list[Prompt], max_new_tokens: int
    ) -> tuple[dict[str, torch.Tensor], list[int], list[bool]]:
        budget = max(8, self.context_window - max_new_tokens)
        texts = [self.render(p) for p in prompts]
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        truncated = [len(x) > budget for x in ids]
        # Keep the end of an over-long prompt: the question and the generation prompt live there.
        ids = [x[-budget:] for x in ids]
        lengths = [len(x) for x in ids]
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        return {k: v.to(self.model.device) for k, v in batch.items()}, lengths, truncated

    def generate(
        self, prompts: list[Prompt], params: GenerationConfig, adapter: str | None = None
    ) -> BatchGeneration:
        inputs, lengths, truncated = self._encode(prompts, params.max_new_tokens)
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "use_cache": True,
        }
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode(), self._adapter_context(adapter):
            out = self.model.generate(**inputs, **kwargs)
        if self.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        new = out[:, inputs["input_ids"].shape[1] :]
        stop_ids = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        gen_cfg = getattr(self.model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        stop_ids.update(eos if isinstance(eos, list) else [eos])
        stop_ids.discard(None)
        results = []
        for row, n_prompt, trunc in zip(new.tolist(), lengths, truncated, strict=True):
            n_new = next((i + 1 for i, tok in enumerate(row) if tok in stop_ids), len(row))
            text = self.tokenizer.decode(row[:n_new], skip_special_tokens=True)
            results.append(Generation(cut_at_stop(text, params.stop), n_prompt, n_new, trunc))
        return BatchGeneration(results, seconds)
