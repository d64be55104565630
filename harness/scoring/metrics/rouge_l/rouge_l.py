"""ROUGE-L F-measure (longest common subsequence) via Google's ``rouge_score`` package."""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE-L F-measure between prediction and reference, with Porter stemming."
_KWARGS = "predictions (list[str]), references (list[str]). Returns score (mean) and scores (per example)."


class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin 2004, ROUGE: A Package for Automatic Evaluation of Summaries",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
        return {"score": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
