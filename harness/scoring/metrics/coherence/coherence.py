"""Coherence: fluency under the run's base model, sentence-to-sentence consistency, no repetition.

Per answer:

* fluency = clip(1 - ln(PPL) / ln(V), 0, 1), where PPL is the perplexity of the answer's tokens
  *conditioned on the question* (chat template, user turn = question) under the run's base model
  with adapters switched off (the same judge for every strategy), and V the vocabulary size:
  a model guessing uniformly (PPL = V) scores 0, a perfectly predictable answer 1;
* consistency = mean over consecutive pairs of content sentences (>= 3 words; greetings and sign-offs
  are skipped) of clip(cosine of their embeddings / 0.15, 0, 1): sentences on the same topic score 1
  (MiniLM puts related support sentences above ~0.15, unrelated ones near 0), while a pair with
  cosine >= 0.95 (a repeated sentence) counts 0; 1 for an answer with one content sentence;
* repetition = 1 - distinct word trigrams / word trigrams (0 under four words);
* coherence = (fluency + consistency) / 2 x (1 - repetition); 0 for an empty answer.

Without perplexities (no backend with the LogLikelihood capability, and ``perplexities=None``) fluency
is left out: coherence = consistency x (1 - repetition).
"""

import math

import numpy as np

from harness.scoring import base
from harness.scoring.normalize import normalize_answer
from harness.scoring.registry import MetricSpec
from harness.scoring.semantic import embed, split_sentences

SPEC = MetricSpec(
    name="coherence",
    label="Coherence",
    needs=frozenset({"questions", "backend", "embedding_model", "scoring"}),
    description=__doc__,
)
DIAGNOSTICS = ("perplexity", "fluency", "consistency", "repetition")

REPEAT_COSINE = 0.95
RELATED_COSINE = 0.15
MIN_CONTENT_WORDS = 3


def fluency(perplexity, vocab_size: int) -> float:
    if perplexity is None or not math.isfinite(perplexity) or perplexity <= 0:
        return 0.0
    return float(min(1.0, max(0.0, 1.0 - math.log(max(perplexity, 1.0)) / math.log(max(vocab_size, 2)))))


def repetition(text: str) -> float:
    words = text.lower().split()
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def consistency_scores(predictions: list[str], embedding_model=None) -> list[float]:
    sentences = [
        [s for s in split_sentences(p) if len(normalize_answer(s).split()) >= MIN_CONTENT_WORDS]
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
    flu = [fluency(x, vocab_size) for x in perplexities] if perplexities is not None else None
    scores = []
    for i, pred in enumerate(predictions):
        if not pred.strip():
            scores.append(0.0)
            continue
        base_score = (flu[i] + cons[i]) / 2 if flu is not None else cons[i]
        scores.append(float(base_score * (1.0 - reps[i])))
    return {
        "scores": scores,
        "perplexity": list(perplexities) if perplexities is not None else None,
        "fluency": flu,
        "consistency": cons,
        "repetition": reps,
    }


class Coherence(base.MetricModule):
    pass
