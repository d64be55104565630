"""Token-level F1 between normalised prediction and reference (SQuAD definition)."""

from collections import Counter

import datasets
import evaluate

from harness.scoring.normalize import tokens

_DESCRIPTION = "Harmonic mean of token precision and recall after normalisation; 1.0 when both are empty."
_KWARGS = "predictions (list[str]), references (list[str]). Returns score (mean) and scores (per example)."


def f1(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class TokenF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Rajpurkar et al. 2016 (SQuAD)",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        scores = [f1(p, r) for p, r in zip(predictions, references, strict=True)]
        return {"score": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
