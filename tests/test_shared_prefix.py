"""Shared-prefix (cascade) attention (harness/backends/shared_prefix.py): attention over a prefix kept once
plus each row's own columns equals attention over the prefix repeated into every row (float64: masks with
padding, padding queries with none of their own columns, grouped-query heads, prefill and decoding
steps); continuous batches of the float64 tiny model get the same tokens with it on and off, and the
tokens of single requests, with the prefix held once while they decode; rows joining a running batch
take the plain layout; options the cascade does not implement fail loudly instead of computing something
else.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.backends import decode_attention, shared_prefix
from harness.backends.hf import TransformersBackend
from harness.backends.loading import load_model
from harness.backends.shared_prefix import SharedPrefixLayer
from harness.config import GenerationConfig, ModelConfig
from tests.test_continuous import PLAIN
from tests.test_prefix_cache import QUESTIONS, few_shot, sensitive

ROWS, Q_HEADS, KV_HEADS, DIM, PREFIX, OWN = 3, 6, 2, 8, 7, 5


def repeated_reference(query, key, value, prefix_k, prefix_v, mask):
    """sdpa over the prefix repeated into every row, then each row's own columns (transformers' layout)."""
    rows = query.shape[0]
    k = torch.cat([prefix_k.expand(rows, -1, -1, -1), key], dim=-2)
    v = torch.cat([prefix_v.expand(rows, -1, -1, -1), value], dim=-2)
    out = F.scaled_dot_product_attention(query, k, v, attn_mask=mask, enable_gqa=True)
    return out.transpose(1, 2)


def tensors(q_len: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(ROWS, Q_HEADS, q_len, DIM, generator=g, dtype=torch.float64)
    k = torch.randn(ROWS, KV_HEADS, OWN, DIM, generator=g, dtype=torch.float64)
    v = torch.randn(ROWS, KV_HEADS, OWN, DIM, generator=g, dtype=torch.float64)
    pk = torch.randn(1, KV_HEADS, PREFIX, DIM, generator=g, dtype=torch.float64)
    pv = torch.randn(1, KV_HEADS, PREFIX, DIM, generator=g, dtype=torch.float64)
    return q, k, v, pk, pv


@pytest.mark.parametrize("q_len", [1, 3])
def test_cascade_equals_attention_over_the_repeated_prefix(q_len):
    q, k, v, pk, pv = tensors(q_len)
    # row 0: no padding; row 1: two padding columns before its suffix; row 2: padding, and (for a prefill)
    # its first query is a padding position that sees none of its own columns, only the prefix
    mask = torch.ones(ROWS, 1, q_len, PREFIX + OWN, dtype=torch.bool)
    mask[1, :, :, PREFIX : PREFIX + 2] = False
    mask[2, :, :, PREFIX : PREFIX + 3] = False
    if q_len > 1:
        mask[2, :, 0, PREFIX:] = False
        causal = torch.ones(q_len, OWN, dtype=torch.bool).tril(OWN - q_len)
        mask[..., PREFIX:] &= causal
    got = shared_prefix.attention(q, k, v, (pk, pv), mask, None)
    want = repeated_reference(q, k, v, pk, pv, mask)
    assert got.shape == (ROWS, q_len, Q_HEADS, DIM)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # and an additive float mask, as some models pass one
    additive = torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, torch.finfo(torch.float64).min)
    torch.testing.assert_close(
        shared_prefix.attention(q, k, v, (pk, pv), additive, 0.3),
        F.scaled_dot_product_attention(
            q,
            torch.cat([pk.expand(ROWS, -1, -1, -1), k], dim=-2),
            torch.cat([pv.expand(ROWS, -1, -1, -1), v], dim=-2),
            attn_mask=mask,
            enable_gqa=True,
            scale=0.3,
        ).transpose(1, 2),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("q_len", [1, OWN])
def test_cascade_without_a_mask_is_causal_over_the_own_columns(q_len):
    q, k, v, pk, pv = tensors(q_len, seed=1)
    mask = torch.ones(ROWS, 1, q_len, PREFIX + OWN, dtype=torch.bool)
    mask[..., PREFIX:] = torch.ones(q_len, OWN, dtype=torch.bool).tril(OWN - q_len)
    got = shared_prefix.attention(q, k, v, (pk, pv), None, None)
    torch.testing.assert_close(got, repeated_reference(q, k, v, pk, pv, mask), rtol=1e-12, atol=1e-12)


def test_a_mask_of_another_width_is_refused():
    q, k, v, pk, pv = tensors(1)
    with pytest.raises(RuntimeError, match="mask of"):
        shared_prefix.attention(q, k, v, (pk, pv), torch.ones(ROWS, 1, 1, OWN, dtype=torch.bool), None)


def test_options_the_cascade_lacks_fail_loudly():
    q, k, v, pk, pv = tensors(1)
    setattr(k, shared_prefix.ATTR, (pk, pv))
    module = torch.nn.Module()
    with pytest.raises(RuntimeError, match="not supported"):
        decode_attention.attention_forward(module, q, k, v, None, dropout=0.1)
    with pytest.raises(RuntimeError, match="not supported"):
        decode_attention.attention_forward(module, q, k, v, None, softcap=30.0)
    out, _ = decode_attention.attention_forward(module, q, k, v, None)
    assert out.shape == (ROWS, 1, Q_HEADS, DIM)


def test_layer_reports_the_repeated_length_and_expands_to_it():
    q, k, v, pk, pv = tensors(1)
    layer = SharedPrefixLayer(pk, pv, ROWS, room=4)
    keys, values = layer.update(k, v)
    assert layer.get_seq_length() == PREFIX + OWN and layer.get_mask_sizes(1)[0] == PREFIX + OWN + 1
    assert getattr(keys, shared_prefix.ATTR)[0] is pk and keys.shape[-2] == OWN
    plain = layer.expanded()
    assert torch.equal(plain.keys, torch.cat([pk.expand(ROWS, -1, -1, -1), k], dim=-2))
    assert torch.equal(plain.values, torch.cat([pv.expand(ROWS, -1, -1, -1), v], dim=-2))
    layer.keep_rows(torch.tensor([2, 0]), 0)
    assert torch.equal(layer.keys, k[[2, 0]]) and layer.prefix_keys is pk
    with pytest.raises(RuntimeError, match="cannot cut"):
        layer.keep_rows(torch.tensor([0]), 1)


@pytest.fixture()
def backend(tiny_model_dir, tmp_path) -> TransformersBackend:
    return sensitive(TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path)))


class Seen:
    """Counts cascade calls and records the cache layers of each continuous prefill."""

    def __init__(self, backend, monkeypatch):
        self.calls, self.layers = 0, []
        real_attention, real_prefill = shared_prefix.attention, backend._prefill

        def attention(*args, **kwargs):
            self.calls += 1
            return real_attention(*args, **kwargs)

        def prefill(*args, **kwargs):
            ids, mask, cache = real_prefill(*args, **kwargs)
            self.layers.append(cache.layers[0])
            return ids, mask, cache

        monkeypatch.setattr(shared_prefix, "attention", attention)
        monkeypatch.setattr(backend, "_prefill", prefill)


def test_continuous_batches_share_the_prefix_and_keep_their_tokens(backend, monkeypatch):
    assert backend.shared_prefix, "the tiny model loads in bf16 on a CPU: decode_attention's attention"
    seen = Seen(backend, monkeypatch)
    prompts = [few_shot(q) for q in QUESTIONS]
    params = GenerationConfig(max_new_tokens=10, batch_size=len(prompts))
    shared = backend.generate(prompts, params).generations
    assert seen.calls > 0 and any(isinstance(x, SharedPrefixLayer) for x in seen.layers)
    layer = next(x for x in seen.layers if isinstance(x, SharedPrefixLayer))
    assert layer.prefix_keys.shape[0] == 1 and layer.prefix_len >= 32  # the prefix once, not per row
    calls = seen.calls
    backend.shared_prefix = False
    assert backend.generate(prompts, params).generations == shared
    assert seen.calls == calls
    singles = [backend.generate([p], params).generations[0] for p in prompts]
    assert shared == singles
    assert len({g.text for g in shared}) > 2, "the answers must differ by prompt"


def test_rows_joining_a_shared_batch_get_the_tokens_of_single_requests(backend, monkeypatch):
    monkeypatch.setattr(shared_prefix, "MIN_ROWS", 2)  # batches of 2 rows, so that rows join running ones
    seen = Seen(backend, monkeypatch)
    prompts = [few_shot(q) for q in QUESTIONS] + PLAIN[:2]
    params = GenerationConfig(max_new_tokens=9, batch_size=2)
    got = backend.generate(prompts, params).generations
    assert sum(isinstance(x, SharedPrefixLayer) for x in seen.layers) >= 2  # joins expanded them
    assert got == [backend.generate([p], params).generations[0] for p in prompts]


def test_short_prefixes_and_small_batches_keep_the_repeated_layout(backend, monkeypatch):
    """Below the thresholds two attention calls and a merge per layer cost more than they save."""
    assert shared_prefix.worth_sharing(440, 32) and shared_prefix.worth_sharing(128, 4)
    assert not shared_prefix.worth_sharing(41, 32) and not shared_prefix.worth_sharing(440, 3)
    seen = Seen(backend, monkeypatch)
    prompts = [few_shot(q) for q in QUESTIONS]
    backend.generate(prompts[:3], GenerationConfig(max_new_tokens=4, batch_size=3))  # 3 rows
    monkeypatch.setattr(shared_prefix, "MIN_PREFIX_TOKENS", 10_000)
    backend.generate(prompts, GenerationConfig(max_new_tokens=4, batch_size=5))  # a short prefix
    assert seen.layers and not any(isinstance(x, SharedPrefixLayer) for x in seen.layers)
    assert seen.calls == 0
