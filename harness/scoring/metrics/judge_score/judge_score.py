"""LLM-as-judge rubric score (off by default; ``scoring.judge.enabled: true`` or list ``judge_score`` in
``metrics:``). A local model grades each answer with ``scoring.judge.prompt``; the first digit 1-5 of
its reply becomes (digit - 1) / 4, a reply without one is ``None``. See ``harness/scoring/judge.py``."""

from harness.scoring import base
from harness.scoring.registry import MetricSpec

SPEC = MetricSpec(
    name="judge_score",
    label="LLM-judge score",
    needs=frozenset({"questions", "references", "backend", "scoring"}),
    default=False,
    description=__doc__,
)


def score(predictions: list[str], questions: list[str], references: list[str], backend=None, scoring=None):
    from harness.config import ScoringConfig
    from harness.scoring.judge import Judge

    cfg = (scoring or ScoringConfig()).judge
    return Judge(cfg, backend).score(questions, references, predictions)


class JudgeScore(base.MetricModule):
    pass
