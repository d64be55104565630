"""Semantic similarity: cosine of sentence-transformers embeddings of prediction and reference."""

from harness.scoring import base
from harness.scoring.registry import MetricSpec
from harness.scoring.semantic import pair_cosine

SPEC = MetricSpec(
    name="semantic_similarity",
    label="Semantic similarity",
    needs=frozenset({"references", "embedding_model"}),
    description=(
        "Cosine similarity of the prediction's and the reference's sentence embeddings (default model: "
        "all-MiniLM-L6-v2, offline), clipped to [0, 1]; 0 for an empty prediction. Rewards answers that "
        "say the same thing in other words, which exact match and token F1 miss."
    ),
)
CITATION = "Reimers & Gurevych 2019, Sentence-BERT"


def score(predictions: list[str], references: list[str], embedding_model: str | None = None) -> list[float]:
    return pair_cosine(list(predictions), list(references), embedding_model)


class SemanticSimilarity(base.MetricModule):
    pass
