"""Attention of unmasked decoding steps on CPU: the query heads of each key/value head packed as rows.

Why: in a decoding step without a mask (a single request, or a batch whose rows need no padding)
transformers' ``sdpa`` attention asks PyTorch for grouped-query attention (``enable_gqa``), and the CPU
flash kernel runs that several times slower than the same attention with the query heads that share a
key/value head packed as its query rows, which is what transformers itself does when a mask is present
(``pack_gqa``). Measured on the default model's shapes (9 query heads over 3 key/value heads, head size
64, bf16; 2-core Zen 4 EPYC), one layer: 1 row x 560 cached tokens 0.45 -> 0.09 ms, 16 x 560 6.23 ->
1.11 ms, 1 x 60 0.060 -> 0.025 ms; fp16 0.52x at 1 x 560; fp32 not (1.08-1.14x: there the grouped-query
call is the fast one, so fp32 steps are left alone). In the model, decoding steps interleaved in one
process: 1 row over a 560-token RAG prompt 48.8 -> 38.3 ms per token (0.79x), 16 unpadded rows over 300
tokens 184 -> 83 ms (0.45x). Steps with a mask (padded batches) already take the packed path and are
left to transformers.

Numbers: the same flash kernel on the same keys and values, grouped as a masked step already groups them;
not bit-identical to the ``enable_gqa`` call, so a single request's greedy answer may flip at a near-tie.

Where: only unmasked bf16/fp16 decoding steps (``q_len == 1``) of a model on CPU whose attention is
``sdpa``, with grouped-query heads and no attention bias, soft-capping, sinks or dropout; every other call
(prefills, masked steps, likelihood passes, training) goes to transformers' ``sdpa`` function unchanged.
Installed through transformers' ``AttentionInterface`` (a registered implementation with the same mask
function as ``sdpa``), so it works for every model that follows that interface.
``ADAPTBENCH_DECODE_ATTENTION=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from harness.backends import shared_prefix, switched_on

log = logging.getLogger(__name__)

NAME = "adaptbench_sdpa"  # contains "sdpa": transformers checks the model supports sdpa before switching
# Where the grouped-query kernel is the slow one: in fp32 it is not (packing measured 1.08-1.14x its time).
DTYPES = (torch.bfloat16, torch.float16)


def enabled_by_env() -> bool:
    return switched_on("ADAPTBENCH_DECODE_ATTENTION")


def decode_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None = None
) -> torch.Tensor:
    """One query token per row and no mask, grouped-query: the query heads that share a key/value head
    become that head's query rows (transformers' ``pack_gqa``), so the kernel reads each cached key once.

    ``query`` ``[batch, q_heads, 1, dim]``; ``key``/``value`` ``[batch, kv_heads, length, dim]``.
    Returns ``[batch, 1, q_heads, dim]`` (the layout transformers' attention functions return)."""
    batch, q_heads, _, dim = query.shape
    kv_heads = key.shape[1]
    packed = query.reshape(batch, kv_heads, q_heads // kv_heads, dim)
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, scale=scaling)
    return out.reshape(batch, q_heads, 1, value.shape[-1]).transpose(1, 2).contiguous()


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: calls over a shared prefix (shared_prefix.py) and unmasked
    decoding steps here, every other call to ``sdpa``."""
    prefix = getattr(key, shared_prefix.ATTR, None)
    if prefix is not None:
        unsupported = dropout or any(kwargs.get(k) is not None for k in ("position_bias", "softcap", "s_aux"))
        if unsupported or kwargs.get("output_attentions", False) or query.shape[1] % key.shape[1]:
            raise RuntimeError("shared-prefix attention: this layer's attention options are not supported")
        return shared_prefix.attention(query, key, value, prefix, attention_mask, scaling), None
    if (
        query.shape[2] == 1
        and attention_mask is None
        and query.device.type == "cpu"
        and query.dtype in DTYPES
        and query.shape[1] > key.shape[1]
        and not dropout
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
        and kwargs.get("s_aux") is None
        and not kwargs.get("output_attentions", False)
        and query.shape[1] % key.shape[1] == 0
    ):
        return decode_attention(query, key, value, scaling), None
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks sdpa gets, built the same way


def install(model: Any) -> bool:
    """Switch ``model`` (bf16/fp16 on CPU, attention ``sdpa``) to this attention; False where it does not
    apply (another attention implementation chosen, not on CPU, fp32, off by environment) or cannot be set,
    so the manifest's ``decode_attention`` is true only where steps can take it."""
    config = getattr(model, "config", None)
    if (
        not enabled_by_env()
        or not isinstance(model, torch.nn.Module)
        or getattr(config, "_attn_implementation", None) != "sdpa"
        or next(model.parameters()).device.type != "cpu"
        or getattr(model, "dtype", None) not in DTYPES
        or not hasattr(model, "set_attn_implementation")
    ):
        return False
    try:
        _register()
        model.set_attn_implementation(NAME)
    except (ImportError, ValueError, AttributeError) as exc:  # an older transformers, or a model it refuses
        log.info("decoding-step attention not installed: %s", exc)
        return False
    return installed(model)


def installed(model: Any) -> bool:
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == NAME


@contextlib.contextmanager
def suspended(model: Any) -> Iterator[None]:
    """transformers' own ``sdpa`` inside, for every call (benchmarks comparing both; a no-op where this
    attention is not installed)."""
    was = installed(model)
    if was:
        model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        if was:
            model.set_attn_implementation(NAME)
