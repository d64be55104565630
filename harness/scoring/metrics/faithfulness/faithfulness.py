"""Groundedness of an answer in its retrieved context: share of the answer's content tokens that
occur in the context (a lexical proxy for "is every claim supported by the passages?").

Stop words are ignored so "the", "is", "you" do not count as support; numbers and names dominate,
which is what hallucinations usually get wrong. A light plural/possessive fold ("returns" ~ "return")
avoids penalising paraphrase of the same word. An answer with no content tokens scores 0.0 when it
is empty (nothing grounded) and 1.0 otherwise (nothing unsupported, e.g. "Yes.").

Scored for answers whose record carries ``contexts`` (the texts a strategy grounded the answer on,
e.g. RAG's chunks in the prompt); ``None`` (not applicable) for the others.
"""

from harness.scoring import base
from harness.scoring.normalize import tokens
from harness.scoring.registry import MetricSpec

SPEC = MetricSpec(
    name="faithfulness",
    label="Faithfulness",
    needs=frozenset({"contexts"}),
    description=(
        "Token-overlap groundedness: |content tokens of the prediction found in the context| / "
        "|content tokens of the prediction|, after SQuAD normalisation and stop-word removal."
    ),
)

STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with from as into about than then so is are was were be
    been being am do does did done have has had can could will would shall should may might must it its this
    that these those there here i you your yours we our us they them their he she his her him me my mine
    what which who whom when where why how not no yes all any each some such only also just very too more
    most much many please thanks thank hi hello sure okay ok up out over under again further once""".split()
)


def _fold(token: str) -> str:
    if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
        return token[:-1]
    return token


def content_tokens(text: str) -> list[str]:
    return [_fold(t) for t in tokens(text) if t not in STOPWORDS]


def groundedness(prediction: str, contexts: list[str]) -> float:
    if not prediction.strip():
        return 0.0
    answer = content_tokens(prediction)
    if not answer:
        return 1.0
    support = set(content_tokens(" ".join(contexts)))
    return sum(1 for t in answer if t in support) / len(answer)


def score(predictions: list[str], contexts: list[list[str] | None]) -> list[float | None]:
    return [
        None if c is None else groundedness(p, list(c)) for p, c in zip(predictions, contexts, strict=True)
    ]


class Faithfulness(base.MetricModule):
    pass
