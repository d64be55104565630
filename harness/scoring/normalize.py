"""SQuAD-style answer normalisation shared by the text-overlap metrics.

Kept dependency-free because each local ``evaluate`` module is imported by path and copies its
imports; the modules import this file from the same folder via ``harness.scoring.normalize``.
"""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation) | {"\u2014", "\u2013", "\u2019", "\u2018", "\u201c", "\u201d"}


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and English articles, collapse whitespace."""
    text = text.lower()
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return normalize_answer(text).split()
