"""Share of reference tokens found in the prediction: lenient accuracy for verbose small models.

A model that answers "Sure! The return window is 45 days from delivery, as stated..." gets full
credit for the fact even though exact match is 0 and F1 is diluted by the extra words.

Normaliser: ``harness.scoring.normalize.lenient_tokens`` (punctuation becomes a space, so ``e-bike``
gives ``e bike`` and ``45-days`` gives ``45 days``; articles removed) -- deliberately *not* the SQuAD
one, which deletes punctuation and would glue ``3.4.0`` into ``340``. 1.0 when both sides are empty.
"""

from collections import Counter

from harness.scoring import base
from harness.scoring.normalize import lenient_tokens as tokens
from harness.scoring.registry import MetricSpec

SPEC = MetricSpec(
    name="answer_recall",
    label="Answer recall",
    needs=frozenset({"references"}),
    description="Recall of normalised reference tokens in the prediction (multiset overlap / reference length), lenient normalisation (punctuation -> space).",
)


def recall(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    if not ref:
        return float(not pred)
    return sum((Counter(pred) & Counter(ref)).values()) / len(ref)


def score(predictions: list[str], references: list[str]) -> list[float]:
    return [recall(p, r) for p, r in zip(predictions, references, strict=True)]


class AnswerRecall(base.MetricModule):
    pass
