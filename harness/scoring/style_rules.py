"""House-style rules as data, and the one small interpreter that checks them.

``NIMBUS_STYLE_RULES`` transcribes every checkable rule of the demo style guide
(``eval_sets/nimbus_support/kb/support-style-guide.md``, "Reply format", "Tone" and "Always offer a
next step"). A rule is a dict:

* ``id`` -- short name, shown in the per-example ``checks``;
* ``guide`` -- the guide's wording it checks;
* ``kind`` -- ``prefix`` / ``suffix`` (the reply, stripped of surrounding whitespace, starts / ends with
  ``value`` exactly, case-sensitive; a prefix ending in a space must be followed by exactly one), ``forbid`` / ``require`` (the regular expression ``pattern``,
  case-insensitive unless ``case: true``, must not / must match), ``max_sentences`` (at most ``value``
  sentences, ending in ``.``, ``!`` or ``?``);
* ``scope`` -- ``reply`` (the whole reply) or ``body`` (the reply without the greeting and the sign-off
  when they are present: the first ``prefix`` rule's value and the first ``suffix`` rule's value).

Not checkable by pattern and left to ``semantic_similarity`` / the judge: "do not blame the customer",
"do not over-apologize", the safety-first ordering, and the "what not to include" list.
"""

from __future__ import annotations

import re
from typing import Any

NIMBUS_STYLE_RULES: tuple[dict[str, Any], ...] = (
    {
        "id": "greeting",
        "guide": 'Start with the exact greeting "Hi there!" followed by a single space.',
        "kind": "prefix",
        "value": "Hi there! ",
        "scope": "reply",
    },
    {
        "id": "sign_off",
        "guide": 'End with the exact sign-off "— Nimbus Care Team".',
        "kind": "suffix",
        "value": "\u2014 Nimbus Care Team",
        "scope": "reply",
    },
    {
        "id": "two_sentences",
        "guide": "Write at most two sentences between the greeting and the sign-off.",
        "kind": "max_sentences",
        "value": 2,
        "scope": "body",
    },
    {
        "id": "one_line",
        "guide": "Keep the whole reply on one line.",
        "kind": "forbid",
        "pattern": r"[\r\n]",
        "scope": "reply",
    },
    {
        "id": "no_bullets_or_headings",
        "guide": "No bullet points or headings.",
        "kind": "forbid",
        "pattern": r"(^|[\r\n]|:\s)\s*([-*+\u2022]\s|\d+[.)]\s|#{1,6}\s)|\s[\u2022\u25aa\u25cf]\s",
        "scope": "reply",
    },
    {
        "id": "no_emojis",
        "guide": "No emojis.",
        "kind": "forbid",
        "pattern": "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f]",
        "scope": "reply",
    },
    {
        "id": "no_exclamation_in_body",
        "guide": 'No exclamation marks in the body; the only one allowed is in "Hi there!".',
        "kind": "forbid",
        "pattern": r"[!\uff01]",
        "scope": "body",
    },
    {
        "id": "no_unfortunately",
        "guide": 'Never use the word "unfortunately".',
        "kind": "forbid",
        "pattern": r"\bunfortunately\b",
        "scope": "reply",
    },
    {
        "id": "next_step",
        "guide": "Point to a next step: an app menu path, a page on nimbuscycles.com, a store visit, "
        "or replying with specific information such as an order or serial number.",
        "kind": "require",
        "pattern": (
            r"\w[\w+&' -]*\s>\s\w"  # menu path: Account > Membership
            r"|nimbuscycles\.com"  # a page on the site, or an address there
            r"|\b(nimbus|local|any|nearest|a|our|the)\s+(\w+\s+)?stores?\b"  # a store visit
            r"|\b(reply|respond|write back|send us|email|contact|call|report)\b"  # reply with information
            r"|\bat checkout\b"
        ),
        "scope": "reply",
    },
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    """Sentences: text split after ``.``, ``!`` or ``?`` followed by whitespace (so ``17.99`` and
    ``nimbuscycles.com/orders`` do not end one)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if re.search(r"\w", s)]


def body(reply: str, rules: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> str:
    text = reply.strip()
    prefix = next((r["value"] for r in rules if r["kind"] == "prefix"), None)
    suffix = next((r["value"] for r in rules if r["kind"] == "suffix"), None)
    if prefix and text.startswith(prefix.strip()):
        text = text[len(prefix.strip()) :]
    if suffix and text.endswith(suffix):
        text = text[: -len(suffix)]
    return text.strip()


def check(reply: str, rules: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> dict[str, bool]:
    """rule id -> passed, for one reply."""
    out: dict[str, bool] = {}
    stripped, inner = reply.strip(), body(reply, rules)
    for rule in rules:
        text = inner if rule.get("scope") == "body" else stripped
        kind = rule["kind"]
        if kind == "prefix":
            value = rule["value"]  # exact, including a trailing single space: no double space after it
            ok = stripped.startswith(value) and not stripped[len(value) : len(value) + 1].isspace()
        elif kind == "suffix":
            ok = stripped.endswith(rule["value"])
        elif kind == "max_sentences":
            ok = 0 < len(sentences(text)) <= int(rule["value"])
        elif kind in ("forbid", "require"):
            flags = 0 if rule.get("case") else re.IGNORECASE
            found = re.search(rule["pattern"], text, flags) is not None
            ok = found if kind == "require" else not found
        else:
            raise ValueError(f"style rule {rule.get('id')!r}: unknown kind {kind!r}")
        out[rule["id"]] = bool(ok)
    return out
