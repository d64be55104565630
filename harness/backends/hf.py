"""``TransformersBackend``: a locally loaded transformers model (the default backend, name "transformers").

Left-padded, batched, greedy (or sampled) generation with the KV cache; optional peft adapters on the
shared base, selected per ``generate`` call; completion log-likelihoods for perplexity; a fresh copy of the
base for adapter training. Other engines (vLLM, llama.cpp) implement the ``harness.backends.base``
protocols in their own module and register under their own name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from harness.backends import (
    continuous,
    decode_attention,
    hub_traffic,
    kv_buffers,
    lm_head,
    packed_linear,
    register_backend,
    shared_prefix,
    switched_on,
)
from harness.backends.base import BatchGeneration, Generation, Prompt, cut_at_stop
from harness.backends.hf_adapters import AdapterSwitching
from harness.backends.likelihood import (
    masked_mean_nll,
    rows_from_masks,
    shared_context_nll,
    shares_contexts,
    token_mean_nll,
)
from harness.backends.loading import LoadedModel, cache_root, load_model, resolve_source
from harness.backends.prefix_cache import (
    PrefixCache,
    cache_kwarg,
    compute_prefix_kv,
    enabled_by_env,
    expand,
    layout,
)
from harness.backends.stopping import FirstTokenStreamer, StopStrings, end_ids, row_length
from harness.config import GenerationConfig, ModelConfig
from harness.latency import mark_cached_prefix, probing


@register_backend("transformers")
class TransformersBackend(AdapterSwitching):
    """Generation with a loaded transformers model; optional peft adapters selected per call."""

    name = "transformers"

    def __init__(
        self, loaded: LoadedModel, model_cfg: ModelConfig | None = None, cache_dir: Path | None = None
    ):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        # the library's stop-string criteria, built once per stop tuple
        self.stops = StopStrings(self.tokenizer)
        self.context_window = loaded.info.context_window
        self.device = loaded.info.device
        self.merged_adapter: str | None = None
        self.model_cfg = model_cfg or ModelConfig(
            id=loaded.info.id, revision=loaded.info.revision, trust_remote_code=loaded.info.trust_remote_code
        )
        self.cache_dir = cache_dir
        # Rendered prompt text -> token ids: a prompt tokenised to fit the window (RAG) or to sort a batch
        # by length is not tokenised again when it is generated. Bounded; cleared when full.
        self._ids_cache: dict[str, list[int]] = {}
        # Static KV cache + torch.compile: helps on GPU for repeated batch shapes; off by default (on CPU and
        # for the demo's varying shapes recompilation costs more than it saves). ADAPTBENCH_STATIC_CACHE=1.
        self.static_cache = os.environ.get("ADAPTBENCH_STATIC_CACHE", "") == "1"
        # Shared-prompt-prefix KV reuse (harness/backends/prefix_cache.py); ADAPTBENCH_PREFIX_CACHE=0 turns it
        # off. Not combined with the static cache, which owns its own preallocated cache.
        self.prefix_cache = PrefixCache() if enabled_by_env() and not self.static_cache else None
        self._cache_kwarg = cache_kwarg()
        # The LM head gets a contiguous input and, on bf16/fp16 models, fp32 logits for the top candidates
        # (harness/backends/lm_head.py); ADAPTBENCH_EXACT_LOGITS=0 leaves the head as the model computes it.
        self.exact_logits = lm_head.install(self.model, exact=switched_on("ADAPTBENCH_EXACT_LOGITS"))
        # bf16 linears on CPU generate (prefill and decoding steps) from weights packed once for oneDNN instead
        # of at every call (harness/backends/packed_linear.py; bit-identical), except the decoding steps of a
        # single prompt (PyTorch's gemv, faster at one row). Off with the static cache (compiled).
        self.packed = (
            packed_linear.install(self.model) if self.device == "cpu" and not self.static_cache else None
        )
        # Decoding steps without a mask (single requests, unpadded batches) on CPU run sdpa with the query
        # heads of each key/value head packed as rows, not its slower grouped-query kernel
        # (harness/backends/decode_attention.py). Off with the static cache (compiled).
        self.decode_attention = (
            decode_attention.install(self.model) if self.device == "cpu" and not self.static_cache else False
        )
        # Greedy batches decode with continuous batching: a finished row leaves, a waiting prompt takes its
        # slot (harness/backends/continuous.py). ADAPTBENCH_CONTINUOUS=0 turns it off.
        self.continuous = (
            continuous.enabled_by_env()
            and not self.static_cache
            and continuous.plain_cache(self.model.config)
        )
        self.continuous_stats = continuous.DecodeStats()
        # KV caches grow in place instead of by a copy per step (harness/backends/kv_buffers.py);
        # ADAPTBENCH_KV_BUFFERS=0 turns it off. The static cache preallocates its own.
        self.kv_buffers = kv_buffers.enabled_by_env() and not self.static_cache
        # Continuous batches keep a shared prompt prefix once and attend to it once for all rows
        # (harness/backends/shared_prefix.py), where the attention is decode_attention's; needs kv_buffers.
        self.shared_prefix = self.kv_buffers and self.decode_attention and shared_prefix.enabled_by_env()

    @classmethod
    def open(cls, model_cfg: ModelConfig, cache_dir: Path) -> TransformersBackend:
        return cls(load_model(model_cfg, cache_dir), model_cfg, cache_dir)

    def describe(self) -> dict[str, Any]:
        """The manifest's ``model`` entry."""
        return {
            **asdict(self.loaded.info),
            "backend": self.name,
            "prefix_cache": self.prefix_cache is not None,
            "exact_top_logits": self.exact_logits,
            "packed_linear": self.packed is not None,
            "fused_projections": len(self.packed.sibling_groups) if self.packed is not None else 0,
            "one_row_gemv": self.packed is not None and self.packed.gemv,
            "decode_attention": self.decode_attention,
            "continuous_batching": self.continuous,
            "kv_buffers": self.kv_buffers,
            "shared_prefix_attention": self.shared_prefix,
            "hub_kernels": hub_traffic.allowed(),
        }

    # -- prompts -------------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str:
        """Chat template when the tokenizer has one; otherwise a plain 'Role: text' transcript."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in prompt]
        return "\n\n".join(lines) + "\n\nAssistant:"

    def count_tokens(self, text: str) -> int:
        return len(self._ids(text))

    # -- generation ----------------------------------------------------------------------------
    def _prompt_ids(self, prompts: list[Prompt], max_new_tokens: int) -> tuple[list[list[int]], list[bool]]:
        budget = max(8, self.context_window - max_new_tokens)
        ids = [self._ids(self.render(p)) for p in prompts]
        truncated = [len(x) > budget for x in ids]
        # Keep the end of an over-long prompt: the question and the generation prompt live there.
        return [x[-budget:] for x in ids], truncated

    def _encode(
        self, prompts: list[Prompt], max_new_tokens: int
    ) -> tuple[dict[str, torch.Tensor], list[int], list[bool]]:
        ids, truncated = self._prompt_ids(prompts, max_new_tokens)
        return self._padded(ids), [len(x) for x in ids], truncated

    def _padded(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """``ids`` left-padded into one batch (``input_ids``, ``attention_mask``) on the model's device."""
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        return {k: v.to(self.model.device) for k, v in batch.items()}

    def _with_prefix(
        self, ids: list[list[int]], adapter: str | None, max_new: int, share: bool = False
    ) -> dict[str, Any] | None:
        """``generate`` inputs reusing a cached shared prefix of ``ids`` (computed now if new), or ``None``;
        the cache has room for the suffixes and ``max_new`` tokens more, and with ``share`` (continuous
        batches) keeps the prefix once for all rows where shared-prefix attention is on.

        Called after ``select_adapter(adapter)``: the merged state read here is the one in effect."""
        cache = self.prefix_cache
        if cache is None:
            return None
        mark_cached_prefix(0)  # a latency-probe request records what it took from the cache
        weights = (adapter, self.merged_adapter)
        prefix = cache.choose(weights, ids)
        if prefix is None:
            return None
        kv = cache.get(weights, prefix)
        if kv is None:
            kv = compute_prefix_kv(self.model, prefix, self.model.device)
            if kv is None:
                cache.supported = False  # e.g. sliding-window layers: this model always takes the plain path
                return None
            cache.put(weights, prefix, kv)
            cache.stats.computed += 1
            cache.stats.tokens_saved += len(prefix) * (len(ids) - 1)
        else:
            cache.stats.hits += 1
            cache.stats.tokens_saved += len(prefix) * len(ids)
            mark_cached_prefix(len(prefix))
        inputs = layout(len(prefix), ids, self._pad_id(), self.model.device)
        room = inputs["input_ids"].shape[1] - len(prefix) + max_new
        copied = None
        if share and self.shared_prefix and shared_prefix.worth_sharing(len(prefix), len(ids)):
            copied = shared_prefix.shared_cache(kv, len(ids), room)
        # A single request's cache is small: there the copy per step costs less than the buffers' bookkeeping.
        if copied is None and self.kv_buffers and (share or len(ids) > 1):
            copied = kv_buffers.repeated(kv, len(ids), room)
        inputs[self._cache_kwarg] = copied if copied is not None else expand(kv, len(ids))
        return inputs

    def _empty_cache(self, width: int, max_new: int) -> Any:
        """A new KV cache for rows of up to ``width`` prompt tokens and ``max_new`` new ones."""
        from transformers.cache_utils import DynamicCache

        if self.kv_buffers:
            return kv_buffers.empty_cache(self.model.config, width + max_new)
        return DynamicCache(config=self.model.config)

    def generate(
        self, prompts: list[Prompt], params: GenerationConfig, adapter: str | None = None
    ) -> BatchGeneration:
        ids, truncated = self._prompt_ids(prompts, params.max_new_tokens)
        lengths = [len(x) for x in ids]
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "use_cache": True,
        }
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.static_cache:
            kwargs["cache_implementation"] = "static"
        if probing():  # a latency-probe request: observe when the first new token exists
            kwargs["streamer"] = FirstTokenStreamer()
        stop_ids = end_ids(self.tokenizer, self.model)
        if self.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()  # a new prefix's forward pass is part of this call's time
        with torch.inference_mode(), self._one_row(len(ids)):
            self.select_adapter(adapter)  # a no-op when the strategy put it in place untimed beforehand
            if self._continues(params, len(ids)):
                stops = tuple(params.stop)
                rows = continuous.decode(
                    self.model,
                    ids,
                    params.batch_size,
                    params.max_new_tokens,
                    stop_ids,
                    continuous.stop_strings_check(self.stops.criteria(stops)) if stops else None,
                    lambda new: self._prefill(new, adapter, params.max_new_tokens),
                    self.continuous_stats,
                    self._cache_kwarg,
                )
            else:
                rows = self._generate(ids, kwargs, params, adapter)
        if self.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        results = []
        for row, n_prompt, trunc in zip(rows, lengths, truncated, strict=True):
            n_new, text = row_length(self.tokenizer, row, stop_ids, params.stop)
            results.append(Generation(cut_at_stop(text, params.stop), n_prompt, n_new, trunc))
        return BatchGeneration(results, seconds)

    def _one_row(self, n: int) -> contextlib.AbstractContextManager[None]:
        """A call of one prompt decodes its steps through PyTorch's gemv (packed_linear.py); batches never."""
        return self.packed.one_row_gemv() if self.packed is not None and n == 1 else contextlib.nullcontext()

    def _continues(self, params: GenerationConfig, n: int) -> bool:
        """Continuous batching for this call: greedy, more than one row, not a latency-probe request (whose
        first token is observed through ``generate``'s streamer), and nothing that changes the logits."""
        return (
            self.continuous
            and n > 1
            and params.temperature <= 0
            and not probing()
            and continuous.plain_greedy(getattr(self.model, "generation_config", None))
        )

    def _generate(
        self, ids: list[list[int]], kwargs: dict[str, Any], params: GenerationConfig, adapter: str | None
    ) -> list[list[int]]:
        """The library's ``generate`` on one left-padded batch; each row's new tokens (pads after a finished
        row included: ``stopping.row_length`` cuts them)."""
        inputs = self._with_prefix(ids, adapter, params.max_new_tokens) or self._padded(ids)
        width = inputs["input_ids"].shape[1]
        if self._cache_kwarg not in inputs and self.kv_buffers and len(ids) > 1:
            inputs[self._cache_kwarg] = self._empty_cache(width, params.max_new_tokens)
        if params.stop:
            # Per-row stopping inside generate: a row that produced a stop string is finished (pads
            # from then on), and the batch ends as soon as every row is finished, instead of running
            # to max_new_tokens and cutting the text afterwards. Greedy text is unchanged (cut below).
            kwargs["stopping_criteria"] = self.stops.for_generate(tuple(params.stop), width)
        out = self.model.generate(**inputs, **kwargs)
        return out[:, width:].tolist()

    def _prefill(
        self, ids: list[list[int]], adapter: str | None, max_new: int
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Forward inputs for rows joining a continuous batch: through the prefix cache when it has (or
        now computes) their shared prefix, else one left-padded batch on an empty cache."""
        inputs = self._with_prefix(ids, adapter, max_new, share=True)
        if inputs is None:
            plain = self._padded(ids)
            width = plain["input_ids"].shape[1]
            return plain["input_ids"], plain["attention_mask"], self._empty_cache(width, max_new)
        cache = inputs[self._cache_kwarg]
        return inputs["input_ids"][:, cache.get_seq_length() :], inputs["attention_mask"], cache

    # -- log-likelihood (LogLikelihood) --------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        config = getattr(self.model, "config", None)
        return int(getattr(config, "vocab_size", None) or len(self.tokenizer))

    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _ids(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added), memoised: callers get a copy-safe list."""
        ids = self._ids_cache.get(text)
        if ids is None:
            if len(self._ids_cache) >= 512:
                self._ids_cache.clear()
            ids = self._ids_cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return list(ids)

    def completion_nll(
        self,
        contexts: list[Prompt],
        completions: list[str],
        batch_size: int = 8,
        max_completion_tokens: int = 256,
    ) -> list[float | None]:
        """Mean NLL per completion token given the rendered context, adapters off; ``None`` when empty.

        An over-long context keeps its end (as in generation), so context + completion fit the window.
        """
        window = int(self.context_window or 2048)
        positions: list[int] = []
        rows: list[tuple[list[int], int]] = []
        out: list[float | None] = [None] * len(completions)
        for i, (context, completion) in enumerate(zip(contexts, completions, strict=True)):
            ans = self._ids(completion)[:max_completion_tokens] if completion and completion.strip() else []
            if not ans:
                continue
            ctx = self._ids(self.render(context))
            ctx = ctx[-max(1, window - len(ans)) :]
            positions.append(i)
            rows.append((ctx + ans, len(ctx)))
        if rows:
            with self._no_packing():  # packs released first: an unmerge then re-packs nothing
                self.select_adapter(None)
                if shares_contexts(self.model) and all(n_ctx >= 1 for _, n_ctx in rows):
                    values = shared_context_nll(
                        self.model, rows, self._pad_id(), batch_size, self._cache_kwarg
                    )
                else:
                    values = masked_mean_nll(self.model, rows, self._pad_id(), batch_size)
            for pos, value in zip(positions, values, strict=True):
                out[pos] = float(value)
        return out

    # -- adapter validation loss (AdapterHost) -------------------------------------------------
    def adapter_nll(self, name: str | None, rows: list[dict[str, list[int]]], batch_size: int = 8) -> float:
        """Token-weighted mean completion loss of tokenised rows with adapter ``name`` (``None``: base)."""
        with self._no_packing():
            self.select_adapter(name)
            return token_mean_nll(self.model, rows_from_masks(rows), self._pad_id(), batch_size)

    # -- training (TrainableBase) --------------------------------------------------------------
    def training_copy(self, quantization: str) -> LoadedModel:
        """A freshly loaded copy of the base (never the shared inference model) for a trainer.

        A merged adapter is unmerged first: its saved base weights (a bf16/fp16 merge keeps them) would
        otherwise stay resident through training, the run's memory peak; the next request re-merges."""
        self._unmerge()
        if self.packed is not None:
            self.packed.release()  # rebuilt when decoding resumes
        return load_model(self.model_cfg, self._cache(), quantization=quantization)

    def _no_packing(self) -> contextlib.AbstractContextManager[None]:
        """Likelihood passes do not decode: no packed weights beside their activations."""
        return self.packed.suspended() if self.packed is not None else contextlib.nullcontext()

    def base_fingerprint(self) -> dict[str, Any]:
        """Identity of the base weights an adapter is trained on (id, revision, and local file sizes)."""
        cfg, info = self.model_cfg, self.loaded.info
        fp: dict[str, Any] = {"id": cfg.id, "revision": info.revision, "parameters": info.parameters}
        source, _ = resolve_source(cfg, self._cache())
        path = Path(source)
        if path.is_dir():
            fp["path"] = str(path.resolve())  # peft records it as base_model_name_or_path
            cfg_file = path / "config.json"
            fp["config_sha256"] = (
                hashlib.sha256(cfg_file.read_bytes()).hexdigest() if cfg_file.is_file() else None
            )
            fp["weights"] = sorted((p.name, p.stat().st_size) for p in path.glob("*.safetensors"))
        return fp

    def _cache(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else cache_root()
