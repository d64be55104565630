"""The ``decision:`` config section: how measurements become a recommendation (docs/decision.md)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)

from harness.config_model import StrictModel


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
