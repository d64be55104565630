"""Length-sorted batches for the evaluation pass, with the prediction file kept in example order.

A batched ``generate`` pads every prompt to the longest one in its batch and runs until its last row
finishes, so batches of similar lengths waste less compute. ``batch_order`` sorts a strategy's pending
examples by ``Strategy.length_key`` (stable: ties keep example order); ``restore_order`` then rewrites
``predictions.jsonl`` so the strategy's lines follow example order again, exactly as an unsorted pass
writes them. Predictions are still appended per batch, so a crash loses at most one batch and a
re-run resumes from the (strategy, example) pairs on disk, in whatever order they were written.

Greedy answers do not depend on the batch a prompt lands in (left padding is masked), which
``tests/test_perf.py`` checks on the tiny model; ``SORT_BY_LENGTH = False`` turns sorting off.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.rundir import atomic_write_text

if TYPE_CHECKING:
    from harness.plugin import Strategy

SORT_BY_LENGTH = True


def batch_order(strategy: Strategy, todo: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``todo`` sorted by the strategy's prompt-length key (shortest first), or as is when disabled."""
    if not SORT_BY_LENGTH or len(todo) < 2:
        return todo
    keys = [strategy.length_key(ex) for ex in todo]
    return [todo[i] for i in sorted(range(len(todo)), key=keys.__getitem__)]


def restore_order(path: Path, strategy_id: str, examples: list[dict[str, Any]]) -> None:
    """Put ``strategy_id``'s lines of ``path`` back in ``examples`` order, in the slots they occupy.

    Other strategies' lines and unparseable lines stay where they are; nothing is written when the
    order is already right. Atomic (temp file + rename), so a crash leaves the old or the new file.
    """
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rank = {ex["id"]: i for i, ex in enumerate(examples)}
    slots: list[int] = []
    mine: list[tuple[int, int, str]] = []
    for pos, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("strategy") == strategy_id:
            slots.append(pos)
            mine.append((rank.get(rec.get("example_id"), len(rank)), pos, line))
    ordered = sorted(mine)
    if [pos for _, pos, _ in ordered] == slots:
        return
    for slot, (_, _, line) in zip(slots, ordered, strict=True):
        lines[slot] = line
    atomic_write_text(path, "".join(line + "\n" for line in lines))
