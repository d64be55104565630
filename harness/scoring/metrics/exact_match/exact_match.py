"""Exact match, the official SQuAD v1.1 definition: 1.0 when ``normalize_answer(prediction) ==
normalize_answer(reference)`` (lower-case, ASCII punctuation deleted, articles removed, whitespace
collapsed; see ``harness.scoring.normalize``), else 0.0. Two empty strings match (1.0)."""

from harness.scoring import base
from harness.scoring.normalize import normalize_answer
from harness.scoring.registry import MetricSpec

SPEC = MetricSpec(
    name="exact_match",
    label="Exact match",
    binary=True,
    needs=frozenset({"references"}),
    description="Official SQuAD v1.1 exact match: 1.0 when the normalised prediction equals the normalised reference.",
)
CITATION = "Rajpurkar et al. 2016 (SQuAD), evaluate-v1.1.py"


def score(predictions: list[str], references: list[str]) -> list[float]:
    return [
        float(normalize_answer(p) == normalize_answer(r))
        for p, r in zip(predictions, references, strict=True)
    ]


class ExactMatch(base.MetricModule):
    pass
