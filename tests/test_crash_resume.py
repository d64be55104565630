"""Real processes, real signals: SIGKILL / SIGTERM mid-strategy and mid-training, then resume; two runs
at once on one cache. The tiny model keeps each under a minute."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from harness.cli import main
from tests.conftest import REPO, TOY_SET

pytestmark = pytest.mark.slow

TRAIN = {
    "max_steps": 4,
    "batch_size": 2,
    "learning_rate": 0.005,
    "eval_steps": 2,
    "gradient_checkpointing": False,
}


def _big_set(tmp_path: Path, n: int = 48) -> Path:
    root = tmp_path / "set"
    shutil.copytree(TOY_SET, root)
    rows = [json.loads(x) for x in (TOY_SET / "test.jsonl").read_text().splitlines() if x.strip()]
    with (root / "test.jsonl").open("w") as fh:
        for i in range(n):
            r = dict(rows[i % len(rows)], id=f"big-{i}")
            fh.write(json.dumps(r) + "\n")
    return root


def _config(tmp_path: Path, model: Path, eval_set: Path, strategies, name="cfg.yaml", batch=2) -> Path:
    data = {
        "model": {"id": str(model), "device": "cpu"},
        "eval_set": {"path": str(eval_set)},
        "strategies": strategies,
        "generation": {"max_new_tokens": 4, "batch_size": batch},
        "latency_probe": {"requests": 0},
        "metrics": ["exact_match", "token_f1"],
        "output_dir": str(tmp_path / "reports"),
        "cache_dir": str(tmp_path / "cache"),
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _start(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(cfg), "--out", str(out), "--no-progress", *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended before the kill point (rc {proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("kill point never reached")


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _predictions(out: Path) -> dict[tuple[str, str], str]:
    recs = _lines(out / "predictions.jsonl")
    keys = [(r["strategy"], r["example_id"]) for r in recs]
    assert len(keys) == len(set(keys)), "an example was written twice"
    return {(r["strategy"], r["example_id"]): r["prediction"] for r in recs}


def _finish(cfg: Path, out: Path) -> None:
    """Run (or resume) to the end in this process: the killed one is gone either way, and here the
    imports are warm (a fresh interpreter costs ~6 s of the ~10 s of each such run)."""
    res = CliRunner().invoke(main, ["run", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    """An uninterrupted run to compare against (one per module: the runs under test write elsewhere, and
    a prompt-only run leaves nothing in the shared cache that changes their answers)."""
    root = tmp_path_factory.mktemp("reference")
    eval_set = _big_set(root)
    cfg = _config(root, tiny_model_dir, eval_set, [{"name": "prompt", "id": "p"}])
    _finish(cfg, root / "ref")
    return cfg, _predictions(root / "ref")


def test_sigkill_mid_strategy_then_resume_matches_uninterrupted(reference, tmp_path):
    cfg, expected = reference
    out = tmp_path / "killed"
    proc = _start(cfg, out)
    _wait_for(lambda: len(_lines(out / "predictions.jsonl")) >= 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(_predictions(out))
    assert 0 < done_before < len(expected)
    _finish(cfg, out)
    assert _predictions(out) == expected  # identical, and each example exactly once


def test_sigterm_finishes_batch_prints_resume_and_exits_143(reference, tmp_path):
    cfg, expected = reference
    out = tmp_path / "termed"
    proc = _start(cfg, out)
    _wait_for(lambda: len(_lines(out / "predictions.jsonl")) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert f"Resume with: adaptbench run {cfg} --out {out}" in stderr
    assert "Traceback" not in stderr
    n = len(_predictions(out))
    assert n % 2 == 0 and 0 < n < len(expected)  # whole batches only
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running"
    _finish(cfg, out)
    assert _predictions(out) == expected


def test_sigkill_mid_training_never_publishes_half_an_adapter(tmp_path, tiny_model_dir):
    cfg = _config(
        tmp_path, tiny_model_dir, TOY_SET, [{"name": "qlora", "id": "q", "quantization": "none", **TRAIN}]
    )
    adapters = tmp_path / "cache" / "adapters"
    out = tmp_path / "killed"
    proc = _start(cfg, out)
    _wait_for(lambda: adapters.is_dir() and any(p.name.startswith(".tmp-") for p in adapters.iterdir()), proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    published = [p for p in adapters.iterdir() if not p.name.startswith(".")]
    assert published == []  # the staging folder is never the cache entry
    _finish(cfg, out)
    entries = [p for p in adapters.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "adapter_model.safetensors").is_file()
    assert (entries[0] / "training_record.json").is_file()
    fresh = tmp_path / "fresh"
    shutil.rmtree(tmp_path / "cache" / "adapters")
    _finish(cfg, fresh)
    assert _predictions(out) == _predictions(fresh)


def test_two_runs_at_once_share_the_cache_and_build_once(tmp_path, tiny_model_dir):
    strategies = [{"name": "rag", "id": "r"}, {"name": "qlora", "id": "q", "quantization": "none", **TRAIN}]
    cfg = _config(tmp_path, tiny_model_dir, TOY_SET, strategies, batch=4)
    procs = [_start(cfg, tmp_path / f"run{i}") for i in range(2)]
    results = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    rag = [
        json.loads((tmp_path / f"run{i}" / "manifest.json").read_text())["strategies"]["r"]["cost"]
        for i in range(2)
    ]
    index_states = sorted(c.get("index_cache") or c.get("cache") for c in rag)
    assert index_states[0] == "hit" and index_states[1] in ("miss", "partial"), rag
    trained = [json.loads((tmp_path / f"run{i}" / "training" / "q.json").read_text()) for i in range(2)]
    sources = sorted(t.get("source") for t in trained)
    assert sources == ["cache", "trained"], sources
    assert len(list((tmp_path / "cache" / "indexes").glob("[!.]*"))) == 1
    assert _predictions(tmp_path / "run0") == _predictions(tmp_path / "run1")
