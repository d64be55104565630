"""Retrieval mean reciprocal rank at document level: per example 1 / rank of the first retrieved chunk
(``retrieved_ids``, rank order) from a gold document (``context_ids``), 0 if none. ``None`` where the
record has no retrieval or the example no gold documents."""

from harness.scoring import base
from harness.scoring.registry import MetricSpec
from harness.scoring.retrieval_metrics import per_example, reciprocal_rank

SPEC = MetricSpec(
    name="mrr",
    label="Retrieval MRR",
    needs=frozenset({"retrieved_ids", "context_ids"}),
    description=__doc__,
)


def score(
    predictions: list[str], retrieved_ids: list[list[str] | None], context_ids: list[list[str] | None]
) -> list[float | None]:
    return per_example(reciprocal_rank, retrieved_ids, context_ids)


class ReciprocalRank(base.MetricModule):
    pass
