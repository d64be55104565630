"""Wall time and peak RSS per phase of a run (load, index, train, generate, score, report, ...).

``with phase("score"):`` adds the block's seconds to that phase's total (a phase entered twice, e.g.
``generate`` once per strategy, accumulates) and keeps the highest resident set size seen inside it.
Phases may nest (``train`` runs inside a strategy's ``prepare``): nested ones are recorded as well, so
the totals of nested phases overlap their parent's. The runner resets the log at the start of a run and
writes ``totals()`` into ``manifest["phases"]``; ``bench/bench_demo.py`` and ``bench/bench_memory.py``
print it. Cheap: a perf_counter pair and an RSS sampler thread (every 50 ms) per block.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil

from harness.memory import RssSampler, heap_in_use_bytes

_TOTALS: dict[str, dict[str, Any]] = {}


def reset() -> None:
    """Forget the phases recorded so far (one log per run)."""
    _TOTALS.clear()


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as phase ``name`` (and sample its peak RSS)."""
    sampler = RssSampler(interval=0.05).start()
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        peak = sampler.stop()
        entry = _TOTALS.setdefault(name, {"seconds": 0.0, "calls": 0, "peak_rss_bytes": 0})
        entry["seconds"] = round(entry["seconds"] + seconds, 3)
        entry["calls"] += 1
        entry["peak_rss_bytes"] = max(entry["peak_rss_bytes"], int(peak))
        entry["end_rss_bytes"] = int(psutil.Process().memory_info().rss)  # what the phase left behind
        held = heap_in_use_bytes()  # of which malloc'd and still held (glibc); the rest is free or mapped
        if held is not None:
            entry["end_heap_in_use_bytes"] = held


def totals() -> dict[str, dict[str, Any]]:
    """``{phase: {"seconds", "calls", "peak_rss_bytes", "end_rss_bytes"[, "end_heap_in_use_bytes"]}}`` in the
    order phases were first finished."""
    return {name: dict(entry) for name, entry in _TOTALS.items()}
