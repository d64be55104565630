"""The strategy protocol: ``prepare(ctx)`` once (cached work: indexes, adapters), then ``predict(batch)``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from harness.config import RunConfig
from harness.data import EvalSet
from harness.generation import BatchGeneration, GenerationBackend, Prompt


class Params(BaseModel):
    """Base for strategy parameters: unknown keys are config errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class RunContext:
    """Everything a strategy may use; shared by all strategies of a run (one base model)."""

    config: RunConfig
    eval_set: EvalSet
    backend: GenerationBackend
    run_dir: Path
    cache_dir: Path
    seed: int
    loaded_model: Any = None  # harness.models.LoadedModel for backends that own one
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("adaptbench"))

    @property
    def generation(self):  # the plan's RunContext.generation (shim until harness/plugin.py lands)
        return self.config.generation


@dataclass
class Answer:
    """One prediction. ``latency_s`` is the example's share of its batch's wall time."""

    text: str
    latency_s: float
    batch_seconds: float
    batch_size: int
    new_tokens: int
    prompt_tokens: int
    prompt_truncated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Strategy:
    """Subclass, set ``name`` and ``Params``, decorate with ``@register``.

    ``cost`` collects what the report needs to compare strategies beyond accuracy, using these keys
    where they apply: ``train_seconds``, ``index_build_seconds``, ``peak_memory_bytes``,
    ``adapter_bytes``, ``index_bytes``, ``training`` (loss curve etc.), ``notes`` (list of str).
    """

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params

    def __init__(self, strategy_id: str, params: Params):
        self.id = strategy_id
        self.params = params
        self.ctx: RunContext | None = None
        self.cost: dict[str, Any] = {}
        self.adapter: str | None = None

    def prepare(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def build_prompt(self, example: dict[str, Any]) -> tuple[Prompt, dict[str, Any]]:
        """Return the chat prompt for one example and extra fields to record with its prediction."""
        raise NotImplementedError

    def predict(self, batch: list[dict[str, Any]]) -> list[Answer]:
        assert self.ctx is not None, "prepare() must run before predict()"
        built = [self.build_prompt(ex) for ex in batch]
        result = self.ctx.backend.generate(
            [p for p, _ in built], self.ctx.config.generation, adapter=self.adapter
        )
        return answers_from(result, [extra for _, extra in built])


def answers_from(result: BatchGeneration, extras: list[dict[str, Any]]) -> list[Answer]:
    n = len(result.generations)
    return [
        Answer(
            text=g.text,
            latency_s=result.seconds / n,
            batch_seconds=result.seconds,
            batch_size=n,
            new_tokens=g.new_tokens,
            prompt_tokens=g.prompt_tokens,
            prompt_truncated=g.prompt_truncated,
            extra=extra,
        )
        for g, extra in zip(result.generations, extras, strict=True)
    ]
