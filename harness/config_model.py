"""The ``model:`` config section: which model, how it is loaded, and how a served one is reached."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

DEFAULT_MODEL = "smollm2-135m-instruct"


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid")


class ModelConfig(StrictModel):
    backend: str = Field(
        "transformers", min_length=1, description="registered backend name (see harness.backends)"
    )
    id: str = Field(DEFAULT_MODEL, description="built-in alias, Hugging Face model id or local path")
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quantization: Literal["none", "4bit", "8bit"] = "none"
    trust_remote_code: bool = False
    allow_pickle: bool = Field(
        False,
        description="load pickle (.bin/.pt) checkpoints; they can run arbitrary code when loaded, so "
        "only for files you trust. Default: safetensors only",
    )
    max_context: int | None = Field(None, gt=0, description="override the model's context window (tokens)")
    # -- served models (``backend: openai``; see docs/scaling.md) -------------------------------------
    base_url: str | list[str] | None = Field(
        None, description="OpenAI-compatible server URL, or a list served round-robin (a vLLM fleet)"
    )
    api_key_env: str | None = Field(
        None, description="name of the environment variable holding the API key (the key is never stored)"
    )
    endpoint: Literal["chat", "completions"] = Field(
        "chat",
        description="chat: /chat/completions (server applies the chat template); completions: /completions",
    )
    concurrency: int = Field(4, gt=0, description="requests in flight at once (per run, across base_urls)")
    timeout_s: float = Field(120.0, gt=0, description="socket timeout of one request")
    max_retries: int = Field(5, ge=0, description="retries on 429/5xx/connection errors/timeouts")
    retry_backoff_s: float = Field(0.5, gt=0, description="first backoff; doubles per retry, with jitter")
    tokenizer: str | None = Field(
        None, description="local tokenizer path/id for token counts and rendering; null = ~4 chars a token"
    )

    @field_validator("base_url")
    @classmethod
    def _urls(cls, value: str | list[str] | None) -> str | list[str] | None:
        urls = [value] if isinstance(value, str) else (value or [])
        if isinstance(value, list) and not value:
            raise ValueError("give at least one URL")
        for url in urls:
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"{url!r} is not an http(s) URL, e.g. http://127.0.0.1:8000/v1")
            if "@" in url.split("://", 1)[1].split("/", 1)[0]:
                raise ValueError("no credentials in URLs (they would be saved with the run); use api_key_env")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _key_env(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(
                "must be the NAME of an environment variable (e.g. OPENAI_API_KEY), never the key itself"
            )
        return value

    @model_validator(mode="after")
    def _served(self) -> ModelConfig:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs model.base_url (e.g. http://127.0.0.1:8000/v1)")
        if self.backend == "transformers" and self.base_url:
            raise ValueError("model.base_url is only read by served backends; set model.backend: openai")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        """Leave keys added after run folders existed (served-model keys, ``allow_pickle``) out while at
        their defaults, so older run folders keep the same fingerprint (and resume)."""
        data = handler(self)
        for name in (*SERVED_FIELDS, "allow_pickle"):
            if name in data and getattr(self, name) == ModelConfig.model_fields[name].default:
                del data[name]
        return data


SERVED_FIELDS = (
    "base_url",
    "api_key_env",
    "endpoint",
    "concurrency",
    "timeout_s",
    "max_retries",
    "retry_backoff_s",
    "tokenizer",
)
