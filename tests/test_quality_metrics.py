"""Model-based metrics: semantic similarity, coherence (perplexity + consistency), style adherence, judge."""

from __future__ import annotations

import math

import pytest

from harness.config import JudgeConfig
from harness.scoring.judge import parse_grade
from harness.scoring.metrics.coherence.coherence import fluency, repetition
from harness.scoring.score import ScoringInputs, load_metric, score_records


def test_semantic_similarity_prefers_paraphrase_over_unrelated():
    out = load_metric("semantic_similarity").compute(
        predictions=["You can send it back within 60 days.", "The sky is blue.", ""],
        references=["Returns are accepted for 60 days."] * 3,
    )
    para, unrelated, empty = out["scores"]
    assert para > 0.5 > unrelated and empty == 0.0
    assert all(0.0 <= s <= 1.0 for s in out["scores"])


def test_coherence_components():
    assert fluency(1.0, 49152) == 1.0 and fluency(49152, 49152) == pytest.approx(0.0)
    assert fluency(None, 100) == 0.0
    assert repetition("a b c a b c a b c") > 0.5 and repetition("one two three four") == 0.0
    out = load_metric("coherence").compute(
        predictions=[
            "The battery lasts three years. It is covered by the warranty.",
            "The Stratus has a 540 Wh battery. I love pizza and football.",
            "The battery lasts long. The battery lasts long.",
            "",
        ],
        perplexities=[10.0, 10.0, 10.0, None],
        vocab_size=49152,
    )
    on_topic, drift, repeat, empty = out["scores"]
    assert on_topic > drift and on_topic > repeat and empty == 0.0
    assert out["consistency"][:3] == [1.0, 0.0, 0.0]
    assert out["fluency"][0] == pytest.approx(1 - math.log(10) / math.log(49152))


def test_style_adherence_checks_the_house_style_rules():
    refs = [
        "Hi there! Returns are free within 60 days at nimbuscycles.com/returns. \u2014 Nimbus Care Team"
    ] * 3
    out = load_metric("style_adherence").compute(
        predictions=[
            "Hi there! You can return it within 60 days at nimbuscycles.com/returns. \u2014 Nimbus Care Team",
            "Returns are free within 60 days.",
            "",
        ],
        references=refs,
    )
    on_style, off_style, empty = out["scores"]
    assert on_style > off_style > empty == 0.0
    assert all(out["checks"][0].values()) and out["rules"][0] == 1.0
    assert out["checks"][1]["greeting"] is False and out["checks"][1]["sign_off"] is False


def _rec(eid, pred, ref, tags, latency=0.1):
    return {
        "example_id": eid,
        "question": "Q?",
        "prediction": pred,
        "reference": ref,
        "tags": tags,
        "latency_s": latency,
        "batch_seconds": latency * 2,
        "new_tokens": 3,
    }


class FixedPerplexity:
    """A backend with the LogLikelihood capability whose answers all have the same perplexity."""

    def __init__(self, ppl: float, vocab_size: int):
        self.nll, self.vocab_size = math.log(ppl), vocab_size

    def completion_nll(self, contexts, completions, batch_size=8, max_completion_tokens=256):
        return [self.nll if c.strip() else None for c in completions]


def test_score_records_model_metrics_apply_per_tag():
    recs = [
        _rec(
            "a",
            "Hi there! We are open daily. \u2014 Nimbus Care Team",
            "Hi there! Open every day. \u2014 Nimbus Care Team",
            ["style"],
        ),
        _rec("b", "540 Wh", "540 Wh.", ["knowledge"]),
        _rec("c", "Hi there! Sorry. — Care Team", "Hi there! Returns: 60 days. — Care Team", ["style"]),
    ]
    out = score_records(
        ["token_f1", "semantic_similarity", "coherence", "style_adherence"],
        recs,
        ScoringInputs(backend=FixedPerplexity(5.0, vocab_size=1000)),
    )
    per = out["per_example"]
    assert per["b"]["style_adherence"] is None and per["a"]["style_adherence"] is not None
    style = load_metric("style_adherence").compute(
        predictions=[recs[0]["prediction"], recs[2]["prediction"]],
        references=[recs[0]["reference"], recs[2]["reference"]],
    )
    assert [per["a"]["style_adherence"], per["c"]["style_adherence"]] == pytest.approx(style["scores"])
    assert per["b"]["perplexity"] == pytest.approx(5.0) and 0 < per["b"]["coherence"] <= 1
    assert out["latency"]["batches"] == 1 and out["latency"]["batch_seconds_mean"] == pytest.approx(0.2)


def test_judge_grade_parsing_and_prompt_validation():
    assert parse_grade("4") == 0.75 and parse_grade("Score: 1/5") == 0.0 and parse_grade("great") is None
    with pytest.raises(ValueError, match="answer"):
        JudgeConfig(prompt="Rate {question}")


@pytest.mark.slow
def test_answer_perplexity_under_tiny_model(tiny_model_dir):
    from harness.backends.hf import TransformersBackend
    from harness.backends.loading import load_model
    from harness.config import ModelConfig
    from harness.scoring.perplexity import answer_perplexities

    # fp32: batched == one-by-one to 1e-4 checks the padding; in bf16 the kernels' blocking alone moves
    # a perplexity by ~1e-4 relative (measured: 540.96 vs 541.03).
    model = load_model(ModelConfig(id=str(tiny_model_dir), dtype="float32"), tiny_model_dir)
    backend = TransformersBackend(model)
    qs = ["How long is the warranty?", "Until when is chat open?", "Q"]
    answers = ["3 years or 15,000 km.", "Every day until 22:00 CET, including weekends and holidays.", ""]
    batched = answer_perplexities(backend, qs, answers, batch_size=2)
    single = [answer_perplexities(backend, [q], [a])[0] for q, a in zip(qs, answers, strict=True)]
    assert batched[2] is None and single[2] is None
    # Right-padded batching gives the same numbers as one-by-one scoring.
    assert batched[:2] == [pytest.approx(v, rel=1e-4) for v in single[:2]]
    assert all(1.0 < v < 10_000 for v in batched[:2])


def test_rss_sampler_sees_a_temporary_allocation():
    import numpy as np
    import psutil

    from harness.memory import RssSampler

    before = psutil.Process().memory_info().rss
    with RssSampler(interval=0.005) as mem:
        block = np.ones(40_000_000)  # 320 MB, touched
        block.sum()
        del block
    assert mem.peak >= before + 250_000_000


def test_one_scoring_pass_embeds_each_text_once(monkeypatch):
    """Semantic similarity and style adherence embed the same answers and references (and references repeat
    for every strategy): within one scoring pass each distinct text is encoded once, and the scores are the
    cosines sentence-transformers gives for each pair on its own."""
    import numpy as np

    from harness.scoring.embeddings import load_embedder
    from harness.scoring.score import score_strategies

    encoder = load_embedder(None)
    encoded: list[str] = []
    real = encoder.encode

    def spy(texts, **kw):
        encoded.extend(texts)
        return real(texts, **kw)

    monkeypatch.setattr(encoder, "encode", spy)
    refs = ["Hi there! Returns: 60 days. — Care Team", "540 Wh.", "Open every day."]
    answers = {
        "s1": ["Hi there! We take returns for 60 days. — Care Team", "540 Wh", "We never close."],
        "s2": ["540 Wh", "540 Wh", "Open every day."],  # an answer repeated, one equal to its reference
    }
    records = {
        sid: [_rec(f"e{i}", p, r, ["style"]) for i, (p, r) in enumerate(zip(preds, refs, strict=True))]
        for sid, preds in answers.items()
    }
    out = score_strategies(["semantic_similarity", "style_adherence"], records)
    distinct = set(refs) | {a for preds in answers.values() for a in preds}
    assert sorted(encoded) == sorted(distinct)
    for sid, preds in answers.items():
        for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
            a, b = real([p, r], normalize_embeddings=True, convert_to_numpy=True)
            want = float(np.clip(np.dot(a, b), 0.0, 1.0))
            assert out[sid]["per_example"][f"e{i}"]["semantic_similarity"] == pytest.approx(want, abs=1e-5)
    encoded.clear()  # outside a scoring pass nothing is remembered between calls
    load_metric("semantic_similarity").compute(predictions=["540 Wh"], references=["540 Wh."])
    assert sorted(encoded) == ["540 Wh", "540 Wh."]
