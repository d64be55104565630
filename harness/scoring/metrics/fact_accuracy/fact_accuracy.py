"""Key-fact accuracy: 1.0 when the answer states every ``must_include`` fact and none of the
``must_not_include`` ones (e.g. the superseded value of an ``updated`` question), else 0.0.

Matching as ``fact_recall`` (``harness.scoring.facts``). ``None`` for examples with neither field.
A stale answer, or one that hedges by stating both the old and the new value, scores 0.
"""

from harness.scoring import base
from harness.scoring.facts import fact_accuracy, fact_hits
from harness.scoring.registry import MetricSpec

SPEC = MetricSpec(
    name="fact_accuracy",
    label="Fact accuracy",
    binary=True,
    needs=frozenset({"facts"}),
    description="1.0 when every must_include fact is stated and no must_not_include fact is, else 0.0.",
)


def score(predictions: list[str], facts: list[dict | None]) -> list[float | None]:
    return [
        None if f is None else fact_accuracy(fact_hits(p, f.get("must_include"), f.get("must_not_include")))
        for p, f in zip(predictions, facts, strict=True)
    ]


class FactAccuracy(base.MetricModule):
    pass
