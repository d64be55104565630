"""Key-fact matcher: cheap tricks that must not pass, real paraphrases that must."""

from __future__ import annotations

import pytest

from harness.scoring.facts import (
    FactResult,
    fact_accuracy,
    fact_found,
    fact_hits,
    fact_recall,
    normalize_tokens,
)

RETURNS_NEW = [["60 days", "sixty days"]]
RETURNS_STALE = ["45 days"]
HOURS = [["Monday to Saturday", "Mon-Sat"], ["7 am to 7 pm", "7 am 7 pm"]]

# (case, prediction, must_include, must_not_include): fact_accuracy must be 0.0
CHEATS = [
    ("number inside a larger number", "You can return it within 600 days.", RETURNS_NEW, []),
    ("number as a prefix of another", "Returns close after 1600 days.", ["60"], []),
    ("number after a decimal point", "It costs $17.60.", ["60"], []),
    ("version prefix", "The current firmware is NDF 3.4.01.", ["3.4.0"], []),
    ("version as part of a longer one", "Update to NDF 13.4.0 today.", ["3.4.0"], []),
    ("price without the currency", "Care+ is 17.99 a month.", ["$17.99"], []),
    ("word inside a word: no/not", "That is not an option.", ["no"], []),
    ("word inside a word: ride/rider", "Ask any rider.", ["ride"], []),
    ("fact split across words", "The battery lasts, and the saver mode helps.", ["Battery Saver"], []),
    ("number split into digits", "Return it within 6 0 days.", RETURNS_NEW, []),
    ("number split across a thousands mark", "It costs $2,7 99.", ["$2,799"], []),
    (
        "every alternative plus the stale fact",
        "You can return it within 45 days, 60 days or sixty days.",
        RETURNS_NEW,
        RETURNS_STALE,
    ),
    (
        "hedging between new and stale hours",
        "Monday to Saturday 7 am to 7 pm, or 8 am to 6 pm.",
        HOURS,
        ["8 am"],
    ),
    ("Yes. for a multi-fact answer", "Yes.", ["$45", "per brake"], []),
    ("one of two facts", "A brake bleed costs $45.", ["$45", "per brake"], []),
    ("empty answer", "", ["$35"], []),
    ("None answer", None, ["$35"], []),
    ("whitespace answer", "  \n ", ["$35"], []),
    (
        "shuffled reference: number pairs with the wrong unit",
        "Years of battery: 3. Frame: 2 years.",
        ["3 years"],
        [],
    ),
    ("shuffled reference: bag of words", "years 3 covered is frame the", ["3 years"], []),
    ("right number, wrong unit", "The battery is covered for 3 months.", ["3 years"], []),
    ("range endpoint only", "Inflate to 65 psi.", [["50–65 psi", "50 to 65 psi"]], []),
    ("range endpoint inside another range", "Inflate to 5-65 psi.", ["65 psi"], []),
    ("wrong error code with the same digits", "That is error E-80.", ["E-08"], []),
    ("different model number", "Use the NB-5400 battery.", ["NB-540"], []),
]


@pytest.mark.parametrize(
    "prediction,must_include,must_not_include", [c[1:] for c in CHEATS], ids=[c[0] for c in CHEATS]
)
def test_cheap_tricks_do_not_pass(prediction, must_include, must_not_include):
    assert fact_accuracy(fact_hits(prediction, must_include, must_not_include)) == 0.0


# (case, prediction, must_include, must_not_include): fact_accuracy must be 1.0
PARAPHRASES = [
    ("case", "RETURNS ARE ACCEPTED WITHIN 60 DAYS.", RETURNS_NEW, RETURNS_STALE),
    ("number word alternative", "You have sixty days from delivery.", RETURNS_NEW, RETURNS_STALE),
    ("punctuation around the fact", "Window: (60 days)!", RETURNS_NEW, RETURNS_STALE),
    ("price at sentence end", "Care+ now costs $17.99.", ["$17.99"], ["$14.99"]),
    ("price with space after the sign", "It is $ 17.99 per month", ["$17.99"], []),
    ("version at sentence end", "You should be on NDF 3.4.0, the latest.", ["3.4.0"], ["3.2.1"]),
    ("version before a full stop", "The current release is 3.4.0.", [["NDF 3.4.0", "3.4.0"]], []),
    ("en dash range", "Keep it at 50–65 psi.", [["50-65 psi", "50 to 65 psi"]], []),
    ("em dash and hyphen unify", "Hours: Mon—Sat, 7 am-7 pm PT.", HOURS, ["8 am", "6 pm"]),
    ("spelled-out hours", "We're open Monday to Saturday from 7 AM to 7 PM Pacific.", HOURS, ["8 am"]),
    ("thousands separator", "Together they hold 1080 Wh.", ["1,080 Wh"], []),
    ("thousands separator both ways", "The fleet covers 15,000 miles.", ["15000 miles"], []),
    ("unit glued to the number", "Rotors are 180mm.", ["180 mm"], []),
    ("hyphenated model names", "Order the NP TB24 tube.", ["NP-TB24"], []),
    ("hyphenated model glued", "Order the NPTB24 tube.", [["NP-TB24", "NPTB24"]], []),
    ("curly quotes in heights", "It fits riders 5\u201911\u201d to 6\u20194\u201d.", ["5'11\" to 6'4\""], []),
    ("prime marks", "Riders up to 6\u20323\u2033.", ["6'3\""], []),
    ("time with colon", "Orders placed before 22:00 ship the same day.", ["22:00"], []),
    ("percent spaced", "Outlet bikes are up to 30 % off.", ["30%"], []),
    ("fullwidth digits (NFKC)", "It costs \uff04\uff13\uff15.", ["$35"], []),
    ("casefold beyond ASCII", "STRASSE", ["straße"], []),
    ("menu path with other separators", "Open Garage \u2192 Ride Settings.", ["Garage > Ride Settings"], []),
    ("email in a sentence", "Write to press@nimbuscycles.com.", ["press@nimbuscycles.com"], []),
    ("contraction split", "Crash damage isn\u2019t covered.", [["not covered", "isn't covered"]], []),
    ("possessive", "The Altus T5's motor makes 90 Nm.", ["Altus T5", "90 Nm"], []),
]


@pytest.mark.parametrize(
    "prediction,must_include,must_not_include",
    [c[1:] for c in PARAPHRASES],
    ids=[c[0] for c in PARAPHRASES],
)
def test_real_paraphrases_pass(prediction, must_include, must_not_include):
    result = fact_hits(prediction, must_include, must_not_include)
    assert fact_accuracy(result) == 1.0, result


def test_normalisation_tokens():
    assert normalize_tokens("NDF 3.4.0, costs $17.99. 15,000 at 22:00") == [
        "ndf",
        "3.4.0",
        "costs",
        "$",
        "17.99",
        "15000",
        "at",
        "22:00",
    ]
    assert normalize_tokens("e-bike NB540 don\u2019t 3\u20135 days") == [
        "e",
        "bike",
        "nb",
        "540",
        "don",
        "t",
        "3-5",
        "days",
    ]


def test_recall_and_accuracy_definitions():
    result = fact_hits(
        "Return it within 60 days, or 45 days for outlet bikes.", RETURNS_NEW + ["$35"], RETURNS_STALE
    )
    assert result == FactResult(present=[True, False], forbidden=[True])
    assert fact_recall(result) == 0.5
    assert fact_accuracy(result) == 0.0
    # recall does not look at forbidden facts; accuracy does
    stale = fact_hits("60 days (it used to be 45 days)", RETURNS_NEW, RETURNS_STALE)
    assert fact_recall(stale) == 1.0 and fact_accuracy(stale) == 0.0


def test_missing_fields_give_none():
    neither = fact_hits("anything", None, None)
    assert fact_recall(neither) is None and fact_accuracy(neither) is None
    only_forbidden = fact_hits("It is 60 days.", [], RETURNS_STALE)
    assert fact_recall(only_forbidden) is None and fact_accuracy(only_forbidden) == 1.0
    assert fact_accuracy(fact_hits("Still 45 days.", None, RETURNS_STALE)) == 0.0


def test_unmatchable_fact_is_an_error():
    with pytest.raises(ValueError, match="no letters"):
        fact_found("anything", "...")
    with pytest.raises(ValueError, match="at least one alternative"):
        fact_found("anything", [])
