"""Few-shot demonstrations: one deterministic draw from an eval-set split, shared by every strategy."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from harness.data import EvalSet
from harness.errors import ConfigError


def shots_problems(eval_set: EvalSet, split: str, n: int, field: str = "shots") -> list[str]:
    """What ``sample_shots`` would refuse, as ``validate`` messages (no model needed)."""
    if not n:
        return []
    pool = eval_set.splits.get(split)
    have = 0 if pool is None else len(pool)
    if have >= n:
        return []
    return [
        f"{field}: {n} demonstrations need {n} examples in split {split!r} (it has {have}); "
        f"lower {field} or add {split} examples (example_split picks the split)"
    ]


def sample_shots(
    eval_set: EvalSet,
    split: str,
    n: int,
    seed: int,
    strategy_id: str,
    prefer: Callable[[list[dict[str, Any]]], list[int]] | None = None,
) -> list[dict[str, Any]]:
    """``n`` examples of ``split``, drawn by ``seed`` and returned in split order (the same for every
    question, so strategies compare fairly). ``prefer(rows)`` may name the indices to draw from; it is
    used when it names at least ``n`` of them, else the whole split is the pool. ``n == 0`` draws nothing.
    """
    if not n:
        return []
    pool = eval_set.splits.get(split)
    if pool is None or len(pool) < n:
        have = 0 if pool is None else len(pool)
        raise ConfigError(
            f"strategy {strategy_id!r}: shots={n} needs that many examples in split {split!r} (it has {have})"
        )
    rows = list(pool)
    candidates: list[int] | range = range(len(rows))
    if prefer is not None:
        preferred = prefer(rows)
        if len(preferred) >= n:
            candidates = preferred
    return [rows[i] for i in sorted(random.Random(seed).sample(candidates, n))]
