"""Key-fact checks per example: did the answer state the facts that decide it, and avoid the stale ones?

Each eval-set example may carry ``must_include`` (a list; each item is a string or a list of accepted
alternative strings, e.g. ``["30 days", "thirty days"]``) and ``must_not_include`` (a list of strings,
e.g. the superseded value of an ``updated`` question). The reference point is promptfoo's
``icontains`` / ``icontains-any`` / ``not-icontains`` assertions, made stricter about token
boundaries:

* **Normalisation** (both the prediction and the fact): Unicode NFKC, ``casefold()``, every dash
  (‐ ‑ ‒ – — ― −) becomes ``-`` and every curly/prime quote becomes ``'`` or ``"``. Thousands separators
  are removed on both sides (``15,000`` == ``15000``; a comma between digits followed by exactly three
  digits). The text is then split into tokens:

  - a *number* token is a run of digits with ``. , : ' / -`` kept only *between* digits, so
    ``3.4.0``, ``17.99``, ``22:00``, ``5'11``, ``3-5`` and ``1/2`` stay one token and a sentence-final
    ``3.4.0,`` or ``$17.99.`` loses only the trailing punctuation;
  - a *word* token is a run of letters; any other character (punctuation, hyphens and apostrophes
    between letters, whitespace) separates tokens, and a letter/digit boundary splits too (``NB-540``,
    ``NB 540`` and ``NB540`` all give ``nb 540``; ``e-bike`` gives ``e bike``; ``don't`` gives
    ``don t``);
  - currency signs and ``%`` are tokens of their own (``$17.99`` gives ``$ 17.99``, so a fact
    ``$17.99`` needs the dollar sign next to the amount).

* **Matching**: a fact is present when its token sequence occurs as a contiguous run of whole tokens
  in the prediction. There are no substring hits inside a word or number: ``60`` does not match
  ``600`` or ``1600``, ``no`` does not match ``not``, ``3 years`` does not match "years 3". Numbers
  compare exactly as strings after the thousands-separator removal (``17.99`` != ``17.990``).

Everything here is pure (no models, no I/O); callers aggregate per tag.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

Fact = str | Sequence[str]

_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"), "-")
_QUOTES = {
    **dict.fromkeys(map(ord, "\u2018\u2019\u201a\u201b\u2032\u0060\u00b4"), "'"),
    **dict.fromkeys(map(ord, "\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb"), '"'),
}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TOKEN = re.compile(r"\d+(?:[.,:'/\-]\d+)*|[^\W\d_]+|[$€£¥₹%]")


def normalize_tokens(text: str) -> list[str]:
    """The token sequence both sides are compared on (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_DASHES).translate(_QUOTES)
    return _TOKEN.findall(_THOUSANDS.sub("", text))


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    if n == 0:
        return False
    first = needle[0]
    return any(haystack[i] == first and haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def alternatives(fact: Fact) -> list[str]:
    """A ``must_include`` item as its list of accepted alternatives."""
    return [fact] if isinstance(fact, str) else list(fact)


def fact_found(text: str | list[str], fact: Fact) -> bool:
    """True when any alternative of ``fact`` occurs in ``text`` as a whole-token sequence."""
    tokens = normalize_tokens(text) if isinstance(text, str) else text
    alts = alternatives(fact)
    if not alts:
        raise ValueError("a fact needs at least one alternative")
    hits = []
    for alt in alts:
        needle = normalize_tokens(alt)
        if not needle:
            raise ValueError(f"fact {alt!r} has no letters, digits or currency signs to match")
        hits.append(_contains(tokens, needle))
    return any(hits)


@dataclass(frozen=True)
class FactResult:
    present: list[bool]  # one per must_include item
    forbidden: list[bool]  # one per must_not_include item: True = the stale/forbidden fact was stated


def fact_hits(
    prediction: str | None,
    must_include: Sequence[Fact] | None,
    must_not_include: Sequence[str] | None = None,
) -> FactResult:
    tokens = normalize_tokens(prediction or "")
    return FactResult(
        present=[fact_found(tokens, f) for f in must_include or ()],
        forbidden=[fact_found(tokens, f) for f in must_not_include or ()],
    )


def fact_recall(result: FactResult) -> float | None:
    """Share of required facts present; None when the example has no ``must_include``."""
    if not result.present:
        return None
    return sum(result.present) / len(result.present)


def fact_accuracy(result: FactResult) -> float | None:
    """1.0 when every required fact is present and no forbidden one is; None when neither field is set."""
    if not result.present and not result.forbidden:
        return None
    return float(all(result.present) and not any(result.forbidden))
