"""Performance mechanics on the tiny model: length-sorted batches leave answers and files unchanged,
stop strings end rows inside ``generate``, the training copy is freed, a batch's queries are encoded once,
phases record what malloc still holds."""

from __future__ import annotations

import gc
import json
import sys
import weakref

import pytest

from harness import batching, memory, phases
from harness import plugin as registry
from harness.backends.base import cut_at_stop
from harness.backends.hf import TransformersBackend
from harness.backends.loading import load_model
from harness.config import GenerationConfig, ModelConfig, load_config
from harness.data import load_eval_set
from harness.runner import open_context, run

PROMPT = [{"role": "user", "content": "What is the return window?"}]


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_sorted_batches_give_identical_answers_in_example_order(write_config, tmp_path, monkeypatch):
    strategies = [{"name": "prompt", "id": "zero"}, {"name": "prompt", "id": "few", "shots": 2}]
    cfg = load_config(write_config(strategies=strategies, generation={"batch_size": 2, "max_new_tokens": 6}))
    cfg.latency_probe.requests = 0
    cfg.metrics = ["exact_match", "token_f1"]

    seen: list[list[str]] = []
    real_order = batching.batch_order

    def spy(strategy, todo):
        out = real_order(strategy, todo)
        seen.append([ex["id"] for ex in out])
        return out

    monkeypatch.setattr("harness.runner.batch_order", spy)
    monkeypatch.setattr(batching, "SORT_BY_LENGTH", False)
    plain = run(cfg, run_dir=tmp_path / "plain", progress=False).run_dir
    monkeypatch.setattr(batching, "SORT_BY_LENGTH", True)
    sorted_ = run(cfg, run_dir=tmp_path / "sorted", progress=False).run_dir

    # Sorting really changed which examples share a batch (else this test proves nothing) ...
    assert seen[0] == seen[1] and seen[2] != seen[0]
    a, b = _lines(plain / "predictions.jsonl"), _lines(sorted_ / "predictions.jsonl")
    # ... yet the file lists the same examples in the same order with the same answers and tokens.
    keys = ("strategy", "example_id", "prediction", "new_tokens", "prompt_tokens")
    assert [{k: r[k] for k in keys} for r in a] == [{k: r[k] for k in keys} for r in b]
    manifest = json.loads((sorted_ / "manifest.json").read_text())
    assert {"load", "prepare", "generate", "score", "report"} <= set(manifest["phases"])
    assert all(p["seconds"] >= 0 and p["peak_rss_bytes"] > 0 for p in manifest["phases"].values())


def test_restore_order_keeps_other_strategies_and_resumed_lines(tmp_path):
    path = tmp_path / "predictions.jsonl"
    recs = [("a", "e1"), ("b", "e3"), ("b", "e1"), ("a", "e2"), ("b", "e2")]
    path.write_text("".join(json.dumps({"strategy": s, "example_id": e}) + "\n" for s, e in recs))
    batching.restore_order(path, "b", [{"id": "e1"}, {"id": "e2"}, {"id": "e3"}])
    got = [(r["strategy"], r["example_id"]) for r in _lines(path)]
    assert got == [("a", "e1"), ("b", "e1"), ("b", "e2"), ("a", "e2"), ("b", "e3")]


def test_stop_string_ends_the_row_inside_generate(tiny_model_dir, tmp_path):
    backend = TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path))
    backend.continuous = (
        False  # batches through model.generate (the continuous path: tests/test_continuous.py)
    )
    tok = backend.tokenizer
    free = backend.generate([PROMPT], GenerationConfig(max_new_tokens=12)).generations[0]
    assert free.new_tokens == 12, "the tiny model must write all 12 tokens without a stop"
    inputs, _, _ = backend._encode([PROMPT], 12)
    row = backend.model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    row = row[0, inputs["input_ids"].shape[1] :].tolist()
    raw = tok.decode(row, skip_special_tokens=True)
    stop = raw[len(raw) // 3 : len(raw) // 3 + 2]  # the tiny model writes newlines: this is "\n\n"
    assert len(stop) == 2
    expected = next(
        j + 1 for j in range(len(row)) if stop in tok.decode(row[: j + 1], skip_special_tokens=True)
    )
    assert expected < 12

    calls = []
    real_generate = backend.model.generate

    def counting(**kw):
        out = real_generate(**kw)
        calls.append(out.shape[1] - kw["input_ids"].shape[1])
        return out

    backend.model.generate = counting
    params = GenerationConfig(max_new_tokens=12, stop=[stop])
    stopped = backend.generate([PROMPT], params).generations[0]
    # Same answer as generating everything and cutting afterwards ...
    assert stopped.text == cut_at_stop(raw, [stop])
    # ... but generate itself stopped at the token completing the stop string, and records only those.
    assert stopped.new_tokens == expected and calls == [expected]
    # In a batch, a stopped row records its own tokens (the pads after it are not counted).
    other = [{"role": "user", "content": "How big is the battery of the Stratus?"}]
    batch = backend.generate([PROMPT, other], params)
    assert batch.generations[0].new_tokens == expected and batch.generations[0].text == stopped.text
    assert calls[-1] < 12  # every row stopped: the batch ended early


def test_prompt_tokenised_once_for_sorting_and_generation(tiny_model_dir, tmp_path):
    backend = TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path))
    calls = []
    tok = backend.tokenizer
    real_call = type(tok).__call__

    class Counting(type(tok)):
        def __call__(self, *args, **kw):
            calls.append(args[0] if args else kw.get("text"))
            return real_call(self, *args, **kw)

    tok.__class__ = Counting
    try:
        n = backend.count_tokens(backend.render(PROMPT))
        gen = backend.generate([PROMPT], GenerationConfig(max_new_tokens=2)).generations[0]
    finally:
        tok.__class__ = Counting.__mro__[1]
    assert gen.prompt_tokens == n and len(calls) == 1


@pytest.mark.slow
def test_training_copy_is_freed_after_prepare(write_config, tmp_path, monkeypatch):
    from strategies.adapters import quantized

    spec = {"name": "qlora", "id": "qlora", "max_steps": 2, "batch_size": 3, "eval_steps": 2}
    cfg = load_config(write_config(strategies=[spec]))
    ctx = open_context(cfg, load_eval_set(cfg.eval_set.path), tmp_path / "run")
    refs = []
    real_load = quantized.load_training_base

    def tracking(backend, params):
        loaded, quant, reason = real_load(backend, params)
        refs.append(weakref.ref(loaded.model))
        return loaded, quant, reason

    monkeypatch.setattr("strategies.adapters.trainer.load_training_base", tracking)
    phases.reset()
    strategy = registry.build(cfg.strategies[0], 0)
    strategy.prepare(ctx)
    gc.collect()
    assert len(refs) == 1
    assert refs[0]() is None, "the 4-bit training copy is still reachable after prepare"
    assert strategy.adapter is not None  # the adapter lives on the shared base instead
    assert phases.totals()["train"]["calls"] == 1


def test_rag_batch_encodes_its_questions_once(write_config, tmp_path):
    spec = {"name": "rag", "id": "rag", "top_k": 2, "context_sentences": 2}
    cfg = load_config(write_config(strategies=[spec]))
    ctx = open_context(cfg, load_eval_set(cfg.eval_set.path), tmp_path / "run")
    strategy = registry.build(cfg.strategies[0], 0)
    strategy.prepare(ctx)
    examples = list(ctx.eval_set.split("test"))[:4]
    embedder = strategy.retriever.embedder
    batches: list[list[str]] = []
    real_encode = embedder.encode

    def counting(texts, **kw):
        batches.append(list(texts))
        return real_encode(texts, **kw)

    embedder.encode = counting
    try:
        answers = strategy.predict(examples)
    finally:
        del embedder.encode  # the embedder is cached and shared: restore the class method
    questions = [ex["question"] for ex in examples]
    assert len(answers) == 4
    # One call for the batch's questions (search and sentence selection share it), one for sentences.
    assert sum(b == questions for b in batches) == 1 and len(batches) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallinfo2 is glibc's")
def test_phase_records_what_malloc_still_holds_at_its_end():
    """``end_heap_in_use_bytes`` counts memory held past a phase (a cache, a leak), which RSS alone does not
    tell from free memory the allocator keeps."""
    if memory.heap_in_use_bytes() is None:
        pytest.skip("glibc without mallinfo2 (< 2.33)")
    phases.reset()
    with phases.phase("light"):
        pass
    held = []
    with phases.phase("holds"):
        held.append(bytearray(64 << 20))  # malloc'd by Python, kept past the phase
    totals = phases.totals()
    grew = totals["holds"]["end_heap_in_use_bytes"] - totals["light"]["end_heap_in_use_bytes"]
    assert 60 << 20 <= grew < 80 << 20
    held.clear()
    with phases.phase("freed"):
        pass
    assert phases.totals()["freed"]["end_heap_in_use_bytes"] < totals["holds"]["end_heap_in_use_bytes"] - (
        60 << 20
    )


@pytest.mark.slow
def test_a_run_without_adapters_imports_neither_peft_nor_bitsandbytes(write_config, tmp_path):
    """Importing peft (and bitsandbytes with it) costs seconds at every start: a run that loads no
    adapter, and an error found on opening the model, must not pay it (a fresh interpreter, since this
    one has imported everything)."""
    import subprocess

    from tests.conftest import REPO

    cfg = write_config(metrics=["exact_match", "token_f1"])
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom harness.cli import main\n"
        f"res = CliRunner().invoke(main, ['run', {str(cfg)!r}, '--out', {str(tmp_path / 'out')!r}, '--no-progress'])\n"
        "print(res.output)\n"
        "print(res.exit_code, *sorted(m for m in ('peft', 'bitsandbytes', 'trl') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    assert proc.stdout.split()[-1:] == ["0"], proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "out" / "report.html").is_file()
