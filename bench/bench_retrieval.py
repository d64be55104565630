"""Retrieval benchmark: embedding throughput for index builds, and faiss exact vs approximate search.

    python bench/bench_retrieval.py [--sizes 10000,100000] [--large] [--embed-texts 2000] [--queries 200] [--threads 2]

1. Embeddings/s: the real default embedder (all-MiniLM-L6-v2, offline package) encodes a few thousand
   support-style texts of chunk length (demo KB chunks plus generated variations), batched and
   normalised exactly as ``Retriever.build`` does. The demo KB's full ``Retriever.build`` is timed too.
2. Search at scale: synthetic chunk vectors (real MiniLM embeddings + noise, re-normalised, so they
   cluster like real chunks) at each size. Indexes are the ones the rag strategy ships
   (``strategies.retrieval.new_index``): flat (exact, the baseline), HNSW and IVF. Reported: build
   seconds, index bytes, single-query latency p50/p95, speed-up vs flat, and recall@10 of the
   approximate index against the exact one (share of the exact top-10 ids it returns). Target: p95 < 2 ms
   at 100k chunks for the approximate indexes at their shipped defaults (``p95<2ms`` column).
   ``--large`` adds 1M chunks (about 1.5 GiB of vectors; minutes to build HNSW on 2 cores).
3. Batched queries: a rag batch embeds and searches all its questions in one call; ``batch_ms/q`` is the
   per-query cost of one ``search`` call over all queries, next to the single-query p50.

All arms run in one process with the same vectors and queries, so ratios compare across machines.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import faiss
import numpy as np

from harness.data import load_eval_set
from harness.errors import DataError
from harness.scoring.embeddings import load_embedder
from strategies.retrieval import (
    RetrievalParams,
    Retriever,
    chunk_documents,
    embed,
    new_index,
    set_search_knobs,
)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "eval_sets" / "nimbus_support"
K = 10

PRODUCTS = ["Stratus S2", "Cirrus C1", "Altus T5", "Cumulus Cargo X", "Zephyr Z1"]
TOPICS = [
    "The {p} battery holds {n} Wh and charges to 80 percent in {h} hours with the {a} A charger.",
    "Returns for the {p} are accepted within {d} days of delivery if the odometer shows under {m} miles.",
    "Error code E{c} on the {p} display means the motor controller lost contact with the torque sensor.",
    "Brake pads on the {p} should be checked every {m} miles and replaced below {h} mm of material.",
    "Nimbus Care+ covers the {p} for {d} months including accidental damage with a ${n} deductible.",
    "Firmware {h}.{c} for the {p} adds a walk-assist mode and improves range estimates by {d} percent.",
    "Ship the {p} to {city}; delivery takes {d} business days and white-glove setup costs ${n}.",
    "Store the {p} battery at {d} to {m} percent charge in a dry room between {h} and {c} degrees.",
]
CITIES = ["Denver", "Portland", "Austin", "Chicago", "Boston", "Seattle", "Atlanta", "Phoenix"]


def demo_set():
    """The demo eval set, or None while it is absent or incomplete."""
    try:
        return load_eval_set(DEMO)
    except DataError:
        return None


def realish_texts(n: int, seed: int = 0) -> list[str]:
    """Demo KB chunks (when the demo set is present) topped up with generated support sentences."""
    rng = random.Random(seed)
    texts: list[str] = []
    demo = demo_set()
    if demo is not None:
        tok = load_embedder().tokenizer
        texts = [c.embedding_text() for c in chunk_documents(demo.current_documents(), tok, 128, 32)]
    while len(texts) < n:
        sents = [
            rng.choice(TOPICS).format(
                p=rng.choice(PRODUCTS),
                n=rng.randint(20, 900),
                h=rng.randint(1, 9),
                a=rng.choice([2, 4, 6]),
                d=rng.randint(5, 90),
                m=rng.randint(50, 2000),
                c=rng.randint(10, 99),
                city=rng.choice(CITIES),
            )
            for _ in range(rng.randint(3, 5))
        ]
        texts.append(" ".join(sents))
    return texts[:n]


def synthetic(base: np.ndarray, n: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors scattered around random rows of ``base`` (cosine to their anchor ~0.75)."""
    anchors = base[rng.integers(0, len(base), size=n)]
    x = anchors + rng.normal(0, noise / np.sqrt(base.shape[1]), size=anchors.shape).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def query_latencies(index, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Search one query at a time (the rag strategy's interactive case); returns (ms per query, ids)."""
    ids = np.empty((len(queries), K), dtype=np.int64)
    ms = np.empty(len(queries))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one query = one thread; avoids OpenMP barrier stalls on busy cores
    try:
        index.search(queries[:1], K)  # warm-up
        for i in range(len(queries)):
            t0 = time.perf_counter()
            _, row = index.search(queries[i : i + 1], K)
            ms[i] = (time.perf_counter() - t0) * 1000
            ids[i] = row[0]
    finally:
        faiss.omp_set_num_threads(threads)
    return ms, ids


def recall_vs_exact(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / K for a, e in zip(approx, exact, strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--large", action="store_true", help="also 1,000,000 chunks")
    ap.add_argument("--embed-texts", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--noise", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    # -- 1. embedding throughput (real model, real-ish texts) -----------------------------------------
    embedder = load_embedder()
    params = RetrievalParams()
    texts = realish_texts(args.embed_texts, args.seed)
    tok_lens = [len(x) for x in embedder.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    embed(embedder, texts[:64], params)  # warm-up
    t0 = time.perf_counter()
    vectors = embed(embedder, texts, params)
    embed_s = time.perf_counter() - t0
    rate = len(texts) / embed_s
    print("== embeddings (all-MiniLM-L6-v2, batch 64, normalised) ==")
    print(
        f"texts={len(texts)} mean_tokens={np.mean(tok_lens):.0f} seconds={embed_s:.1f} "
        f"embeddings_per_s={rate:.1f} tokens_per_s={sum(tok_lens) / embed_s:.0f}"
    )
    ev = demo_set()
    if ev is not None:
        r = Retriever.build(ev.documents, RetrievalParams(cache=False), None)
        r.apply_updates(ev.kb_updates)
        print(
            f"demo KB: {len(ev.documents)} docs -> {r.info['n_chunks_base']} chunks, Retriever.build "
            f"(chunk+embed+index, uncached) {r.info['build_seconds']:.1f}s, kb_updates "
            f"{r.info['kb_updates']['seconds']:.2f}s for {r.info['kb_updates']['added_chunks']} chunks"
        )

    # -- 2. exact vs approximate search at scale --------------------------------------------------------
    queries = synthetic(vectors, args.queries, args.noise, rng)
    header = (
        f"{'chunks':>7} {'index':<24} {'build_s':>8} {'embed_s*':>9} {'MiB':>7} "
        f"{'p50_ms':>8} {'p95_ms':>8} {'speedup':>8} {'recall@10':>9} {'batch_ms/q':>10} {'p95<2ms':>7}"
    )
    print("\n== search (single query, k=10; recall of approximate vs exact top-10) ==")
    print(header)
    print("-" * len(header))
    sizes = [int(s) for s in args.sizes.split(",")] + ([1_000_000] if args.large else [])
    for n in sizes:
        data = synthetic(vectors, n, args.noise, rng)
        arms = [
            ("flat", RetrievalParams(index="flat")),
            ("hnsw M=32 efS=64", RetrievalParams(index="hnsw")),
            ("hnsw M=32 efS=128", RetrievalParams(index="hnsw", hnsw_ef_search=128)),
            ("ivf nprobe=8", RetrievalParams(index="ivf")),
            ("ivf nprobe=32", RetrievalParams(index="ivf", ivf_nprobe=32)),
        ]
        exact_ids = exact_p50 = None
        built: dict[tuple, tuple] = {}
        for label, p in arms:
            build_key = (p.index, p.hnsw_m, p.hnsw_ef_construction, p.ivf_nlist)
            if build_key in built:  # same structure, other search knob: reuse the build
                index, build_s = built[build_key]
            else:
                t0 = time.perf_counter()
                # as Retriever.build does: IVF trains on every vector (faiss samples 256 per cell itself)
                index = new_index(p, data.shape[1], n, train=data)
                index.add_with_ids(data, np.arange(n, dtype=np.int64))
                build_s = time.perf_counter() - t0
                built[build_key] = (index, build_s)
            set_search_knobs(index, p)
            ms, ids = query_latencies(index, queries)
            p50, p95 = float(np.percentile(ms, 50)), float(np.percentile(ms, 95))
            if exact_ids is None:
                exact_ids, exact_p50 = ids, p50
            if p.index == "ivf":
                label = f"ivf nlist={index.nlist} nprobe={index.nprobe}"
            mib = faiss.serialize_index(index).size / 2**20
            t0 = time.perf_counter()
            index.search(queries, K)  # all queries in one call (a rag batch)
            batch_ms = (time.perf_counter() - t0) * 1000 / len(queries)
            target = "-" if p.index == "flat" else ("yes" if p95 < 2.0 else "NO")
            print(
                f"{n:>7} {label:<24} {build_s:>8.2f} {n / rate:>9.1f} {mib:>7.1f} {p50:>8.3f} {p95:>8.3f} "
                f"{exact_p50 / p50:>7.1f}x {recall_vs_exact(ids, exact_ids):>9.3f} {batch_ms:>10.3f} {target:>7}"
            )
        del built
    print(
        f"\n* embed_s: time to embed that many chunks at the measured {rate:.0f} embeddings/s "
        "(index build from text = embed_s + build_s). speedup = flat p50 / this p50."
    )


if __name__ == "__main__":
    main()
