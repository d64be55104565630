"""Backend protocol and optional capabilities (minimal shim on arch/adapters; arch/backends owns this file)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from harness.errors import ModelError
from harness.generation import BatchGeneration, Generation, GenerationBackend, Message, Prompt, cut_at_stop

__all__ = [
    "AdapterHost",
    "BatchGeneration",
    "Generation",
    "GenerationBackend",
    "Message",
    "Prompt",
    "TrainableBase",
    "cut_at_stop",
    "require",
]


@runtime_checkable
class AdapterHost(Protocol):
    """LoRA adapters on the shared base."""

    def load_adapter(self, path: str, name: str) -> None: ...

    def merge_adapter(self, name: str) -> None: ...

    def adapter_nll(
        self, name: str | None, rows: list[dict[str, list[int]]], batch_size: int = 8
    ) -> float: ...


@runtime_checkable
class TrainableBase(Protocol):
    """The trainer gets a fresh copy of the base to train."""

    device: str
    tokenizer: Any

    def training_copy(self, quantization: str) -> Any: ...

    def base_fingerprint(self) -> dict[str, Any]: ...


def require(backend: Any, capability: type, who: str) -> Any:
    if not isinstance(backend, capability):
        raise ModelError(
            f"{who} needs {capability.__name__}; backend '{getattr(backend, 'name', type(backend).__name__)}' "
            "does not provide it"
        )
    return backend
