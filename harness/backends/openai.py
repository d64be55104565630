"""``OpenAIBackend`` (name "openai"): generation on an OpenAI-compatible server (vLLM, llama.cpp, TGI, …).

Config (``model.*``): ``backend: openai``, ``base_url`` (one URL, or a list served round-robin — a vLLM
fleet; a retry moves to the next URL, so a dead replica is routed around), ``id`` (the served model
name), ``api_key_env`` (the *name* of an environment variable; the key itself is read at open and never
written anywhere), ``endpoint`` (``chat`` or ``completions``), ``concurrency``, ``timeout_s``,
``max_retries``, ``retry_backoff_s``, ``tokenizer``.

What is approximate, and why (``describe()`` says which applies):

* ``render``: the chat endpoint applies the *server's* chat template, which the harness cannot see;
  ``render`` returns the local tokenizer's template when ``model.tokenizer`` is given, else a plain
  "Role: text" transcript. The completions endpoint sends exactly what ``render`` returns.
* ``count_tokens``: the local tokenizer when ``model.tokenizer`` is given, else ``ceil(chars / 4)``.
  Per-request token counts come from the server's ``usage`` whenever it reports one; the estimate is
  only a fallback.
* No prompt truncation here: an over-long prompt is the server's error (one clear line).

Adapters are served by name: ``generate(..., adapter="x")`` sends ``model: "x"`` — the name given to
``vllm serve --lora-modules x=/path`` (or a llama.cpp server's LoRA alias). Training adapters stays local
(it needs ``TrainableBase``, which a served model does not provide): train with the transformers
backend (``adaptbench train``), then serve the adapter folder and evaluate it by name.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness.backends import register_backend
from harness.backends._http import (
    Endpoint,
    HTTPStatusError,
    RetriesExhausted,
    describe_error,
    get_json,
    post_json,
    post_stream,
    with_retries,
)
from harness.backends.base import BatchGeneration, Generation, Prompt, cut_at_stop
from harness.config import GenerationConfig, ModelConfig
from harness.errors import ConfigError, ModelError
from harness.latency import mark_first_token, probing

log = logging.getLogger(__name__)
CHARS_PER_TOKEN = 4
DEFAULT_CONTEXT = 4096


@register_backend("openai")
class OpenAIBackend:
    """Batched generation as concurrent single requests to one or more OpenAI-compatible servers."""

    name = "openai"

    def __init__(self, cfg: ModelConfig, *, api_key: str | None = None, check_server: bool = True):
        urls = cfg.base_url if isinstance(cfg.base_url, list) else [cfg.base_url or ""]
        self.cfg = cfg
        self.endpoints = [Endpoint.parse(u) for u in urls]
        self._api_key = api_key
        self._next = itertools.cycle(range(len(self.endpoints)))
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="openai")
        self.tokenizer = _load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
        self.stats = {"requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0, "estimated": 0}
        self.served: dict[str, Any] = self._check_server() if check_server else {}
        self.context_window = int(cfg.max_context or self.served.get("max_model_len") or DEFAULT_CONTEXT)

    @classmethod
    def open(cls, model_cfg: ModelConfig, cache_dir: Path) -> OpenAIBackend:
        key = None
        if model_cfg.api_key_env:
            key = os.environ.get(model_cfg.api_key_env)
            if not key:
                raise ConfigError(
                    f"model.api_key_env: environment variable {model_cfg.api_key_env} is not set; "
                    "export it (the key is read from the environment, never from the config)"
                )
        return cls(model_cfg, api_key=key)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        """The manifest's ``model`` entry: where answers came from, and which numbers are estimates."""
        return {
            "backend": self.name,
            "id": self.cfg.id,
            "base_urls": [e.public for e in self.endpoints],
            "endpoint": self.cfg.endpoint,
            "served_model": self.served.get("id", self.cfg.id),
            "concurrency": self.cfg.concurrency,
            "context_window": self.context_window,
            "context_window_source": "model.max_context"
            if self.cfg.max_context
            else ("server" if self.served.get("max_model_len") else f"assumed {DEFAULT_CONTEXT}"),
            "token_counts": "server usage; fallback "
            + (
                f"local tokenizer {self.cfg.tokenizer}"
                if self.tokenizer
                else "estimate ceil(chars/4); streams: one token per content event"
            ),
            "render": (
                "local tokenizer chat template"
                if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None)
                else "plain 'Role: text' transcript"
            )
            + (
                " (approximation: the server applies its own template)" if self.cfg.endpoint == "chat" else ""
            ),
            "api_key_env": self.cfg.api_key_env,
            "device": "remote",
            "dtype": "remote",
            "quantization": "remote",
        }

    # -- prompts -------------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str:
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in prompt]
        return "\n\n".join(lines) + "\n\nAssistant:"

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    # -- generation ----------------------------------------------------------------------------
    def generate(
        self, prompts: list[Prompt], params: GenerationConfig, adapter: str | None = None
    ) -> BatchGeneration:
        """One request per prompt, ``concurrency`` in flight; answers in prompt order.

        Each task runs in a copy of the caller's context so a latency probe's clock
        (``harness.latency``) sees ``mark_first_token`` from the worker thread."""
        start = time.perf_counter()
        futures = [
            self._pool.submit(contextvars.copy_context().run, self._one, p, params, adapter) for p in prompts
        ]
        try:
            results = [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        return BatchGeneration(results, time.perf_counter() - start)

    def _payload(self, prompt: Prompt, params: GenerationConfig, adapter: str | None, stream: bool):
        body: dict[str, Any] = {
            "model": adapter or self.cfg.id,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p if params.temperature > 0 else 1.0,
            "stream": stream,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if stream:
            body["stream_options"] = {"include_usage": True}
        if self.cfg.endpoint == "chat":
            body["messages"] = [{"role": m["role"], "content": m["content"]} for m in prompt]
            return "/chat/completions", body
        body["prompt"] = self.render(prompt)
        return "/completions", body

    def _endpoint(self, attempt: int) -> Endpoint:
        with self._lock:
            return self.endpoints[next(self._next)]

    def _one(self, prompt: Prompt, params: GenerationConfig, adapter: str | None) -> Generation:
        stream = probing()  # stream only when someone times the first token
        route, body = self._payload(prompt, params, adapter, stream)

        def attempt(i: int) -> tuple[str, dict[str, Any]]:
            ep = self._endpoint(i)
            if stream:
                return self._streamed(ep, route, body)
            data = post_json(ep, route, body, self._api_key, self.cfg.timeout_s)
            return _text_of(data.get("choices") or [{}]), data.get("usage") or {}

        try:
            text, usage = with_retries(
                attempt,
                max_retries=self.cfg.max_retries,
                backoff_s=self.cfg.retry_backoff_s,
                on_retry=self._on_retry,
            )
        except RetriesExhausted as exc:
            urls = ", ".join(e.public for e in self.endpoints)
            raise ModelError(
                f"model.base_url: {exc.attempts} attempts to reach {urls} failed "
                f"(last: {describe_error(exc.last)}); check the server is up, or raise model.max_retries"
            ) from None
        except HTTPStatusError as exc:
            hint = " (is model.id / the adapter name served there?)" if exc.status == 404 else ""
            raise ModelError(f"model.base_url: the server refused the request: {exc}{hint}") from None
        return self._generation(prompt, text, usage, params)

    def _streamed(self, ep: Endpoint, route: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        parts: list[str] = []
        usage: dict[str, Any] = {}
        for event in post_stream(ep, route, body, self._api_key, self.cfg.timeout_s):
            piece = _text_of(event.get("choices") or [], delta=True)
            if piece:
                mark_first_token()
                parts.append(piece)
            if event.get("usage"):
                usage = event["usage"]
        if "completion_tokens" not in usage and self.tokenizer is None:
            # No usage in the stream (llama-cpp-python ignores stream_options): servers send about one
            # content event per generated token, a closer estimate than characters / 4.
            usage = {**usage, "completion_tokens": len(parts), "estimated": True}
        return "".join(parts), usage

    def _on_retry(self, i: int, exc: BaseException) -> None:
        with self._lock:
            self.stats["retries"] += 1
        log.warning("openai backend: attempt %d failed (%s); retrying", i + 1, describe_error(exc))

    def _generation(
        self, prompt: Prompt, text: str, usage: dict[str, Any], params: GenerationConfig
    ) -> Generation:
        n_prompt, n_new = usage.get("prompt_tokens"), usage.get("completion_tokens")
        estimated = n_prompt is None or n_new is None or bool(usage.get("estimated"))
        if n_prompt is None:
            n_prompt = self.count_tokens(self.render(prompt))
        if n_new is None:
            n_new = self.count_tokens(text)
        with self._lock:
            self.stats["requests"] += 1
            self.stats["prompt_tokens"] += int(n_prompt)
            self.stats["completion_tokens"] += int(n_new)
            self.stats["estimated"] += int(estimated)
        return Generation(cut_at_stop(text, params.stop), int(n_prompt), int(n_new), False)

    def check_served_adapter(self, name: str) -> None:
        """``ServedAdapters``: every URL must list ``name`` in ``GET /models`` (vLLM lists its
        ``--lora-modules``). llama-cpp-python's server answers *any* model name with its base model, so
        an unlisted name would silently evaluate the base under the adapter's label."""
        for ep in self.endpoints:
            ids = self._model_ids(ep)
            if name not in ids:
                raise ModelError(
                    f"served_adapter: {name!r} is not served at {ep.public} (served: {', '.join(ids) or 'none'}); "
                    "start the server with the adapter under that name (vllm serve --enable-lora "
                    f"--lora-modules {name}=/path/to/adapter)"
                )

    def _model_ids(self, ep: Endpoint) -> list[str]:
        return [str(m.get("id")) for m in self._list_models(ep)]

    def _list_models(self, ep: Endpoint) -> list[dict[str, Any]]:
        try:
            data = with_retries(
                lambda _i: get_json(ep, "/models", self._api_key, self.cfg.timeout_s),
                max_retries=self.cfg.max_retries,
                backoff_s=self.cfg.retry_backoff_s,
            )
        except (RetriesExhausted, HTTPStatusError) as exc:
            last = exc.last if isinstance(exc, RetriesExhausted) else exc
            raise ModelError(
                f"model.base_url: cannot list models at {ep.public} ({describe_error(last)}); "
                "is the server running?"
            ) from None
        return [m for m in (data.get("data") or []) if isinstance(m, dict)]

    # -- server check --------------------------------------------------------------------------
    def _check_server(self) -> dict[str, Any]:
        """``GET /models`` on every URL (with retries): fail early and clearly when a server is down
        or does not serve ``model.id``; learn the context window when the server reports it (vLLM)."""
        found: dict[str, Any] = {}
        for ep in self.endpoints:
            models = self._list_models(ep)
            ids = [str(m.get("id")) for m in models]
            match = next((m for m in models if m.get("id") == self.cfg.id), None)
            if match is None and len(models) != 1:
                raise ModelError(
                    f"model.id: {self.cfg.id!r} is not served at {ep.public} (served: {', '.join(ids) or 'none'})"
                )
            if match is None:  # one model served under another name (llama.cpp serves any name)
                log.warning("model.id %r not listed at %s; it serves %s", self.cfg.id, ep.public, ids[0])
            found = found or (match or models[0])
        return found


def _text_of(choices: list[dict[str, Any]], delta: bool = False) -> str:
    if not choices:
        return ""
    choice = choices[0]
    if "text" in choice:  # completions endpoint
        return choice.get("text") or ""
    message = choice.get("delta" if delta else "message") or {}
    return message.get("content") or ""


def _load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model.tokenizer: cannot load {name!r} ({str(exc).splitlines()[0][:160]})"
        ) from None
