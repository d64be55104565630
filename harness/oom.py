"""Out-of-memory back-off: halve the batch and retry, down to 1, then one clear error.

Both CUDA (``torch.cuda.OutOfMemoryError``) and host memory (``MemoryError``, or the ``RuntimeError``
torch raises when its CPU allocator fails) count. Whatever was computed before the failure is kept:
``BatchBackoff.run`` yields each sub-batch as soon as it is answered, so the runner appends it at once.
The size that worked is kept for the rest of the strategy (the next batch would fail the same way),
and every halving is recorded so the manifest says the run was not at its configured batch size.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from harness.errors import ModelError

log = logging.getLogger("adaptbench")

T = TypeVar("T")
R = TypeVar("R")

CPU_OOM_MARKERS = ("out of memory", "defaultcpuallocator: can't allocate")


def is_oom(exc: BaseException) -> bool:
    """True for CUDA and host out-of-memory errors, whatever layer re-raised them."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover - torch is a hard dependency
        pass
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in CPU_OOM_MARKERS)


def free_memory() -> None:
    """Drop what the failed attempt allocated before trying again."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def oom_error(who: str, why: str, what: str) -> ModelError:
    return ModelError(
        f"{who}: out of memory even at {what} 1 ({why}); use a smaller "
        "model, model.quantization: 4bit, a lower generation.max_new_tokens or shorter prompts"
    )


class BatchBackoff:
    """Per-strategy batch size that halves on out-of-memory; ``events`` records each halving."""

    def __init__(self, who: str, batch_size: int):
        self.who = who
        self.configured = batch_size
        self.size = batch_size
        self.events: list[dict[str, Any]] = []

    def run(self, fn: Callable[[list[T]], R], batch: list[T]) -> Iterator[tuple[list[T], R]]:
        """Call ``fn`` on ``batch`` in chunks of the current size; yield ``(chunk, result)`` as each ends."""
        i = 0
        while i < len(batch):
            chunk = batch[i : i + self.size]
            try:
                result = fn(chunk)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                why = f"{type(exc).__name__}: {_first_line(exc)}"
                del exc  # its traceback holds the failed attempt's tensors
                free_memory()
                if len(chunk) <= 1:
                    raise oom_error(self.who, why, "batch size") from None
                self._halve(len(chunk), why)
                continue
            i += len(chunk)
            yield chunk, result

    def _halve(self, failed: int, why: str) -> None:
        new = max(1, (failed + 1) // 2)  # halve, rounding up: 6 -> 3 -> 2 -> 1
        self.events.append({"from": failed, "to": new, "error": why})
        log.warning("%s: out of memory at batch size %d; retrying at %d", self.who, failed, new)
        self.size = new

    def manifest(self) -> dict[str, Any]:
        """What the manifest records per strategy (empty when no halving happened)."""
        if not self.events:
            return {}
        return {
            "batch_size_configured": self.configured,
            "batch_size_used": self.size,
            "oom_retries": self.events,
        }


def retry_halving(
    who: str, size: int, fn: Callable[[int], R], what: str = "batch size"
) -> tuple[R, list[dict[str, Any]]]:
    """Call ``fn(size)``; on out-of-memory halve ``size`` and call again, down to 1 (training)."""
    events: list[dict[str, Any]] = []
    while True:
        try:
            return fn(size), events
        except Exception as exc:
            if not is_oom(exc):
                raise
            why = f"{type(exc).__name__}: {_first_line(exc)}"
            del exc
            free_memory()
            if size <= 1:
                raise oom_error(who, why, what) from None
            events.append({"from": size, "to": size // 2, "error": why})
            log.warning("%s: out of memory at %s %d; retrying at %d", who, what, size, size // 2)
            size //= 2
