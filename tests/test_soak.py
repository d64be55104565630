"""Soak: 2,000 synthetic examples through prompt and rag on the tiny model, in one process, watching
resident memory and open file descriptors between the first and the second half of the run."""

from __future__ import annotations

import json
import shutil

import psutil
import pytest

from harness.config import load_config
from harness.runner import run
from tests.conftest import TOY_SET

pytestmark = pytest.mark.slow

N = 2000


def test_soak_memory_flat_and_no_fd_leak(write_config, tmp_path, cache_dir):
    root = tmp_path / "soak"
    shutil.copytree(TOY_SET, root)
    base = [json.loads(x) for x in (TOY_SET / "test.jsonl").read_text().splitlines() if x.strip()]
    with (root / "test.jsonl").open("w") as fh:
        for i in range(N):
            fh.write(
                json.dumps(
                    dict(base[i % len(base)], id=f"s-{i}", question=f"{base[i % len(base)]['question']} #{i}")
                )
                + "\n"
            )
    cfg = write_config(
        strategies=[{"name": "prompt", "id": "p"}, {"name": "rag", "id": "r"}],
        eval_set={"path": str(root)},
        generation={"max_new_tokens": 2, "batch_size": 32},
        latency_probe={"requests": 0},
        metrics=["exact_match"],
        primary_metric="exact_match",
    )
    proc = psutil.Process()
    samples: list[tuple[str, int, int]] = []

    def on_done(sid, cost):
        samples.append((sid, proc.memory_info().rss, proc.num_fds()))

    # warm-up run on a slice so one-off allocations (model, index, tokenizer caches) are not "growth"
    run(load_config(cfg, {"eval_set.limit": 64}), config_path=cfg, run_dir=tmp_path / "warm", progress=False)
    rss0, fds0 = proc.memory_info().rss, proc.num_fds()
    run(load_config(cfg), config_path=cfg, run_dir=tmp_path / "run", progress=False, on_strategy_done=on_done)
    rss1, fds1 = proc.memory_info().rss, proc.num_fds()
    preds = (tmp_path / "run" / "predictions.jsonl").read_text().count("\n")
    assert preds == 2 * N
    growth_mb = (rss1 - rss0) / 2**20
    print(f"soak: rss {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB (+{growth_mb:.0f}); fds {fds0} -> {fds1}")
    assert growth_mb < 300, samples  # 4,000 predictions held in memory are a few MiB
    assert fds1 <= fds0 + 5, (fds0, fds1, samples)
