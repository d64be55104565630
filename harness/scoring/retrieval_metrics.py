"""Retrieval quality at document level: recall@k and reciprocal rank (MRR per example).

Pure functions over doc ids; no strategy, model or index involved. Inputs come from a prediction
record: ``retrieved_ids`` (doc ids of the retrieved chunks in rank order, duplicates kept as retrieved)
and the example's gold ``context_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence


def recall_at_k(retrieved_ids: Sequence[str], gold_doc_ids: Sequence[str], k: int) -> float | None:
    """Share of the gold documents found among the documents of the top-``k`` chunks; None without gold."""
    gold = set(gold_doc_ids)
    if not gold:
        return None
    return len(set(list(retrieved_ids)[:k]) & gold) / len(gold)


def reciprocal_rank(retrieved_ids: Sequence[str], gold_doc_ids: Sequence[str], k: int) -> float | None:
    """1 / rank of the first top-``k`` chunk from a gold document, 0 if none; None without gold."""
    gold = set(gold_doc_ids)
    if not gold:
        return None
    top = list(retrieved_ids)[:k]
    return next((1.0 / rank for rank, doc in enumerate(top, 1) if doc in gold), 0.0)


def retrieval_metrics(retrieved_ids: Sequence[str], gold_doc_ids: Sequence[str], k: int) -> dict[str, float]:
    """``{"recall@<k>": ..., "mrr": ...}`` for one example; empty when it has no gold documents."""
    recall = recall_at_k(retrieved_ids, gold_doc_ids, k)
    rr = reciprocal_rank(retrieved_ids, gold_doc_ids, k)
    if recall is None or rr is None:
        return {}
    return {f"recall@{k}": recall, "mrr": rr}


def per_example(
    fn, retrieved_ids: list[list[str] | None], context_ids: list[list[str] | None]
) -> list[float | None]:
    """``fn(retrieved, gold, k)`` per example with k = the number retrieved; ``None`` where the record
    has no retrieval or the example no gold documents (the metric does not apply)."""
    return [
        None if r is None or g is None else fn(r, g, len(r))
        for r, g in zip(retrieved_ids, context_ids, strict=True)
    ]
