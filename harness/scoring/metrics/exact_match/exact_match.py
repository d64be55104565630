"""Exact match after SQuAD-style normalisation (case, punctuation, articles, whitespace)."""

import datasets
import evaluate

from harness.scoring.normalize import normalize_answer

_DESCRIPTION = "1.0 when the normalised prediction equals the normalised reference, else 0.0."
_KWARGS = "predictions (list[str]), references (list[str]). Returns score (mean) and scores (per example)."


class ExactMatch(evaluate.Metric):
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
        scores = [
            float(normalize_answer(p) == normalize_answer(r))
            for p, r in zip(predictions, references, strict=True)
        ]
        return {"score": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
