"""Faithfulness: is every claim of the answer supported by the context the strategy grounded it on?

Scored for answers whose record carries ``contexts`` (e.g. RAG's chunks in the prompt); ``None`` for
the others. The answer is split into sentences; sentences without content words (a greeting) are
skipped. Lexical definition (default), per content sentence:

* **hard checks** -- the sentence is unsupported (0) when it states a *number* the context lacks
  (numbers compared whole after thousands-separator removal: ``60`` != ``600``, ``17.99`` ==
  ``$17.99``), a *named entity* the context lacks (a capitalised word that does not open the sentence,
  e.g. a product name), or a *negation* ("not", "no", "never", "n't", "cannot", ...) whose polarity
  differs from the context sentence that shares most of its content words ("can not be returned"
  against "can be returned" is unsupported, and vice versa);
* otherwise, support = share of its content tokens (stop words and negations removed, light
  plural fold) that occur in the context.

faithfulness = mean over content sentences. A **content-free answer** ("Yes.", "Sure!", "") scores
**0.0**: it makes no claim the context can be shown to support, and ``None`` would drop it from the
mean, so evasive answers would raise a strategy's score.

With ``scoring.nli_model`` (a local NLI cross-encoder, see ``harness.scoring.nli``) the score is
instead min over content sentences of P(entailment | premise = the joined contexts, hypothesis = the
sentence); the metric's output also returns ``lexical_support`` and ``nli_entailment`` (not recorded in
scores.json, where the analysis would read them as scores). Content-free answers still score 0.0.
"""

import re

from harness.scoring import base
from harness.scoring.facts import normalize_tokens
from harness.scoring.normalize import lenient_tokens
from harness.scoring.registry import MetricSpec
from harness.scoring.semantic import split_sentences

SPEC = MetricSpec(
    name="faithfulness",
    label="Faithfulness",
    needs=frozenset({"contexts", "scoring"}),
    description=(
        "Share of the answer's content sentences supported by the context: a sentence with a number, "
        "named entity or negation the context lacks scores 0, else its share of content tokens found; "
        "0 for content-free answers; optional NLI entailment (scoring.nli_model)."
    ),
)

STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with from as into about than then so is are was were be
    been being am do does did done have has had can could will would shall should may might must it its this
    that these those there here i you your yours we our us they them their he she his her him me my mine
    what which who whom when where why how yes all any each some such only also just very too more
    most much many please thanks thank hi hello sure okay ok up out over under again further once""".split()
)
NEGATIONS = frozenset("not no never none nobody nothing neither nor cannot".split())
_NT = re.compile(r"n['\u2019]t\b", re.IGNORECASE)
_CANNOT = re.compile(r"\bcannot\b", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+")  # letter/digit runs, split as lenient_tokens splits


def _fold(token: str) -> str:
    if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
        return token[:-1]
    return token


def _expand(text: str) -> str:
    return _CANNOT.sub("can not", _NT.sub(" not", text))


def words(text: str) -> list[str]:
    return lenient_tokens(_expand(text))


def content_tokens(text: str) -> list[str]:
    return [_fold(t) for t in words(text) if t not in STOPWORDS and t not in NEGATIONS]


def negated(text: str) -> bool:
    return any(t in NEGATIONS for t in words(text))


def numbers(text: str) -> set[str]:
    return {t for t in normalize_tokens(text) if t[0].isdigit()}


def entities(sentence: str) -> set[str]:
    """Capitalised words that do not open the sentence (names, product names), lower-cased."""
    found = _WORD.findall(sentence)
    return {w.lower() for w in found[1:] if w[0].isupper() and w != "I"}


def content_sentences(text: str) -> list[str]:
    return [s for s in split_sentences(text) if content_tokens(s)]


def sentence_support(sentence: str, context_sentences: list[str], ctx: dict) -> tuple[float, list[str]]:
    """(support in [0, 1], unsupported items) of one answer sentence."""
    missing = sorted(numbers(sentence) - ctx["numbers"])
    missing += sorted(e for e in entities(sentence) if e not in ctx["words"])
    tokens = content_tokens(sentence)
    if context_sentences:
        overlap = [len(set(tokens) & set(content_tokens(c))) for c in context_sentences]
        best = context_sentences[max(range(len(overlap)), key=overlap.__getitem__)]
        if max(overlap) > 0 and negated(sentence) != negated(best):
            missing.append("negation" if negated(sentence) else "missing negation")
    if missing:
        return 0.0, missing
    return sum(1 for t in tokens if t in ctx["content"]) / len(tokens), []


def lexical(prediction: str, contexts: list[str]) -> tuple[float, list[str]]:
    sentences = content_sentences(prediction)
    if not sentences:
        return 0.0, []
    joined = "\n".join(contexts)
    ctx_sentences = [s for c in contexts for s in split_sentences(c)]
    ctx = {
        "numbers": numbers(joined),
        "words": set(words(joined)) | {w.lower() for w in _WORD.findall(joined)},
        "content": set(content_tokens(joined)),
    }
    results = [sentence_support(s, ctx_sentences, ctx) for s in sentences]
    return sum(r[0] for r in results) / len(results), [m for r in results for m in r[1]]


def nli_scores(predictions: list[str], contexts: list[list[str]], model: str) -> list[float]:
    from harness.scoring.nli import entailment_probs

    pairs = [
        (i, "\n".join(c), s)
        for i, (p, c) in enumerate(zip(predictions, contexts, strict=True))
        for s in content_sentences(p)
    ]
    probs = entailment_probs(model, [p[1] for p in pairs], [p[2] for p in pairs])
    out = [1.0] * len(predictions)
    has = [False] * len(predictions)
    for (i, _, _), prob in zip(pairs, probs, strict=True):
        out[i], has[i] = min(out[i], prob), True
    return [v if h else 0.0 for v, h in zip(out, has, strict=True)]


def score(predictions: list[str], contexts: list[list[str] | None], scoring=None) -> dict:
    lex, unsupported = [], []
    for p, c in zip(predictions, contexts, strict=True):
        value, missing = (None, []) if c is None else lexical(p, list(c))
        lex.append(value)
        unsupported.append(missing)
    model = getattr(scoring, "nli_model", None)
    if not model:
        return {"scores": lex, "unsupported": unsupported}
    idx = [i for i, c in enumerate(contexts) if c is not None]
    nli: list[float | None] = [None] * len(predictions)
    got = nli_scores([predictions[i] for i in idx], [list(contexts[i]) for i in idx], str(model))
    for i, v in zip(idx, got, strict=True):
        nli[i] = v
    return {"scores": nli, "lexical_support": lex, "nli_entailment": nli, "unsupported": unsupported}


class Faithfulness(base.MetricModule):
    pass
