"""Token F1, the official SQuAD v1.1 definition: harmonic mean of token precision and recall of the
multiset overlap between the normalised prediction and reference tokens (``harness.scoring.normalize``).
0.0 when no token is shared -- including when either side, or both, normalise to nothing (the official
script returns 0 for two empty strings, while exact match gives 1)."""

from collections import Counter

from harness.scoring import base
from harness.scoring.normalize import tokens
from harness.scoring.registry import MetricSpec

SPEC = MetricSpec(
    name="token_f1",
    label="Token F1",
    needs=frozenset({"references"}),
    description="Official SQuAD v1.1 token F1 after normalisation; 0.0 when no token is shared.",
)
CITATION = "Rajpurkar et al. 2016 (SQuAD), evaluate-v1.1.py"


def f1(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision = 1.0 * common / len(pred)
    recall = 1.0 * common / len(ref)
    return (2 * precision * recall) / (precision + recall)


def score(predictions: list[str], references: list[str]) -> list[float]:
    return [f1(p, r) for p, r in zip(predictions, references, strict=True)]


class TokenF1(base.MetricModule):
    pass
