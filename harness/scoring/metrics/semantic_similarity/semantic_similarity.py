"""Semantic similarity: cosine of sentence-transformers embeddings of prediction and reference."""

import datasets
import evaluate

from harness.scoring.semantic import pair_cosine

_DESCRIPTION = (
    "Cosine similarity of the prediction's and the reference's sentence embeddings (default model: "
    "all-MiniLM-L6-v2, offline), clipped to [0, 1]; 0 for an empty prediction. Rewards answers that "
    "say the same thing in other words, which exact match and token F1 miss."
)
_KWARGS = (
    "predictions (list[str]), references (list[str]), embedding_model (str | None: sentence-transformers "
    "id or path; None = default). Returns score (mean) and scores (per example)."
)


class SemanticSimilarity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Reimers & Gurevych 2019, Sentence-BERT",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, embedding_model=None):
        scores = pair_cosine(list(predictions), list(references), embedding_model)
        return {"score": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
