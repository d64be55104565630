"""Run configuration: YAML -> validated pydantic models.

Every validation problem becomes a one-line ``ConfigError`` naming the YAML path
(``strategies[1].top_k: must be > 0``) so users fix configs without reading tracebacks.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from harness.errors import ConfigError

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


class DecisionConfig(StrictModel):
    """How the report turns measurements into a recommendation (see docs/decision.md)."""

    mode: Literal["quality_first", "weighted"] = Field(
        "quality_first",
        description="quality_first: best primary metric among the feasible, cheapest of those tied with it; "
        "weighted: weighted mean of utilities on the absolute scales in decision.scales",
    )
    constraints: list[str] = Field(
        default_factory=list, description='hard limits, e.g. "latency_p95_ms <= 800", "peak_memory_gb <= 16"'
    )
    margin: float = Field(
        0.0,
        ge=0.0,
        description="quality_first: a strategy ties with the leader when the lower confidence bound of "
        "(strategy - leader) on the primary metric is above -margin (in the metric's units)",
    )
    weights: dict[str, float] | None = Field(
        None, description="weighted mode: weights over measures; null = the quality defaults"
    )
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    confidence_level: float = Field(0.95, gt=0.5, lt=1.0)
    bootstrap_resamples: int = Field(1000, ge=100, le=100_000)
    permutation_resamples: int = Field(5000, ge=100, le=1_000_000)
    price_per_hour_usd: float | None = Field(
        None, ge=0.0, description="hardware price; null = 0.10 on CPU, 2.50 on GPU"
    )
    amortize_queries: int = Field(100_000, gt=0, description="queries over which setup cost is spread")
    disagree_threshold: float = Field(
        0.3,
        gt=0.0,
        le=1.0,
        description="explorer: best minus worst primary score that counts as disagreement",
    )

    scales: dict[str, list[float]] = Field(
        default_factory=dict,
        validate_default=True,
        description="weighted mode: [worst, best] per measure, mapped linearly to utility 0..1 and clipped, "
        "e.g. latency_p95_ms: [2000, 200]",
    )

    @field_validator("scales")
    @classmethod
    def _scales(cls, value: dict[str, list[float]], info: ValidationInfo) -> dict[str, list[float]]:
        from harness.decision.measures import is_known, known_names, natural_scale

        for name, pair in value.items():
            if not is_known(name):
                raise ValueError(f"unknown measure {name!r} (known: {', '.join(known_names())})")
            if len(pair) != 2 or not all(math.isfinite(v) for v in pair) or pair[0] == pair[1]:
                raise ValueError(f"{name}: write [worst, best], two different numbers, e.g. [2000, 200]")
        if info.data.get("mode") == "weighted":
            for name, w in (info.data.get("weights") or {}).items():
                if w > 0 and name not in value and natural_scale(name) is None:
                    raise ValueError(
                        f"{name} is weighted but has no natural scale: give decision.scales.{name}: "
                        "[worst, best] (e.g. latency_p95_ms: [2000, 200])"
                    )
        return value

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, value: list[str]) -> list[str]:
        from harness.decision.measures import CONSTRAINT_PATTERN, is_known, known_names

        for i, text in enumerate(value):
            m = CONSTRAINT_PATTERN.match(text)
            if not m:
                raise ValueError(
                    f"[{i}] {text!r}: write '<measure> <= <number>' (or >=, <, >), e.g. 'latency_p95_ms <= 800'"
                )
            if not is_known(m["name"]):
                raise ValueError(f"[{i}] unknown measure {m['name']!r} (known: {', '.join(known_names())})")
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        from harness.decision.measures import is_known, known_names

        if value is None:
            return value
        for name, w in value.items():
            if not is_known(name):
                raise ValueError(f"unknown measure {name!r} (known: {', '.join(known_names())})")
            if w < 0:
                raise ValueError(f"weight of {name!r} must be >= 0")
        if not any(w > 0 for w in value.values()):
            raise ValueError("at least one weight must be > 0")
        return value


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
