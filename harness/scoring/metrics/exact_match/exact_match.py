"""Exact match after SQuAD-style normalisation (case, punctuation, articles, whitespace)."""

from harness.scoring import base
from harness.scoring.normalize import normalize_answer
from harness.scoring.registry import MetricSpec

SPEC = MetricSpec(
    name="exact_match",
    label="Exact match",
    binary=True,
    needs=frozenset({"references"}),
    description="1.0 when the normalised prediction equals the normalised reference, else 0.0.",
)
CITATION = "Rajpurkar et al. 2016 (SQuAD)"


def score(predictions: list[str], references: list[str]) -> list[float]:
    return [
        float(normalize_answer(p) == normalize_answer(r))
        for p, r in zip(predictions, references, strict=True)
    ]


class ExactMatch(base.MetricModule):
    pass
