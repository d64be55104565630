"""Run configuration: YAML -> validated pydantic models.

Every validation problem becomes a one-line ``ConfigError`` naming the YAML path
(``strategies[1].top_k: must be > 0``) so users fix configs without reading tracebacks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.config_decision import DecisionConfig
from harness.config_model import DEFAULT_MODEL, SERVED_FIELDS, ModelConfig, StrictModel
from harness.errors import ConfigError

__all__ = ["DEFAULT_MODEL", "SERVED_FIELDS", "DecisionConfig", "ModelConfig", "StrictModel"]


EvalSetField = Literal["id", "question", "answer", "context_ids", "tags", "must_include", "must_not_include"]


class EvalSetConfig(StrictModel):
    path: Path = Field(description="eval-set folder, 🤗 save_to_disk folder or .parquet file(s)")
    split: str = "test"
    limit: int | None = Field(None, gt=0)
    format: Literal["auto", "folder", "datasets", "parquet"] = Field(
        "auto", description="how to read `path`; auto detects it"
    )
    columns: dict[EvalSetField, str] = Field(
        default_factory=dict, description="eval-set field -> column name in your data, e.g. {question: q}"
    )


class GenerationConfig(StrictModel):
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(0.0, ge=0.0, description="0 means greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    batch_size: int = Field(16, gt=0)
    stop: list[str] = Field(default_factory=list, description="cut answers at the first of these strings")


class LatencyProbeConfig(StrictModel):
    """Serving-style latency (what one user waits), measured apart from the batched evaluation pass."""

    requests: int = Field(
        32, ge=0, description="single requests per strategy (a seeded sample of the split); 0 = no probe"
    )
    warmup: int = Field(2, ge=0, description="requests per strategy sent first and not counted")


SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


class StrategySpec(BaseModel):
    """One strategy entry: a registry ``name``, an optional unique ``id`` and the strategy's own params."""

    model_config = ConfigDict(extra="allow")

    name: str
    id: str | None = None

    @model_validator(mode="after")
    def _safe_key(self) -> StrategySpec:
        # The key names files (training/<id>.json, cache labels): no path separators, no "..".
        if not SAFE_ID.fullmatch(self.key):
            what = "id" if self.id is not None else "name"
            raise ValueError(
                f"strategy {what} {self.key!r}: use letters, digits and _ . + - only "
                "(it names files in the run folder)"
            )
        return self

    @property
    def key(self) -> str:
        return self.id or self.name

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _known_metric(name: str) -> str:
    """A name of the metric registry (shipped modules, ``adaptbench.metrics`` plugins, ``register_metric``)."""
    from harness.scoring.registry import available_metrics

    known = available_metrics()
    if name not in known:
        raise ValueError(f"unknown metric {name!r} (known: {', '.join(known)})")
    return name


def _default_metrics() -> list[str]:
    from harness.scoring.registry import default_metrics

    return default_metrics()


MetricName = Annotated[str, AfterValidator(_known_metric)]


DEFAULT_JUDGE_PROMPT = (
    "You grade a customer-support answer.\n"
    "Question: {question}\nReference answer: {reference}\nCandidate answer: {answer}\n"
    "Rate the candidate from 1 (wrong or incoherent) to 5 (correct, clear and consistent with the "
    "reference). Reply with the digit only."
)


class JudgeConfig(StrictModel):
    """Optional LLM-as-judge rubric score (off by default; slow). Recorded with its prompt."""

    enabled: bool = Field(False, description="add judge_score to metrics (same as listing it there)")
    model: str | None = Field(
        None, description="local model id/path; null = the run's base model, adapters off"
    )
    prompt: str = Field(
        DEFAULT_JUDGE_PROMPT, description="format string with {question}, {reference}, {answer}"
    )
    max_new_tokens: int = Field(4, gt=0)
    batch_size: int = Field(8, gt=0)

    @field_validator("prompt")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        missing = [k for k in ("{question}", "{answer}") if k not in value]
        if missing:
            raise ValueError(f"prompt must contain {' and '.join(missing)}")
        try:
            value.format(question="", reference="", answer="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"prompt is not a valid format string ({exc}); double literal braces {{{{ }}}}"
            ) from None
        return value


class ScoringConfig(StrictModel):
    """Options of the model-based metrics (semantic similarity, coherence, style adherence, judge);
    metrics receive this section when their ``MetricSpec.needs`` names ``scoring``."""

    embedding_model: str | None = Field(
        None, description="sentence-transformers id/path; null = offline MiniLM"
    )
    style_tag: str = Field("style", description="examples with this tag get a style_adherence score")
    perplexity_batch_size: int = Field(8, gt=0)
    nli_model: str | None = Field(
        None,
        description="local HF NLI sequence-classification model folder; set = faithfulness is the min "
        "entailment probability of context => answer sentence (null = the lexical definition)",
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig)


class RunConfig(StrictModel):
    name: str | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    eval_set: EvalSetConfig
    strategies: list[StrategySpec] = Field(min_length=1)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    latency_probe: LatencyProbeConfig = Field(default_factory=LatencyProbeConfig)
    metrics: list[MetricName] = Field(
        default_factory=_default_metrics, description="metric names; default = every default metric"
    )
    primary_metric: MetricName = "token_f1"
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    seed: int = 0
    output_dir: Path = Path("reports")
    cache_dir: Path | None = Field(None, description="defaults to $ADAPTBENCH_CACHE or ~/.cache/adaptbench")

    @field_validator("metrics")
    @classmethod
    def _some_metrics(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one metric is required")
        return value

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        from harness.scoring.registry import get_metric

        if self.scoring.judge.enabled and "judge_score" not in self.metrics:
            self.metrics.append("judge_score")
        for name in self.metrics:
            option = get_metric(name).tag_option
            if option is not None and option not in ScoringConfig.model_fields:
                raise ValueError(f"metric {name!r}: tag_option {option!r} is not a scoring option")
        if self.primary_metric not in self.metrics:
            raise ValueError(f"primary_metric {self.primary_metric!r} must be one of metrics {self.metrics}")
        seen: set[str] = set()
        for spec in self.strategies:
            if spec.key in seen:
                raise ValueError(f"duplicate strategy id {spec.key!r}: give each entry a unique 'id'")
            seen.add(spec.key)
        return self


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def _friendly(err: dict[str, Any]) -> str:
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    if kind == "greater_than":
        return f"must be > {ctx.get('gt')}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"must be <= {ctx.get('le')}"
    if kind == "less_than":
        return f"must be < {ctx.get('lt')}"
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see configs/demo.yaml for the allowed keys)"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind == "too_short":
        return "must not be empty"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def validation_message(exc: ValidationError, source: str, prefix: tuple[Any, ...] = ()) -> str:
    """One line for the first error, naming file and YAML path."""
    err = exc.errors()[0]
    loc = format_loc(prefix + tuple(err.get("loc", ())))
    more = len(exc.errors()) - 1
    tail = f" (+{more} more)" if more else ""
    return f"{source}: {loc}: {_friendly(err)}{tail}"


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply; a run config is a few levels of keys") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    if _too_big(data):
        raise ConfigError(
            f"{path}: config expands to over {MAX_CONFIG_VALUES} values (YAML anchors/aliases?); write it out plainly"
        )
    return data


MAX_CONFIG_VALUES = 100_000


def _too_big(data: Any) -> bool:
    """A YAML alias bomb loads as shared references but validates as billions of values: count first."""
    budget = MAX_CONFIG_VALUES
    stack = [data]
    while stack:
        node = stack.pop()
        budget -= 1
        if budget < 0:
            return True
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Parse, validate and resolve a run config (paths become relative to the config file)."""
    path = Path(path)
    data = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, str(path))) from None
    config = resolve_paths(config, path.parent)
    if not config.eval_set.path.exists():
        raise ConfigError(f"{path}: eval_set.path: directory not found: {config.eval_set.path}")
    return config


def resolve_paths(config: RunConfig, base: Path) -> RunConfig:
    def res(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    config.eval_set.path = res(config.eval_set.path)
    config.output_dir = res(config.output_dir)
    if config.cache_dir is not None:
        config.cache_dir = res(config.cache_dir)
    model_path = Path(config.model.id).expanduser()
    if (
        not model_path.is_absolute()
        and (base / model_path).exists()
        and config.model.id not in (DEFAULT_MODEL,)
    ):
        config.model.id = str((base / model_path).resolve())
    return config


def select_strategies(config: RunConfig, wanted: list[str]) -> RunConfig:
    """Keep the strategies named on the command line (by id, or by registry name)."""
    chosen = []
    for want in wanted:
        hits = [s for s in config.strategies if s.key == want] or [
            s for s in config.strategies if s.name == want
        ]
        if not hits:
            known = ", ".join(s.key for s in config.strategies)
            raise ConfigError(f"--strategies: {want!r} is not in the config (configured: {known})")
        chosen.extend(h for h in hits if h not in chosen)
    config.strategies = chosen
    return config


def dump_config(config: RunConfig) -> str:
    data = config.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
