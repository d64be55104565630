"""The tiny-model run whose metric numbers are pinned in ``tests/fixtures/parity/golden_scores.json``.

It exercises every shipped metric (model-based ones included) over prompt, few-shot and RAG answers,
so a refactor of scoring, backends or strategies that changes any number is caught.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

FIXTURES = Path(__file__).parent / "fixtures"
TOY_SET = FIXTURES / "toy_set"


def _corpus() -> list[str]:
    texts = [p.read_text(encoding="utf-8") for p in sorted(TOY_SET.rglob("*.md"))]
    texts += [p.read_text(encoding="utf-8") for p in sorted(TOY_SET.glob("*.jsonl"))]
    return texts


def run_parity(tmp: Path, model_dir: Path | None = None) -> dict[str, Any]:
    """Build the tiny model (unless given), run three strategies with every metric; return scores.json."""
    from click.testing import CliRunner

    from harness.cli import main
    from tests.support.tiny_model import build_tiny_model

    model_dir = model_dir or build_tiny_model(tmp / "tiny-model", corpus=_corpus())
    config = {
        # fp32 whatever the CPU: the golden numbers are fp32 sums (dtype auto is bf16 on CPUs with native bf16)
        "model": {"id": str(model_dir), "dtype": "float32"},
        "eval_set": {"path": str(TOY_SET)},
        "strategies": [
            {"name": "prompt", "id": "zero"},
            {"name": "prompt", "id": "few", "shots": 2},
            {"name": "rag", "id": "rag", "top_k": 2},
        ],
        "generation": {"max_new_tokens": 8, "batch_size": 4},
        "latency_probe": {"requests": 0},
        "metrics": [
            "exact_match",
            "token_f1",
            "rouge_l",
            "answer_recall",
            "semantic_similarity",
            "coherence",
            "style_adherence",
            "faithfulness",
            "fact_recall",
            "fact_accuracy",
            "recall_at_k",
            "mrr",
        ],
        "output_dir": str(tmp / "reports"),
        "cache_dir": str(tmp / "cache"),
    }
    path = tmp / "parity.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    out = tmp / "run"
    with scripted_answers():
        res = CliRunner().invoke(main, ["run", str(path), "--out", str(out), "--no-progress"])
    if res.exit_code != 0:
        raise RuntimeError(res.output)
    return json.loads((out / "scores.json").read_text(encoding="utf-8"))


ANSWERS = json.loads((FIXTURES / "parity" / "answers.json").read_text(encoding="utf-8"))


def scripted_text(prompt: list[dict[str, str]]) -> str:
    """A realistic answer for the question in ``prompt``; the variant depends on the whole prompt, so
    different strategies give different (but reproducible) answers."""
    last = prompt[-1]["content"]
    question = next((q for q in ANSWERS if q in last), None)
    if question is None:
        return ""
    variants = ANSWERS[question]
    digest = hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).digest()
    return variants[digest[0] % len(variants)]


@contextlib.contextmanager
def scripted_answers():
    """Replace the model's decoding (not prompting, retrieval or scoring) by scripted answers: a random
    tiny model answers nothing useful, and the metrics must see realistic text."""
    from harness.backends.base import Generation
    from harness.backends.hf import TransformersBackend

    real = TransformersBackend.generate

    def generate(self, prompts, params, adapter=None):
        batch = real(self, prompts, params, adapter=adapter)
        batch.generations = [
            Generation(scripted_text(p), g.prompt_tokens, g.new_tokens, g.prompt_truncated)
            for p, g in zip(prompts, batch.generations, strict=True)
        ]
        return batch

    TransformersBackend.generate = generate
    try:
        yield
    finally:
        TransformersBackend.generate = real


def parity_numbers(scores: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """strategy -> example id -> metric -> value: every per-example metric number (no timings)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for sid, entry in scores["strategies"].items():
        out[sid] = {
            eid: {k: v for k, v in row.items() if isinstance(v, (int, float)) or v is None}
            for eid, row in entry["per_example"].items()
        }
    return out
