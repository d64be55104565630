"""Shared-prefix KV caching in the transformers backend: the same greedy tokens with it on and off (batches,
single requests served from the LRU, stop strings, adapters, merged adapters), prompts that do not start
with a remembered prefix fall back, adapters never share an entry, and the switch is recorded.

The tiny model's random init always writes the same token whatever the prompt, which would make "same
tokens" prove nothing; the fixture rescales its weights so the output depends on the whole context, and
runs in float64 so that the cached path's different (but mathematically equal) float sums cannot flip an
argmax.
"""

from __future__ import annotations

import pytest
import torch

from harness.backends.hf import TransformersBackend
from harness.backends.loading import load_model
from harness.backends.prefix_cache import RECENT_SINGLES, PrefixCache
from harness.config import GenerationConfig, ModelConfig
from harness.latency import request_clock
from tests.support.tiny_model import attach_strong_adapter, randomise_weights

SYSTEM = (
    "You are a customer-support assistant. Answer the customer's question in one short, factual sentence."
)
SHOTS = [
    ("What is the return window?", "45 days."),
    ("Can I pause my membership?", "Yes, in the app."),
    ("How big is the battery?", "500 Wh."),
    ("Do you ship abroad?", "Only within the EU."),
]
QUESTIONS = [
    "What?",
    "How long is the warranty on the Stratus frame and battery?",
    "Where is my order number",
    "Can I return a bike that I have ridden twice in the rain?",
    "Hi",
]


def few_shot(question: str, system: str = SYSTEM) -> list[dict[str, str]]:
    prompt = [{"role": "system", "content": system}]
    for q, a in SHOTS:
        prompt += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return prompt + [{"role": "user", "content": question}]


def sensitive(backend: TransformersBackend, seed: int = 0) -> TransformersBackend:
    backend.model.to(torch.float64)
    randomise_weights(backend.model, seed, draw_dtype=torch.float64)
    return backend


@pytest.fixture()
def backend(tiny_model_dir, tmp_path) -> TransformersBackend:
    """Batches through ``model.generate``, which ``Spy`` watches (the continuous path's use of the prefix
    cache is tested in tests/test_continuous.py)."""
    backend = sensitive(TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path)))
    backend.continuous = False
    return backend


class Spy:
    """Records the new token ids and whether a prefix cache was handed to ``model.generate``."""

    def __init__(self, backend: TransformersBackend):
        self.rows: list[list[list[int]]] = []
        self.cached: list[int] = []  # cached prefix length per call (0: none)
        self.real = backend.model.generate
        backend.model.generate = self

    def __call__(self, **kw):
        cache = kw.get("cache", kw.get("past_key_values"))
        self.cached.append(cache.get_seq_length() if cache is not None else 0)  # before generate grows it
        out = self.real(**kw)
        self.rows.append(out[:, kw["input_ids"].shape[1] :].tolist())
        return out


def on_and_off(backend, spy, prompts, params, adapter=None):
    """Generate with the prefix cache, then without; return both results' (tokens, generations)."""
    on = backend.generate(prompts, params, adapter=adapter).generations
    on_rows, on_cached = spy.rows[-1], spy.cached[-1]
    cache, backend.prefix_cache = backend.prefix_cache, None
    try:
        off = backend.generate(prompts, params, adapter=adapter).generations
    finally:
        backend.prefix_cache = cache
    assert spy.cached[-1] == 0
    assert on_rows == spy.rows[-1], "greedy tokens differ with the prefix cache"
    assert on == off  # text, prompt_tokens (the full prompt), new_tokens, truncation
    return on_rows, on_cached, on


def test_same_greedy_tokens_with_and_without_the_prefix_cache(backend):
    spy = Spy(backend)
    params = GenerationConfig(max_new_tokens=10)
    stats = backend.prefix_cache.stats
    prompts = [few_shot(q) for q in QUESTIONS[:4]]
    lengths = [backend.count_tokens(backend.render(p)) for p in prompts]
    assert len(set(lengths)) == 4  # varied suffix lengths: pads in the middle of the cached layout

    rows, cached, gens = on_and_off(backend, spy, prompts, params)
    assert len({tuple(r) for r in rows}) == 4, "the model must answer each prompt differently"
    assert cached >= 32 and stats.computed == 1 and stats.hits == 0
    assert stats.tokens_saved == cached * 3
    assert [g.prompt_tokens for g in gens] == lengths

    # A single request (a latency-probe request) after the batch: served by the remembered prefix.
    _, cached_one, _ = on_and_off(backend, spy, [few_shot(QUESTIONS[4])], params)
    assert cached_one == cached and stats.hits == 1 and stats.computed == 1

    # Stop strings end rows inside generate at the right column with the cached layout too.
    # (a whole plain-word token of row 1's answer after its first token, so the row must stop early)
    words = [backend.tokenizer.decode([t]).strip() for t in rows[1][1:]]
    stop = next(w for w in words if w.isalpha() and len(w) >= 2 and w not in gens[1].text[:2])
    _, _, stopped = on_and_off(backend, spy, prompts, GenerationConfig(max_new_tokens=10, stop=[stop]))
    assert stopped[1].new_tokens < 10 and stats.hits == 2

    # A prompt that does not start with the remembered prefix falls back to the plain path.
    other = [few_shot(QUESTIONS[0], system="Reply in French, please, and be brief about it always.")]
    _, cached_other, _ = on_and_off(backend, spy, other, params)
    assert cached_other == 0 and stats.hits == 2 and stats.computed == 1


def test_adapters_never_share_a_prefix_entry(backend, tiny_model_dir, tmp_path):
    attach_strong_adapter(backend, tiny_model_dir, tmp_path)  # its answers must differ from the base's
    spy = Spy(backend)
    params = GenerationConfig(max_new_tokens=8)
    stats = backend.prefix_cache.stats
    prompts = [few_shot(q) for q in QUESTIONS[:3]]

    base_rows, _, _ = on_and_off(backend, spy, prompts, params)
    adapter_rows, _, _ = on_and_off(backend, spy, prompts, params, adapter="a")
    assert adapter_rows != base_rows
    assert stats.computed == 2 and stats.hits == 0  # the base's prefix did not serve the adapter
    assert {weights for weights, _ in backend.prefix_cache.entries} == {(None, None), ("a", None)}

    # Single requests hit their own weights' entry.
    on_and_off(backend, spy, [few_shot(QUESTIONS[3])], params, adapter="a")
    on_and_off(backend, spy, [few_shot(QUESTIONS[3])], params)
    assert stats.hits == 2 and stats.computed == 2

    # Merged weights are other weights again: a new entry, the same tokens as unmerged.
    backend.merge_adapter("a")
    merged_rows, _, _ = on_and_off(backend, spy, prompts, params, adapter="a")
    assert merged_rows == adapter_rows
    assert stats.computed == 3 and ("a", "a") in {weights for weights, _ in backend.prefix_cache.entries}


def test_base_entries_survive_loading_an_adapter(backend, tiny_model_dir, tmp_path):
    """The run loads each adapter after the base strategies' batched passes: the base's entries must still
    serve the latency probe's base requests afterwards (they used to be dropped with every load)."""
    spy = Spy(backend)
    params = GenerationConfig(max_new_tokens=6)
    stats = backend.prefix_cache.stats
    _, batch_cached, _ = on_and_off(backend, spy, [few_shot(q) for q in QUESTIONS[:3]], params)
    attach_strong_adapter(backend, tiny_model_dir, tmp_path)
    _, cached, _ = on_and_off(backend, spy, [few_shot(QUESTIONS[3])], params)
    assert cached == batch_cached >= 32 and stats.hits == 1 and stats.computed == 1


def test_single_requests_alone_cache_their_shared_prompt(backend):
    """No batch before them (a resumed run's probe, ``batch_size: 1``): the second single request makes the
    shared prefix, later ones reuse it, with the same greedy tokens as without the cache."""
    spy = Spy(backend)
    params = GenerationConfig(max_new_tokens=6)
    stats = backend.prefix_cache.stats
    cached = [on_and_off(backend, spy, [few_shot(q)], params)[1] for q in QUESTIONS[:3]]
    assert cached[0] == 0 and cached[1] == cached[2] >= 32
    assert stats.computed == 1 and stats.hits == 1


def test_single_request_reports_its_first_token(backend):
    backend.generate([few_shot(q) for q in QUESTIONS[:3]], GenerationConfig(max_new_tokens=2))
    with request_clock() as clock:
        gen = backend.generate([few_shot(QUESTIONS[3])], GenerationConfig(max_new_tokens=4)).generations[0]
    assert backend.prefix_cache.stats.hits == 1
    assert clock.first_token is not None and gen.new_tokens == 4


def test_switch_off_and_manifest_entry(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTBENCH_PREFIX_CACHE", "0")
    off = TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path))
    assert off.prefix_cache is None and off.describe()["prefix_cache"] is False
    off.continuous = False
    spy = Spy(off)
    off.generate([few_shot(q) for q in QUESTIONS[:2]], GenerationConfig(max_new_tokens=2))
    assert spy.cached == [0]
    monkeypatch.delenv("ADAPTBENCH_PREFIX_CACHE")
    monkeypatch.setenv("ADAPTBENCH_STATIC_CACHE", "1")  # the static cache owns the KV cache: no prefix cache
    assert TransformersBackend(off.loaded).prefix_cache is None
    monkeypatch.delenv("ADAPTBENCH_STATIC_CACHE")
    assert TransformersBackend(off.loaded).describe()["prefix_cache"] is True


def test_choose_prefix_rules():
    cache = PrefixCache(min_tokens=4)
    w = (None, None)
    shared = list(range(10))
    # Common prefix of a batch; every row keeps at least one token of its own.
    assert cache.choose(w, [shared + [50, 51], shared + [60]]) == tuple(shared)
    assert cache.choose(w, [shared, shared + [1]]) == tuple(shared[:9])
    assert cache.choose(w, [[1, 2, 3, 9], [1, 2, 3, 8]]) is None  # shorter than min_tokens
    assert cache.choose(w, [shared + [1]]) is None  # a first single request has nothing to share with
    cache.put(w, tuple(shared + [50]), "kv")  # the first batch's prefix ran into a shared first word
    # A batch sharing only the system part: the prefix is cut back to what it shares with the known one.
    assert cache.choose(w, [shared + [60, 1], shared + [60, 2]]) == tuple(shared)
    cache.put(w, tuple(shared), "kv2")
    assert cache.choose(w, [shared + [70]]) == tuple(shared)  # a single request reuses it
    assert cache.choose(w, [shared + [50, 1, 2]]) == tuple(shared + [50])  # the longest that fits
    # A batch whose shared prefix is much longer than a known one gets its own entry.
    long_rows = [shared + list(range(100, 110)) + [k] for k in (1, 2)]
    assert cache.choose(w, long_rows) == tuple(long_rows[0][:20])
    assert cache.choose(("a", None), [shared + [70]]) is None  # other weights: nothing known


def test_single_requests_find_their_shared_prefix():
    """A batch of one reuses (or generalises) a remembered prefix; when none fits, it is compared with the
    last single requests under the same weights and the longest part it shares with another becomes the
    prefix (like a served engine's prefix cache)."""
    cache = PrefixCache(min_tokens=4)
    w = (None, None)
    system, shots = list(range(10)), list(range(100, 120))
    assert cache.choose(w, [system + shots + [1, 2]]) is None  # the first: nothing to compare with
    # Not compared with a request under other weights (another adapter's).
    assert cache.choose(("a", None), [system + shots + [3]]) is None
    # The second request shares system + shots with the first: that becomes the prefix...
    assert cache.choose(w, [system + shots + [5, 6]]) == tuple(system + shots)
    cache.put(w, tuple(system + shots), "kv")
    assert cache.choose(w, [system + shots + [9]]) == tuple(system + shots)  # ...reused, not re-made
    # Two requests sharing more than the known prefix (the same retrieved sentence): the known one is
    # reused, no longer entry is made (it would serve only prompts with that sentence).
    sentence = list(range(60, 70))
    assert cache.choose(w, [system + shots + sentence + [1]]) == tuple(system + shots)
    assert cache.choose(w, [system + shots + sentence + [2]]) == tuple(system + shots)
    # A prompt sharing only the system part with the known one: that part becomes a prefix of its own...
    assert cache.choose(w, [system + [7, 8, 9, 10]]) == tuple(system)
    cache.put(w, tuple(system), "kv2")
    assert cache.choose(w, [system + [50, 51]]) == tuple(system)  # ...which its kind reuses,
    assert cache.choose(w, [system + shots + [77]]) == tuple(system + shots)  # the longest known that fits


def test_a_repeated_single_request_makes_no_whole_prompt_entry():
    """The latency probe times its warm-up examples again: a prompt sent twice must not become a prefix
    (a whole-prompt entry only that prompt can use, evicting the shared ones); only another prompt counts.
    And only the last RECENT_SINGLES requests per weights key are compared."""
    cache = PrefixCache(min_tokens=4)
    w = (None, None)
    prompt = list(range(300, 340))
    assert cache.choose(w, [prompt]) is None
    assert cache.choose(w, [prompt]) is None  # the same prompt again
    for k in range(RECENT_SINGLES):
        cache.choose(w, [[200 + k] * 6])
    assert cache.choose(w, [prompt[:-1] + [999]]) is None  # the first prompt is no longer remembered
    assert cache.choose(w, [prompt[:-1] + [998]]) == tuple(prompt[:-1])


def test_loading_an_adapter_forgets_its_name_only():
    """Entries are keyed by adapter name: loading an adapter drops that name's entries (the name may now
    mean other weights) and keeps the base's and the other adapters' (the latency probe reuses them)."""
    cache = PrefixCache(min_tokens=4)
    cache.put((None, None), (1, 2, 3, 4), "base")
    cache.put(("a", None), (1, 2, 3, 4), "a")
    cache.put(("b", "a"), (1, 2, 3, 4), "b over merged a")
    cache.put(("b", None), (1, 2, 3, 4), "b")
    cache.choose(("a", "a"), [[1, 2, 3, 4, 5]])
    cache.forget("a")
    assert [w for w, _ in cache.entries] == [(None, None), ("b", None)]
    assert ("a", "a") not in cache.last_single
