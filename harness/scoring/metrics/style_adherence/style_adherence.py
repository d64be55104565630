"""Style adherence for tone/format questions: closeness to the company's reference answers.

Scored only on examples tagged ``scoring.style_tag`` (default ``style``; the scorer passes just those).
Per answer:

* similarity = cosine of the answer's and the reference's sentence embeddings (as semantic_similarity);
* house-style markers are derived from the style-tagged reference answers themselves: the longest
  opening (and closing) run of up to 6 words, after lower-casing and dropping punctuation, that at
  least half of them (and at least 2) share -- e.g. "hi there" ... "care team". When no opening or
  closing is shared, that reference's own first / last two words are used;
* checks = opening present at the start, closing present at the end, and length within 0.5-2x the
  reference's word count; format = the share of checks passed;
* style_adherence = (similarity + format) / 2.
"""

from collections import Counter

from harness.scoring import base
from harness.scoring.normalize import normalize_answer
from harness.scoring.registry import MetricSpec
from harness.scoring.semantic import pair_cosine

SPEC = MetricSpec(
    name="style_adherence",
    label="Style adherence",
    needs=frozenset({"references", "embedding_model"}),
    tag_option="style_tag",
    description=__doc__,
)

MAX_MARKER_WORDS = 6


def _words(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def shared_marker(references: list[str], from_end: bool) -> tuple[str, ...]:
    """Longest word run (<= 6) opening (or closing) at least half of the references (and >= 2)."""
    seqs = [_words(r) for r in references]
    need = max(2, (len(seqs) + 1) // 2)
    best: tuple[str, ...] = ()
    for k in range(1, MAX_MARKER_WORDS + 1):
        counts = Counter(tuple(s[-k:]) if from_end else tuple(s[:k]) for s in seqs if len(s) >= k)
        if not counts:
            break
        gram, n = counts.most_common(1)[0]
        if n < need:
            break
        best = gram
    return best


def style_checks(prediction: str, reference: str, opening: tuple, closing: tuple) -> dict[str, bool]:
    pred, ref = _words(prediction), _words(reference)
    open_m = opening or tuple(ref[:2])
    close_m = closing or tuple(ref[-2:])
    n_ref = max(1, len(ref))
    return {
        "opening": bool(open_m) and tuple(pred[: len(open_m)]) == open_m,
        "closing": bool(close_m) and tuple(pred[-len(close_m) :]) == close_m,
        "length": 0.5 * n_ref <= len(pred) <= 2.0 * n_ref,
    }


def score(predictions: list[str], references: list[str], embedding_model: str | None = None) -> dict:
    predictions, references = list(predictions), list(references)
    opening = shared_marker(references, from_end=False)
    closing = shared_marker(references, from_end=True)
    sims = pair_cosine(predictions, references, embedding_model)
    checks = [style_checks(p, r, opening, closing) for p, r in zip(predictions, references, strict=True)]
    return {
        "scores": [(s + sum(c.values()) / len(c)) / 2 for s, c in zip(sims, checks, strict=True)],
        "similarity": sims,
        "checks": checks,
        "markers": {"opening": " ".join(opening), "closing": " ".join(closing)},
    }


class StyleAdherence(base.MetricModule):
    pass
