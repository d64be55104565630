r"""Coherence (our own metric, defined here and in docs/metrics.md): on-topic, non-degenerate text.

Per answer:

* consistency = mean over consecutive pairs of content sentences (>= 3 words; greetings and sign-offs
  are skipped) of clip(cosine of their embeddings / 0.15, 0, 1): sentences on the same topic score 1
  (MiniLM puts related support sentences above ~0.15, unrelated ones near 0), while a pair with
  cosine >= 0.95 (a repeated sentence) counts 0; 1 for an answer with one content sentence;
* repetition = max over n in {2, 3, 4} of (1 - distinct n-grams / n-grams), over word tokens that
  split on hyphens and punctuation too (``[^\W_]+``), so "Bike-Bike-Bike-Bike" is four tokens
  "bike" (0 where an answer has fewer than two n-grams of that size);
* compression = clip((2.4 - r) / (2.4 - 2.0), 0, 1), where r = raw UTF-8 length / zlib-compressed
  length of the answer (the compression ratio used to flag degenerate decoding, e.g. Whisper's 2.4
  threshold): ordinary answers have r < 2 and keep 1, looping text (r >= 2.4) gets 0;
* fluency (diagnostic, small weight) = clip(1 - ln(PPL) / ln(V), 0, 1), PPL the perplexity of the
  answer conditioned on the question under the run's base model with adapters off, V its vocabulary
  size. It favours the base model's own phrasing over RAG/adapter answers, so it only gets weight 0.2;
* coherence = (0.8 x consistency + 0.2 x fluency) x (1 - repetition) x compression, or consistency x
  (1 - repetition) x compression when no perplexity is available; 0 for an empty answer.
"""

import math
import re
import zlib

import numpy as np

from harness.scoring import base
from harness.scoring.normalize import lenient_answer
from harness.scoring.registry import MetricSpec
from harness.scoring.semantic import embed, split_sentences

SPEC = MetricSpec(
    name="coherence",
    label="Coherence",
    needs=frozenset({"questions", "backend", "embedding_model", "scoring"}),
    capabilities=frozenset({"LogLikelihood"}),
    description=__doc__,
)
# Recorded per example in scores.json; "compression" is returned but not recorded, because the
# analysis (harness/decision/analysis.py SKIP_PER_EXAMPLE) would otherwise treat it as a score.
DIAGNOSTICS = ("perplexity", "fluency", "consistency", "repetition")

REPEAT_COSINE = 0.95
RELATED_COSINE = 0.15
MIN_CONTENT_WORDS = 3
FLUENCY_WEIGHT = 0.2
REPEAT_NGRAMS = (2, 3, 4)
COMPRESSION_OK, COMPRESSION_DEGENERATE = 2.0, 2.4
_WORD = re.compile(r"[^\W_]+")


def fluency(perplexity, vocab_size: int) -> float:
    if perplexity is None or not math.isfinite(perplexity) or perplexity <= 0:
        return 0.0
    return float(min(1.0, max(0.0, 1.0 - math.log(max(perplexity, 1.0)) / math.log(max(vocab_size, 2)))))


def word_tokens(text: str) -> list[str]:
    """Lower-cased letter/digit runs: hyphens and punctuation split ("N-1200" -> "n", "1200")."""
    return _WORD.findall(text.lower())


def repetition(text: str) -> float:
    words = word_tokens(text)
    worst = 0.0
    for n in REPEAT_NGRAMS:
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        if len(grams) >= 2:
            worst = max(worst, 1.0 - len(set(grams)) / len(grams))
    return worst


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def compression(text: str) -> float:
    r = compression_ratio(text)
    span = COMPRESSION_DEGENERATE - COMPRESSION_OK
    return float(min(1.0, max(0.0, (COMPRESSION_DEGENERATE - r) / span)))


def consistency_scores(predictions: list[str], embedding_model=None) -> list[float]:
    sentences = [
        [s for s in split_sentences(p) if len(lenient_answer(s).split()) >= MIN_CONTENT_WORDS]
        for p in predictions
    ]
    flat = [s for group in sentences for s in group if len(group) > 1]
    emb = embed(flat, embedding_model) if flat else None
    out, pos = [], 0
    for group in sentences:
        if len(group) <= 1:
            out.append(1.0 if predictions[len(out)].strip() else 0.0)
            continue
        vecs = emb[pos : pos + len(group)]
        pos += len(group)
        cos = np.sum(vecs[:-1] * vecs[1:], axis=1)
        cos = np.where(cos >= REPEAT_COSINE, 0.0, np.clip(cos / RELATED_COSINE, 0.0, 1.0))
        out.append(float(cos.mean()))
    return out


def score(
    predictions: list[str],
    questions: list[str] | None = None,
    backend=None,
    embedding_model: str | None = None,
    scoring=None,
    perplexities: list[float | None] | None = None,
    vocab_size: int = 32000,
) -> dict:
    """Per-example coherence; perplexities come from ``backend`` (adapters off) when it can score
    likelihoods, else from ``perplexities`` (tests), else fluency is left out."""
    predictions = list(predictions)
    if perplexities is None and backend is not None and questions is not None:
        from harness.scoring.perplexity import answer_perplexities, supports_perplexity
        from harness.scoring.perplexity import vocab_size as backend_vocab

        if supports_perplexity(backend):
            batch = getattr(scoring, "perplexity_batch_size", 8)
            perplexities = answer_perplexities(backend, list(questions), predictions, batch_size=batch)
            vocab_size = backend_vocab(backend)
    cons = consistency_scores(predictions, embedding_model)
    reps = [repetition(p) for p in predictions]
    comp = [compression(p) for p in predictions]
    flu = [fluency(x, vocab_size) for x in perplexities] if perplexities is not None else None
    scores = []
    for i, pred in enumerate(predictions):
        if not pred.strip():
            scores.append(0.0)
            continue
        if flu is not None:
            base_score = (1 - FLUENCY_WEIGHT) * cons[i] + FLUENCY_WEIGHT * flu[i]
        else:
            base_score = cons[i]
        scores.append(float(base_score * (1.0 - reps[i]) * comp[i]))
    return {
        "scores": scores,
        "perplexity": list(perplexities) if perplexities is not None else None,
        "fluency": flu,
        "consistency": cons,
        "repetition": reps,
        "compression": comp,
    }


class Coherence(base.MetricModule):
    pass
