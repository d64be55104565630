"""The strategy contract (plugin API) and the strategy registry.

A strategy is a ``Strategy`` subclass with a registry ``name`` and a pydantic ``Params`` class, decorated
with ``@register``. The runner builds it from the config (``build``), calls ``prepare(ctx)`` exactly once
per run, then ``predict(batch)`` per batch, and times each ``predict`` call itself. ``RunContext`` is all a
strategy may use of the run: the eval set, the backend, generation settings, seed and folders.

Shipped strategies are found by importing every module of the ``strategies`` package by name (the
harness never imports them statically); third-party ones through the ``adaptbench.strategies``
entry-point group.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from harness.backends.base import BatchGeneration, GenerationBackend, Prompt
from harness.config import GenerationConfig, StrategySpec, validation_message
from harness.data import EvalSet
from harness.errors import ConfigError

STRATEGY_PACKAGE = "strategies"
ENTRY_POINT_GROUP = "adaptbench.strategies"


class Params(BaseModel):
    """Base for strategy parameters: unknown keys are config errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class RunContext:
    """What a strategy may use; shared by all strategies of a run (one backend, one base model)."""

    eval_set: EvalSet
    backend: GenerationBackend
    generation: GenerationConfig
    seed: int
    cache_dir: Path
    run_dir: Path
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("adaptbench"))


@dataclass
class Answer:
    """One prediction. Timing per example is the runner's job (it times each ``predict`` call)."""

    text: str
    new_tokens: int
    prompt_tokens: int
    prompt_truncated: bool = False
    contexts: list[str] | None = None  # texts the answer was grounded on (faithfulness input)
    retrieved_ids: list[str] | None = None  # document ids in rank order (retrieval metrics input)
    generation_seconds: float | None = None  # the backend's own generate() time for the batch
    extra: dict[str, Any] = field(default_factory=dict)  # anything else to record (shot_ids, ...)


class Strategy:
    """Subclass, set ``name`` and ``Params``, decorate with ``@register``.

    ``cost`` collects what the report needs to compare strategies beyond accuracy, using these keys
    where they apply: ``train_seconds``, ``index_build_seconds``, ``peak_memory_bytes``,
    ``adapter_bytes``, ``index_bytes``, ``training`` (loss curve etc.), ``notes`` (list of str).
    A strategy that trains something offline also defines ``train(ctx)`` (``adaptbench train``).
    """

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params

    def __init__(self, strategy_id: str, params: Params):
        self.id = strategy_id
        self.params = params
        self.ctx: RunContext | None = None
        self.cost: dict[str, Any] = {}

    def validate(self, eval_set: EvalSet) -> list[str]:
        """Problems ``prepare`` would hit with this eval set, found without a model (``adaptbench validate``).

        Cheap checks only (split sizes, KB present, files exist): no model, no index, no training. Each
        item is ``"<param>: <problem and fix>"``; the caller prefixes ``strategies[i]``. Optional: the
        default finds nothing.
        """
        return []

    def required_capabilities(self) -> dict[str, str]:
        """Optional backend capabilities ``prepare`` needs: ``{protocol name in harness.backends.base: what
        to do when model.backend lacks it}``. Checked by ``adaptbench validate`` and before a run loads the
        model, so a strategy the backend cannot serve is one line, not a failure after other strategies ran.
        """
        return {}

    def prepare(self, ctx: RunContext) -> None:
        """Called exactly once per run, before the first ``predict``."""
        self.ctx = ctx

    def predict(self, batch: list[dict[str, Any]]) -> list[Answer]:
        raise NotImplementedError

    def activate(self) -> None:
        """Put the shared backend state this strategy answers with in place (e.g. merge its adapter), outside
        any timed window: the runner calls it before each batch, the latency probe before each request, so
        interleaved strategies are each measured as they are served. Optional: the default does nothing."""

    def length_key(self, example: dict[str, Any]) -> int:
        """How long this example's prompt is, roughly: the runner groups similar lengths into a batch
        so short prompts are not padded to a long one. Default: the question's length in characters."""
        return len(str(example.get("question") or ""))


class PromptedStrategy(Strategy):
    """A strategy that builds one chat prompt per example and generates through ``ctx.backend``."""

    adapter: str | None = None  # backend adapter to generate with (None: the plain base)

    def build_prompt(self, example: dict[str, Any]) -> tuple[Prompt, dict[str, Any]]:
        """Return the chat prompt for one example and extra fields to record with its prediction."""
        raise NotImplementedError

    def predict(self, batch: list[dict[str, Any]]) -> list[Answer]:
        assert self.ctx is not None, "prepare() must run before predict()"
        built = [self.build_prompt(ex) for ex in batch]
        result = self.ctx.backend.generate([p for p, _ in built], self.ctx.generation, adapter=self.adapter)
        return answers_from(result, [extra for _, extra in built])

    def activate(self) -> None:
        """The base weights in place, untimed: a merged adapter another strategy left in the shared base is
        unmerged here, not inside this strategy's first timed request (adapter strategies merge theirs)."""
        unmerge = getattr(self.ctx.backend, "unmerge_adapter", None) if self.ctx is not None else None
        if unmerge is not None:
            unmerge()

    def length_key(self, example: dict[str, Any]) -> int:
        """Tokens of the rendered prompt (backends memoise tokenisation, so generate reuses them)."""
        assert self.ctx is not None, "prepare() must run before length_key()"
        backend = self.ctx.backend
        return backend.count_tokens(backend.render(self.build_prompt(example)[0]))


def answers_from(result: BatchGeneration, extras: list[dict[str, Any]]) -> list[Answer]:
    """One ``Answer`` per generation of a batch, with its extra record fields."""
    return [
        Answer(
            text=g.text,
            new_tokens=g.new_tokens,
            prompt_tokens=g.prompt_tokens,
            prompt_truncated=g.prompt_truncated,
            generation_seconds=result.seconds,
            extra=extra,
        )
        for g, extra in zip(result.generations, extras, strict=True)
    ]


# -- registry ------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Strategy]] = {}
_discovered = False


def register(cls: type[Strategy]) -> type[Strategy]:
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(
            f"strategy name {name!r} registered twice ({_REGISTRY[name].__module__}, {cls.__module__})"
        )
    _REGISTRY[name] = cls
    return cls


def discover() -> None:
    global _discovered
    if _discovered:
        return
    package = importlib.import_module(STRATEGY_PACKAGE)
    for mod in pkgutil.iter_modules(package.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{STRATEGY_PACKAGE}.{mod.name}")
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
    _discovered = True


def available() -> list[str]:
    discover()
    return sorted(_REGISTRY)


def get(name: str) -> type[Strategy]:
    discover()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown strategy {name!r} (available: {', '.join(available())})")
    return _REGISTRY[name]


def build(spec: StrategySpec, index: int, source: str = "config") -> Strategy:
    """Instantiate a strategy, validating its params; errors name ``strategies[i].field``."""
    try:
        cls = get(spec.name)
    except ConfigError as exc:
        raise ConfigError(f"{source}: strategies[{index}].name: {exc}") from None
    try:
        params = cls.Params.model_validate(spec.params)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, source, ("strategies", index))) from None
    return cls(spec.key, params)
