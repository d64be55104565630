"""Scoring benchmark: answer perplexity (coherence's fluency term), the score phase's one model pass.

    python bench/bench_scoring.py [--run reports/<run-id>] [--n 460] [--batch-size 8] [--model ID]

Rows: every answer of a run folder's ``predictions.jsonl`` (``--run``: the real lengths of a verbose model's
answers) or, without one, the demo test split's reference answers, each given its question rendered as a
single user turn (``harness.scoring.perplexity``). Arms, one process, one model, the same rows:

  plain     the pass as it was before issue 16's change: rows in example order, batches right-padded, the
            full ``[batch, width, vocab]`` logits projected and scored (the same-run baseline)
  harness   ``harness.backends.likelihood.masked_mean_nll``: rows longest first (little padding), logits
            projected only from the batch's earliest completion on (``logits_to_keep``); the pass for
            models whose cache cannot be shared
  shared    ``shared_context_nll``, the backend's pass since the eleventh session: each distinct context
            (question) once, its answers continuing from its keys and values (with ``--run``, the 5
            strategies' answers to a question share one context)

Printed: rows, completion tokens, padded positions and logit positions each arm computed, seconds, the
ratios harness / plain and shared / harness, and the largest absolute differences between the arms'
per-answer NLL.

    python bench/bench_scoring.py --embeddings --run reports/<run-id> [--repeats 2]

The embedding metrics instead (semantic_similarity and style_adherence through ``score_strategies``, every
strategy of the run, the default MiniLM): arm ``per_call`` encodes every text each metric asks for (the
pass before the fourteenth session), arm ``shared`` each distinct text once per scoring pass
(``harness.scoring.semantic.shared_embeddings``); arms alternate ``--repeats`` times. Printed: encodings,
median seconds, the ratio shared / per_call, and the largest per-example score difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def plain_pass(model, rows, pad_id: int, batch_size: int) -> tuple[list[float], int]:
    """The straightforward reference: example order, full logits, mean NLL of each row's completion."""
    import torch

    from harness.backends.likelihood import pad_rows

    out: list[float] = []
    positions = 0
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = pad_rows(rows[start : start + batch_size], pad_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            positions += logits.shape[0] * logits.shape[1]
            logits = logits[:, :-1].float()
            target = batch["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
            ).view(target.shape)
            mask = (target != -100).float()
            out.extend(((nll * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist())
    return out, positions


def load_rows(backend, run: Path | None, n: int) -> list[tuple[list[int], int]]:
    from harness.data import load_eval_set

    pairs: list[tuple[str, str]] = []
    if run is not None:
        for line in (run / "predictions.jsonl").read_text().splitlines():
            rec = json.loads(line)
            pairs.append((rec.get("question", ""), rec.get("prediction") or ""))
    else:
        test = list(load_eval_set(REPO / "eval_sets" / "nimbus_support").split("test"))
        pairs = [(ex["question"], ex["answer"]) for ex in test]
    pairs = [(q, a) for q, a in pairs if a.strip()]
    pairs = [pairs[i % len(pairs)] for i in range(n or len(pairs))]
    rows = []
    for q, a in pairs:
        ctx = backend._ids(backend.render([{"role": "user", "content": q}]))
        rows.append((ctx + backend._ids(a)[:256], len(ctx)))
    return rows


def embedding_bench(run: Path, repeats: int) -> None:
    """semantic_similarity + style_adherence over a run's answers, texts encoded per call vs once."""
    import statistics

    import numpy as np

    from harness.rundir import load_predictions
    from harness.scoring import semantic
    from harness.scoring.embeddings import load_embedder
    from harness.scoring.score import score_strategies

    records: dict[str, list[dict]] = {}
    for rec in load_predictions(run / "predictions.jsonl"):
        records.setdefault(rec["strategy"], []).append(rec)
    metrics = ["semantic_similarity", "style_adherence"]
    encoder = load_embedder(None)
    real_encode, shared_embed = encoder.encode, semantic.embed
    encoded: list[int] = []

    def counting(texts, **kw):
        encoded.append(len(texts))
        return real_encode(texts, **kw)

    def per_call(texts, model=None, batch_size=64):  # every text each call asks for, as before
        vecs = load_embedder(model).encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vecs, dtype=np.float32)

    encoder.encode = counting
    score_strategies(metrics, {k: v[:4] for k, v in records.items()})  # warm-up
    times: dict[str, list[float]] = {"per_call": [], "shared": []}
    counts: dict[str, int] = {}
    scores: dict[str, dict] = {}
    for _ in range(repeats):
        for arm in ("per_call", "shared"):
            semantic.embed = per_call if arm == "per_call" else shared_embed
            encoded.clear()
            start = time.perf_counter()
            scores[arm] = score_strategies(metrics, records)
            times[arm].append(time.perf_counter() - start)
            counts[arm] = sum(encoded)
    semantic.embed, encoder.encode = shared_embed, real_encode
    diff = max(
        abs(a[m] - b[m])
        for sid in records
        for a, b in zip(
            scores["per_call"][sid]["per_example"].values(),
            scores["shared"][sid]["per_example"].values(),
            strict=True,
        )
        for m in metrics
        if a[m] is not None
    )
    median = {arm: statistics.median(v) for arm, v in times.items()}
    answers = sum(len(v) for v in records.values())
    print(
        f"run={run} strategies={len(records)} answers={answers} metrics={','.join(metrics)} repeats={repeats}"
    )
    print(f"{'arm':<10}{'encodings':>11}{'median s':>10}{'runs':>24}")
    for arm in ("per_call", "shared"):
        runs = " ".join(f"{t:.2f}" for t in times[arm])
        print(f"{arm:<10}{counts[arm]:>11}{median[arm]:>10.2f}{runs:>24}")
    print(
        f"shared_vs_per_call_seconds {median['shared'] / median['per_call']:.3f}   max |score difference| {diff:.2e}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--run", type=Path, help="a run folder whose predictions give the answers")
    ap.add_argument("--n", type=int, default=0, help="rows (0: every answer)")
    ap.add_argument("--batch-size", type=int, default=8, help="the scorer's batch (answer_perplexities)")
    ap.add_argument("--embeddings", action="store_true", help="bench the embedding metrics instead (--run)")
    ap.add_argument("--repeats", type=int, default=2, help="--embeddings: alternations of the two arms")
    args = ap.parse_args()
    if args.embeddings:
        if args.run is None:
            ap.error("--embeddings needs --run (a run folder's answers)")
        embedding_bench(args.run, args.repeats)
        return

    import torch

    from harness.backends import likelihood
    from harness.backends.hf import TransformersBackend
    from harness.backends.loading import cache_root, load_model
    from harness.config import ModelConfig

    cfg = ModelConfig(id=args.model)
    backend = TransformersBackend(load_model(cfg, cache_root()), cfg)
    model, pad = backend.model, backend._pad_id()
    rows = load_rows(backend, args.run, args.n)
    completion_tokens = sum(len(ids) - c for ids, c in rows)

    calls: list[tuple[int, int, int]] = []  # (rows, width, logits kept) per harness forward
    real = model.forward

    def spy(**kw):
        b, w = kw["input_ids"].shape
        calls.append((b, w, kw.get("logits_to_keep", 0) or w))
        return real(**kw)

    likelihood.masked_mean_nll(model, rows[:2], pad, 2)  # warm-up
    start = time.perf_counter()
    plain, plain_positions = plain_pass(model, rows, pad, args.batch_size)
    plain_s = time.perf_counter() - start
    model.forward = spy
    start = time.perf_counter()
    ours = likelihood.masked_mean_nll(model, rows, pad, args.batch_size)
    ours_s = time.perf_counter() - start
    padded = sum(b * w for b, w, _ in calls)
    projected = sum(b * k for b, _, k in calls)
    calls.clear()
    start = time.perf_counter()
    shared = likelihood.shared_context_nll(model, rows, pad, args.batch_size, backend._cache_kwarg)
    shared_s = time.perf_counter() - start
    model.forward = real
    shared_padded = sum(b * w for b, w, _ in calls)
    shared_projected = sum(b * k for b, _, k in calls)
    diff = max(abs(a - b) for a, b in zip(plain, ours, strict=True))
    shared_diff = max(abs(a - b) for a, b in zip(ours, shared, strict=True))
    print(
        f"model={args.model} rows={len(rows)} completion_tokens={completion_tokens} batch={args.batch_size} "
        f"threads={torch.get_num_threads()} source={'run ' + str(args.run) if args.run else 'reference answers'}"
    )
    print(f"{'arm':<10}{'positions':>11}{'logit rows':>12}{'seconds':>10}{'answers/s':>11}")
    print(
        f"{'plain':<10}{plain_positions:>11}{plain_positions:>12}{plain_s:>10.2f}{len(rows) / plain_s:>11.1f}"
    )
    print(f"{'harness':<10}{padded:>11}{projected:>12}{ours_s:>10.2f}{len(rows) / ours_s:>11.1f}")
    print(
        f"{'shared':<10}{shared_padded:>11}{shared_projected:>12}{shared_s:>10.2f}{len(rows) / shared_s:>11.1f}"
    )
    print(f"harness_vs_plain_seconds {ours_s / plain_s:.3f}   max |nll difference| {diff:.2e}")
    print(f"shared_vs_harness_seconds {shared_s / ours_s:.3f}   max |nll difference| {shared_diff:.2e}")


if __name__ == "__main__":
    main()
