"""Attention of unmasked decoding steps on CPU (harness/backends/decode_attention.py): the grouped-query
arithmetic, where the model uses it, and the same greedy answers as transformers' ``sdpa``."""

from __future__ import annotations

import pytest
import torch

from harness.backends import decode_attention
from harness.backends.hf import TransformersBackend
from harness.backends.loading import load_model
from harness.config import GenerationConfig, ModelConfig
from tests.support.tiny_model import randomised_backend


def reference(query, key, value, scaling=None):
    """Grouped-query attention written out in float64: query head h reads key/value head h // groups
    (transformers' ``repeat_kv`` order)."""
    groups = query.shape[1] // key.shape[1]
    k = key.double().repeat_interleave(groups, dim=1)
    v = value.double().repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    probs = torch.softmax(query.double() @ k.transpose(-1, -2) * scale, dim=-1)
    return (probs @ v).transpose(1, 2)  # [batch, 1, q_heads, dim]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("batch, q_heads, kv_heads, length", [(1, 9, 3, 560), (4, 8, 2, 37), (3, 4, 1, 5)])
def test_packed_heads_give_grouped_query_attention(dtype, tol, batch, q_heads, kv_heads, length):
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(batch, q_heads, 1, 16, generator=gen).to(dtype)
    key = (torch.randn(batch, kv_heads, length, 16, generator=gen) * 2).to(dtype)  # peaked scores
    value = torch.randn(batch, kv_heads, length, 16, generator=gen).to(dtype)
    for scaling in (None, 0.3):
        got = decode_attention.decode_attention(query, key, value, scaling)
        assert got.shape == (batch, 1, q_heads, 16) and got.dtype == dtype
        want = reference(query, key, value, scaling)
        assert torch.allclose(got.double(), want, atol=tol, rtol=0)
    if kv_heads > 1:  # a head grouping in the other order (h % kv_heads) is a different attention
        wrong = key.repeat(1, q_heads // kv_heads, 1, 1), value.repeat(1, q_heads // kv_heads, 1, 1)
        assert not torch.allclose(reference(query, *wrong), reference(query, key, value), atol=tol)


PROMPTS = [[{"role": "user", "content": q}] for q in ("What?", "Where is my order", "Hi", "Battery size")]


@pytest.fixture()
def calls(monkeypatch) -> list[tuple[int, ...]]:
    """The query shapes of the steps this attention computed."""
    seen: list[tuple[int, ...]] = []
    real = decode_attention.decode_attention

    def spy(query, key, value, scaling=None):
        seen.append(tuple(query.shape))
        return real(query, key, value, scaling)

    monkeypatch.setattr(decode_attention, "decode_attention", spy)
    return seen


def test_only_unmasked_bf16_decoding_steps_take_it(tiny_model_dir, tmp_path, calls):
    backend = randomised_backend(tiny_model_dir, tmp_path, "bfloat16")
    assert backend.describe()["decode_attention"] is True
    assert backend.model.config._attn_implementation == decode_attention.NAME
    params = GenerationConfig(max_new_tokens=5, stop=[])
    backend.generate([PROMPTS[1]], params)  # one request: no mask
    assert calls and all(shape[0] == 1 and shape[2] == 1 for shape in calls)  # steps, not the prefill
    layers = backend.model.config.num_hidden_layers
    assert len(calls) % layers == 0 and 1 <= len(calls) // layers <= 4  # <= 4 steps after the prefill
    calls.clear()
    backend.generate([PROMPTS[0], PROMPTS[1]], params)  # different lengths: padded, masked steps
    assert calls == []
    backend.completion_nll([PROMPTS[1]], ["It ships tomorrow."])  # a likelihood pass: no decoding step
    assert calls == []
    fp32 = randomised_backend(tiny_model_dir, tmp_path, "float32")
    assert fp32.describe()["decode_attention"] is False  # fp32: the grouped-query kernel is the faster one
    fp32.generate([PROMPTS[1]], params)
    assert calls == []
    fp32.model.set_attn_implementation(decode_attention.NAME)  # installed anyway: fp32 steps still go to sdpa
    fp32.generate([PROMPTS[1]], params)
    assert calls == []


def test_greedy_answers_and_logits_match_sdpa(tiny_model_dir, tmp_path, calls, monkeypatch):
    """In fp32 (here made eligible) the packed heads give sdpa's greedy answers and logits to rounding."""
    monkeypatch.setattr(decode_attention, "DTYPES", (torch.float32,))
    backend = randomised_backend(tiny_model_dir, tmp_path, "float32")
    model = backend.model
    params = GenerationConfig(max_new_tokens=12, stop=[])
    ours = [backend.generate([p], params).generations[0] for p in PROMPTS]
    ids = backend.tokenizer(["Where is my order"], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        first = model(input_ids=ids, use_cache=True)
        step = model(input_ids=ids[:, -1:], past_key_values=first.past_key_values, use_cache=True).logits
    assert calls, "the decoding steps must have taken the packed path"
    with decode_attention.suspended(model):
        theirs = [backend.generate([p], params).generations[0] for p in PROMPTS]
        with torch.inference_mode():
            first = model(input_ids=ids, use_cache=True)
            plain = model(input_ids=ids[:, -1:], past_key_values=first.past_key_values, use_cache=True).logits
    assert model.config._attn_implementation == decode_attention.NAME  # given back after suspended()
    assert len({g.text for g in ours}) == 4, "the model must answer each prompt differently"
    assert [g.text for g in ours] == [g.text for g in theirs]
    assert torch.allclose(step, plain, atol=1e-5, rtol=0)


def test_left_alone_when_off_or_another_attention(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTBENCH_DECODE_ATTENTION", "0")
    backend = TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path))
    assert backend.decode_attention is False and backend.model.config._attn_implementation == "sdpa"
    monkeypatch.delenv("ADAPTBENCH_DECODE_ATTENTION")
    backend.model.set_attn_implementation("eager")  # a user's choice is kept
    assert decode_attention.install(backend.model) is False
    assert backend.model.config._attn_implementation == "eager"
