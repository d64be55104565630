"""Whole runs on llama.cpp for real: the demo (prompt + rag, a few examples) on the in-process
``llama_cpp`` backend and on the ``openai`` backend against a ``llama_cpp.server`` subprocess; and a served
run whose server is SIGKILLed mid-run and restarted on the same port (nothing lost, nothing twice).

Skipped without llama-cpp-python (see docs/scaling.md for the portable wheel).
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from harness.cli import main
from tests.conftest import REPO
from tests.support.llama_server import LlamaServer, missing_server_modules

DEMO = REPO / "configs" / "demo.yaml"
LIMIT = 4

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="llama-cpp-python not installed (optional; build the portable wheel, see docs/scaling.md)",
    ),
]


@pytest.fixture()
def server():
    if missing_server_modules():
        pytest.skip(f"llama-cpp-python[server] not installed (missing {', '.join(missing_server_modules())})")
    srv = LlamaServer().start()
    yield srv
    srv.stop()


def demo_config(tmp_path: Path, model: dict, **extra) -> Path:
    """configs/demo.yaml with its prompt and rag strategies, short answers, a small latency probe, and
    the metrics a backend without log-likelihoods can compute (no coherence)."""
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    data["model"] = model
    data["eval_set"]["path"] = str((DEMO.parent / data["eval_set"]["path"]).resolve())
    data["strategies"] = [s for s in data["strategies"] if s["id"] in ("prompt", "rag")]
    data["generation"].update(max_new_tokens=16, batch_size=4)
    data["latency_probe"] = {"requests": 1, "warmup": 0}
    data["metrics"] = ["token_f1", "fact_accuracy", "exact_match", "recall_at_k"]
    data["output_dir"] = str(tmp_path / "reports")
    data.update(extra)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def run_cli(path: Path, *args: str) -> Path:
    out = path.parent / "run"
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out), *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def assert_demo_run(run_dir: Path, backend: str) -> dict:
    recs = records(run_dir)
    pairs = Counter((r["strategy"], r["example_id"]) for r in recs)
    assert len(pairs) == 2 * LIMIT and set(pairs.values()) == {1}
    assert all(r["prediction"].strip() and r["new_tokens"] > 0 for r in recs)
    assert all(r["retrieved_ids"] for r in recs if r["strategy"] == "rag")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["model"]["backend"] == backend
    scores = json.loads((run_dir / "scores.json").read_text())
    text = json.dumps(scores)
    assert "token_f1" in text and "recall_at_k" in text
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert f"{backend} backend" in html
    latency = [json.loads(x) for x in (run_dir / "latency.jsonl").read_text().splitlines() if x.strip()]
    assert latency and all(t["ttft_s"] is not None for t in latency)  # streamed: first token seen
    return manifest


def test_demo_on_llama_cpp_in_process(tmp_path):
    path = demo_config(tmp_path, {"backend": "llama_cpp"})
    manifest = assert_demo_run(run_cli(path, "--limit", str(LIMIT)), "llama_cpp")
    assert manifest["model"]["render"] == "GGUF chat template"
    assert manifest["model"]["source"].endswith(".gguf")


def test_demo_on_openai_backend_against_llama_cpp_server(tmp_path, server):
    model = {"backend": "openai", "base_url": server.url, "id": "smollm2", "concurrency": 2}
    manifest = assert_demo_run(run_cli(demo_config(tmp_path, model), "--limit", str(LIMIT)), "openai")
    assert manifest["model"]["base_urls"] == [server.url]


def test_adapter_strategy_on_llama_cpp_server_is_one_clear_line(tmp_path, server):
    """The demo's qlora strategy cannot run on a server; the error says to name a served adapter."""
    model = {"backend": "openai", "base_url": server.url, "id": "smollm2"}
    path = demo_config(tmp_path, model)
    data = yaml.safe_load(path.read_text())
    data["strategies"] += [s for s in yaml.safe_load(DEMO.read_text())["strategies"] if s["id"] == "qlora"]
    path.write_text(yaml.safe_dump(data))
    for command in (["validate", str(path)], ["run", str(path), "--limit", "2"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
        assert "'qlora' needs a backend with AdapterHost" in line and "served_adapter" in line
    # llama-cpp-python's server answers any model name with its base model: a served adapter name it
    # does not list is refused instead of silently evaluating the base.
    data["strategies"][-1]["served_adapter"] = "support-lora"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["run", str(path), "--limit", "2"])
    assert result.exit_code == 2 and "served_adapter: 'support-lora' is not served" in result.output


def test_server_killed_mid_run_and_restarted(tmp_path, server):
    """SIGKILL the real server once a few predictions are on disk, restart it on the same port: the run
    retries through the outage and predictions.jsonl holds each strategy x example exactly once."""
    n, strategies = 8, ["zero_shot", "terse"]
    data = {
        "model": {
            "backend": "openai",
            "base_url": server.url,
            "id": "smollm2",
            "concurrency": 2,
            "max_retries": 10,
            "retry_backoff_s": 0.2,
        },
        "eval_set": {"path": str(REPO / "eval_sets" / "nimbus_support"), "limit": n},
        "strategies": [
            {"name": "prompt", "id": "zero_shot"},
            {"name": "prompt", "id": "terse", "system_prompt": "Answer in five words or fewer."},
        ],
        "generation": {"max_new_tokens": 16, "batch_size": 2},
        "latency_probe": {"requests": 0},
        "metrics": ["token_f1"],
        "primary_metric": "token_f1",
        "output_dir": str(tmp_path / "reports"),
    }
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = tmp_path / "run"
    seen: dict[str, int] = {}

    def kill_and_restart() -> None:
        preds = out / "predictions.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            lines = preds.read_text().count("\n") if preds.is_file() else 0
            if lines >= 4:
                seen["at_kill"] = lines
                server.kill()
                time.sleep(0.5)
                server.start()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_and_restart, daemon=True)
    watcher.start()
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out)])
    watcher.join(timeout=120)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert 4 <= seen.get("at_kill", 0) < 2 * n, seen  # it really died mid-run
    pairs = Counter((r["strategy"], r["example_id"]) for r in records(out))
    assert set(pairs) == {(s, f"te-{i:04d}") for s in strategies for i in range(1, n + 1)}
    assert set(pairs.values()) == {1}
    assert all(r["prediction"].strip() for r in records(out))
