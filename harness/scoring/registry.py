"""The metric registry: one ``MetricSpec`` per metric, declared once next to its scoring function.

Sources, in order: the shipped folders ``harness/scoring/metrics/<name>/<name>.py`` (each holds an
``evaluate`` module and a module-level ``SPEC = MetricSpec(...)``), the entry-point group
``adaptbench.metrics`` (an entry point loads to a ``MetricSpec`` or to a module with ``SPEC``), and
``register_metric(spec)`` (tests, notebooks). Config validation, the scorer, the decision measures, the
CLI and the report all read these specs.

Kept free of heavy imports (config validation uses it): a shipped file's ``SPEC`` is read from its
source without importing it (importing would pull in ``evaluate``, seconds), so write it as a literal
``MetricSpec(...)`` call (constants, ``frozenset({...})``, ``__doc__``).
"""

from __future__ import annotations

import ast
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

log = logging.getLogger("adaptbench")

METRICS_DIR = Path(__file__).parent / "metrics"
ENTRY_POINT_GROUP = "adaptbench.metrics"

# Record-derived inputs: name passed to the metric -> prediction-record field.
RECORD_INPUTS = {
    "references": "reference",
    "questions": "question",
    "contexts": "contexts",
    "retrieved_ids": "retrieved_ids",
    "context_ids": "context_ids",
    "tags": "tags",
    # {"must_include": [...], "must_not_include": [...]}: the example's key facts. Prediction records do
    # not carry them; the scorer attaches them from the eval set by example id (see score.attach_facts).
    "facts": "facts",
}
# Run-level inputs the scorer provides.
RUN_INPUTS = frozenset({"backend", "embedding_model", "scoring"})
INPUTS = frozenset(RECORD_INPUTS) | RUN_INPUTS

# Display order of the shipped metrics (folders not listed follow, by name).
SHIPPED_ORDER = (
    "exact_match",
    "token_f1",
    "rouge_l",
    "answer_recall",
    "semantic_similarity",
    "coherence",
    "style_adherence",
    "faithfulness",
    "fact_recall",
    "fact_accuracy",
    "recall_at_k",
    "mrr",
    "judge_score",
)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    label: str
    higher_is_better: bool = True
    unit: str = ""  # "" = a score in [0, 1], shown as a percentage
    binary: bool = False  # per-example 0/1 (exact match)
    needs: frozenset[str] = field(default_factory=lambda: frozenset({"references"}))
    tag_option: str | None = None  # ScoringConfig field naming a tag; only examples with it are scored
    # Backend capabilities (protocol names in harness.backends.base, e.g. "LogLikelihood") the metric
    # needs; the runner checks them before generating anything, so a missing one fails early.
    capabilities: frozenset[str] = field(default_factory=frozenset)
    default: bool = True  # in the default ``metrics:`` list
    description: str = ""
    path: Path | None = None  # evaluate module folder (loaded by path with evaluate.load)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"metric name {self.name!r}: use lower-case letters, digits and _")
        needs = frozenset(self.needs)
        unknown = sorted(needs - INPUTS)
        if unknown:
            raise ValueError(
                f"metric {self.name!r}: unknown needs {unknown} (allowed: {', '.join(sorted(INPUTS))})"
            )
        object.__setattr__(self, "needs", needs)
        object.__setattr__(self, "capabilities", frozenset(self.capabilities))
        if self.capabilities and "backend" not in needs:
            raise ValueError(f"metric {self.name!r}: capabilities need 'backend' in needs")
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))

    @property
    def record_inputs(self) -> list[str]:
        """The needs filled from prediction records, in a stable order."""
        return [k for k in RECORD_INPUTS if k in self.needs]


_REGISTRY: dict[str, MetricSpec] = {}
_LOCK = threading.Lock()
_discovered = False


def register_metric(spec: MetricSpec, *, replace: bool = False) -> MetricSpec:
    """Add ``spec`` (its ``path`` must be a folder holding ``<name>.py``, an evaluate module)."""
    _discover()
    if spec.path is None or not (Path(spec.path) / f"{spec.name}.py").is_file():
        raise ValueError(f"metric {spec.name!r}: path must be a folder holding {spec.name}.py")
    if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] != spec:
        raise ValueError(f"metric {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_metric(name: str) -> None:
    _REGISTRY.pop(name, None)


def available_metrics() -> dict[str, MetricSpec]:
    """Every registered metric, shipped ones first in their display order."""
    _discover()
    rank = {n: i for i, n in enumerate(SHIPPED_ORDER)}
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def get_metric(name: str) -> MetricSpec:
    specs = available_metrics()
    if name not in specs:
        raise KeyError(f"unknown metric {name!r} (known: {', '.join(specs)})")
    return specs[name]


def find_metric(name: str) -> MetricSpec | None:
    return available_metrics().get(name)


def default_metrics() -> list[str]:
    return [n for n, s in available_metrics().items() if s.default]


# -- discovery -----------------------------------------------------------------------------------
def read_spec(file: Path) -> MetricSpec:
    """The literal ``SPEC = MetricSpec(...)`` of a metric file, read without importing the file."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if not any(isinstance(t, ast.Name) and t.id == "SPEC" for t in targets):
            continue
        call = node.value
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "MetricSpec") or call.args:
            raise ValueError(f"{file}: SPEC must be a MetricSpec(...) call with keyword arguments")
        doc = ast.get_docstring(tree) or ""
        kwargs = {kw.arg: _literal(kw.value, doc, file) for kw in call.keywords}
        kwargs.setdefault("path", file.parent)
        return MetricSpec(**kwargs)
    raise ValueError(f"{file}: no module-level SPEC = MetricSpec(...)")


def _literal(node: ast.expr, doc: str, file: Path):
    if isinstance(node, ast.Name) and node.id == "__doc__":
        return doc
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "frozenset" and len(node.args) <= 1:
        return frozenset(ast.literal_eval(node.args[0]) if node.args else ())
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"{file}: SPEC arguments must be literals (line {node.lineno})") from None


def spec_of(obj: object) -> MetricSpec:
    """A ``MetricSpec`` from an entry point's object: a spec, or a module defining ``SPEC``."""
    if isinstance(obj, MetricSpec):
        return obj
    spec = getattr(obj, "SPEC", None)
    if isinstance(spec, MetricSpec):
        if spec.path is None and isinstance(obj, ModuleType) and getattr(obj, "__file__", None):
            spec = MetricSpec(**{**spec.__dict__, "path": Path(obj.__file__).parent})
        return spec
    raise TypeError(f"{obj!r} is neither a MetricSpec nor a module with SPEC")


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    with _LOCK:
        if _discovered:
            return
        for folder in sorted(p for p in METRICS_DIR.iterdir() if p.is_dir()):
            file = folder / f"{folder.name}.py"
            if file.is_file():
                spec = read_spec(file)
                if spec.name != folder.name:
                    raise ValueError(f"{file}: SPEC.name {spec.name!r} must equal the folder name")
                _REGISTRY.setdefault(spec.name, spec)
        _discover_entry_points()
        _discovered = True


def _discover_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = spec_of(ep.load())
        except Exception as exc:  # a broken plugin must not break every run
            log.warning("metric plugin %s (%s) not loaded: %s", ep.name, ep.value, exc)
            continue
        if spec.path is None or not (spec.path / f"{spec.name}.py").is_file():
            log.warning("metric plugin %s: SPEC.path must be a folder holding %s.py", ep.name, spec.name)
            continue
        _REGISTRY.setdefault(spec.name, spec)
