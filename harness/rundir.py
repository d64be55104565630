"""Run folder I/O: atomic file writes and an append-only predictions log that survives crashes."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def cache_root(configured: Path | None = None) -> Path:
    """User cache for dequantised models, indexes and adapters (``$ADAPTBENCH_CACHE`` overrides)."""
    root = configured or Path(os.environ.get("ADAPTBENCH_CACHE", Path.home() / ".cache" / "adaptbench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def atomic_write_text(path: Path, text: str) -> None:
    """Write via temp file + rename so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


class PredictionLog:
    """``predictions.jsonl``: one line per (strategy, example), appended and fsynced per batch.

    On open, existing complete lines are loaded so a re-run skips finished work; a torn last line
    (crash mid-write) is dropped and rewritten.
    """

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        if path.exists():
            good: list[str] = []
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.records[(rec["strategy"], rec["example_id"])] = rec
                good.append(line)
            atomic_write_text(path, "".join(g + "\n" for g in good))

    def done(self, strategy: str, example_id: str) -> bool:
        return (strategy, example_id) in self.records

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        records = list(records)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        for rec in records:
            self.records[(rec["strategy"], rec["example_id"])] = rec

    def for_strategy(self, strategy: str) -> list[dict[str, Any]]:
        return [r for (s, _), r in self.records.items() if s == strategy]


def load_predictions(path: Path) -> list[dict[str, Any]]:
    return list(PredictionLog(path).records.values()) if path.exists() else []
