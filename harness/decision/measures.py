"""Names, directions and units of everything the decision engine can constrain, weight and chart.

Kept free of heavy imports: ``harness.config`` validates ``decision.constraints`` / ``weights`` against it.
Quality measures are not listed here: each metric's ``MetricSpec`` (harness/scoring/registry.py) gives its
label, unit and direction, so a new metric is a measure without touching this file.

Kinds:
* ``mean``: mean over examples of a per-example value (quality metrics, serving cost);
* ``probe``: a percentile (or the mean) of the latency probe's single requests (``latency.jsonl``:
  end-to-end, time to first token, time per output token) — what one user waits;
* ``ratio``: generated tokens / wall seconds of the batched evaluation pass (throughput);
* ``const``: one measured number per strategy (training time, memory, sizes on disk).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from harness.scoring.registry import MetricSpec, available_metrics


@dataclass(frozen=True)
class Measure:
    name: str
    label: str
    unit: str  # "" for [0, 1] scores shown as percentages
    higher_is_better: bool
    kind: Literal["mean", "probe", "ratio", "const"]
    group: Literal["quality", "latency", "cost"]
    floor: float = 0.0  # for cost-type utilities: values below this count as this (no divide-by-zero)
    percentile: float | None = None  # probe measures: None = the mean
    description: str = ""
    source: str = ""  # probe measures: which per-request series (e2e_ms, ttft_ms, tpot_ms)


def metric_measure(spec: MetricSpec) -> Measure:
    """A quality measure from a metric's spec: mean over examples, its label, unit and direction."""
    return Measure(spec.name, spec.label, spec.unit, spec.higher_is_better, "mean", "quality")


class _QualityMetrics(Mapping[str, str]):
    """Metric name -> label, a live view of the metric registry (plugins and test metrics included)."""

    def __getitem__(self, name: str) -> str:
        return available_metrics()[name].label

    def __iter__(self) -> Iterator[str]:
        return iter(available_metrics())

    def __len__(self) -> int:
        return len(available_metrics())


class _Measures(Mapping[str, Measure]):
    """Every measure: the registry's metrics (quality), then the fixed latency and cost measures."""

    def __init__(self, fixed: dict[str, Measure]):
        self.fixed = fixed

    def __getitem__(self, name: str) -> Measure:
        if name in self.fixed:
            return self.fixed[name]
        return metric_measure(available_metrics()[name])

    def __iter__(self) -> Iterator[str]:
        yield from (n for n in available_metrics() if n not in self.fixed)
        yield from self.fixed

    def __len__(self) -> int:
        return len(set(available_metrics()) | set(self.fixed))

    def update(self, measures: dict[str, Measure]) -> None:
        self.fixed.update(measures)


QUALITY_METRICS: Mapping[str, str] = _QualityMetrics()
MEASURES = _Measures({})
MEASURES.update(
    {
        **{
            f"latency_{stat}_ms": Measure(
                f"latency_{stat}_ms",
                f"{stat} request latency",
                "ms",
                False,
                "probe",
                "latency",
                1.0,
                q,
                "end-to-end time of one request through the strategy's whole pipeline (latency probe)",
                "e2e_ms",
            )
            for stat, q in (("mean", None), ("p50", 50), ("p95", 95), ("p99", 99))
        },
        **{
            f"ttft_{stat}_ms": Measure(
                f"ttft_{stat}_ms",
                f"{stat} time to first token",
                "ms",
                False,
                "probe",
                "latency",
                1.0,
                q,
                "from request to the first generated token, retrieval and prompt building included",
                "ttft_ms",
            )
            for stat, q in (("p50", 50), ("p95", 95))
        },
        "tpot_mean_ms": Measure(
            "tpot_mean_ms",
            "Time per output token",
            "ms",
            False,
            "probe",
            "latency",
            0.001,
            None,
            "mean time per generated token after the first (latency probe)",
            "tpot_ms",
        ),
        "tokens_per_s": Measure(
            "tokens_per_s",
            "Throughput (batched pass)",
            "tok/s",
            True,
            "ratio",
            "latency",
            description="generated tokens / wall time of the batched evaluation pass",
        ),
        "batch_seconds": Measure("batch_seconds", "Time per batch", "s", False, "const", "latency", 0.001),
        "serving_cost_per_1k_usd": Measure(
            "serving_cost_per_1k_usd",
            "Serving cost / 1k queries",
            "USD",
            False,
            "mean",
            "cost",
            0.0001,
            description="seconds per query in the batched pass x 1,000 x hardware price per hour / 3,600",
        ),
        "total_cost_per_1k_usd": Measure(
            "total_cost_per_1k_usd",
            "Total cost / 1k queries",
            "USD",
            False,
            "mean",
            "cost",
            0.0001,
            description="serving cost plus one-off setup (training + index build) amortised over decision.amortize_queries",
        ),
        "train_time_min": Measure("train_time_min", "Training time", "min", False, "const", "cost", 1.0),
        "index_build_time_min": Measure(
            "index_build_time_min", "Index build time", "min", False, "const", "cost", 1.0
        ),
        "setup_time_min": Measure(
            "setup_time_min",
            "Setup time",
            "min",
            False,
            "const",
            "cost",
            1.0,
            description="wall time of the strategy's prepare step (training, indexing, loading)",
        ),
        "peak_memory_gb": Measure("peak_memory_gb", "Peak memory", "GB", False, "const", "cost", 0.5),
        "adapter_mb": Measure("adapter_mb", "Adapter on disk", "MB", False, "const", "cost", 1.0),
        "index_mb": Measure("index_mb", "Index on disk", "MB", False, "const", "cost", 1.0),
        "disk_mb": Measure("disk_mb", "Artefacts on disk", "MB", False, "const", "cost", 1.0),
    }
)


def measure(name: str) -> Measure:
    """The measure for ``name``; an unknown per-example score is a higher-is-better mean."""
    if name in MEASURES:
        return MEASURES[name]
    return Measure(name, name, "", True, "mean", "quality")


def is_known(name: str) -> bool:
    return name in MEASURES


CONSTRAINT_PATTERN = re.compile(
    r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_@]*)\s*(?P<op><=|>=|<|>)\s*(?P<value>[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)\s*$"
)


def format_value(name: str, value: float | None, digits: int | None = None) -> str:
    """Human text for a measure value: percentages for scores, units otherwise."""
    if value is None or value != value:  # NaN
        return "n/a"
    m = measure(name)
    if m.unit == "":
        return f"{100 * value:.{1 if digits is None else digits}f}%"
    if m.unit == "USD":
        if digits is None:
            # At least two significant digits: the decision tells costs apart at two (``cost_key``), so
            # $0.000087 and $0.000091 must not both read $0.0001 beside a "cheaper" verdict.
            digits = 4 if value == 0 or abs(value) >= 0.001 else 1 - math.floor(math.log10(abs(value)))
        return f"${value:.{digits}f}"
    if m.unit == "ms":
        return f"{value:,.{0 if digits is None else digits}f} ms"
    return f"{value:,.{(2 if abs(value) < 10 else 1) if digits is None else digits}f} {m.unit}"


def known_names() -> list[str]:
    """Names accepted in ``decision.constraints`` / ``weights`` / ``scales``."""
    return list(MEASURES)


def natural_scale(name: str) -> tuple[float, float] | None:
    """``(worst, best)`` for measures with a scale of their own: [0, 1] scores; ``None`` otherwise
    (latency, cost, memory, time: the user states the scale in ``decision.scales``)."""
    m = measure(name)
    if m.unit != "":
        return None
    return (0.0, 1.0) if m.higher_is_better else (1.0, 0.0)
