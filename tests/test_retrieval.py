"""Retrieval building blocks: chunking, cache, index types, prompt trimming, recall@k, KB updates."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from harness import plugin as registry
from harness.config import StrategySpec
from harness.data import Document, load_eval_set
from harness.errors import ConfigError
from harness.scoring.embeddings import load_embedder
from harness.scoring.retrieval_metrics import retrieval_metrics
from harness.scoring.score import load_metric
from strategies.retrieval import (
    RetrievalParams,
    RetrievedChunk,
    Retriever,
    build_rag_prompt,
    cache_key,
    chunk_document,
    source_chunk_id,
    split_sentences,
)
from strategies.retrieval.index import sentence_memo

from .conftest import TOY_SET

LONG_TEXT = " ".join(
    f"Paragraph {i}: the Stratus-{i} e-bike has a {300 + i} Wh battery, unbelievably quick charging "
    f"and a {i}-year warranty on its aluminium frame."
    for i in range(40)
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_embedder().tokenizer


@pytest.fixture(scope="module")
def toy():
    return load_eval_set(TOY_SET)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# -- chunking -------------------------------------------------------------------------------------
def test_chunks_respect_size_overlap_offsets_and_word_boundaries(tokenizer):
    doc = Document(id="long", title="Long doc", text=LONG_TEXT, source="mem")
    chunks = chunk_document(doc, tokenizer, size=64, overlap=16)
    assert len(chunks) > 5
    assert [c.chunk_id for c in chunks] == [f"long#{i}" for i in range(len(chunks))]
    assert chunks[0].start == 0 and chunks[-1].end == len(LONG_TEXT)
    for prev, cur in zip(chunks, chunks[1:], strict=False):
        assert cur.start < prev.end, "consecutive chunks must overlap"
        assert cur.start > prev.start, "chunking must advance"
        overlap_tokens = n_tokens(tokenizer, LONG_TEXT[cur.start : prev.end])
        assert 12 <= overlap_tokens <= 24  # ~16, moved to word starts
    for c in chunks:
        assert c.text == LONG_TEXT[c.start : c.end]
        assert c.doc_id == "long" and c.title == "Long doc"
        assert n_tokens(tokenizer, c.text) <= 64
        # never starts or ends inside a word
        assert c.start == 0 or not (LONG_TEXT[c.start - 1].isalnum() and LONG_TEXT[c.start].isalnum())
        assert c.end == len(LONG_TEXT) or not (LONG_TEXT[c.end - 1].isalnum() and LONG_TEXT[c.end].isalnum())


def test_short_document_is_one_chunk_and_zero_overlap_tiles_exactly(tokenizer):
    doc = Document(id="d", title="T", text="Chat support is open every day.", source="mem")
    (only,) = chunk_document(doc, tokenizer, size=128, overlap=32)
    assert (only.start, only.end, only.text) == (0, len(doc.text), doc.text)

    long = Document(id="l", title="", text=LONG_TEXT, source="mem")
    tiles = chunk_document(long, tokenizer, size=50, overlap=0)
    for prev, cur in zip(tiles, tiles[1:], strict=False):
        assert LONG_TEXT[prev.end : cur.start].strip() == ""  # adjacent, no gap, no overlap
    assert sum(n_tokens(tokenizer, t.text) for t in tiles) == n_tokens(tokenizer, LONG_TEXT)


def test_params_are_validated_with_yaml_paths():
    with pytest.raises(ConfigError, match=r"strategies\[0\]: chunk_overlap \(64\) must be smaller"):
        registry.build(StrategySpec(name="rag", chunk_tokens=64, chunk_overlap=64), 0, "demo.yaml")
    with pytest.raises(ConfigError, match=r"demo.yaml: strategies\[0\].index: must be one of"):
        registry.build(StrategySpec(name="rag", index="annoy"), 0, "demo.yaml")
    with pytest.raises(ConfigError, match=r"strategies\[0\].top_k: must be >= 1"):
        registry.build(StrategySpec(name="rag", top_k=0), 0, "demo.yaml")


def test_chunk_tokens_above_embedding_limit_is_a_config_error(toy, tmp_path):
    with pytest.raises(ConfigError, match="max_seq_length"):
        Retriever.build(toy.documents, RetrievalParams(chunk_tokens=1024, chunk_overlap=0), tmp_path)


# -- cache ----------------------------------------------------------------------------------------
def test_index_cache_miss_then_hit_and_changed_kb_rebuilds(toy, tmp_path):
    params = RetrievalParams()
    first = Retriever.build(toy.documents, params, tmp_path)
    assert first.info["cache"] == "miss"
    folder = tmp_path / "indexes" / first.info["cache_key"]
    assert {p.name for p in folder.iterdir()} == {
        "meta.json",
        "chunks.jsonl",
        "embeddings.npy",
        "index-flat.faiss",
    }
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["chunk_tokens"] == 128 and meta["n_chunks"] == first.n_chunks

    second = Retriever.build(toy.documents, params, tmp_path)
    assert second.info["cache"] == "hit" and second.info["embed_seconds"] == 0.0
    q = ["How long is the frame warranty?", "When is phone support open?"]
    a, b = first.search(q), second.search(q)
    assert [[c.chunk_id for c in r] for r in a] == [[c.chunk_id for c in r] for r in b]
    assert np.allclose([c.score for c in a[0]], [c.score for c in b[0]], atol=1e-6)

    # A changed document, other chunking params or another model give another key -> rebuild.
    changed = [
        dataclasses.replace(d, text=d.text + " New sentence.") if d.id == "battery" else d
        for d in toy.documents
    ]
    assert cache_key(changed, params)[0] != first.info["cache_key"]
    assert cache_key(toy.documents, RetrievalParams(chunk_tokens=64))[0] != first.info["cache_key"]
    assert (
        cache_key(toy.documents, RetrievalParams(embedding_model="/some/other"))[0] != first.info["cache_key"]
    )
    rebuilt = Retriever.build(changed, params, tmp_path)
    assert rebuilt.info["cache"] == "miss"
    assert len(list((tmp_path / "indexes").iterdir())) == 2

    uncached = Retriever.build(toy.documents, RetrievalParams(cache=False), tmp_path / "none")
    assert uncached.info["cache"] == "miss" and not (tmp_path / "none").exists()


def test_index_type_switch_reuses_embeddings_and_agrees_with_exact(toy, tmp_path):
    questions = [ex["question"] for ex in toy.split("test")] + [ex["question"] for ex in toy.split("train")]
    flat = Retriever.build(toy.documents, RetrievalParams(index="flat"), tmp_path)
    hnsw = Retriever.build(toy.documents, RetrievalParams(index="hnsw", hnsw_m=8), tmp_path)
    ivf = Retriever.build(toy.documents, RetrievalParams(index="ivf"), tmp_path)
    assert flat.info["index"]["type"] == "flat" and flat.info["index"]["exact"] is True
    assert hnsw.info["index"] == {**hnsw.info["index"], "type": "hnsw", "m": 8, "exact": False}
    assert ivf.info["index"]["type"] == "ivf" and ivf.info["index"]["nlist"] >= 1
    for r in (hnsw, ivf):  # same KB + chunking + model: embeddings reused, only the index is new
        assert r.info["embeddings_cache"] == "hit" and r.info["index_cache"] == "miss"
    folder = tmp_path / "indexes" / flat.info["cache_key"]
    assert {p.name for p in folder.glob("index-*.faiss")} == {
        "index-flat.faiss",
        "index-hnsw-m8-efc80.faiss",
        f"index-ivf-n{ivf.info['index']['nlist']}.faiss",
    }
    exact = [[c.chunk_id for c in r] for r in flat.search(questions, 3)]
    assert [[c.chunk_id for c in r] for r in hnsw.search(questions, 3)] == exact  # tiny KB: ANN is exact
    assert [[c.chunk_id for c in r] for r in ivf.search(questions, 3)] == exact
    again = Retriever.build(toy.documents, RetrievalParams(index="hnsw", hnsw_m=8), tmp_path)
    assert again.info["cache"] == "hit"


# -- recall@k / MRR -------------------------------------------------------------------------------
def test_retrieval_metrics_on_known_lists():
    ranked = ["c", "a", "d"]  # doc ids of the retrieved chunks, best first
    assert retrieval_metrics(ranked, ["a", "b"], 3) == {"recall@3": 0.5, "mrr": 0.5}
    assert retrieval_metrics(ranked, ["a"], 1) == {"recall@1": 0.0, "mrr": 0.0}
    assert retrieval_metrics(ranked, ["c", "d"], 3) == {"recall@3": 1.0, "mrr": 1.0}
    assert retrieval_metrics(ranked, [], 3) == {}


def test_recall_at_k_on_toy_set(toy, tmp_path):
    retriever = Retriever.build(toy.current_documents(), RetrievalParams(top_k=2), tmp_path)
    rows = [ex for split in ("train", "validation", "test") for ex in toy.split(split)]
    hits = retriever.search([ex["question"] for ex in rows])
    per = [
        retrieval_metrics([c.doc_id for c in h], ex["context_ids"], 2)
        for h, ex in zip(hits, rows, strict=True)
    ]
    recall = float(np.mean([m["recall@2"] for m in per]))
    mrr = float(np.mean([m["mrr"] for m in per]))
    # Every single-document question finds its document first on this toy KB.
    single = [m for m, ex in zip(per, rows, strict=True) if len(ex["context_ids"]) == 1]
    assert all(m["mrr"] == 1.0 for m in single)
    assert recall >= 0.9 and mrr >= 0.9
    assert hits[0][0].score > hits[0][1].score  # ranked best first


def test_min_score_filters_weak_hits(toy, tmp_path):
    strict = Retriever.build(toy.documents, RetrievalParams(min_score=0.5, top_k=5), tmp_path)
    (hits,) = strict.search(["What capacity does the Stratus battery have?"])
    assert [c.doc_id for c in hits] == ["battery"] and hits[0].score >= 0.5


# -- KB updates -----------------------------------------------------------------------------------
@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
def test_kb_update_reindexes_incrementally(toy, tmp_path, index):
    params = RetrievalParams(index=index)
    retriever = Retriever.build(toy.documents, params, tmp_path)
    base_chunks = retriever.n_chunks
    question = "How many days do I have to return an unused bike?"
    assert "45 days" in retriever.search([question], 1)[0][0].text

    encoded: list[str] = []
    real_encode = retriever.embedder.encode

    def counting_encode(texts, **kw):
        encoded.extend(texts)
        return real_encode(texts, **kw)

    new_doc = Document(
        "trade-in", "Trade-in program", "Trade in your old e-bike for a 200 EUR voucher.", "mem"
    )
    same_doc = next(d for d in toy.documents if d.id == "warranty")
    retriever.embedder.encode = counting_encode
    try:
        report = retriever.apply_updates([*toy.kb_updates, new_doc, same_doc])
    finally:
        del retriever.embedder.encode  # restore the class method on the shared, cached embedder
    assert report["replaced_docs"] == ["returns"] and report["added_docs"] == ["trade-in"]
    assert report["unchanged_docs"] == ["warranty"] and report["applied"] == 2
    assert report["removed_chunks"] == 1 and report["added_chunks"] == 2
    assert len(encoded) == 2  # only the two changed documents were embedded, not the base KB
    assert retriever.n_chunks == base_chunks + 1
    if index == "hnsw":
        assert retriever.index.ntotal == base_chunks + 2 and len(retriever.tombstones) == 1
    else:
        assert retriever.index.ntotal == base_chunks + 1  # old chunk physically removed

    top = retriever.search([question], 5)[0]
    assert "60 days" in top[0].text and top[0].doc_id == "returns"
    assert not any("45 days" in c.text for c in top), "replaced text must not be retrievable"
    assert retriever.search(["Can I trade in my old bike?"], 1)[0][0].doc_id == "trade-in"
    # The base index on disk is untouched: a fresh build still has the old text.
    fresh = Retriever.build(toy.documents, params, tmp_path)
    assert fresh.info["cache"] == "hit" and "45 days" in fresh.search([question], 1)[0][0].text


# -- prompt trimming ------------------------------------------------------------------------------
class WordBackend:
    """Counts whitespace-separated words as tokens; renders messages as 'role: content' lines."""

    def __init__(self, context_window: int):
        self.context_window = context_window

    def render(self, prompt):
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\nassistant:"

    def count_tokens(self, text):
        return len(text.split())


def _chunks(n: int, words: int) -> list[RetrievedChunk]:
    return [
        RetrievedChunk(f"d{i}#0", f"d{i}", f"Doc{i}", " ".join([f"w{i}"] * words), 0, words * 3, 1.0 - i / 10)
        for i in range(n)
    ]


def test_context_window_trimming_drops_lowest_ranked_first():
    question = "What is the return window for unused bikes?"
    chunks = _chunks(4, 30)
    full, used = build_rag_prompt(WordBackend(1000), "Answer from context.", question, chunks, 20)
    assert used == chunks and full[-1]["content"].endswith(f"Question: {question}")

    backend = WordBackend(context_window=100)  # budget 80 words: room for two 31-word passages
    prompt, used = build_rag_prompt(backend, "Answer from context.", question, chunks, 20)
    assert [c.chunk_id for c in used] == ["d0#0", "d1#0"]
    text = backend.render(prompt)
    assert backend.count_tokens(text) <= 80
    assert question in text and "w1" in text and "w2" not in text and "w3" not in text


def test_context_window_trimming_shortens_a_lone_oversized_chunk_but_never_the_question():
    question = "How long is the warranty on the frame of my bike?"
    backend = WordBackend(context_window=60)  # budget 40 words
    prompt, used = build_rag_prompt(backend, None, question, _chunks(2, 200), 20)
    text = backend.render(prompt)
    assert len(used) == 1 and used[0].chunk_id == "d0#0" and 0 < len(used[0].text) < 200 * 3
    assert backend.count_tokens(text) <= 40 and question in text

    tiny = WordBackend(context_window=32)  # only the question fits
    prompt, used = build_rag_prompt(tiny, None, question, _chunks(2, 200), 20)
    assert used == [] and question in tiny.render(prompt)


def test_trimming_with_a_real_tokenizer_fits_the_window(tiny_model_dir, toy, tmp_path):
    from harness.backends.hf import TransformersBackend
    from harness.backends.loading import load_model
    from harness.config import ModelConfig

    backend = TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path))
    long_chunks = [
        RetrievedChunk(f"long#{i}", "long", "Long", LONG_TEXT[i * 500 : (i + 1) * 500], 0, 500, 0.9 - i / 10)
        for i in range(6)
    ]
    prompt, used = build_rag_prompt(backend, "Use the context.", "Is the frame covered?", long_chunks, 64)
    assert 0 < len(used) < 6 and used == long_chunks[: len(used)]
    assert backend.count_tokens(backend.render(prompt)) <= backend.context_window - 64


# -- faithfulness ---------------------------------------------------------------------------------
def test_faithfulness_metric_scores_grounded_answers_higher():
    metric = load_metric("faithfulness")
    ctx = ["Unused bikes can be returned within 60 days from delivery for a full refund."]
    out = metric.compute(
        predictions=[
            "Unused bikes: 60 days from delivery.",
            "You have 90 days and free shipping.",
            "",
            "Yes.",
        ],
        contexts=[ctx, ctx, ctx, ctx],
    )
    grounded, invented, empty, bare = out["scores"]
    # A content-free "Yes." is not grounded in anything (it used to score 1.0, a cheap trick).
    assert grounded == 1.0 and empty == 0.0 and bare == 0.0
    assert invented == 0.0  # a number the context lacks (90) makes the claim unsupported
    assert out["unsupported"][1] == ["90"]
    assert out["score"] == pytest.approx(sum(out["scores"]) / 4)


def test_missing_kb_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="no documents"):
        Retriever.build([], RetrievalParams(), tmp_path)


def test_cache_survives_a_concurrent_writer(toy, tmp_path):
    """A leftover temp folder from an interrupted build does not break the next build."""
    params = RetrievalParams()
    key = cache_key(toy.documents, params)[0]
    (tmp_path / "indexes" / f".tmp-{key}-crashed").mkdir(parents=True)
    r = Retriever.build(toy.documents, params, tmp_path)
    assert r.info["cache"] == "miss" and (tmp_path / "indexes" / key / "meta.json").is_file()
    shutil.rmtree(tmp_path / "indexes" / f".tmp-{key}-crashed")


# -- context compression --------------------------------------------------------------------------
def test_split_sentences_keeps_document_offsets_and_drops_markup():
    text = "# Returns\n\n- Unused bikes can be returned within 60 days. Used bikes: 14 days only!\nShort one.\n| --- |"
    doc = Document("returns", "Returns", text, "mem")
    chunk = dataclasses.replace(
        chunk_document(doc, load_embedder().tokenizer, 128, 0)[0], chunk_id="returns#0"
    )
    pieces = split_sentences(chunk)
    assert [p.text for p in pieces] == [
        "Unused bikes can be returned within 60 days.",
        "Used bikes: 14 days only!",
    ]
    for p in pieces:
        assert text[p.start : p.end] == p.text and p.doc_id == "returns"
        assert source_chunk_id(p.chunk_id) == "returns#0"
    assert source_chunk_id("a.s#0") == "a.s#0"  # a chunk id maps to itself


def test_select_sentences_picks_the_answering_sentence(toy, tmp_path):
    retriever = Retriever.build(toy.current_documents(), RetrievalParams(), tmp_path)
    questions = ["How long does a full battery charge take?", "When is chat support open?"]
    hits = retriever.search(questions, 3)
    best = retriever.select_sentences(questions, hits, 1)
    assert best[0][0].text == "A full charge takes 4.5 hours with the standard 4 A charger."
    assert best[1][0].text == "Chat support is open every day from 7:00 to 22:00 CET."
    two = retriever.select_sentences(questions, hits, 2)
    assert [len(x) for x in two] == [2, 2] and two[0][0].score >= two[0][1].score
    assert all(source_chunk_id(p.chunk_id) in {h.chunk_id for h in hits[0]} for p in two[0])


def test_select_sentences_embeds_each_sentence_once(toy, tmp_path, monkeypatch):
    """The sentences of chunks retrieved again (another batch, another request) are not embedded again,
    and the memoised vectors select what fresh ones do."""
    retriever = Retriever.build(toy.current_documents(), RetrievalParams(), tmp_path)
    memo = sentence_memo(retriever.embedder)
    memo.clear()  # the embedding model is shared by the process: start from nothing embedded
    questions = ["How long does a full battery charge take?", "When is chat support open?"]
    hits = retriever.search(questions, 3)
    embedded: list[str] = []
    real = retriever.embed_texts
    monkeypatch.setattr(retriever, "embed_texts", lambda texts: embedded.extend(texts) or real(texts))
    first = retriever.select_sentences(questions, hits, 2)
    sentences = {p.text for row in hits for chunk in row for p in split_sentences(chunk)}
    assert set(embedded) == sentences | set(questions)  # each once: sentences and the questions
    embedded.clear()
    again = retriever.select_sentences(questions[:1], hits[:1], 2)  # a later batch: only its question
    assert embedded == questions[:1]
    assert [p.text for p in again[0]] == [p.text for p in first[0]]
    memo.clear()  # fresh vectors select the same sentences
    assert [[p.text for p in row] for row in retriever.select_sentences(questions, hits, 2)] == [
        [p.text for p in row] for row in first
    ]


def test_retrievers_on_one_embedding_model_share_sentence_vectors(toy, tmp_path, monkeypatch):
    """rag+qlora's training retriever (the KB without its updates) and the test-time retriever compress
    from the same sentences: the second does not embed again what the first did."""
    test_time = Retriever.build(toy.current_documents(), RetrievalParams(), tmp_path)
    training = Retriever.build(toy.documents, RetrievalParams(), tmp_path / "training")
    assert training.embedder is test_time.embedder
    sentence_memo(test_time.embedder).clear()
    questions = ["How long does a full battery charge take?"]
    hits = test_time.search(questions, 3)
    test_time.select_sentences(questions, hits, 2)
    embedded: list[str] = []
    real = training.embed_texts
    monkeypatch.setattr(training, "embed_texts", lambda texts: embedded.extend(texts) or real(texts))
    training.select_sentences(questions, hits, 2)
    assert embedded == questions  # the question only: every sentence came from the shared memo
    other = Retriever.build(toy.documents, RetrievalParams(embed_batch_size=7), tmp_path / "other")
    assert sentence_memo(other.embedder) is sentence_memo(test_time.embedder)  # batch size: same model
