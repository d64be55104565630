"""ROUGE-L F-measure (longest common subsequence) via Google's ``rouge_score`` package."""

from rouge_score import rouge_scorer

from harness.scoring import base
from harness.scoring.registry import MetricSpec

SPEC = MetricSpec(
    name="rouge_l",
    label="ROUGE-L",
    needs=frozenset({"references"}),
    description="ROUGE-L F-measure between prediction and reference, with Porter stemming.",
)
CITATION = "Lin 2004, ROUGE: A Package for Automatic Evaluation of Summaries"


def score(predictions: list[str], references: list[str]) -> list[float]:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]


class RougeL(base.MetricModule):
    pass
