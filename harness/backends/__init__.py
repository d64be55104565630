"""Backend registry: ``model.backend`` (default ``"transformers"``) -> a class with ``open(model_cfg, cache_dir)``.

Shipped backends are found by importing every module of this package; third-party ones through the
``adaptbench.backends`` entry-point group, or ``register_backend`` (tests register toy backends this way).
The rest of the harness opens a backend only through ``open_backend`` and talks to it only through the
protocols in ``harness.backends.base``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from harness.errors import ConfigError

if TYPE_CHECKING:
    from harness.backends.base import GenerationBackend
    from harness.config import ModelConfig

T = TypeVar("T")

_REGISTRY: dict[str, Any] = {}
_INFRA_MODULES = {"base", "likelihood", "loading"}
_discovered = False


def register_backend(name: str) -> Callable[[T], T]:
    """Class decorator: make ``cls`` available as ``model.backend: <name>``."""

    def deco(cls: T) -> T:
        old = _REGISTRY.get(name)
        if old is not None and _where(old) != _where(cls):
            raise ValueError(f"backend name {name!r} registered twice ({_where(old)}, {_where(cls)})")
        _REGISTRY[name] = cls
        return cls

    return deco


def switched_on(variable: str) -> bool:
    """A speed-up's escape hatch: on unless the environment sets ``variable`` to ``0`` (also the baseline
    arm of the benchmarks)."""
    return os.environ.get(variable, "1").strip() != "0"


def _where(cls: Any) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def unregister_backend(name: str) -> None:
    _REGISTRY.pop(name, None)


def discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in _INFRA_MODULES and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    for ep in importlib.metadata.entry_points(group="adaptbench.backends"):
        ep.load()


def available_backends() -> list[str]:
    discover()
    return sorted(_REGISTRY)


def get_backend(name: str) -> Any:
    discover()
    if name not in _REGISTRY:
        raise ConfigError(
            f"model.backend: unknown backend {name!r} (available: {', '.join(available_backends())})"
        )
    return _REGISTRY[name]


def open_backend(model_cfg: ModelConfig, cache_dir: Path) -> GenerationBackend:
    """Open the configured backend (``model_cfg.backend``) for ``model_cfg``; the one way in."""
    return get_backend(model_cfg.backend).open(model_cfg, cache_dir)


__all__ = ["available_backends", "get_backend", "open_backend", "register_backend", "unregister_backend"]
