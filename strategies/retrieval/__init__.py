"""Reusable retrieval for RAG-style strategies: chunking, embeddings, FAISS index, prompt assembly.

Nothing here registers a strategy; ``strategies/rag.py`` (and hybrids such as ``rag+qlora``) build on
this API:

``params``    ``RetrievalParams``: embedding model, chunking, ``top_k``, ``min_score``, index type and
              knobs, device. Extend it with strategy-specific fields.
``chunking``  ``Chunk`` / ``RetrievedChunk`` (a slice of one KB document, with a similarity ``score``),
              ``chunk_document(s)``, ``split_sentences``, ``source_chunk_id``, ``select_sentences``.
``index``     ``Retriever``: build / load from the cache, flat / HNSW / IVF faiss indexes, incremental
              ``kb_updates``, ``search(queries, k)`` and ``select_sentences(questions, hits, n)``.
``cache``     the on-disk index cache (keys and atomic writes) under ``<cache>/indexes/<hash>``.
``prompt``    ``build_rag_prompt`` (fits the context window, never cuts the question),
              ``render_rag_user`` / ``render_rag_messages``, ``format_context``.

Scoring is not done here: strategies hand the chunk texts and retrieved doc ids to the harness on each
``Answer`` (``contexts``, ``retrieved_ids``) and the faithfulness / recall@k / MRR metrics score them
(``harness/scoring/retrieval_metrics.py``).
"""

from strategies.retrieval.cache import cache_key, doc_hash, embedding_model_key, kb_hash
from strategies.retrieval.chunking import (
    Chunk,
    RetrievedChunk,
    chunk_document,
    chunk_documents,
    select_sentences,
    source_chunk_id,
    split_sentences,
)
from strategies.retrieval.index import Retriever, embed, index_spec, ivf_nlist, new_index, set_search_knobs
from strategies.retrieval.params import RetrievalParams
from strategies.retrieval.prompt import (
    DEFAULT_RAG_TEMPLATE,
    build_rag_prompt,
    format_context,
    render_rag_messages,
    render_rag_user,
)

__all__ = [
    "DEFAULT_RAG_TEMPLATE",
    "Chunk",
    "RetrievalParams",
    "RetrievedChunk",
    "Retriever",
    "build_rag_prompt",
    "cache_key",
    "chunk_document",
    "chunk_documents",
    "doc_hash",
    "embed",
    "embedding_model_key",
    "format_context",
    "index_spec",
    "ivf_nlist",
    "kb_hash",
    "new_index",
    "render_rag_messages",
    "render_rag_user",
    "select_sentences",
    "set_search_knobs",
    "source_chunk_id",
    "split_sentences",
]
