"""Knowledge-base chunks: token-window chunking, sentence pieces and sentence selection.

``chunk_document(doc, tokenizer, size, overlap)`` cuts a document into windows of the embedding
model's tokens; ``split_sentences(chunk)`` cuts a chunk into sentence pieces (ids ``<chunk_id>.s<n>``,
``source_chunk_id()`` maps them back); ``select_sentences`` keeps the pieces closest to a question
(context compression).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.data import Document


@dataclass(frozen=True)
class Chunk:
    """A contiguous slice ``doc.text[start:end]`` of one knowledge-base document."""

    chunk_id: str
    doc_id: str
    title: str
    text: str
    start: int
    end: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Chunk:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(Chunk)})

    def embedding_text(self) -> str:
        """What gets embedded: the title gives short chunks their topic."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class RetrievedChunk(Chunk):
    """A chunk returned by ``Retriever.search``; ``score`` is cosine similarity (normalised IP)."""

    score: float = 0.0

    @classmethod
    def of(cls, chunk: Chunk, score: float) -> RetrievedChunk:
        return cls(**dataclasses.asdict(chunk), score=float(score))


def _is_continuation(text: str, offsets: Sequence[tuple[int, int]], i: int) -> bool:
    """True when token ``i`` continues the word of token ``i-1`` (no gap, letters/digits on both sides)."""
    if i <= 0 or i >= len(offsets):
        return False
    start, prev_end = offsets[i][0], offsets[i - 1][1]
    return start == prev_end and start > 0 and text[start - 1].isalnum() and text[start].isalnum()


def chunk_document(doc: Document, tokenizer: Any, size: int, overlap: int) -> list[Chunk]:
    """Split ``doc.text`` into windows of at most ``size`` tokenizer tokens, consecutive windows
    sharing ``overlap`` tokens. Window edges are moved back to word starts when that keeps at least
    half a window, so words are not cut in half. Chunk ids are ``<doc_id>#<n>``."""
    text = doc.text
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"] if b > a]
    n = len(offsets)
    chunks: list[Chunk] = []
    pos = 0
    while pos < n:
        end = min(pos + size, n)
        if end < n:
            snapped = end
            while snapped > pos + size // 2 and _is_continuation(text, offsets, snapped):
                snapped -= 1
            if not _is_continuation(text, offsets, snapped):
                end = snapped
        start_char, end_char = offsets[pos][0], offsets[end - 1][1]
        chunks.append(
            Chunk(
                chunk_id=f"{doc.id}#{len(chunks)}",
                doc_id=doc.id,
                title=doc.title,
                text=text[start_char:end_char],
                start=start_char,
                end=end_char,
            )
        )
        if end >= n:
            break
        nxt = max(end - overlap, pos + 1)
        while nxt > pos + 1 and _is_continuation(text, offsets, nxt):
            nxt -= 1
        pos = nxt
    return chunks


def chunk_documents(docs: Sequence[Document], tokenizer: Any, size: int, overlap: int) -> list[Chunk]:
    return [c for d in docs for c in chunk_document(d, tokenizer, size, overlap)]


_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
_LEADING_MARKUP = "-*#>|• \t"


def split_sentences(chunk: Chunk, min_words: int = 3) -> list[Chunk]:
    """Sentences (and list items / lines) of a chunk as sub-chunks with document offsets.

    Leading Markdown markup (``- ``, ``# ``, ``> ``) is dropped; pieces shorter than ``min_words``
    words (headings, table rules) are skipped. Ids are ``<chunk_id>.s<n>``.
    """
    out: list[Chunk] = []
    pos = 0
    breaks = [*_SENTENCE_BREAK.finditer(chunk.text), None]
    for m in breaks:
        seg_start, seg_end = pos, (m.start() if m else len(chunk.text))
        pos = m.end() if m else len(chunk.text)
        seg = chunk.text[seg_start:seg_end]
        lead = len(seg) - len(seg.lstrip(_LEADING_MARKUP))
        seg = seg[lead:].rstrip()
        if len(seg.split()) < min_words:
            continue
        start = chunk.start + seg_start + lead
        out.append(
            Chunk(
                chunk_id=f"{chunk.chunk_id}.s{len(out)}",
                doc_id=chunk.doc_id,
                title=chunk.title,
                text=seg,
                start=start,
                end=start + len(seg),
            )
        )
    return out


def source_chunk_id(piece_id: str) -> str:
    """The chunk a sentence piece (``<chunk_id>.s<n>``) came from; chunk ids map to themselves."""
    head, sep, tail = piece_id.rpartition(".s")
    return head if sep and tail.isdigit() else piece_id


def select_sentences(
    embed_texts: Callable[[Sequence[str]], np.ndarray],
    questions: Sequence[str],
    hits: Sequence[Sequence[RetrievedChunk]],
    n: int,
    query_vectors: np.ndarray | None = None,
) -> list[list[RetrievedChunk]]:
    """Context compression: per question, the ``n`` sentences of its retrieved chunks most similar to
    it, best first, as ``RetrievedChunk`` pieces with ids ``<chunk_id>.s<n>`` and document offsets.
    ``embed_texts`` returns L2-normalised embeddings (the retriever's model). Questions whose chunks have
    no sentences keep the chunks. ``query_vectors``: the questions' embeddings when the caller already
    has them (from the search), so a batch's questions are encoded once.
    """
    per_question: list[list[Chunk]] = []
    texts: dict[str, int] = {}
    for row in hits:
        seen: set[str] = set()
        cands = []
        for chunk in row:
            for sent in split_sentences(chunk):
                if sent.text not in seen:  # overlapping chunks repeat sentences
                    seen.add(sent.text)
                    cands.append(sent)
                    texts.setdefault(sent.text, len(texts))
        per_question.append(cands)
    if not texts:
        return [list(row) for row in hits]
    vectors = embed_texts(list(texts))
    queries = query_vectors if query_vectors is not None else embed_texts(list(questions))
    out: list[list[RetrievedChunk]] = []
    for q, cands, row in zip(queries, per_question, hits, strict=True):
        if not cands:
            out.append(list(row))
            continue
        scores = vectors[[texts[c.text] for c in cands]] @ q
        order = np.argsort(-scores, kind="stable")[:n]
        out.append([RetrievedChunk.of(cands[i], float(scores[i])) for i in order])
    return out
