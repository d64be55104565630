"""Embedding helpers shared by the model-based metrics (semantic similarity, coherence, style).

Embeddings come from ``harness.scoring.embeddings.load_embedder`` (default: the offline all-MiniLM-L6-v2
package), L2-normalised, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar

import numpy as np

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")

# Inside ``shared_embeddings()``: (model, text) -> embedding, so the metrics of one scoring pass embed each
# text once (semantic similarity embeds every answer and reference, style adherence the style-tagged again).
_MEMO: ContextVar[dict[tuple[str | None, str], np.ndarray] | None] = ContextVar("adaptbench_embeddings")


@contextlib.contextmanager
def shared_embeddings() -> Iterator[None]:
    """Embeddings computed inside are remembered until the block ends (one scoring pass)."""
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def embed(texts: list[str], model: str | None = None, batch_size: int = 64) -> np.ndarray:
    """Unit-norm embeddings, one row per text (empty strings embed as themselves).

    Each distinct text is encoded once (the references repeat for every strategy; answers repeat too)."""
    from harness.scoring.embeddings import load_embedder

    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    memo = _MEMO.get(None)
    known = memo if memo is not None else {}
    new = [t for t in dict.fromkeys(texts) if (model, t) not in known]
    if new:
        vecs = load_embedder(model).encode(
            new,
            batch_size=batch_size,
            normalize_embeddings=True,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        known.update(zip(((model, t) for t in new), np.asarray(vecs, dtype=np.float32), strict=True))
    return np.stack([known[(model, t)] for t in texts])


def pair_cosine(a: list[str], b: list[str], model: str | None = None) -> list[float]:
    """Cosine similarity of ``a[i]`` and ``b[i]``, clipped to [0, 1]; 0 when either text is empty."""
    if not a:
        return []
    emb = embed(list(a) + list(b), model)
    ea, eb = emb[: len(a)], emb[len(a) :]
    cos = np.clip(np.sum(ea * eb, axis=1), 0.0, 1.0)
    return [float(c) if x.strip() and y.strip() else 0.0 for c, x, y in zip(cos, a, b, strict=True)]


def split_sentences(text: str) -> list[str]:
    """Sentences by terminal punctuation (. ! ?) followed by whitespace, or by line breaks."""
    parts: list[str] = []
    for line in text.splitlines():
        parts.extend(s.strip() for s in _SENTENCE_END.split(line) if s.strip())
    return parts
