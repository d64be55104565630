"""Write a complete, deterministic run folder without a model: the decision and report tests' input.

Three strategies with planted properties:
* ``prompt``: fast and cheap, low accuracy;
* ``rag``: +0.25 token F1 on knowledge/updated questions, slower, retrieves (faithfulness, chunks);
* ``qlora``: as accurate as prompt + 0.05, 20 minutes of training, an adapter and loss curves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

XSS_QUESTION = 'Is <script>alert("q")</script> covered? "><img src=x onerror=alert(1)>'
XSS_ANSWER = "<script>alert('answer')</script><b>bold</b> & done"


def _strategy_rows(sid: str, n: int, rng: np.random.Generator, tags: list[list[str]]) -> list[dict[str, Any]]:
    base = rng.uniform(0.1, 0.5, n)
    boost = {"prompt": 0.0, "rag": 0.25, "qlora": 0.05}[sid]
    lat = {"prompt": 0.12, "rag": 0.30, "qlora": 0.14}[sid]
    rows = []
    for i in range(n):
        knowledge = "style" not in tags[i]
        f1 = float(np.clip(base[i] + (boost if knowledge else 0.0) + rng.normal(0, 0.05), 0, 1))
        rows.append(
            {
                "f1": f1,
                "latency": float(lat * rng.uniform(0.8, 1.6)),
                "tokens": int(rng.integers(8, 30)),
            }
        )
    return rows


def write_synthetic_run(
    run_dir: Path,
    *,
    n: int = 40,
    decision: dict[str, Any] | None = None,
    strategies: tuple[str, ...] = ("prompt", "rag", "qlora"),
    seed: int = 0,
    xss: bool = True,
) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tag_cycle = [["knowledge"], ["knowledge"], ["style"], ["updated"], ["knowledge", "general"]]
    tags = [tag_cycle[i % len(tag_cycle)] for i in range(n)]
    ids = [f"ex-{i:03d}" for i in range(n)]
    questions = [f"Question {i} about the Stratus battery?" for i in range(n)]
    references = [
        "Hi there! Phone support is open on weekdays. — Care Team"
        if "style" in tags[i]
        else f"Answer {i}: 540 Wh."
        for i in range(n)
    ]
    if xss:
        questions[0] = XSS_QUESTION
    preds, scores, probe = [], {}, []
    for sid in strategies:
        rows = _strategy_rows(sid, n, rng, tags)
        # The latency probe: single requests (here the first 24 examples), end-to-end = its latency.
        for r, row in enumerate(rows[:24]):
            ttft = 0.3 * row["latency"]
            probe.append(
                {
                    "strategy": sid,
                    "example_id": ids[r],
                    "round": r,
                    "e2e_s": row["latency"],
                    "ttft_s": ttft,
                    "tpot_s": (row["latency"] - ttft) / (row["tokens"] - 1),
                    "new_tokens": row["tokens"],
                }
            )
        per_example = {}
        for i, (eid, row) in enumerate(zip(ids, rows, strict=True)):
            text = f"{sid} says answer {i}"
            if xss and i == 0 and sid == "rag":
                text = XSS_ANSWER
            extra: dict[str, Any] = {}
            per = {
                "exact_match": float(row["f1"] > 0.7),
                "token_f1": row["f1"],
                "rouge_l": max(0.0, row["f1"] - 0.02),
                "answer_recall": min(1.0, row["f1"] + 0.1),
                "semantic_similarity": min(1.0, 0.4 + row["f1"] / 2),
                "coherence": 0.6 + 0.01 * (i % 5),
                "style_adherence": (0.5 + (0.2 if sid == "qlora" else 0.0)) if "style" in tags[i] else None,
                "perplexity": 12.0,
                "fluency": 0.7,
                "consistency": 1.0,
                "repetition": 0.0,
            }
            if sid == "rag":
                extra = {
                    "retrieved": [
                        {
                            "chunk_id": f"battery#{i % 3}",
                            "doc_id": "battery",
                            "score": 0.81,
                            "in_prompt": True,
                        },
                        {
                            "chunk_id": "warranty#0",
                            "doc_id": "<b>warranty</b>",
                            "score": 0.42,
                            "in_prompt": False,
                        },
                    ],
                    "metrics": {"recall_at_k": 1.0 if i % 4 else 0.0, "mrr": 1.0, "faithfulness": 0.8},
                }
                per.update(extra["metrics"])
            per_example[eid] = per
            preds.append(
                {
                    "strategy": sid,
                    "strategy_name": sid,
                    "example_id": eid,
                    "question": questions[i],
                    "reference": references[i],
                    "tags": tags[i],
                    "prediction": text,
                    "latency_s": row["latency"],
                    "batch_seconds": row["latency"] * 8,
                    "batch_size": 8,
                    "new_tokens": row["tokens"],
                    "prompt_tokens": 50,
                    "prompt_truncated": False,
                    **({"extra": extra} if extra else {}),
                }
            )
        cost: dict[str, Any] = {
            "prepare_seconds": 1.0,
            "peak_rss_bytes": int(2.1e9),
            "notes": [f"{sid} notes"],
        }
        if sid == "rag":
            cost.update(index_build_seconds=12.0, index_bytes=int(2.5e6), prepare_seconds=14.0)
        if sid == "qlora":
            cost.update(
                train_seconds=1200.0,
                adapter_bytes=int(9.4e6),
                peak_memory_bytes=int(3.2e9),
                prepare_seconds=1210.0,
                training={
                    "steps": 60,
                    "loss_curve": {
                        "train": [{"step": s, "loss": 3.0 * 0.97**s} for s in range(1, 61, 3)],
                        "validation": [{"step": s, "loss": 2.9 * 0.98**s + 0.4} for s in (15, 30, 45, 60)],
                    },
                },
            )
        # Only what the analysis reads: per-example scores and cost (no all-examples aggregates).
        scores[sid] = {"n": n, "name": sid, "per_example": per_example, "cost": cost}
    (run_dir / "latency.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probe), encoding="utf-8")
    (run_dir / "predictions.jsonl").write_text(
        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds), encoding="utf-8"
    )
    (run_dir / "scores.json").write_text(
        json.dumps(
            {
                "primary_metric": "token_f1",
                "metrics": [
                    "exact_match",
                    "token_f1",
                    "rouge_l",
                    "answer_recall",
                    "semantic_similarity",
                    "coherence",
                    "style_adherence",
                ],
                "strategies": scores,
            }
        ),
        encoding="utf-8",
    )
    manifest = {
        "adaptbench_run": run_dir.name,
        "status": "complete",
        "seed": 0,
        "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:10:00+00:00",
        "data": {"eval_set": "synthetic", "split": "test", "n_examples": n},
        "model": {
            "id": "tiny <model>",
            "dtype": "float32",
            "device": "cpu",
            "quantization": "none",
            "trust_remote_code": False,
            "parameters": 1000,
        },
        "hardware": {"platform": "Linux", "cpu_count": 2, "memory_gb": 24.0, "cuda_available": False},
        "packages": {"adaptbench": "0.1.0"},
        "strategies": {sid: {"name": sid, "status": "done"} for sid in strategies},
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    config = {"name": "synthetic", "eval_set": {"path": "x"}, "strategies": [{"name": s} for s in strategies]}
    if decision is not None:
        config["decision"] = decision
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return run_dir
