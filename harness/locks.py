"""Cross-process locks for the shared cache (dequantised model, retrieval indexes, adapters).

Two runs started together on one cache must neither corrupt an entry nor build it twice. Each builder
takes ``build_lock(target)`` (an fcntl lock file next to the entry), then *checks the cache again*:
the second process waits while the first builds, and then finds a cache hit. Lock files are tiny and
left in place (deleting them would race with a waiter); a lock held by a killed process is released by
the kernel, so a SIGKILL never leaves the cache locked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from harness.errors import AdaptbenchError
from harness.rundir import ensure_dir

log = logging.getLogger("adaptbench")

DEFAULT_TIMEOUT_S = 6 * 3600.0  # a long training run on a slow machine; a dead holder frees it at once


def lock_path(target: Path) -> Path:
    """``<cache>/.locks/<kind>-<entry>.lock``: beside the cache, not among its entries."""
    return target.parent.parent / ".locks" / f"{target.parent.name}-{target.name}.lock"


@contextmanager
def build_lock(target: Path, what: str = "cache entry", timeout: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Hold the build lock of ``target`` (a cache folder) for the block; log when another process has it."""
    ensure_dir(lock_path(target).parent)
    lock = FileLock(str(lock_path(target)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another adaptbench process building %s %s", what, target)
        start = time.perf_counter()
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise AdaptbenchError(
                f"{target}: another process has been building this {what} for {timeout:.0f} s; "
                f"if none is running, delete {lock_path(target)}"
            ) from None
        log.info("%s %s: waited %.1f s for the other process", what, target.name, time.perf_counter() - start)
    try:
        yield
    finally:
        lock.release()
