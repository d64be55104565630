"""Per-strategy peak memory: sample this process's resident set size while one strategy runs.

``ru_maxrss`` is the peak over the whole process lifetime, so in a run with several strategies every
strategy after the hungriest one would inherit its peak. A background thread sampling RSS every
``interval`` seconds gives each strategy the peak of its own window instead (short spikes between two
samples can be missed; the base model, loaded once and shared, is included).
"""

from __future__ import annotations

import threading

import psutil


class RssSampler:
    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        try:
            self.peak = max(self.peak, self._proc.memory_info().rss)
        except psutil.Error:  # pragma: no cover - process introspection failure
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> RssSampler:
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self._sample()
        return self.peak

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
