"""Shared-prefix (cascade) attention for continuous batches on CPU: a prompt prefix that every row of a batch
shares is kept once and attended once, not copied into every row and read once per row.

Why: the prefix cache (prefix_cache.py) computes a batch's shared prefix (system prompt + demonstrations)
once, but its keys and values were then repeated into every row, and every decoding step read each row's
copy. In the demo's RAG batches (32 rows, a 440-token prefix of ~580 cached tokens) one layer's masked
attention took 2.20 ms a step, 66 ms of a ~150 ms step over 30 layers; the same attention as one batch-1
call over the prefix for all rows' queries plus a per-row call over the rows' own columns took 0.87 ms
(2-core Zen 4, bf16; docs/benchmarks.md). Served engines do the same for shared prefixes (FlashInfer's
cascade attention, vLLM's cascade attention for a common prefix).

How: ``SharedPrefixLayer`` (a ``kv_buffers.BufferedLayer``) holds the prefix's keys and values once
(``[1, kv_heads, P, dim]``) and each row's own columns (its left padding, suffix and new tokens) in growing
buffers. It reports ``P`` + its own columns as its length, so the masks and positions transformers builds
are those of the repeated layout. ``update`` returns the rows' own keys and values, tagged with the
prefix; the attention function (decode_attention.attention_forward) sends tagged calls to ``attention``
here: every row's queries attend to the prefix in one call (grouped by key/value head), each row's
queries to its own columns under the mask's own columns, and the two partial results are merged by their
log-sum-exp. Mathematically the same attention; in bf16 the two partial outputs are rounded before the
merge, so a greedy answer may flip at a near-tie (``tests/test_shared_prefix.py`` checks equality in
float64). Only where the model's attention is ``decode_attention``'s (bf16/fp16 on CPU, sdpa), for
continuous batches of at least ``MIN_ROWS`` rows over a prefix of at least ``MIN_PREFIX_TOKENS`` tokens (shorter
ones cost more than they save); ``ADAPTBENCH_SHARED_PREFIX=0`` turns it off.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.backends import switched_on
from harness.backends.kv_buffers import BufferedLayer

ATTR = "_adaptbench_shared_prefix"  # set on the key tensor a SharedPrefixLayer hands to the attention


# Below these the per-layer overhead of two attention calls and the merge costs more than reading the
# repeated prefix: the demo's zero-shot batches (a 41-token prefix, 32 rows) ran 1.11x slower with it,
# its few-shot (278 tokens) 0.90x and RAG (440) 0.85x the time (bench_generation.py --arms shared).
MIN_PREFIX_TOKENS = 128
MIN_ROWS = 4

_last_mask: list[Any] = [None, None]  # (attention mask, its own-column parts): one mask serves every layer


def enabled_by_env() -> bool:
    return switched_on("ADAPTBENCH_SHARED_PREFIX")


def worth_sharing(prefix_len: int, rows: int) -> bool:
    """Whether a batch of ``rows`` rows over a ``prefix_len``-token prefix gains from sharing it."""
    return prefix_len >= MIN_PREFIX_TOKENS and rows >= MIN_ROWS


class SharedPrefixLayer(BufferedLayer):
    """A cache layer of ``rows`` rows that share one prefix: the prefix once, each row's own columns after."""

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor, rows: int, room: int):
        super().__init__(room)
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values
        self.lazy_initialization(prefix_keys, prefix_values)
        heads, dim = prefix_keys.shape[1], prefix_keys.shape[-1]
        self._k = prefix_keys.new_empty((rows, heads, room, dim))
        self._v = prefix_values.new_empty((rows, heads, room, prefix_values.shape[-1]))
        self._kn = self._vn = 0

    @property
    def prefix_len(self) -> int:
        return self.prefix_keys.shape[-2]

    def get_seq_length(self) -> int:
        return self.prefix_len + self._kn

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        setattr(keys, ATTR, (self.prefix_keys, self.prefix_values))
        return keys, values

    def keep_rows(self, index: torch.Tensor, start: int) -> None:
        if start:  # every row attends to every prefix column, so no leading column is ever unused
            raise RuntimeError(f"shared prefix: cannot cut {start} leading columns every row attends to")
        super().keep_rows(index, 0)

    def expanded(self) -> BufferedLayer:
        """The same keys and values as a plain layer: the prefix repeated into every row."""
        plain = BufferedLayer(self.room)
        plain.lazy_initialization(self.prefix_keys, self.prefix_values)
        rows = self._k.shape[0]
        plain.keys = torch.cat([self.prefix_keys.expand(rows, -1, -1, -1), self.keys], dim=-2)
        plain.values = torch.cat([self.prefix_values.expand(rows, -1, -1, -1), self.values], dim=-2)
        return plain


def shared_cache(prefix_cache: Any, rows: int, room: int) -> Any | None:
    """A cache for ``rows`` rows continuing from a stored (batch-1) prefix cache, the prefix shared;
    ``None`` where the stored cache is not made of plain dynamic layers."""
    import copy

    from transformers.cache_utils import DynamicLayer

    layers = getattr(prefix_cache, "layers", None)
    if not layers or any(type(x) is not DynamicLayer for x in layers):
        return None
    out = copy.copy(prefix_cache)
    out.layers = [SharedPrefixLayer(x.keys, x.values, rows, room) for x in layers]
    return out


def expand_layers(cache: Any) -> None:
    """Replace ``cache``'s shared-prefix layers by plain ones holding the same keys and values (in place),
    before code that edits keys and values column-wise (joining two batches)."""
    if cache is not None:
        cache.layers = [x.expanded() if isinstance(x, SharedPrefixLayer) else x for x in cache.layers]


def _own_mask(mask: torch.Tensor | None, prefix_len: int, q_len: int, own: int) -> torch.Tensor:
    """The boolean mask ``[batch or 1, 1, q_len, own]`` of the rows' own columns (True: attend)."""
    if mask is None:  # no padding: causal within the own columns, whose last q_len are the queries
        return torch.ones(q_len, own, dtype=torch.bool).tril(own - q_len)[None, None]
    if mask.shape[-1] != prefix_len + own:
        raise RuntimeError(f"shared prefix: mask of {mask.shape[-1]} columns for {prefix_len} + {own}")
    part = mask[..., prefix_len:]
    return part if part.dtype == torch.bool else part > torch.finfo(part.dtype).min / 2


def _own_parts(
    mask: torch.Tensor | None,
    prefix_len: int,
    batch: int,
    group: int,
    q_len: int,
    own: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The additive mask of the rows' own columns for the packed query rows, and which query rows have no
    own column allowed; computed once per forward pass (every layer gets the same mask tensor)."""
    key = (mask, prefix_len, batch, group, q_len, own, dtype)
    if (
        _last_mask[0] is not None
        and len(_last_mask[0]) == len(key)
        and all(
            a is b if isinstance(a, torch.Tensor) or a is None else a == b
            for a, b in zip(_last_mask[0], key, strict=True)
        )
    ):
        return _last_mask[1]
    allowed = _own_mask(mask, prefix_len, q_len, own)
    allowed = allowed.expand(batch, 1, q_len, own).repeat(1, 1, group, 1)
    additive = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, float("-inf"))
    parts = (additive, ~allowed.any(-1))
    _last_mask[:] = [key, parts]
    return parts


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    prefix: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """Attention of ``query`` ``[batch, q_heads, q_len, dim]`` over the shared prefix and each row's own
    ``key`` / ``value`` ``[batch, kv_heads, own, dim]``; returns ``[batch, q_len, q_heads, dim]``."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    prefix_k, prefix_v = prefix
    batch, q_heads, q_len, dim = query.shape
    kv_heads, own = key.shape[1], key.shape[-2]
    group = q_heads // kv_heads
    # A row's query heads that share a key/value head become that head's query rows (group-major).
    packed = query.reshape(batch, kv_heads, group * q_len, dim)
    # 1. The prefix, once for every row: all rows' query rows in one batch-1 call.
    rows_first = packed.transpose(0, 1).reshape(1, kv_heads, batch * group * q_len, dim)
    out_p, lse_p = flash(rows_first, prefix_k, prefix_v, scale=scaling)
    out_p = out_p.reshape(kv_heads, batch, group * q_len, -1).transpose(0, 1)
    lse_p = lse_p.reshape(kv_heads, batch, group * q_len).transpose(0, 1)
    # 2. Each row's own columns under the mask's own columns (repeated for each query head of a group).
    additive, dead = _own_parts(attention_mask, prefix_k.shape[-2], batch, group, q_len, own, query.dtype)
    out_o, lse_o = flash(packed, key, value, attn_mask=additive, scale=scaling)
    # A query row with none of its own columns allowed (a padding position) has only the prefix part.
    lse_o = lse_o.masked_fill(dead, float("-inf"))
    # 3. Merge by log-sum-exp, in fp32 at least (the kernel's log-sum-exp of bf16 inputs is fp32).
    acc = torch.promote_types(query.dtype, torch.float32)
    lse_p, lse_o = lse_p.to(acc), lse_o.to(acc)
    top = torch.maximum(lse_p, lse_o)
    w_p, w_o = torch.exp(lse_p - top)[..., None], torch.exp(lse_o - top)[..., None]
    merged = (out_p.to(acc) * w_p + out_o.to(acc) * w_o) / (w_p + w_o)
    merged = merged.to(query.dtype).reshape(batch, q_heads, q_len, -1)
    return merged.transpose(1, 2).contiguous()
