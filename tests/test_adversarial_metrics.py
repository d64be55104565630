"""Cheap tricks must not pay: each metric against adversarial answers, with the expected direction.

Rows are (metric, trick, good answer, adversarial answer, extra inputs); the adversarial answer must
score lower than the good one (or the stated bound). Definitions: docs/metrics.md.
"""

from __future__ import annotations

import pytest

from harness.scoring.score import load_metric

CONTEXT = [
    "Bikes can be returned within 60 days of delivery for a full refund. "
    "The Stratus S2 battery holds 540 Wh and is covered for 3 years."
]
QUESTION = "Can I return my bike?"
REFERENCE = "Yes, bikes can be returned within 60 days of delivery."
GOOD = "Bikes can be returned within 60 days of delivery."
HOUSE = "Hi there! Bikes can be returned within 60 days of delivery at nimbuscycles.com/returns. \u2014 Nimbus Care Team"


def _scores(metric: str, predictions: list[str], **inputs):
    return load_metric(metric).compute(predictions=predictions, **inputs)["scores"]


FAITHFULNESS = [
    ("negated fact", "Bikes can not be returned within 60 days."),
    ("contracted negation", "Bikes can't be returned within 60 days."),
    ("wrong number", "Bikes can be returned within 90 days of delivery."),
    ("unsupported entity", "The Cirrus bike can be returned within 60 days of delivery."),
    ("content-free yes", "Yes."),
    ("empty", ""),
]


@pytest.mark.parametrize(("trick", "answer"), FAITHFULNESS, ids=[r[0] for r in FAITHFULNESS])
def test_faithfulness_rejects(trick, answer):
    good, bad = _scores("faithfulness", [GOOD, answer], contexts=[CONTEXT, CONTEXT])
    assert good == 1.0 and bad == 0.0


def test_faithfulness_whole_context_is_faithful_but_token_f1_falls():
    # Pasting the context is grounded by definition; the overlap metrics are what must not reward it.
    assert _scores("faithfulness", [CONTEXT[0]], contexts=[CONTEXT]) == [1.0]
    good, pasted = _scores("token_f1", [GOOD, CONTEXT[0]], references=[REFERENCE] * 2)
    assert pasted < good - 0.3
    em_good, em_pasted = _scores("exact_match", [REFERENCE, CONTEXT[0]], references=[REFERENCE] * 2)
    assert em_pasted == 0.0 < em_good


def test_token_f1_repeating_reference_words_lowers_precision():
    good, stuffed = _scores("token_f1", [GOOD, (GOOD + " ") * 5], references=[REFERENCE] * 2)
    assert stuffed < good


DEGENERATE = [
    ("repeated word", "Bike-" * 40 + "Bike"),
    ("repeated code", "N-1200-" * 20 + "N-1200"),
    ("short loop", "Bike-Bike-Bike-Bike-Bike-Bike"),
    ("repeated sentence", "The battery lasts long. " * 6),
    ("yes loop", "yes " * 30),
]


@pytest.mark.parametrize(("trick", "answer"), DEGENERATE, ids=[r[0] for r in DEGENERATE])
def test_coherence_degenerate_far_below_normal(trick, answer):
    normal = "Bikes can be returned within 60 days of delivery. The refund goes to your original payment."
    # Same perplexity for both: a fluent-looking loop must not be rescued by the language model.
    out = load_metric("coherence").compute(
        predictions=[normal, answer], perplexities=[3.0, 1.2], vocab_size=32000
    )
    good, bad = out["scores"]
    assert good > 0.8 and bad < 0.35 and good - bad > 0.5


def test_coherence_is_not_dominated_by_perplexity():
    answer = "Bikes can be returned within 60 days of delivery."
    low, high = _scores("coherence", [answer, answer], perplexities=[1.0, 32000.0], vocab_size=32000)
    assert low - high <= 0.2 + 1e-9


FACTS = {"must_include": [["60 days", "sixty days"]], "must_not_include": ["30 days"]}
FACT_CASES = [
    ("stale fact", "Bikes can be returned within 30 days."),
    ("hedge with the stale fact", "Bikes can be returned within 30 days or 60 days."),
    ("substring number", "Bikes can be returned within 600 days."),
    ("content-free yes", "Yes."),
    ("negated number is still stated", "Not 30 days: 60 days."),
]


@pytest.mark.parametrize(("trick", "answer"), FACT_CASES, ids=[r[0] for r in FACT_CASES])
def test_fact_accuracy_zero_for(trick, answer):
    good, bad = _scores("fact_accuracy", [GOOD, answer], facts=[FACTS, FACTS])
    assert good == 1.0 and bad == 0.0


def test_fact_recall_not_raised_by_a_substring_number():
    assert _scores("fact_recall", ["Within 600 days.", "Within 1600 days."], facts=[FACTS, FACTS]) == [
        0.0,
        0.0,
    ]


STYLE = [
    ("unfortunately", HOUSE.replace("Bikes can", "Unfortunately, bikes can")),
    ("exclamation in body", HOUSE.replace("of delivery at", "of delivery! Go to")),
    ("no greeting", HOUSE.replace("Hi there! ", "")),
    ("wrong sign-off", HOUSE.replace("\u2014 Nimbus Care Team", "- Nimbus Team")),
    ("bullets", "Hi there!\n- Returns: 60 days\n- nimbuscycles.com \u2014 Nimbus Care Team"),
    ("three sentences", HOUSE.replace("returns.", "returns. It is easy. We love bikes.")),
    ("emoji", HOUSE.replace("delivery", "delivery \U0001f6b2")),
    ("no next step", "Hi there! Bikes can be returned within 60 days of delivery. \u2014 Nimbus Care Team"),
]


@pytest.mark.parametrize(("trick", "answer"), STYLE, ids=[r[0] for r in STYLE])
def test_style_adherence_lower_for(trick, answer):
    out = load_metric("style_adherence").compute(predictions=[HOUSE, answer], references=[HOUSE, HOUSE])
    assert out["rules"][0] == 1.0 and out["rules"][1] < 1.0
    assert out["scores"][1] < out["scores"][0]
