"""The serving-style latency probe: single requests through each strategy's whole pipeline."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from click.testing import CliRunner

from harness.cli import main
from harness.latency import mark_first_token, probe_sample, run_probe


@dataclass
class _Answer:
    new_tokens: int


class _Sleepy:
    """A strategy whose pipeline takes ``before`` s, then 'generates' ``tokens`` at ``per_token`` s each."""

    def __init__(self, sid: str, before: float, per_token: float, tokens: int, calls: list[str]):
        self.id, self.before, self.per_token, self.tokens, self.calls = sid, before, per_token, tokens, calls

    def predict(self, batch):
        assert len(batch) == 1, "the probe sends one request at a time"
        self.calls.append(self.id)
        time.sleep(self.before)
        mark_first_token()
        time.sleep(self.per_token * (self.tokens - 1))
        return [_Answer(self.tokens)]


def test_probe_times_the_whole_pipeline_interleaved_with_warmup_discarded():
    calls: list[str] = []
    slow_retrieval = _Sleepy("rag", before=0.05, per_token=0.002, tokens=6, calls=calls)
    plain = _Sleepy("prompt", before=0.0, per_token=0.002, tokens=6, calls=calls)
    examples = [{"id": f"e{i}"} for i in range(10)]
    timings = run_probe([plain, slow_retrieval], examples, requests=4, warmup=2, seed=0, progress=False)
    assert len(calls) == (4 + 2) * 2  # warm-up requests are sent but not returned
    assert len(timings) == 4 * 2 and {t.round for t in timings} == {0, 1, 2, 3}
    # Round-robin, rotated: neither strategy always goes first.
    firsts = {calls[2 * r] for r in range(6)}
    assert firsts == {"rag", "prompt"}
    rag = [t for t in timings if t.strategy == "rag"]
    prompt = [t for t in timings if t.strategy == "prompt"]
    # Work before generation (retrieval) counts in time to first token and end-to-end time.
    assert min(t.ttft_s for t in rag) >= 0.05 > max(t.ttft_s for t in prompt)
    for t in timings:
        assert t.ttft_s <= t.e2e_s and t.new_tokens == 6
        assert abs(t.tpot_s - (t.e2e_s - t.ttft_s) / 5) < 1e-12
    # Every strategy gets the same seeded sample of examples.
    assert [t.example_id for t in rag] == [t.example_id for t in prompt]
    assert [e["id"] for e in probe_sample(examples, 4, 0)] == sorted({t.example_id for t in rag})


def test_probe_order_is_carryover_balanced():
    """Over the rounds of its design every strategy goes first equally often and follows every other one
    equally often (a plain rotation had each always follow the same one: prompt always came right after the
    adapter strategy whose merged weights it had to put back)."""
    from collections import Counter

    calls: list[str] = []
    names = ["a", "b", "c", "d", "e"]
    strategies = [_Sleepy(n, before=0.0, per_token=0.0, tokens=2, calls=calls) for n in names]
    examples = [{"id": f"e{i}"} for i in range(10)]
    run_probe(strategies, examples, requests=10, warmup=0, seed=0, progress=False)
    rounds = [calls[i : i + 5] for i in range(0, len(calls), 5)]
    assert all(sorted(r) == names for r in rounds)
    assert set(Counter(r[0] for r in rounds).values()) == {2}
    follows = Counter((x, y) for r in rounds for x, y in zip(r, r[1:], strict=False))
    assert len(follows) == 20 and set(follows.values()) == {2}


def test_no_first_token_mark_means_unknown_ttft_not_zero():
    class NoStream:
        id = "served"

        def predict(self, batch):
            return [_Answer(3)]

    (t,) = run_probe([NoStream()], [{"id": "a"}], requests=1, warmup=0, seed=0, progress=False)
    assert t.ttft_s is None and t.tpot_s is None and t.e2e_s > 0


def probed_run(write_config, out, strategies):
    """Run ``strategies`` with a 3-request probe (1 warm-up) into ``out``; (config path, latency rows)."""
    cfg = write_config(
        strategies=strategies,
        latency_probe={"requests": 3, "warmup": 1},
        metrics=["token_f1"],
        primary_metric="token_f1",
    )
    res = CliRunner().invoke(main, ["run", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return cfg, [json.loads(line) for line in (out / "latency.jsonl").read_text().splitlines()]


def test_run_writes_latency_probe_for_every_strategy_and_resume_skips_it(write_config, tmp_path):
    out = tmp_path / "run"
    cfg, rows = probed_run(
        write_config, out, [{"name": "prompt", "id": "zero"}, {"name": "rag", "id": "rag", "top_k": 2}]
    )
    assert sorted({r["strategy"] for r in rows}) == ["rag", "zero"] and len(rows) == 6
    for r in rows:  # the transformers backend reports the first token through the streamer
        assert r["ttft_s"] is not None and 0 < r["ttft_s"] <= r["e2e_s"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["latency_probe"]["status"] == "done" and manifest["latency_probe"]["requests_timed"] == 6
    before = (out / "latency.jsonl").read_text()
    res = CliRunner().invoke(main, ["run", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (out / "latency.jsonl").read_text() == before  # not re-probed on resume


def test_base_strategies_probe_requests_reuse_the_prefix_cache_after_an_adapter_loads(write_config, tmp_path):
    """The run loads the adapter after the few-shot strategy's batched pass; that load used to empty the
    prefix cache, so the probe timed the few-shot requests with whole-prompt prefills while the adapter's
    requests hit their entry. Every timed request of the few-shot strategy now reports the cached prefix."""
    adapter = {"max_steps": 2, "batch_size": 2, "learning_rate": 0.005, "eval_steps": 2}
    strategies = [
        {"name": "prompt", "id": "few", "shots": 2},
        {"name": "qlora", "id": "tuned", "quantization": "none", "merge": True, **adapter},
    ]
    _, rows = probed_run(write_config, tmp_path / "run", strategies)
    few = [r["cached_prefix_tokens"] for r in rows if r["strategy"] == "few"]
    assert len(few) == 3 and min(few) >= 32, few
    assert all(isinstance(r["cached_prefix_tokens"], int) for r in rows)
