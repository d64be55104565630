"""Retrieval recall@k at document level: the share of an example's gold documents (``context_ids``)
among the documents of the chunks retrieved for it (``retrieved_ids``, rank order). k is the number of
retrieved ids of the example (a strategy's ``top_k``). ``None`` where the record has no retrieval or
the example no gold documents."""

from harness.scoring import base
from harness.scoring.registry import MetricSpec
from harness.scoring.retrieval_metrics import per_example, recall_at_k

SPEC = MetricSpec(
    name="recall_at_k",
    label="recall@k",
    needs=frozenset({"retrieved_ids", "context_ids"}),
    description=__doc__,
)


def score(
    predictions: list[str], retrieved_ids: list[list[str] | None], context_ids: list[list[str] | None]
) -> list[float | None]:
    return per_example(recall_at_k, retrieved_ids, context_ids)


class RecallAtK(base.MetricModule):
    pass
