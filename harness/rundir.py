"""Run folder I/O: atomic file writes and an append-only predictions log that survives crashes."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.errors import StorageError

_REASONS = {
    errno.ENOSPC: "no space left on the device; free some space",
    errno.EDQUOT: "disk quota exceeded; free some space",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
}

STORAGE_ERRNOS = frozenset(_REASONS)


def storage_error(path: Path, exc: OSError) -> StorageError:
    """One line naming the path and what to do (``--out`` / ``cache_dir`` pick other folders)."""
    why = _REASONS.get(exc.errno or -1, exc.strerror or str(exc))
    return StorageError(
        f"cannot write {path}: {why} (use --out or cache_dir/$ADAPTBENCH_CACHE for another folder); "
        "files already written are intact and a re-run resumes"
    )


def ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(path, exc) from None
    return path


def cache_root(configured: Path | None = None) -> Path:
    """User cache for dequantised models, indexes and adapters (``$ADAPTBENCH_CACHE`` overrides)."""
    root = configured or Path(os.environ.get("ADAPTBENCH_CACHE", Path.home() / ".cache" / "adaptbench"))
    return ensure_dir(root)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via temp file + rename so readers never see a half-written file."""
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise storage_error(path, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise storage_error(path, exc) from None
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

    def _truncate(self, size: int) -> None:
        try:
            with self.path.open("r+b") as fh:
                fh.truncate(size)
        except OSError:
            pass  # a torn last line is also dropped when the log is next opened

    def done(self, strategy: str, example_id: str) -> bool:
        return (strategy, example_id) in self.records

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        records = list(records)
        ensure_dir(self.path.parent)
        text = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            self._truncate(size)  # no torn line left behind: the batch is redone on resume
            raise storage_error(self.path, exc) from None
        for rec in records:
            self.records[(rec["strategy"], rec["example_id"])] = rec

    def for_strategy(self, strategy: str) -> list[dict[str, Any]]:
        return [r for (s, _), r in self.records.items() if s == strategy]


def load_predictions(path: Path) -> list[dict[str, Any]]:
    return list(PredictionLog(path).records.values()) if path.exists() else []
