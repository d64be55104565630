"""Edit synthetic run folders (tests/support/synthetic_run.py) to plant effects for the gate tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def set_scores(
    run_dir: Path, sid: str, metric: str, fn: Callable[[int, str, float | None], float | None]
) -> None:
    """Replace ``metric`` of strategy ``sid``: ``fn(index, example_id, old_value) -> new value``."""
    path = Path(run_dir) / "scores.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    per = data["strategies"][sid]["per_example"]
    for i, eid in enumerate(sorted(per)):
        per[eid][metric] = fn(i, eid, per[eid].get(metric))
    path.write_text(json.dumps(data), encoding="utf-8")


def set_clusters(run_dir: Path, key: Callable[[int, str], str | None], field: str = "context_ids") -> None:
    """Give every prediction record a cluster: ``context_ids = [key]`` or ``group = key``."""
    path = Path(run_dir) / "predictions.jsonl"
    recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    order = {e: i for i, e in enumerate(sorted({r["example_id"] for r in recs}))}
    for r in recs:
        k = key(order[r["example_id"]], r["example_id"])
        r[field] = [k] if field == "context_ids" else k
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")


def set_manifest(run_dir: Path, **data: str) -> None:
    """Update ``manifest.json``'s ``data`` section (e.g. ``content_hash``)."""
    path = Path(run_dir) / "manifest.json"
    m = json.loads(path.read_text(encoding="utf-8"))
    m.setdefault("data", {}).update(data)
    path.write_text(json.dumps(m), encoding="utf-8")


def set_answers(run_dir: Path, sid: str, fn: Callable[[int, str, str], str]) -> None:
    path = Path(run_dir) / "predictions.jsonl"
    recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, r in enumerate(recs):
        if r["strategy"] == sid:
            r["prediction"] = fn(i, r["example_id"], r["prediction"])
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
