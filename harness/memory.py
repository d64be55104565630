"""Peak memory of a block of work: CUDA max allocated on a GPU, the sampled resident set size otherwise.

``ru_maxrss`` is the peak over the whole process lifetime, so in a run with several strategies every
strategy after the hungriest one would inherit its peak. A background thread sampling RSS every
``interval`` seconds gives each block the peak of its own window instead (short spikes between two
samples can be missed; the base model, loaded once and shared, is included).
"""

from __future__ import annotations

import threading

import psutil


class PeakMemory:
    """``with PeakMemory(device) as mem: ...`` then ``mem.peak`` (bytes) and ``mem.kind``.

    ``start()`` / ``stop()`` (returns the peak) do the same without a ``with`` block.
    """

    def __init__(self, device: str = "cpu", interval: float = 0.02):
        self.device = device
        self.interval = interval
        self.peak = 0
        self.start_rss = 0
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device == "cuda" else "process_rss"

    def _rss(self) -> int:
        try:
            return self._proc.memory_info().rss
        except psutil.Error:  # pragma: no cover - process introspection failure
            return 0

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def start(self) -> PeakMemory:
        self.start_rss = self._rss()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = self.start_rss
            self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> int:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=1.0)
            self.peak = max(self.peak, self._rss())
        return self.peak

    def __enter__(self) -> PeakMemory:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RssSampler(PeakMemory):
    """The process RSS peak of a block, whatever the device (the runner's per-strategy window)."""

    def __init__(self, interval: float = 0.02):
        super().__init__("cpu", interval)
