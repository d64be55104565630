"""KV cache layers that grow in place (harness/backends/kv_buffers.py): the same keys and values as
transformers' ``DynamicLayer`` after any sequence of appends, row selections and direct assignments; appends
within the spare room write into the same storage (the point of the module: no copy of the cache per step);
and generation gives the same tokens with the buffers on and off (float64 tiny model, batches and single
requests).
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.cache_utils import DynamicLayer

from harness.backends.hf import TransformersBackend
from harness.backends.kv_buffers import BufferedLayer, buffered, empty_cache, repeated
from harness.backends.loading import load_model
from harness.config import GenerationConfig, ModelConfig
from tests.test_continuous import PLAIN, kv
from tests.test_prefix_cache import QUESTIONS, few_shot, sensitive


def columns(rows: int, width: int, start: float) -> torch.Tensor:
    return torch.randn(rows, 2, width, 4) + start


def same(a, b) -> None:
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_appends_match_dynamic_layer_and_write_in_place():
    torch.manual_seed(0)
    plain, grown = DynamicLayer(), BufferedLayer(room=4)
    first = columns(3, 5, 0.0)
    for layer in (plain, grown):
        layer.update(first, -first)
    same(plain, grown)
    storage = grown._k.data_ptr()
    for step in range(6):  # 4 fit in the room, the 5th reallocates with room again
        new = columns(3, 1, float(step))
        keys, values = grown.update(new, -new)
        plain.update(new, -new)
        same(plain, grown)
        assert torch.equal(keys, plain.keys) and torch.equal(values, plain.values)
        if step < 4:
            assert grown._k.data_ptr() == storage, "an append within the room must not copy the cache"
    assert grown._k.data_ptr() != storage and grown.get_seq_length() == plain.get_seq_length() == 11


def test_rows_kept_and_assignments_stay_consistent():
    torch.manual_seed(1)
    plain, grown = DynamicLayer(), BufferedLayer(room=8)
    first = columns(4, 6, 0.0)
    for layer in (plain, grown):
        layer.update(first, -first)
    index = torch.tensor([0, 2, 3])
    grown.keep_rows(index, 2)
    plain.keys = plain.keys.index_select(0, index)[..., 2:, :]
    plain.values = plain.values.index_select(0, index)[..., 2:, :]
    same(plain, grown)
    new = columns(3, 1, 5.0)
    plain.update(new, -new), grown.update(new, -new)
    same(plain, grown)
    # transformers' own methods assign keys and values: the buffer follows
    for layer in (plain, grown):
        layer.batch_select_indices(torch.tensor([2, 0]))
        layer.crop(-1)
    same(plain, grown)
    new = columns(2, 3, 7.0)
    plain.update(new, -new), grown.update(new, -new)
    same(plain, grown)


def test_buffered_and_repeated_caches_hold_the_same_keys():
    old = kv(2, 3, 10.0)
    want = [(x.keys.clone(), x.values.clone()) for x in old.layers]
    cache = buffered(old, room=5)
    assert all(type(x) is BufferedLayer for x in cache.layers)
    for layer, (k, v) in zip(cache.layers, want, strict=True):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
        assert layer._k.shape[-2] == 3 + 5
    one = kv(1, 3, 1.0)
    copy = repeated(one, 4, room=2)
    for layer, src in zip(copy.layers, one.layers, strict=True):
        assert torch.equal(layer.keys, src.keys.expand(4, -1, -1, -1))
        layer.keys[0] += 1.0  # a private copy: the stored prefix is untouched
        assert not torch.equal(layer.keys[0], src.keys[0])
    fresh = empty_cache(LlamaConfig(num_hidden_layers=2, num_key_value_heads=1, head_dim=2), 3)
    assert [type(x) for x in fresh.layers] == [BufferedLayer, BufferedLayer] and fresh.get_seq_length() == 0


@pytest.fixture()
def backend(tiny_model_dir, tmp_path) -> TransformersBackend:
    return sensitive(TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path)))


@pytest.mark.parametrize("continuous_on", [True, False])
def test_same_tokens_with_buffers_on_and_off(backend, continuous_on):
    backend.continuous = continuous_on
    prompts = [few_shot(q) for q in QUESTIONS] + PLAIN
    params = GenerationConfig(max_new_tokens=10, batch_size=3)
    on = backend.generate(prompts, params).generations
    singles_on = [backend.generate([p], params).generations[0] for p in prompts[:3]]
    assert backend.kv_buffers
    backend.kv_buffers = False
    backend.prefix_cache.clear()
    assert backend.generate(prompts, params).generations == on
    assert [backend.generate([p], params).generations[0] for p in prompts[:3]] == singles_on
    assert len({g.text for g in on}) > len(prompts) // 2, "the answers must differ by prompt"


def test_continuous_batches_decode_on_buffered_layers(backend, monkeypatch):
    seen = []
    real = backend._prefill

    def spy(*args, **kwargs):
        ids, mask, cache = real(*args, **kwargs)
        seen.extend(type(x) for x in cache.layers)
        return ids, mask, cache

    monkeypatch.setattr(backend, "_prefill", spy)
    backend.shared_prefix = False
    backend.generate(
        PLAIN + [few_shot(q) for q in QUESTIONS], GenerationConfig(max_new_tokens=8, batch_size=4)
    )
    assert seen and set(seen) == {BufferedLayer}
