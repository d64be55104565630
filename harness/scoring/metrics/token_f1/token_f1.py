"""Token-level F1 between normalised prediction and reference (SQuAD definition)."""

from collections import Counter

from harness.scoring import base
from harness.scoring.normalize import tokens
from harness.scoring.registry import MetricSpec

SPEC = MetricSpec(
    name="token_f1",
    label="Token F1",
    needs=frozenset({"references"}),
    description="Harmonic mean of token precision and recall after normalisation; 1.0 when both are empty.",
)
CITATION = "Rajpurkar et al. 2016 (SQuAD)"


def f1(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(predictions: list[str], references: list[str]) -> list[float]:
    return [f1(p, r) for p, r in zip(predictions, references, strict=True)]


class TokenF1(base.MetricModule):
    pass
