"""KV buffers that grow in chunks (harness/backends/kv_growth.py): the same keys, values and greedy tokens as
transformers' concatenating cache, with a handful of allocations instead of one per step."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from harness.backends.hf import TransformersBackend
from harness.backends.kv_growth import GrowingLayer
from harness.backends.loading import load_model
from harness.config import GenerationConfig, ModelConfig
from tests.test_prefix_cache import QUESTIONS, few_shot, sensitive


def _kv(n: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 3, n, 8), torch.randn(batch, 3, n, 8)


def test_growing_layer_equals_concatenation_with_few_allocations():
    torch.manual_seed(0)
    ref, grow = DynamicLayer(), GrowingLayer()
    buffers = set()
    for n in [37] + [1] * 300:  # a prefill, then 300 decoding steps
        k, v = _kv(n)
        rk, rv = ref.update(k, v)
        gk, gv = grow.update(k, v)
        assert torch.equal(rk, gk) and torch.equal(rv, gv)
        buffers.add(grow._kbuf.data_ptr())
    assert grow.get_seq_length() == ref.get_seq_length() == 337
    assert len(buffers) == 3  # 37+128 -> 294 -> 423 tokens of room; torch.cat allocated 301 times


def test_growing_layer_follows_cropping_and_reordering():
    torch.manual_seed(1)
    ref, grow = DynamicLayer(), GrowingLayer()
    for n in (20, 1, 1):
        k, v = _kv(n)
        ref.update(k, v), grow.update(k, v)
    ref.crop(-5), grow.crop(-5)  # speculative decoding rejects tokens: a shorter view of the same buffer
    k, v = _kv(1)
    assert all(torch.equal(a, b) for a, b in zip(ref.update(k, v), grow.update(k, v), strict=True))
    order = torch.tensor([1, 0])
    ref.batch_select_indices(order), grow.batch_select_indices(order)  # beam search: a new tensor
    k, v = _kv(2)
    assert all(torch.equal(a, b) for a, b in zip(ref.update(k, v), grow.update(k, v), strict=True))
    assert grow.get_seq_length() == 20 + 2 - 5 + 1 + 2


class CacheSpy:
    """Which cache layer classes ``model.generate`` received, and the new tokens it produced."""

    def __init__(self, backend: TransformersBackend):
        self.layers: list[set[str]] = []
        self.rows: list[list[list[int]]] = []
        self.real = backend.model.generate
        backend.model.generate = self

    def __call__(self, **kw):
        cache = kw.get("cache", kw.get("past_key_values"))
        self.layers.append({type(x).__name__ for x in getattr(cache, "layers", [])})
        out = self.real(**kw)
        self.rows.append(out[:, kw["input_ids"].shape[1] :].tolist())
        return out


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_same_greedy_tokens_with_growing_and_concatenating_caches(tiny_model_dir, tmp_path, prefix_cache):
    backend = sensitive(TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path)))
    if not prefix_cache:
        backend.prefix_cache = None
    assert backend.grow_kv
    spy = CacheSpy(backend)
    params = GenerationConfig(max_new_tokens=40)  # past the first chunk of spare room for short prompts
    prompts = [few_shot(q) for q in QUESTIONS[:4]]
    for batch in (prompts, prompts[:1]):
        grown = backend.generate(batch, params).generations
        backend.grow_kv = False
        plain = backend.generate(batch, params).generations
        backend.grow_kv = True
        assert spy.layers[-2] == {"GrowingLayer"} and spy.layers[-1] != {"GrowingLayer"}
        assert spy.rows[-2] == spy.rows[-1] and grown == plain
    assert len({tuple(r) for r in spy.rows[0]}) == 4  # the model answers each prompt differently


def test_switch_and_static_cache_turn_it_off(tiny_model_dir, tmp_path, monkeypatch):
    loaded = load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path)
    monkeypatch.setenv("ADAPTBENCH_KV_GROWTH", "0")
    assert not TransformersBackend(loaded).grow_kv
    monkeypatch.setenv("ADAPTBENCH_KV_GROWTH", "1")
    monkeypatch.setenv("ADAPTBENCH_STATIC_CACHE", "1")
    assert not TransformersBackend(loaded).grow_kv
