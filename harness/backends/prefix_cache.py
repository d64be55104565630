"""Shared-prefix KV caching for the transformers backend (automatic prefix caching, in-process).

Why: on CPU a strategy's generation is dominated by prefill, and most of a few-shot or RAG prompt (system
prompt + fixed demonstrations) is the same for every question. Served engines reuse that prefix's keys and
values (vLLM's automatic prefix caching, llama.cpp's prompt cache); this module does the same for
``TransformersBackend.generate``: the shared prefix is run once (batch 1), remembered in a small LRU, and
every later batch or single request starting with it prefills only its own suffix.

Layout of a cached call: each row is ``prefix + left padding + its own suffix``; ``input_ids`` is the whole
sequence, the attention mask has zeros on the pads in the middle, and the cache holds the prefix (copied
and repeated to the batch size). ``generate`` slices off the cached part, and position ids come from the
attention mask's cumulative sum, so a row's suffix continues right after the prefix as without the cache.

Weights differ per adapter (and while one is merged), so an entry is keyed by the weights in effect as
well as the prefix tokens: a prefix computed with one adapter never serves another.
``ADAPTBENCH_PREFIX_CACHE=0`` turns it off.
"""

from __future__ import annotations

import copy
import inspect
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.backends import switched_on
from harness.backends.likelihood import keeps_logits

MIN_PREFIX_TOKENS = 32  # shorter shared prefixes save too little prefill to pay for the copy
RECENT_SINGLES = 8  # single requests remembered per weights key, to find a shared prefix among them
CAPACITY = 8  # prefixes remembered (a run has a few strategies x adapters; each prefix is a few MB)


def enabled_by_env() -> bool:
    """On unless ``ADAPTBENCH_PREFIX_CACHE=0`` (an escape hatch and the benchmark's baseline arm)."""
    return switched_on("ADAPTBENCH_PREFIX_CACHE")


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class PrefixStats:
    """What the cache did: prefixes computed, calls served from a remembered prefix, prefill tokens saved
    (prefix tokens of every row not recomputed, minus the one batch-1 pass that computed a new prefix)."""

    computed: int = 0
    hits: int = 0
    tokens_saved: int = 0


class PrefixCache:
    """An LRU of prefix KV caches keyed by (weights key, prefix token ids)."""

    def __init__(self, capacity: int = CAPACITY, min_tokens: int = MIN_PREFIX_TOKENS):
        self.capacity = capacity
        self.min_tokens = min_tokens
        self.entries: OrderedDict[tuple[Hashable, tuple[int, ...]], Any] = OrderedDict()
        # The last single requests' tokens per weights key: a batch of one has no common prefix of its own,
        # so it is compared with those (strategies sharing weights interleave in the latency probe).
        self.last_single: OrderedDict[Hashable, tuple[tuple[int, ...], ...]] = OrderedDict()
        self.stats = PrefixStats()
        self.supported = True  # False once a model's cache turns out not to be a plain dynamic cache

    def clear(self) -> None:
        self.entries.clear()
        self.last_single.clear()

    def forget(self, adapter: str) -> None:
        """Drop what was computed with adapter ``adapter`` in effect (its name is about to name new weights);
        the base's and the other adapters' entries stay valid."""
        for key in [k for k in self.entries if adapter in _names(k[0])]:
            del self.entries[key]
        for weights in [w for w in self.last_single if adapter in _names(w)]:
            del self.last_single[weights]

    def known(self, weights: Hashable) -> list[tuple[int, ...]]:
        return [prefix for key, prefix in self.entries if key == weights]

    def choose(self, weights: Hashable, rows: Sequence[Sequence[int]]) -> tuple[int, ...] | None:
        """The prefix to use for ``rows`` under ``weights``, or ``None`` (no cache for this call).

        The batch's longest common prefix (leaving every row at least one token of its own) is the
        candidate. A remembered prefix it starts with is reused unless the candidate is longer by at least
        ``min_tokens`` (worth a new entry). A new prefix is cut back to what it shares with a remembered one
        when that is long enough, so prefixes converge on the part truly shared across batches (the first
        batch's common prefix may run into its questions' shared first words) and single requests hit them.
        A batch of one has no common prefix of its own: it reuses, or generalises, a remembered prefix; when
        none fits, its candidate is the longest part it shares with one of the last (other) single requests
        under the same weights, so a run of single requests (a resumed run's latency probe, ``batch_size:
        1``) caches its shared prompt from the second request on, as a served engine's prefix cache does.
        """
        if not self.supported or not rows:
            return None
        first = rows[0]
        lcp = min(len(r) for r in rows) - 1
        for row in rows[1:]:
            lcp = min(lcp, common_prefix_len(first, row))
        if len(rows) == 1:
            recent = self._recent(weights, first)
            chosen = self._decide(weights, first, lcp, single=True)  # reuse or generalise a known prefix
            if chosen is not None:
                return chosen
            # Nothing known fits: what it shares with another recent prompt (a repeat of the same prompt
            # would make a whole-prompt entry that only that prompt can use).
            row = tuple(first)
            shared = min(lcp, max((common_prefix_len(row, r) for r in recent if r != row), default=0))
            return row[:shared] if shared >= self.min_tokens else None
        return self._decide(weights, first, lcp, single=False)

    def _decide(
        self, weights: Hashable, first: Sequence[int], lcp: int, single: bool
    ) -> tuple[int, ...] | None:
        if lcp < self.min_tokens:
            return None
        known = self.known(weights)
        reusable = [p for p in known if len(p) <= lcp and tuple(first[: len(p)]) == p]
        best = max(reusable, key=len, default=None)
        if best is not None and (single or lcp - len(best) < self.min_tokens):
            return best
        shared = max((common_prefix_len(first[:lcp], p) for p in known), default=0)
        if shared >= self.min_tokens and shared > len(best or ()):
            return tuple(first[:shared])
        if single:
            return best
        return tuple(first[:lcp])

    def get(self, weights: Hashable, prefix: tuple[int, ...]) -> Any | None:
        key = (weights, prefix)
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def put(self, weights: Hashable, prefix: tuple[int, ...], cache: Any) -> None:
        self.entries[(weights, prefix)] = cache
        self.entries.move_to_end((weights, prefix))
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def _recent(self, weights: Hashable, row: Sequence[int]) -> list[tuple[int, ...]]:
        """The last single requests' tokens under ``weights`` (oldest first); ``row`` joins them."""
        recent = self.last_single.pop(weights, ())
        self.last_single[weights] = (*recent[-(RECENT_SINGLES - 1) :], tuple(row))
        while len(self.last_single) > self.capacity:
            self.last_single.popitem(last=False)
        return list(recent)


def _names(weights: Hashable) -> tuple[Any, ...]:
    """The adapter names in a weights key (``(adapter, merged adapter)``)."""
    return weights if isinstance(weights, tuple) else (weights,)


def compute_prefix_kv(model: Any, prefix: Sequence[int], device: Any) -> Any | None:
    """The KV cache of ``prefix`` (one forward pass, batch 1), or ``None`` when the model's cache is not a
    plain dynamic cache (sliding-window or linear-attention layers keep a cropped or folded state that
    cannot be continued from the middle of a padded batch)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)
    kwargs: dict[str, Any] = {}
    if keeps_logits(model):  # looked up through a peft wrapper
        kwargs["logits_to_keep"] = 1  # only the keys and values are wanted, not a vocabulary row per token
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **kwargs)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    layers = getattr(cache, "layers", None)
    if not isinstance(cache, DynamicCache) or not layers or any(type(x) is not DynamicLayer for x in layers):
        return None
    return cache


def expand(cache: Any, batch_size: int) -> Any:
    """A private copy of a stored prefix cache, repeated to ``batch_size`` rows (``generate`` grows it)."""
    out = copy.deepcopy(cache)
    if batch_size > 1:
        out.batch_repeat_interleave(batch_size)
    return out


def layout(
    prefix_len: int, rows: Sequence[Sequence[int]], pad_id: int, device: Any
) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` for rows that all start with a ``prefix_len``-token prefix:
    prefix, then left padding (mask 0), then each row's own suffix."""
    width = max(len(r) for r in rows) - prefix_len
    ids, mask = [], []
    for row in rows:
        pad = width - (len(row) - prefix_len)
        ids.append(list(row[:prefix_len]) + [pad_id] * pad + list(row[prefix_len:]))
        mask.append([1] * prefix_len + [0] * pad + [1] * (len(row) - prefix_len))
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long, device=device),
        "attention_mask": torch.tensor(mask, dtype=torch.long, device=device),
    }


def cache_kwarg() -> str:
    """``generate``'s name for a ready cache: ``cache`` in transformers 5.x, ``past_key_values`` before."""
    from transformers.generation.utils import GenerationMixin

    params = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"
