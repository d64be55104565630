"""KV cache layers that grow in place: a decoding step writes its keys and values without copying the cache.

Why: transformers' ``DynamicLayer`` appends every step's keys and values with ``torch.cat``, which copies
the layer's whole cache at every step. In the demo's RAG batches (32 rows x ~580 cached tokens x 30 layers,
bf16) those copies took 26% of a batched pass's operator time, as much as the attention that reads the
same cache (``torch.profiler`` over one batch of 32 RAG prompts, docs/benchmarks.md). Served engines
preallocate instead (vLLM's blocks, llama.cpp's KV buffer; transformers' ``StaticCache`` does too, but
then attends over its whole maximum length at every step). Here a layer keeps ``room`` spare columns after
its keys and values, writes new columns into them and hands out views of the filled part; when the room
runs out it reallocates with room again. Whatever assigns ``keys`` / ``values`` directly (transformers'
row selection and crops, the continuous loop's joins) replaces the buffer, and the next append makes room.

Batches only: for one row (a single request) the copy is small and the buffers' bookkeeping per layer
costs more (30 layers, one step: 0.44 ms buffered vs 0.17 ms copied at 60 cached tokens; at 32 rows 0.57
ms vs 4.95 ms, at 32 rows x 500 tokens 0.57 vs 20.7 ms).

Numbers: the same keys and values in the same layout as ``DynamicLayer``'s, so every attention call sees
the same tensors (``tests/test_kv_buffers.py``). ``ADAPTBENCH_KV_BUFFERS=0`` turns it off.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from harness.backends import switched_on


def enabled_by_env() -> bool:
    """On unless ``ADAPTBENCH_KV_BUFFERS=0`` (an escape hatch and the benchmark's baseline arm)."""
    return switched_on("ADAPTBENCH_KV_BUFFERS")


def _append(buf: torch.Tensor | None, n: int, new: torch.Tensor, room: int) -> torch.Tensor:
    """``buf`` (its first ``n`` columns filled) with ``new`` written after them; a new buffer with ``room``
    spare columns when ``new`` does not fit (or the rows changed)."""
    add = new.shape[-2]
    fits = (
        buf is not None
        and buf.dim() == 4
        and buf.shape[:2] == new.shape[:2]
        and buf.shape[-1] == new.shape[-1]
        and buf.shape[-2] >= n + add
        and buf.dtype == new.dtype
        and buf.device == new.device
    )
    if not fits:
        grown = new.new_empty((*new.shape[:2], n + add + room, new.shape[-1]))
        if n:
            grown[..., :n, :] = buf[..., :n, :]
        buf = grown
    buf[..., n : n + add, :] = new
    return buf


class BufferedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys`` / ``values`` are views of buffers with spare columns."""

    def __init__(self, room: int = 128):
        self.room = room
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._kn = self._vn = 0
        super().__init__()

    @property  # type: ignore[override]
    def keys(self) -> torch.Tensor | None:
        return _filled(self._k, self._kn)

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._k, self._kn = value, _columns(value)

    @property  # type: ignore[override]
    def values(self) -> torch.Tensor | None:
        return _filled(self._v, self._vn)

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._v, self._vn = value, _columns(value)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, add, buf = self._kn, key_states.shape[-2], self._k
        if (  # the common step: the same rows, room left (checked without building views)
            buf is not None
            and buf.dim() == 4
            and n == self._vn
            and buf.shape[0] == key_states.shape[0]
            and buf.shape[-2] >= n + add
            and self._v.shape[-2] >= n + add
        ):
            buf[:, :, n : n + add] = key_states
            self._v[:, :, n : n + add] = value_states
        else:
            self._k = _append(self._k, self._kn, key_states, self.room)
            self._v = _append(self._v, self._vn, value_states, self.room)
        self._kn = self._vn = n + add
        return self._k[:, :, : n + add], self._v[:, :, : n + add]

    def keep_rows(self, index: torch.Tensor, start: int) -> None:
        """Only rows ``index`` stay, from column ``start`` on; the spare columns stay with them."""
        for name in ("_k", "_v"):
            setattr(self, name, getattr(self, name).index_select(0, index)[..., start:, :])
        self._kn -= start
        self._vn -= start


def _columns(t: torch.Tensor | None) -> int:
    return t.shape[-2] if t is not None and t.dim() == 4 else 0


def _filled(buf: torch.Tensor | None, n: int) -> torch.Tensor | None:
    if buf is None or buf.dim() != 4 or buf.shape[-2] == n:
        return buf
    return buf[..., :n, :]


def buffered(cache: Any, room: int) -> Any:
    """``cache`` with its plain dynamic layers replaced by ``BufferedLayer``s holding the same keys and
    values (each followed by ``room`` spare columns); a cache with other layers is returned as it is."""
    layers = getattr(cache, "layers", None)
    if not isinstance(cache, DynamicCache) or not layers or any(type(x) is not DynamicLayer for x in layers):
        return cache
    out = []
    for layer in layers:
        new = BufferedLayer(room)
        if layer.is_initialized:
            new.lazy_initialization(layer.keys, layer.values)
            if _columns(layer.keys):
                new._k = _append(None, 0, layer.keys, room)
                new._v = _append(None, 0, layer.values, room)
                new._kn = new._vn = layer.keys.shape[-2]
        out.append(new)
    cache.layers = out
    return cache


def empty_cache(config: Any, room: int) -> DynamicCache:
    """A new dynamic cache for ``config`` whose plain layers grow in place (``room`` columns at a time)."""
    return buffered(DynamicCache(config=config), room)


def repeated(cache: Any, batch_size: int, room: int) -> Any:
    """A private copy of a stored (batch-1) prefix cache, repeated to ``batch_size`` rows with ``room``
    spare columns after it: one copy, where a deep copy then a repeat made two and the first append a third."""
    layers = getattr(cache, "layers", None)
    if not isinstance(cache, DynamicCache) or not layers or any(type(x) is not DynamicLayer for x in layers):
        return None
    built = []
    for layer in layers:
        new = BufferedLayer(room)
        new.lazy_initialization(layer.keys, layer.values)
        n = layer.keys.shape[-2]
        for name, src in (("_k", layer.keys), ("_v", layer.values)):
            buf = src.new_empty((batch_size, src.shape[1], n + room, src.shape[-1]))
            buf[..., :n, :] = src
            setattr(new, name, buf)
        new._kn = new._vn = n
        built.append(new)
    out = copy.copy(cache)
    out.layers = built
    return out
