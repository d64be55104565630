"""Share of reference tokens found in the prediction: lenient accuracy for verbose small models.

A model that answers "Sure! The return window is 45 days from delivery, as stated..." gets full
credit for the fact even though exact match is 0 and F1 is diluted by the extra words.
"""

from collections import Counter

import datasets
import evaluate

from harness.scoring.normalize import tokens

_DESCRIPTION = (
    "Recall of normalised reference tokens in the prediction (multiset overlap / reference length)."
)
_KWARGS = "predictions (list[str]), references (list[str]). Returns score (mean) and scores (per example)."


def recall(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    if not ref:
        return float(not pred)
    return sum((Counter(pred) & Counter(ref)).values()) / len(ref)


class AnswerRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        scores = [recall(p, r) for p, r in zip(predictions, references, strict=True)]
        return {"score": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
