"""Whole runs on the ``openai`` backend against the fake server, including a server that dies mid-run."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from harness.config import load_config
from harness.errors import ModelError
from harness.runner import run
from tests.conftest import TOY_SET
from tests.support.fake_openai import FakeOpenAI

N_TEST = sum(1 for line in (TOY_SET / "test.jsonl").read_text().splitlines() if line.strip())


@pytest.fixture()
def fake():
    server = FakeOpenAI().start()
    yield server
    server.stop()


def served_config(tmp_path: Path, url: str, **model) -> Path:
    data = {
        "model": {"backend": "openai", "base_url": url, "id": "tiny", "concurrency": 2, **model},
        "eval_set": {"path": str(TOY_SET)},
        "strategies": [{"name": "prompt", "id": "zero_shot"}],
        "generation": {"max_new_tokens": 6, "batch_size": 2},
        "latency_probe": {"requests": 2, "warmup": 0},
        "metrics": ["token_f1", "exact_match"],
        "primary_metric": "token_f1",
        "output_dir": str(tmp_path / "reports"),
        "cache_dir": str(tmp_path / "cache"),
    }
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def predictions(run_dir: Path) -> list[dict]:
    lines = (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def assert_each_example_once(run_dir: Path) -> None:
    recs = predictions(run_dir)
    counts = Counter(r["example_id"] for r in recs)
    assert len(counts) == N_TEST and set(counts.values()) == {1}, counts
    for r in recs:
        assert r["prediction"].startswith("echo:") and r["new_tokens"] > 0


def test_served_run_end_to_end(tmp_path, fake):
    config_path = served_config(tmp_path, fake.url)
    result = run(load_config(config_path), config_path=config_path, progress=False)
    assert_each_example_once(result.run_dir)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["model"]["backend"] == "openai" and manifest["model"]["base_urls"] == [fake.url]
    latency = [json.loads(x) for x in (result.run_dir / "latency.jsonl").read_text().splitlines()]
    assert latency and all(t["ttft_s"] is not None for t in latency)  # streamed in the probe


def test_server_killed_mid_run_is_waited_for(tmp_path, fake):
    """The server dies after 3 answers and is back on the same port a moment later: the run retries,
    carries on, and predictions.jsonl holds every example exactly once."""
    fake.stop_after = 3
    port = fake.port

    def restart() -> None:
        while fake._server is not None:  # wait for the scripted stop
            time.sleep(0.02)
        time.sleep(0.4)
        fake.start(port=port)

    threading.Thread(target=restart, daemon=True).start()
    config_path = served_config(tmp_path, fake.url, max_retries=8, retry_backoff_s=0.1)
    result = run(load_config(config_path), config_path=config_path, progress=False)
    assert fake.answered > 3  # it really went down and came back
    assert_each_example_once(result.run_dir)


def test_server_down_too_long_stops_then_resume_finishes(tmp_path, fake):
    """Past the retries the run stops with one clear error; re-running into the folder finishes the
    rest, recomputing nothing that was already written."""
    fake.stop_after = 4
    config_path = served_config(tmp_path, fake.url, max_retries=1, retry_backoff_s=0.01)
    run_dir = tmp_path / "reports" / "resume"
    with pytest.raises(ModelError, match="attempts to reach .* failed"):
        run(load_config(config_path), config_path=config_path, run_dir=run_dir, progress=False)
    written = {r["example_id"] for r in predictions(run_dir)}
    assert 0 < len(written) < N_TEST
    fake.start(port=fake.port)
    before = len(fake.requests)
    run(load_config(config_path), config_path=config_path, run_dir=run_dir, progress=False)
    assert_each_example_once(run_dir)
    asked = [r for r in fake.requests[before:] if not r["stream"]]  # the batched pass, not the probe
    # Only the missing examples are asked again (a retried request may repeat one of them; an answered
    # example is never asked again).
    asked_text = [r["messages"][-1]["content"] for r in asked]

    def was_asked(question: str) -> bool:
        return any(question in text for text in asked_text)

    final = predictions(run_dir)
    missing = [r for r in final if r["example_id"] not in written]
    assert len(missing) == N_TEST - len(written)
    assert all(was_asked(r["question"]) for r in missing)
    assert not any(was_asked(r["question"]) for r in final if r["example_id"] in written)
