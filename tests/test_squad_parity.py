"""exact_match and token_f1 equal the official SQuAD v1.1 evaluation script on any input.

``_official_*`` below are the reference functions of ``evaluate-v1.1.py`` (Rajpurkar et al. 2016),
copied verbatim so the comparison needs no download; the known values were computed with them.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest

try:  # property test with hypothesis where installed, else a seeded random sweep of the same alphabet
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - depends on the environment
    given = None


def _official_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def _official_f1(prediction, ground_truth):
    prediction_tokens = _official_normalize_answer(prediction).split()
    ground_truth_tokens = _official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def _official_em(prediction, ground_truth):
    return _official_normalize_answer(prediction) == _official_normalize_answer(ground_truth)


# Ours, imported after the verbatim reference functions above.
from harness.scoring.metrics.exact_match.exact_match import score as em_score  # noqa: E402
from harness.scoring.metrics.token_f1.token_f1 import f1 as our_f1  # noqa: E402
from harness.scoring.normalize import normalize_answer  # noqa: E402

KNOWN = [
    # (prediction, reference, official EM, official F1)
    ("The 45 Days!", "45 days", True, 1.0),
    ("an e-bike", "ebike", True, 1.0),
    ("e-bike", "e bike", False, 0.0),
    ("$17.99", "1799", True, 1.0),
    ("$17.99", "17.99", True, 1.0),
    ("NDF 3.4.0", "ndf 340", True, 1.0),
    ("version 3.4.0", "3.4", False, 0.0),
    ("the a an", "", True, 0.0),
    ("", "", True, 0.0),
    ("", "45 days", False, 0.0),
    ("50\u201365 psi", "50-65 psi", False, 0.5),
    ("\u2014 Nimbus Care Team", "Nimbus Care Team", False, 2 * 1 * 0.75 / 1.75),
    ("theatre", "the atre", False, 0.0),
    ("Return window is 45 days.", "45 days", False, 4 / 7),
    ("days days 45", "45 days", False, 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)),
]


@pytest.mark.parametrize(("pred", "ref", "em", "f1"), KNOWN)
def test_known_values_match_the_official_script(pred, ref, em, f1):
    assert _official_em(pred, ref) == em and _official_f1(pred, ref) == pytest.approx(f1)
    assert em_score([pred], [ref]) == [float(em)]
    assert our_f1(pred, ref) == pytest.approx(f1)


_PIECES = list("abet nAThE  ,.;:!?-'\"$%()[]/\\") + [
    "3.4.0",
    "17.99",
    "\u2014",
    "\u2013",
    "\u2019",
    "\u00e9",
    "\t",
    "\n",
]


def _check(pred: str, ref: str) -> None:
    assert normalize_answer(pred) == _official_normalize_answer(pred)
    assert em_score([pred], [ref]) == [float(_official_em(pred, ref))]
    assert our_f1(pred, ref) == _official_f1(pred, ref)
    assert our_f1(pred, pred) == _official_f1(pred, pred)


if given is not None:
    _TEXT = st.lists(st.sampled_from(_PIECES), max_size=30).map("".join) | st.text(max_size=30)

    @settings(max_examples=400, deadline=None)
    @given(_TEXT, _TEXT)
    def test_equal_to_the_official_script_on_any_input(pred, ref):
        _check(pred, ref)


def test_equal_to_the_official_script_on_random_strings():
    import random

    rng = random.Random(0)

    def text() -> str:
        if rng.random() < 0.3:  # arbitrary code points, surrogates excluded
            return "".join(
                chr(rng.choice([rng.randrange(32, 0x2FFF), rng.randrange(0x1F300, 0x1FAFF)]))
                for _ in range(rng.randrange(0, 20))
            )
        return "".join(rng.choice(_PIECES) for _ in range(rng.randrange(0, 30)))

    for _ in range(3000):
        _check(text(), text())
