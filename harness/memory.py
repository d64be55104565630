"""Peak memory of a block of work (a strategy's prepare + predict, a training run).

``PeakMemory(device)`` reports CUDA max-allocated bytes on CUDA and sampled RSS otherwise; ``RssSampler``
is its RSS part. Per-strategy peak memory: sample this process's resident set size while one strategy runs.

``ru_maxrss`` is the peak over the whole process lifetime, so in a run with several strategies every
strategy after the hungriest one would inherit its peak. A background thread sampling RSS every
``interval`` seconds gives each strategy the peak of its own window instead (short spikes between two
samples can be missed; the base model, loaded once and shared, is included).
"""

from __future__ import annotations

import contextlib
import ctypes
import resource
import sys
import threading
from collections.abc import Iterator
from typing import Any

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


def process_peak_rss_bytes() -> int:
    """Peak resident set size over the whole process lifetime (``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()


class PeakMemory:
    """Peak memory of a block: CUDA max-allocated bytes on CUDA, else the sampled process RSS.

    ``PeakMemory(device)`` with ``device`` "cuda", "cpu" or "auto" (CUDA when available). Use as a context
    manager or ``start()`` / ``stop() -> peak``. RSS is sampled in both cases (``rss_peak``); ``cuda_peak``
    is ``None`` off CUDA; ``peak`` is the figure of ``kind`` ("cuda_max_allocated" or "process_rss").
    """

    def __init__(self, device: str = "auto", interval: float = 0.02):
        self.device = ("cuda" if _cuda_available() else "cpu") if device == "auto" else device
        self.start_rss = 0
        self.rss_peak = 0
        self.cuda_peak: int | None = None
        self.peak = 0
        self._rss = RssSampler(interval)

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device == "cuda" else "process_rss"

    def start(self) -> PeakMemory:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._rss.start()
        self.start_rss = self._rss.peak
        return self

    def stop(self) -> int:
        self.rss_peak = self._rss.stop()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.cuda_peak = int(torch.cuda.max_memory_allocated())
        self.peak = self.cuda_peak if self.cuda_peak is not None else self.rss_peak
        return self.peak

    def __enter__(self) -> PeakMemory:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# glibc's mallopt parameter numbers (malloc.h).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 << 20
HEAP_REUSE_THRESHOLD_BYTES = 32 << 20  # glibc's own ceiling for its dynamic threshold (64-bit)


def return_freed_memory_to_os() -> bool:
    """Serve every allocation of 4 MiB or more with its own ``mmap`` (glibc only), so freed tensors go back
    to the OS instead of fragmenting the heap.

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which activation
    tensors of a few MiB come from the heap and their pages stay resident. The demo's qlora training step
    peaked at 4.5 GB RSS with glibc's default, 3.35 GB with a fixed 4 MiB threshold at the same speed, and
    2.4 GB with 1 MiB but 1.6x slower (fresh pages are zeroed on every mmap): ``bench/bench_memory.py``.
    Off with ``ADAPTBENCH_MALLOC=0``; an explicit ``MALLOC_MMAP_THRESHOLD_`` in the environment wins.
    Returns whether it was applied.
    """
    import os

    if os.environ.get("ADAPTBENCH_MALLOC", "1") == "0" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return _mallopt_threshold(MMAP_THRESHOLD_BYTES)


def _glibc_function(name: str) -> Any | None:
    """glibc's function ``name`` through ctypes, or ``None`` off Linux or on a libc without it (musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def _glibc(call: str, *args: int) -> bool:
    """Call a glibc malloc tuning function; False where there is none (``_glibc_function``)."""
    fn = _glibc_function(call)
    return bool(fn(*args)) if fn is not None else False


def _mallopt_threshold(value: int) -> bool:
    """Set glibc's mmap threshold."""
    return _glibc("mallopt", _M_MMAP_THRESHOLD, value)


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (malloc.h, glibc >= 2.33)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def heap_in_use_bytes() -> int | None:
    """Bytes malloc has handed out and not taken back (heap blocks plus mmapped ones), or ``None`` off
    glibc >= 2.33.

    Beside the resident set, this tells memory someone still holds from memory the allocator keeps free:
    the seventh session found ~420 MiB in use after adapter training that no tensor held (ideep's cache of
    matmul computations, see ``cap_onednn_primitive_cache``). The phase log records it at every phase end.
    """
    fn = _glibc_function("mallinfo2")
    if fn is None:
        return None
    fn.restype = _MallInfo2
    info = fn()
    return int(info.uordblks + info.hblkhd)


def release_free_heap() -> bool:
    """Hand the free pages inside glibc's heap back to the OS (``malloc_trim(0)``); True if any were.

    Batched generation leaves freed KV-cache and activation blocks in the heap (185 MiB after a few-shot and
    a RAG pass over 48 demo questions), and so does training. Measured in the demo: the resident set before
    rag_qlora trains fell from 2.19 to 1.44 GB and after training to 1.5 GB; the process peak did not move
    (3.4-3.5 GB), since a training step grows back into the same room. It keeps the time between phases
    lighter on a shared machine.
    """
    return _glibc("malloc_trim", 0)


ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
ONEDNN_CACHE_ENVS = (ONEDNN_CACHE_ENV, "DNNL_PRIMITIVE_CACHE_CAPACITY")  # oneDNN reads either spelling
IDEEP_CACHE_ENV = "LRU_CACHE_CAPACITY"  # ideep's cache of matmul computations (pytorch/pytorch#27971)
ONEDNN_CACHE_CAPACITY = 32


def cap_onednn_primitive_cache(capacity: int = ONEDNN_CACHE_CAPACITY) -> bool:
    """Keep at most ``capacity`` shapes in each of the two caches PyTorch's CPU bf16 ``linear`` fills
    (both default to 1024); True if this call set either.

    On CPUs with native bf16, PyTorch runs bf16 ``linear`` through ideep/oneDNN, which builds one
    computation per input shape and keeps it twice: oneDNN's primitive cache
    (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``) and ideep's own LRU of matmul computations
    (``LRU_CACHE_CAPACITY``, which PyTorch exposes for this leak-like growth: pytorch/pytorch#27971).
    Every prefill of a new prompt length, and every training step's forward and backward, is a new shape.
    150 new shapes of the default model's four projection sizes, forward and backward, kept 614 MiB
    resident with both defaults, 317 MiB with only oneDNN's capped at 128 (this function until the seventh
    session) and 14 MiB with both at 32 (after ``malloc_trim``; ``tests/test_onednn_cache.py``). In the
    bf16 demo that memory sat under adapter training and scoring (docs/benchmarks.md). The shapes that
    repeat, a decoding step's and a training step's own layers, are far fewer than 32, so they stay cached:
    the evaluation pass ran at the same speed.
    Both libraries read their variable when they first build a computation: call this before the model's
    first bf16 matmul (``load_model`` does). A value already in the environment (either spelling) wins.
    """
    import os

    applied = False
    if not any(name in os.environ for name in ONEDNN_CACHE_ENVS):
        os.environ[ONEDNN_CACHE_ENV] = str(capacity)
        applied = True
    if IDEEP_CACHE_ENV not in os.environ:
        os.environ[IDEEP_CACHE_ENV] = str(capacity)
        applied = True
    return applied


@contextlib.contextmanager
def freed_memory_returned() -> Iterator[bool]:
    """Within the block (adapter training), allocations of 4 MiB or more are mmapped and returned on free;
    afterwards the threshold goes to glibc's 32 MiB ceiling, so generation reuses heap blocks again. The
    heap's free pages are handed back before and after (``release_free_heap``).

    Only around training: the same fixed threshold made batched RAG generation 2x slower (its growing
    KV-cache tensors exceed 4 MiB and were mapped and zeroed afresh every decoding step), while training
    keeps its speed and sheds a quarter of its peak RSS. Yields whether the threshold was set.
    """
    release_free_heap()  # what generation left free in the heap, before training adds its peak
    applied = return_freed_memory_to_os()
    try:
        yield applied
    finally:
        if applied:
            _mallopt_threshold(HEAP_REUSE_THRESHOLD_BYTES)
        release_free_heap()  # what training left free, before generation resumes
