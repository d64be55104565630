"""Continuous batching in the transformers backend (harness/backends/continuous.py).

Every row must get the tokens a single request gets (in float64, where a different padding cannot flip an
argmax), finished rows must leave at once (no step computes a row past its last token), waiting prompts
must take free slots, the prefix cache must serve rows joining mid-run, and everything the loop cannot
do exactly (sampling, logits processors, the latency probe's streamed requests) must stay with
``model.generate``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config
from transformers.cache_utils import DynamicCache

from harness.backends import continuous
from harness.backends.hf import TransformersBackend
from harness.backends.loading import load_model
from harness.config import GenerationConfig, ModelConfig
from harness.latency import request_clock
from tests.support.tiny_model import attach_strong_adapter
from tests.test_prefix_cache import QUESTIONS, few_shot, sensitive

PLAIN = [
    [{"role": "user", "content": q}]
    for q in (
        "Hi",
        "Where is my order?",
        "How long is the warranty on the frame?",
        "Is the battery removable?",
    )
]


@pytest.fixture()
def backend(tiny_model_dir, tmp_path) -> TransformersBackend:
    return sensitive(TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path)))


class GenerateCalls:
    """Counts calls of ``model.generate`` (the path the loop hands over to)."""

    def __init__(self, backend: TransformersBackend):
        self.calls = 0
        self.real = backend.model.generate
        backend.model.generate = self

    def __call__(self, **kw):
        self.calls += 1
        return self.real(**kw)


def singles(backend, prompts, params):
    """Each prompt alone, through ``model.generate`` (one row: never the continuous path)."""
    return [backend.generate([p], params).generations[0] for p in prompts]


def a_stop_that_fires(backend, prompts) -> str:
    """A two-character piece of a free answer's text, so that some rows stop early and others do not."""
    free = singles(backend, prompts[:1], GenerationConfig(max_new_tokens=12))[0].text
    return free[len(free) // 2 : len(free) // 2 + 2]


def test_rows_get_the_tokens_of_single_requests(backend):
    prompts = [few_shot(q) for q in QUESTIONS] + PLAIN  # different lengths, a shared prefix for five
    spy = GenerateCalls(backend)
    stop = a_stop_that_fires(backend, prompts)
    for params in (
        GenerationConfig(max_new_tokens=12, batch_size=3),
        GenerationConfig(max_new_tokens=12, batch_size=3, stop=[stop]),
    ):
        backend.continuous_stats = stats = continuous.DecodeStats()
        calls = spy.calls
        got = backend.generate(prompts, params).generations
        assert spy.calls == calls, "a batch must not go through model.generate"
        want = singles(backend, prompts, params)
        assert got == want  # text, new_tokens, prompt_tokens
        assert len({g.text for g in got}) > len(prompts) // 2, "the answers must differ by prompt"
        # never more than 3 rows a step; with the stop, rows end at different steps and waiting prompts
        # take the freed slots (more prefills than the ceil(9 / 3) groups that end together without it)
        assert stats.max_rows == 3 and stats.prefills >= 3 + bool(params.stop)
        # no filler: each step computed only rows still writing (a row's first token comes from its prefill)
        assert stats.row_steps == sum(g.new_tokens - 1 for g in got)
    assert any(g.new_tokens < 12 for g in got) and any(g.new_tokens == 12 for g in got), "the stop must fire"


def test_prefix_cache_serves_rows_joining_later(backend):
    prompts = [few_shot(q) for q in QUESTIONS]
    params = GenerationConfig(max_new_tokens=8, batch_size=2)
    stats = backend.prefix_cache.stats
    got = backend.generate(prompts, params).generations
    # the first two rows computed the shared prefix; every later prefill reused it
    assert stats.computed == 1 and stats.hits == backend.continuous_stats.prefills - 1 >= 2
    cache, backend.prefix_cache = backend.prefix_cache, None
    try:
        assert backend.generate(prompts, params).generations == got
    finally:
        backend.prefix_cache = cache
    assert got == singles(backend, prompts, params)


def test_adapter_rows_unmerged_and_merged(backend, tiny_model_dir, tmp_path):
    """Through peft's wrapper: rows with an adapter selected (and merged) get their single requests' tokens,
    which differ from the base's."""
    attach_strong_adapter(backend, tiny_model_dir, tmp_path)  # its answers must differ from the base's
    prompts = [few_shot(q) for q in QUESTIONS[:4]] + PLAIN[:2]
    params = GenerationConfig(max_new_tokens=8, batch_size=2)
    base = backend.generate(prompts, params).generations
    tuned = backend.generate(prompts, params, adapter="a").generations
    assert base != tuned and backend.continuous_stats.prefills > 0
    assert tuned == [backend.generate([p], params, adapter="a").generations[0] for p in prompts]
    backend.merge_adapter("a")
    assert backend.generate(prompts, params, adapter="a").generations == tuned
    assert base == singles(backend, prompts, params)  # the base again after unmerging


def test_sampling_processors_and_probe_requests_stay_with_generate(backend, monkeypatch):
    spy = GenerateCalls(backend)
    greedy = GenerationConfig(max_new_tokens=4, batch_size=2)
    backend.generate(PLAIN, greedy)
    assert spy.calls == 0
    backend.generate(PLAIN, GenerationConfig(max_new_tokens=4, batch_size=2, temperature=0.7))
    assert spy.calls == 1  # sampling
    backend.model.generation_config.repetition_penalty = 1.3  # a processor the loop does not apply
    backend.generate(PLAIN[:2], greedy)
    assert spy.calls == 2
    backend.model.generation_config.repetition_penalty = 1.0
    with request_clock():  # a latency-probe request streams its first token through generate
        backend.generate(PLAIN[:2], greedy)
    assert spy.calls == 3
    monkeypatch.setenv("ADAPTBENCH_CONTINUOUS", "0")
    off = TransformersBackend(backend.loaded)
    assert off.describe()["continuous_batching"] is False and backend.describe()["continuous_batching"]
    off.generate(PLAIN[:2], greedy)
    assert spy.calls == 4


def test_a_longer_list_decodes_batch_size_rows_at_a_time(backend):
    """The runner hands ``batch_size`` prompts per call; a longer list (a user's call) decodes at most
    ``batch_size`` rows at a time on the continuous path."""
    params = GenerationConfig(max_new_tokens=6, batch_size=2)
    backend.generate(PLAIN, params)
    assert backend.continuous_stats.max_rows == 2


def kv(rows: int, width: int, fill: float) -> DynamicCache:
    cache = DynamicCache(config=LlamaConfig(num_hidden_layers=2, num_key_value_heads=1, head_dim=2))
    for layer in range(2):
        k = torch.full((rows, 1, width, 2), fill) + torch.arange(width).view(1, 1, width, 1)
        cache.update(k, -k, layer)
    return cache


def test_join_left_pads_the_narrower_cache():
    old, new = kv(2, 3, 10.0), kv(1, 5, 20.0)
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    joined = continuous._join(old, mask, new, torch.ones(1, 5, dtype=torch.long))
    assert joined.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [1, 1, 1, 1, 1]]
    for layer in old.layers:
        assert layer.keys.shape == (3, 1, 5, 2)
        assert layer.keys[:2, :, :2].abs().sum() == 0  # the padding is zeros, masked out
        assert torch.equal(layer.keys[:2, :, 2:, 0], 10.0 + torch.arange(3.0).expand(2, 1, 3))
        assert torch.equal(layer.keys[2, :, :, 0], 20.0 + torch.arange(5.0).expand(1, 5))
        assert torch.equal(layer.values, -layer.keys)


def test_keep_drops_rows_and_columns_no_row_attends_to():
    cache = kv(3, 4, 0.0)
    for layer in cache.layers:
        layer.keys[1] += 100.0  # mark row 1
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]])
    kept = continuous._keep(cache, mask, [1, 2])
    assert kept.tolist() == [[0, 1, 1], [1, 1, 1]]  # column 0 was row 0's alone
    for layer in cache.layers:
        assert layer.keys.shape == (2, 1, 3, 2)
        assert torch.equal(layer.keys[0, 0, :, 0], 100.0 + torch.arange(1.0, 4.0))
        assert torch.equal(layer.keys[1, 0, :, 0], torch.arange(1.0, 4.0))


def test_positions_count_each_rows_own_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 0, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert continuous.positions(mask, 2).tolist() == [[1, 2], [2, 1], [3, 4]]


def test_models_with_sliding_window_layers_keep_generate():
    assert continuous.plain_cache(LlamaConfig(num_hidden_layers=2))
    sliding = Qwen2Config(
        num_hidden_layers=2, sliding_window=8, layer_types=["sliding_attention", "full_attention"]
    )
    assert not continuous.plain_cache(sliding)
