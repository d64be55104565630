"""Graceful Ctrl-C / SIGTERM: finish the batch in flight, keep what is written, then stop.

The runner appends predictions once per batch, so the cheapest safe stopping point is right after an
append. ``graceful_stop()`` installs handlers that only *record* the first SIGINT/SIGTERM; the runner
calls ``checkpoint()`` after each batch (and between strategies) and that raises ``Interrupted`` there.
A second signal restores the default behaviour and interrupts at once (a user who presses Ctrl-C twice
means it); even then nothing is corrupt, because every file is written atomically or appended per batch.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised at a batch boundary after SIGINT/SIGTERM; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, run_dir: Path | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.run_dir = run_dir

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_pending: list[int] = []
_state: dict[str, object] = {"run_dir": None, "immediate": False}


def set_run_dir(run_dir: Path) -> None:
    """Name the run folder being written, so an interrupt can say how to resume it."""
    _state["run_dir"] = run_dir


def run_dir() -> Path | None:
    value = _state["run_dir"]
    return value if isinstance(value, Path) else None


def requested() -> int | None:
    """The signal received since ``graceful_stop`` began, if any."""
    return _pending[0] if _pending else None


def checkpoint(where: Path | None = None) -> None:
    """Raise ``Interrupted`` if a stop was requested; call it only where everything so far is saved."""
    if _pending:
        raise Interrupted(_pending[0], where or run_dir())


def _handler(signum: int, frame: FrameType | None) -> None:
    if _pending or _state["immediate"]:  # second signal, or inside work that has no safe midpoint
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        raise Interrupted(_pending[0] if _pending else signum, run_dir())
    _pending.append(signum)
    name = signal.Signals(signum).name
    import sys

    print(
        f"\n{name} received: finishing the current batch, then stopping (send it again to stop now)",
        file=sys.stderr,
        flush=True,
    )


@contextmanager
def graceful_stop() -> Iterator[None]:
    """Handle SIGINT/SIGTERM as "stop at the next checkpoint" inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in HANDLED}
    _pending.clear()
    for sig in HANDLED:
        signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _pending.clear()
        _state["run_dir"] = None


@contextmanager
def immediate() -> Iterator[None]:
    """Inside the block a signal interrupts at once (training: waiting for the end could take hours,
    and a half-trained adapter is never published, its staging folder is removed on the way out)."""
    checkpoint()
    before = _state["immediate"]
    _state["immediate"] = True
    try:
        yield
    finally:
        _state["immediate"] = before
