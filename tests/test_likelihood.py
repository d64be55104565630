"""The masked completion NLL (answer perplexity, adapter validation loss) equals a plain reference: the whole
``[batch, width, vocab]`` logits of each row scored on its own. The backend batches longest-first and asks
the model for logits only from the earliest completion on (``logits_to_keep``); neither may change a number.

Float64 and rescaled weights (as in the prefix-cache tests), so "equal" is checked to 1e-9 and a wrong
slice (an off-by-one between the kept logits and their targets) cannot hide behind a flat random model.
"""

from __future__ import annotations

import random

import pytest
import torch

from harness.backends import likelihood
from harness.backends.hf import TransformersBackend
from harness.backends.loading import load_model
from harness.config import ModelConfig
from tests.test_prefix_cache import sensitive


@pytest.fixture()
def backend(tiny_model_dir, tmp_path) -> TransformersBackend:
    return sensitive(TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path)))


def reference_nll(model, ids: list[int], n_ctx: int) -> float:
    """Mean NLL of ``ids[n_ctx:]`` given what precedes each token: one row, full logits, no padding."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    targets = torch.tensor(ids[1:])
    per = -logp[torch.arange(len(targets)), targets]
    scored = per[max(0, n_ctx - 1) :]
    return float(scored.mean()) if len(scored) else 0.0


def random_rows(vocab: int, n: int, seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        n_ctx, n_ans = rng.randint(1, 40), rng.randint(1, 30)
        rows.append(([rng.randrange(4, vocab) for _ in range(n_ctx + n_ans)], n_ctx))
    return rows


class ForwardSpy:
    """Records the input width, ``logits_to_keep`` and rows of every forward call."""

    def __init__(self, model):
        self.calls: list[tuple[int, int]] = []
        self.rows: list[int] = []
        self.real = model.forward
        model.forward = self

    def __call__(self, **kw):
        self.calls.append((kw["input_ids"].shape[1], kw.get("logits_to_keep", 0)))
        self.rows.append(kw["input_ids"].shape[0])
        return self.real(**kw)


def test_batched_nll_equals_one_row_full_logits_reference(backend):
    model = backend.model
    rows = random_rows(backend.vocab_size, 13, seed=1)
    # Adversarial rows: completion from the first token (nothing before it is scored), a one-token
    # completion after a long context, and a long completion after a one-token context in the same batch.
    rows += [([5, 6, 7, 8, 9], 0), (list(range(10, 60)), 49), ([11] + list(range(60, 90)), 1)]
    spy = ForwardSpy(model)
    got = likelihood.masked_mean_nll(model, rows, backend._pad_id(), batch_size=4)
    model.forward = spy.real
    want = [reference_nll(model, ids, n_ctx) for ids, n_ctx in rows]
    assert got == [pytest.approx(w, abs=1e-9) for w in want]
    # The results come back in row order although the batches ran longest first.
    assert [w for w, _ in spy.calls] == sorted((w for w, _ in spy.calls), reverse=True)
    # Context positions were not projected: some batch kept fewer logits than its width.
    assert any(0 < keep < width for width, keep in spy.calls)


def test_token_mean_nll_weights_every_completion_token_once(backend):
    model = backend.model
    rows = random_rows(backend.vocab_size, 9, seed=2)
    got = likelihood.token_mean_nll(model, rows, backend._pad_id(), batch_size=3)
    total = sum(reference_nll(model, ids, c) * (len(ids) - max(1, c)) for ids, c in rows)
    count = sum(len(ids) - max(1, c) for ids, c in rows)
    assert got == pytest.approx(total / count, abs=1e-9)


def test_model_without_logits_to_keep_scores_all_positions(backend, monkeypatch):
    """Custom (remote-code) models whose forward lacks ``logits_to_keep`` get full logits, same numbers."""
    model = backend.model
    rows = random_rows(backend.vocab_size, 6, seed=3)
    kept = likelihood.masked_mean_nll(model, rows, backend._pad_id(), batch_size=4)
    monkeypatch.setattr(likelihood, "keeps_logits", lambda m: False)
    spy = ForwardSpy(model)
    full = likelihood.masked_mean_nll(model, rows, backend._pad_id(), batch_size=4)
    assert all(keep == 0 for _, keep in spy.calls)
    assert full == [pytest.approx(k, abs=1e-9) for k in kept]


def test_backend_completion_nll_matches_reference(backend):
    """Through the backend's public capability: chat-rendered context, answer tokens scored."""
    questions = ["How long is the warranty?", "Q", "Until when is chat open on weekends and holidays?"]
    answers = ["3 years or 15,000 km.", "Every day until 22:00 CET, including weekends.", "Yes."]
    got = backend.completion_nll([[{"role": "user", "content": q}] for q in questions], answers, batch_size=2)
    for q, a, value in zip(questions, answers, got, strict=True):
        ctx = backend._ids(backend.render([{"role": "user", "content": q}]))
        assert value == pytest.approx(reference_nll(backend.model, ctx + backend._ids(a), len(ctx)), abs=1e-9)


def grouped_rows(vocab: int, seed: int) -> list[tuple[list[int], int]]:
    """Rows in groups sharing a context (as 5 strategies' answers to one question), interleaved: groups of
    1 to 7 rows (7 > the batch size below, so one is split), contexts of 1 to 40 tokens, answers of 1 to
    30 (one-token answers included), and an answer repeated word for word in its group."""
    rng = random.Random(seed)
    rows = []
    for size in (1, 3, 7, 2, 5):
        ctx = [rng.randrange(4, vocab) for _ in range(rng.choice([1, rng.randint(2, 40)]))]
        for j in range(size):
            ans = [rng.randrange(4, vocab) for _ in range(1 if j == 0 else rng.randint(1, 30))]
            rows.append((ctx + ans, len(ctx)))
        rows.append(rows[-1])
    rng.shuffle(rows)
    return rows


def test_shared_context_nll_equals_reference_and_computes_each_context_once(backend):
    model = backend.model
    assert likelihood.shares_contexts(model)
    rows = grouped_rows(backend.vocab_size, seed=4)
    spy = ForwardSpy(model)
    got = likelihood.shared_context_nll(model, rows, backend._pad_id(), 4, backend._cache_kwarg)
    model.forward = spy.real
    want = [reference_nll(model, ids, n_ctx) for ids, n_ctx in rows]
    assert got == [pytest.approx(w, abs=1e-9) for w in want]
    # Context passes (one vocabulary row each) ran each distinct context once, 4 at a time; answer passes
    # carried every row once, at most 4 per pass, longest answers first.
    sizes: dict[tuple[int, ...], int] = {}
    for ids, n_ctx in rows:
        sizes[tuple(ids[:n_ctx])] = sizes.get(tuple(ids[:n_ctx]), 0) + 1
    assert sorted(sizes.values()) == [2, 3, 4, 6, 8]
    ctx_rows = [n for (_, keep), n in zip(spy.calls, spy.rows, strict=True) if keep == 1]
    ans = [(width, n) for (width, keep), n in zip(spy.calls, spy.rows, strict=True) if keep == 0]
    assert ctx_rows == [4, 1]
    assert sum(n for _, n in ans) == len(rows) and max(n for _, n in ans) <= 4
    segments: list[list[int]] = []  # answer widths after each context pass
    for width, keep in spy.calls:
        if keep == 1:
            segments.append([])
        else:
            segments[-1].append(width)
    assert all(seg == sorted(seg, reverse=True) for seg in segments) and len(segments) == 2


def test_backend_scores_answers_to_the_same_question_after_one_context_pass(backend):
    """Five answers to each of two questions: two context rows computed, not ten; the same numbers as
    scoring each question's answers on its own."""
    questions = ["How long is the warranty?"] * 5 + ["Do you ship to Canada?"] * 5
    answers = ["3 years.", "Three years or 15,000 km.", "Yes.", "It depends on the model.", "3 years."] * 2
    contexts = [[{"role": "user", "content": q}] for q in questions]
    spy = ForwardSpy(backend.model)
    together = backend.completion_nll(contexts, answers, batch_size=16)
    backend.model.forward = spy.real
    assert spy.rows == [2, 10]  # 2 contexts, then 10 answer rows
    alone = [backend.completion_nll([c], [a])[0] for c, a in zip(contexts, answers, strict=True)]
    assert together == [pytest.approx(a, abs=1e-9) for a in alone]


def test_answer_perplexity_ignores_a_loaded_or_merged_adapter(tiny_model_dir, tmp_path):
    """Through peft's wrapper, an adapter selected or merged: the base model's numbers (the coherence metric
    must not grade a fine-tuned strategy by its own weights), and the adapter is still served afterwards."""
    from tests.support.tiny_model import attach_strong_adapter, randomise_weights

    backend = TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path / "m"))
    attach_strong_adapter(backend, tiny_model_dir, tmp_path)
    randomise_weights(backend.model, seed=5, draw_dtype=torch.float64)  # base and LoRA weights both matter
    questions = ["How long is the warranty?"] * 3 + ["Do you ship to Canada?"] * 2
    answers = ["3 years.", "Three years or 15,000 km.", "Yes.", "Yes, in 5 days.", "No."]
    contexts = [[{"role": "user", "content": q}] for q in questions]
    rows = []
    for c, a in zip(contexts, answers, strict=True):
        ctx = backend._ids(backend.render(c))
        rows.append((ctx + backend._ids(a), len(ctx)))
    with backend.model.disable_adapter():
        base = [reference_nll(backend.model, ids, n) for ids, n in rows]
    backend.model.set_adapter("a")
    adapted = [reference_nll(backend.model, ids, n) for ids, n in rows]
    assert all(abs(x - y) > 1e-3 for x, y in zip(base, adapted, strict=True))  # the adapter matters here
    assert backend.completion_nll(contexts, answers) == [pytest.approx(b, abs=1e-9) for b in base]
    backend.merge_adapter("a")
    assert backend.completion_nll(contexts, answers) == [pytest.approx(b, abs=1e-9) for b in base]
    backend.merge_adapter("a")
    assert [reference_nll(backend.model, ids, n) for ids, n in rows] == [
        pytest.approx(x, abs=1e-9) for x in adapted
    ]


def prefixed_rows(vocab: int, seed: int, prefix_len: int = 24) -> list[tuple[list[int], int]]:
    """Rows that all start with one ``prefix_len``-token prompt prefix (a system prompt), then their own
    context (one row's context ends one token after the prefix: the shared part must stop before it) and
    completion."""
    rng = random.Random(seed)
    prefix = [rng.randrange(4, vocab) for _ in range(prefix_len)]
    rows = []
    for own in (1, 5, 17, 3, 30, 9, 2):
        ctx = prefix + [rng.randrange(4, vocab) for _ in range(own)]
        rows.append((ctx + [rng.randrange(4, vocab) for _ in range(rng.randint(1, 20))], len(ctx)))
    return rows


def test_a_prompt_prefix_every_row_shares_is_computed_once(backend, monkeypatch):
    model = backend.model
    rows = prefixed_rows(backend.vocab_size, seed=5)
    spy = ForwardSpy(model)
    per_row = likelihood.masked_mean_nll(model, rows, backend._pad_id(), batch_size=3)
    pooled = likelihood.token_mean_nll(model, rows, backend._pad_id(), batch_size=3)
    model.forward = spy.real
    want = [reference_nll(model, ids, n_ctx) for ids, n_ctx in rows]
    assert per_row == [pytest.approx(w, abs=1e-9) for w in want]
    total = sum(w * (len(ids) - n_ctx) for w, (ids, n_ctx) in zip(want, rows, strict=True))
    assert pooled == pytest.approx(total / sum(len(ids) - n_ctx for ids, n_ctx in rows), abs=1e-9)
    # Each pass: the 24-token prefix once (one row; its last token left to the row with 1 token of its
    # own), then batches of the rows' own tokens only.
    prefix_passes = [(w, n) for (w, keep), n in zip(spy.calls, spy.rows, strict=True) if keep == 1]
    assert prefix_passes == [(24, 1), (24, 1)]
    longest = max(len(ids) for ids, _ in rows)
    assert all(w <= longest - 24 for (w, keep) in spy.calls if keep != 1)
    # Switched off, or a row whose completion starts at its first token: no shared pass, same numbers.
    monkeypatch.setenv("ADAPTBENCH_PREFIX_CACHE", "0")
    spy = ForwardSpy(model)
    assert likelihood.masked_mean_nll(model, rows, backend._pad_id(), 3) == [
        pytest.approx(w, abs=1e-9) for w in per_row
    ]
    model.forward = spy.real
    assert all(w > 24 for w, _ in spy.calls[:1]) and not any(keep == 1 for _, keep in spy.calls)
    monkeypatch.delenv("ADAPTBENCH_PREFIX_CACHE")
    spy = ForwardSpy(model)
    odd = rows + [(rows[0][0], 0)]
    got = likelihood.masked_mean_nll(model, odd, backend._pad_id(), 3)
    model.forward = spy.real
    assert not any(keep == 1 for _, keep in spy.calls)
    assert got[-1] == pytest.approx(reference_nll(model, rows[0][0], 0), abs=1e-9)
