"""Style adherence for tone/format questions: the house style guide's rules, plus closeness to the
company's reference answer.

Scored only on examples tagged ``scoring.style_tag`` (default ``style``; the scorer passes just those).
Per answer:

* rules = share of the house-style rules the answer passes. The rules are data
  (``harness.scoring.style_rules.NIMBUS_STYLE_RULES``), one per checkable rule of the demo style guide
  (``eval_sets/nimbus_support/kb/support-style-guide.md``): exact greeting "Hi there! ", at most two
  sentences between greeting and sign-off, exact sign-off "— Nimbus Care Team", one line, no bullets or
  headings, no emojis, no exclamation mark in the body, never "unfortunately", a next step offered (app
  menu path, nimbuscycles.com, a store, replying with information). ``score(..., rules=...)`` takes
  another list of rule dicts for another house style;
* similarity = cosine of the answer's and the reference's sentence embeddings (as semantic_similarity),
  so an answer that follows the format but says something else does not score full marks;
* style_adherence = (rules + similarity) / 2. The per-rule results are returned as ``checks``.
"""

from harness.scoring import base
from harness.scoring.registry import MetricSpec
from harness.scoring.semantic import pair_cosine
from harness.scoring.style_rules import NIMBUS_STYLE_RULES, check

SPEC = MetricSpec(
    name="style_adherence",
    label="Style adherence",
    needs=frozenset({"references", "embedding_model"}),
    tag_option="style_tag",
    description=__doc__,
)


def score(
    predictions: list[str],
    references: list[str],
    embedding_model: str | None = None,
    rules: list[dict] | tuple[dict, ...] = NIMBUS_STYLE_RULES,
) -> dict:
    predictions, references = list(predictions), list(references)
    sims = pair_cosine(predictions, references, embedding_model)
    checks = [check(p, rules) for p in predictions]
    # An empty answer breaks no "never" rule but follows no style either: 0.
    passed = [
        sum(c.values()) / len(c) if c and p.strip() else 0.0 for p, c in zip(predictions, checks, strict=True)
    ]
    return {
        "scores": [(r + s) / 2 for r, s in zip(passed, sims, strict=True)],
        "rules": passed,
        "similarity": sims,
        "checks": checks,
    }


class StyleAdherence(base.MetricModule):
    pass
