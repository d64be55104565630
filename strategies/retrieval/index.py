"""The dense retriever: sentence-transformers embeddings in a faiss index, cached on disk.

``Retriever.for_context(ctx, params)`` builds (or loads from ``ctx.cache_dir/indexes/<hash>``) the
index of the base knowledge base, then applies ``ctx.eval_set.kb_updates`` incrementally;
``search(queries, k)`` returns ranked ``RetrievedChunk`` lists; ``info`` says what happened (cache
hit/miss, build seconds, index bytes, updates applied).

The on-disk layout and cache keys are in ``cache.py``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.data import Document
from harness.errors import ConfigError
from harness.locks import build_lock
from harness.optional import require_module
from harness.phases import phase
from harness.scoring.embeddings import load_embedder
from strategies.retrieval.cache import atomic_write_bytes, cache_key, doc_hash, write_cache_folder
from strategies.retrieval.chunking import Chunk, RetrievedChunk, chunk_documents, select_sentences
from strategies.retrieval.params import RetrievalParams

if TYPE_CHECKING:
    from harness.plugin import RunContext

log = logging.getLogger("adaptbench.retrieval")


# -- faiss indexes ------------------------------------------------------------------------------
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
    faiss = require_module("faiss", "RAG retrieval")

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
    faiss = require_module("faiss", "RAG retrieval")

    if params.index == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = params.hnsw_ef_search
    elif params.index == "ivf":
        index.nprobe = min(params.ivf_nprobe, index.nlist)


# -- retriever ---------------------------------------------------------------------------------------
SENTENCE_MEMO_MAX = 50_000  # sentence vectors kept per embedding model (~75 MB at MiniLM's 384 dims)
_MEMO_ATTR = "_adaptbench_sentence_vectors"


def sentence_memo(embedder: Any) -> dict[str, np.ndarray]:
    """The sentence vectors an embedding model has computed in this process, by text.

    Held on the model object (``load_embedder`` gives one per model and device), so every retriever that
    embeds with it shares them: rag, rag+qlora at test time and rag+qlora's training retriever (the KB
    without its updates) compress contexts from the same knowledge-base sentences. An embedder object
    that takes no attributes gets a fresh memo per retriever."""
    memo = getattr(embedder, _MEMO_ATTR, None)
    if memo is None:
        memo = {}
        try:
            setattr(embedder, _MEMO_ATTR, memo)
        except (AttributeError, TypeError):
            pass
    return memo


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
        self._sentence_vectors = sentence_memo(embedder)  # embed_sentences' memo, shared per model
        set_search_knobs(index, params)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def for_context(cls, ctx: RunContext, params: RetrievalParams) -> Retriever:
        """Index the eval set's base KB (cached on disk) and apply its ``kb_updates`` incrementally."""
        if not ctx.eval_set.documents:
            raise ConfigError(
                f"{ctx.eval_set.root}: eval set has no knowledge base; retrieval strategies need kb/*.md or kb.jsonl"
            )
        with phase("index"):
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
        with build_lock(folder, "retrieval index") if folder is not None else nullcontext():
            # under the lock: a twin run building this index finishes first, then this one hits
            return cls._build_locked(documents, params, embedder, key, hashed, folder, start, progress)

    @classmethod
    def _build_locked(
        cls,
        documents: Sequence[Document],
        params: RetrievalParams,
        embedder: Any,
        key: str,
        hashed: dict[str, Any],
        folder: Path | None,
        start: float,
        progress: bool,
    ) -> Retriever:
        faiss = require_module("faiss", "RAG retrieval")

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
            log.info("building retrieval index %s (%d chunks)", key, len(chunk_list))
            vectors = embed(embedder, [c.embedding_text() for c in chunk_list], params, progress=progress)
            embed_seconds = time.perf_counter() - t0
            if folder is not None:
                write_cache_folder(folder, hashed, chunk_list, vectors)
        ikey, idesc = index_spec(params, len(chunk_list))
        index_path = folder / f"index-{ikey}.faiss" if folder is not None else None
        index_hit = index_path is not None and index_path.is_file()
        if index_hit:
            index = faiss.read_index(str(index_path))
        else:
            index = new_index(params, vectors.shape[1], len(vectors), train=vectors)
            index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
            if index_path is not None:
                atomic_write_bytes(index_path, faiss.serialize_index(index).tobytes())
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
        faiss = require_module("faiss", "RAG retrieval")

        return int(faiss.serialize_index(self.index).size)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings of ``texts`` with the index's model (inner product = cosine)."""
        return embed(self.embedder, list(texts), self.params)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.embed_texts(queries)

    def search(self, queries: Sequence[str], k: int | None = None) -> list[list[RetrievedChunk]]:
        """Top-``k`` chunks per query (default ``params.top_k``), best first, ``min_score`` applied."""
        if not queries:
            return []
        return self.search_vectors(self.embed_queries(queries), k)

    def select_sentences(
        self,
        questions: Sequence[str],
        hits: Sequence[Sequence[RetrievedChunk]],
        n: int,
        query_vectors: np.ndarray | None = None,
    ) -> list[list[RetrievedChunk]]:
        """Context compression: per question, the ``n`` sentences of its retrieved chunks most similar
        to it (same embedding model), best first, as ``RetrievedChunk`` pieces with ids
        ``<chunk_id>.s<n>`` and document offsets. Questions whose chunks have no sentences keep the chunks.
        """
        if query_vectors is None:
            query_vectors = self.embed_queries(questions)
        return select_sentences(self.embed_sentences, questions, hits, n, query_vectors)

    def embed_sentences(self, texts: Sequence[str]) -> np.ndarray:
        """``embed_texts`` for knowledge-base sentences, each embedded once per embedding model and process
        (memoised by text, shared by the retrievers using the model: ``sentence_memo``).

        Context compression embeds the sentences of every retrieved chunk, and the same chunks come back
        for many questions: rag+qlora's training prompts, each batch of the evaluation pass and each
        latency-probe request embedded them again (~30 s of MiniLM in the demo). A served system embeds its
        knowledge base's sentences once, as it does its chunks; the memo reaches that state lazily, so a
        huge KB is not embedded sentence by sentence up front. Keyed by text, it stays right when KB updates
        add or remove chunks; it is emptied when it would pass ``SENTENCE_MEMO_MAX`` entries."""
        if not texts:
            return self.embed_texts([])
        memo = self._sentence_vectors
        missing = [t for t in dict.fromkeys(texts) if t not in memo]
        if missing:
            if len(memo) + len(missing) > SENTENCE_MEMO_MAX:
                memo.clear()
            memo.update(zip(missing, self.embed_texts(missing), strict=True))
        return np.stack([memo[t] for t in texts])

    def search_vectors(self, vectors: np.ndarray, k: int | None = None) -> list[list[RetrievedChunk]]:
        faiss = require_module("faiss", "RAG retrieval")

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
