"""The optional NLI cross-encoder of faithfulness: plumbing with a tiny random BERT built here."""

from __future__ import annotations

import pytest

from harness.config import ScoringConfig
from harness.scoring.nli import entailment_index, entailment_probs, load_nli
from harness.scoring.score import load_metric

WORDS = "bikes can be returned within 60 days of delivery not yes the battery holds 540 wh".split()


@pytest.fixture(scope="module")
def nli_dir(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-nli")
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(path)
    config = BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
        id2label={0: "entailment", 1: "neutral", 2: "contradiction"},
        label2id={"entailment": 0, "neutral": 1, "contradiction": 2},
    )
    BertForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    assert (path / "model.safetensors").is_file()
    return path


def test_entailment_label_lookup():
    assert entailment_index({0: "CONTRADICTION", 1: "neutral", 2: "Entailment"}) == 2
    with pytest.raises(ValueError, match="entailment"):
        entailment_index({0: "LABEL_0", 1: "LABEL_1"})


def test_entailment_probs_shape_and_range(nli_dir):
    probs = entailment_probs(str(nli_dir), ["the battery holds 540 wh"] * 3, ["yes", "not", "60 days"], 2)
    assert len(probs) == 3 and all(0.0 < p < 1.0 for p in probs)
    tokenizer, model, idx = load_nli(str(nli_dir))
    assert idx == 0 and model.config.num_labels == 3 and not model.training


def test_faithfulness_uses_the_configured_nli_model(nli_dir):
    ctx = ["Bikes can be returned within 60 days of delivery."]
    preds = ["Bikes can be returned within 60 days. The battery holds 540 Wh.", "Yes.", "x"]
    out = load_metric("faithfulness").compute(
        predictions=preds, contexts=[ctx, ctx, None], scoring=ScoringConfig(nli_model=str(nli_dir))
    )
    first, content_free, no_context = out["scores"]
    sentences = ["Bikes can be returned within 60 days.", "The battery holds 540 Wh."]
    want = min(entailment_probs(str(nli_dir), ctx * 2, sentences))
    assert first == pytest.approx(want) and content_free == 0.0 and no_context is None
    assert out["nli_entailment"] == out["scores"] and out["lexical_support"][:2] == [0.5, 0.0]


def test_faithfulness_with_a_missing_nli_model_fails_loudly(tmp_path):
    with pytest.raises(OSError):
        load_metric("faithfulness").compute(
            predictions=["Bikes can be returned."],
            contexts=[["Bikes can be returned."]],
            scoring=ScoringConfig(nli_model=str(tmp_path / "nope")),
        )
