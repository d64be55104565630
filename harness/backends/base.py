"""The backend contract: what strategies and scorers may ask of a model, split into capabilities.

Every backend implements ``GenerationBackend``. The optional capabilities (``LogLikelihood``,
``AdapterHost``, ``TrainableBase``) are separate runtime-checkable protocols; code that needs one asks
for it with ``require(backend, Capability, who)`` and gets one clear error line when it is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from harness.config import GenerationConfig
from harness.errors import ModelError

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


def cut_at_stop(text: str, stops: list[str]) -> str:
    cut = len(text)
    for stop in stops:
        idx = text.find(stop)
        if 0 <= idx < cut:
            cut = idx
    return text[:cut].strip()


@runtime_checkable
class GenerationBackend(Protocol):
    """Required of every backend: chat rendering, token counting, batched generation, a manifest entry."""

    name: str
    context_window: int

    def render(self, prompt: Prompt) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def generate(
        self, prompts: list[Prompt], params: GenerationConfig, adapter: str | None = None
    ) -> BatchGeneration: ...

    def describe(self) -> dict[str, Any]: ...


@runtime_checkable
class LogLikelihood(Protocol):
    """Optional: mean NLL of completions given a rendered chat context (adapters off)."""

    vocab_size: int

    def completion_nll(
        self,
        contexts: list[Prompt],
        completions: list[str],
        batch_size: int = 8,
        max_completion_tokens: int = 256,
    ) -> list[float | None]: ...


@runtime_checkable
class AdapterHost(Protocol):
    """Optional: LoRA adapters attached to the shared base, selected per ``generate`` call."""

    def load_adapter(self, path: str, name: str) -> None: ...

    def merge_adapter(self, name: str) -> None: ...

    def unmerge_adapter(self) -> None: ...

    def adapter_nll(
        self, name: str | None, rows: list[dict[str, list[int]]], batch_size: int = 8
    ) -> float: ...


@runtime_checkable
class ServedAdapters(Protocol):
    """Optional: adapters hosted elsewhere (an inference server), selected by name per ``generate`` call.

    ``check_served_adapter`` raises one clear ``ModelError`` line when the server does not list ``name``;
    some servers (llama-cpp-python's) answer any model name with their base model, so an unchecked name
    would silently evaluate the base as if it were the adapter."""

    def check_served_adapter(self, name: str) -> None: ...


@runtime_checkable
class TrainableBase(Protocol):
    """Optional: a fresh copy of the base for a trainer, and the base's identity for adapter cache keys."""

    device: str
    tokenizer: Any

    def training_copy(self, quantization: str) -> Any: ...

    def base_fingerprint(self) -> dict[str, Any]: ...


def provides(backend_cls: type, capability: type) -> bool:
    """Whether a backend *class* has every method of a method-only capability (checked before a model loads,
    e.g. by ``adaptbench validate``; data members are set per instance, so they cannot be checked here)."""
    methods = [n for n, v in vars(capability).items() if callable(v) and not n.startswith("_")]
    return all(callable(getattr(backend_cls, n, None)) for n in methods)


def require(backend: Any, capability: type, who: str) -> Any:
    """Return ``backend`` if it provides ``capability``; else raise one clear ``ModelError`` line."""
    if isinstance(backend, capability):
        return backend
    name = getattr(backend, "name", type(backend).__name__)
    raise ModelError(f"{who} needs {capability.__name__}; backend '{name}' does not provide it")
