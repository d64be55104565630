"""Strategy registry: name -> class. Shipped strategies are found by scanning this package,
third-party ones through the ``adaptbench.strategies`` entry-point group."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from typing import TYPE_CHECKING

from pydantic import ValidationError

from harness.config import StrategySpec, validation_message
from harness.errors import ConfigError

if TYPE_CHECKING:
    from strategies.base import Strategy

_REGISTRY: dict[str, type[Strategy]] = {}
_INFRA_MODULES = {"base", "registry"}
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
    import strategies

    for mod in pkgutil.iter_modules(strategies.__path__):
        if mod.name not in _INFRA_MODULES and not mod.name.startswith("_"):
            importlib.import_module(f"strategies.{mod.name}")
    for ep in importlib.metadata.entry_points(group="adaptbench.strategies"):
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
