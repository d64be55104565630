"""Key-fact recall: the share of an example's ``must_include`` facts the answer states.

Each fact is a list of accepted alternatives; one is present when its normalised token sequence occurs
as a contiguous run of whole tokens in the answer (``harness.scoring.facts``: NFKC, case-folded, dashes
and quotes unified, thousands separators dropped, numbers kept whole so ``60`` never matches ``600``).
``None`` for examples without ``must_include``. Reference: promptfoo's ``icontains-any`` assertion,
stricter about token boundaries.
"""

from harness.scoring import base
from harness.scoring.facts import fact_hits, fact_recall
from harness.scoring.registry import MetricSpec

SPEC = MetricSpec(
    name="fact_recall",
    label="Fact recall",
    needs=frozenset({"facts"}),
    description="Share of the example's must_include facts (any alternative) stated in the answer.",
)


def score(predictions: list[str], facts: list[dict | None]) -> list[float | None]:
    return [
        None if f is None else fact_recall(fact_hits(p, f.get("must_include"), f.get("must_not_include")))
        for p, f in zip(predictions, facts, strict=True)
    ]


class FactRecall(base.MetricModule):
    pass
