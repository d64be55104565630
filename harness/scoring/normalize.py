"""Answer normalisation shared by the text-overlap metrics.

Two normalisers, on purpose:

* ``normalize_answer`` / ``tokens`` -- the **official SQuAD v1.1** ``normalize_answer`` (Rajpurkar et
  al. 2016, ``evaluate-v1.1.py``), character for character: lower-case, *delete* every character of
  ``string.punctuation`` (so ``e-bike`` -> ``ebike``, ``$17.99`` -> ``1799``, ``3.4.0`` -> ``340``),
  remove the words ``a``/``an``/``the``, collapse whitespace. Characters outside ``string.punctuation``
  (Unicode dashes, curly quotes, ``€``) are kept, as in the official script. ``exact_match`` and
  ``token_f1`` use it, so their numbers are comparable with published SQuAD-style results.
* ``lenient_answer`` / ``lenient_tokens`` -- punctuation (ASCII and the common Unicode dashes and
  quotes) becomes a *space*, so ``e-bike`` -> ``e bike`` and ``45-days`` -> ``45 days``; articles
  removed, lower-cased. Used by ``answer_recall`` (lenient accuracy for verbose answers) and as a word
  splitter by the model-based metrics; not a published definition.

Kept dependency-free: each local ``evaluate`` module imports it via ``harness.scoring.normalize``.
"""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_EXCLUDE = set(string.punctuation)
_LENIENT_PUNCT = _EXCLUDE | {"\u2014", "\u2013", "\u2019", "\u2018", "\u201c", "\u201d"}


def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation (see the module docstring)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _EXCLUDE)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def lenient_answer(text: str) -> str:
    """Lower-case, punctuation -> space, articles removed, whitespace collapsed."""
    text = text.lower()
    text = "".join(" " if ch in _LENIENT_PUNCT else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def lenient_tokens(text: str) -> list[str]:
    return lenient_answer(text).split()
