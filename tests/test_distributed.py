"""Data-parallel evaluation and DDP adapter training under ``torchrun`` (gloo on CPU) on the tiny model.

The multi-process tests start ``torchrun --standalone --nproc_per_node 2 -m harness.cli ...`` and
compare its run folder with a single-process run of the same config; the sharding helpers are tested
without processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from harness import distributed
from harness.cli import main
from tests.conftest import REPO

TIMING = {"latency_s", "batch_seconds", "generation_seconds", "batch_size"}


# -- helpers without processes ------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 5, 6, 7, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_and_unshard_cover_every_item_once_in_order(n, world):
    items = list(range(n))
    shards = [distributed.shard(items, r, world) for r in range(world)]
    assert sorted(distributed.flatten(shards)) == items  # each item on exactly one rank
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    assert distributed.unshard(shards) == items


@pytest.mark.parametrize(("n", "size", "world"), [(5, 2, 2), (6, 2, 2), (7, 3, 2), (1, 4, 3), (0, 2, 2)])
def test_shard_batches_give_every_rank_the_same_number_of_rounds(n, size, world):
    items = list(range(n))
    per_rank = [list(distributed.shard_batches(items, size, r, world)) for r in range(world)]
    rounds = {len(b) for b in per_rank}
    assert len(rounds) == 1  # a gather per round never waits for a finished rank
    assert all(len(batch) <= size for batches in per_rank for batch in batches)
    got = [x for batches in per_rank for batch in batches for x in batch]
    assert sorted(got) == items
    # each rank's batches, concatenated, are its round-robin shard (length order preserved)
    for r, batches in enumerate(per_rank):
        assert distributed.flatten(batches) == items[r::world]


def test_single_process_path_is_a_no_op(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    import torch.distributed as dist

    distributed.init()
    assert not dist.is_initialized()
    assert (distributed.world_size(), distributed.rank(), distributed.local_rank()) == (1, 0, 0)
    assert distributed.is_main() and not distributed.active()
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.all_gather_objects(3) == [3]
    assert distributed.broadcast_object([1, 2]) == [1, 2]
    distributed.barrier()
    distributed.finish()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    distributed.init()
    assert not dist.is_initialized() and not distributed.is_distributed()


def test_rank_facts_come_from_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (distributed.world_size(), distributed.rank(), distributed.local_rank()) == (4, 2, 1)
    assert distributed.is_distributed() and not distributed.is_main()
    assert not distributed.active()  # no process group until init()


def test_adapter_cache_key_separates_ddp_training(monkeypatch):
    """A DDP adapter (global batch x world size) never answers for a single-process one."""
    from strategies.adapters.cache import cache_key
    from strategies.adapters.params import TrainParams

    backend = SimpleNamespace(
        base_fingerprint=lambda: {"id": "m"}, device="cpu", describe=lambda: {"dtype": "float32"}
    )
    ctx = SimpleNamespace(backend=backend, seed=0)
    data = SimpleNamespace(digest="d")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    single = cache_key(ctx, TrainParams(), data)
    monkeypatch.setenv("WORLD_SIZE", "2")
    two = cache_key(ctx, TrainParams(), data)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert len({single, two, cache_key(ctx, TrainParams(), data)}) == 3
    # a bf16 base (bf16 autocast) trains other weights than an fp32 one: never the same cache entry
    monkeypatch.delenv("WORLD_SIZE")
    backend.describe = lambda: {"dtype": "bfloat16"}
    assert cache_key(ctx, TrainParams(), data) != single


# -- real processes -----------------------------------------------------------------------------


def torchrun(
    *args: str, cache: Path, target: tuple[str, ...] = ("-m", "harness.cli")
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "ADAPTBENCH_CACHE": str(cache),
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    res = subprocess.run(
        [*cmd, *target, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


def _lines(run_dir: Path) -> list[dict]:
    lines = (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _per_example(run_dir: Path) -> dict:
    scores = json.loads((run_dir / "scores.json").read_text())
    return {sid: s["per_example"] for sid, s in scores["strategies"].items()}


FINISH = """
import json, sys, time
from pathlib import Path
from harness import distributed

distributed.init()
if distributed.is_main():
    time.sleep(2.0)  # rank 0's latency probe, scoring and report, alone
start = time.time()
distributed.finish()
row = {"start": start, "end": time.time(), "up": distributed.active()}
(Path(sys.argv[1]) / f"rank{distributed.rank()}.json").write_text(json.dumps(row))
"""


@pytest.mark.slow
def test_ranks_tear_down_the_process_group_together(tmp_path):
    """A rank done early waits in ``finish`` for rank 0 (through the store, no collective timeout)."""
    script = tmp_path / "finish.py"
    script.write_text(FINISH)
    torchrun(str(tmp_path), cache=tmp_path / "c", target=(str(script),))
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]  # one file per rank
    assert not rows[0]["up"] and not rows[1]["up"]
    assert rows[1]["start"] < rows[0]["start"]  # rank 1 came first ...
    assert rows[1]["end"] >= rows[0]["start"]  # ... and left only once rank 0 was finishing too


@pytest.mark.slow
def test_torchrun_eval_writes_the_same_run_folder(write_config, tmp_path):
    strategies = [
        {"name": "prompt", "id": "zero"},
        {"name": "prompt", "id": "few", "shots": 2},
        {"name": "rag", "id": "rag", "top_k": 2},
    ]
    common = {"generation": {"batch_size": 2}}  # 5 examples over 2 ranks: uneven shards, an empty batch
    one_cfg = write_config(strategies=strategies, name="one.yaml", **common)
    # The 2-process run builds its own retrieval index (cold cache, both ranks preparing).
    two_cfg = write_config(
        strategies=strategies, name="two.yaml", cache_dir=str(tmp_path / "cache2"), **common
    )
    one, two = tmp_path / "one", tmp_path / "two"
    res = CliRunner().invoke(main, ["run", str(one_cfg), "--out", str(one), "--limit", "5", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = torchrun(
        "run", str(two_cfg), "--out", str(two), "--limit", "5", "--no-progress", cache=tmp_path / "c2"
    )
    assert out.stdout.count("run folder:") == 1  # only rank 0 prints

    assert len(_lines(two)) == 15
    assert _lines(two) == _lines(one)  # same lines, same order (timings aside)
    assert _per_example(two) == _per_example(one)
    m_one = json.loads((one / "manifest.json").read_text())
    m_two = json.loads((two / "manifest.json").read_text())
    assert (m_one["world_size"], m_two["world_size"]) == (1, 2)
    assert m_two["status"] == "complete" and set(m_two["strategies"]) == {"zero", "few", "rag"}
    assert m_two["latency_probe"]["status"] == "done" and (two / "latency.jsonl").is_file()
    assert (two / "report.html").is_file() and (two / "decision.json").is_file()
    assert any((tmp_path / "cache2" / "indexes").iterdir())  # built by the 2-process run itself


@pytest.mark.slow
def test_torchrun_resume_shards_only_what_rank_0_finds_missing(write_config, tmp_path):
    cfg = write_config(strategies=[{"name": "prompt", "id": "zero"}], generation={"batch_size": 2})
    one, two = tmp_path / "one", tmp_path / "two"
    res = CliRunner().invoke(main, ["run", str(cfg), "--out", str(one), "--no-progress"])
    assert res.exit_code == 0, res.output
    torchrun("run", str(cfg), "--out", str(two), "--limit", "3", "--no-progress", cache=tmp_path / "c")
    first = {p["example_id"]: p for p in map(json.loads, (two / "predictions.jsonl").open())}
    assert sorted(first) == ["te-1", "te-2", "te-3"]
    torchrun("run", str(cfg), "--out", str(two), "--no-progress", cache=tmp_path / "c")
    after = {p["example_id"]: p for p in map(json.loads, (two / "predictions.jsonl").open())}
    assert all(after[k]["latency_s"] == v["latency_s"] for k, v in first.items())  # reused, not redone
    assert _lines(two) == _lines(one)  # each example once, in example order, same answers
    assert json.loads((two / "manifest.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_ddp_training_matches_single_process_training(write_config, tmp_path):
    """2 ranks x batch 1 vs 1 process x batch 2: the same global batches, so the same adapter.

    Both runs see the same sampler permutation, grouped into the same optimizer steps, with the loss
    normalised by the tokens of the whole global batch (``average_tokens_across_devices``), so the
    only difference is float summation order in the gradient all-reduce. Tolerance: 1e-3 on losses
    (~6.1 here) and 1e-4 on LoRA weights — far below what unsynchronised ranks give (~2e-2 loss).
    """
    from safetensors.torch import load_file

    train = {
        "name": "qlora",
        "id": "qlora",
        "quantization": "4bit",  # bitsandbytes 4-bit NF4 on CPU works under gloo DDP
        "max_steps": 6,
        "learning_rate": 0.005,
        "eval_steps": 3,
        "dropout": 0.0,  # per-rank dropout streams would differ
        "early_stopping_patience": 0,
    }
    # fp32: equal to 1e-4 is a statement about DDP's arithmetic; bf16 autocast (dtype auto on a CPU with
    # native bf16) rounds each rank's partial sums differently and moves weights by ~6e-3.
    light = {"metrics": ["exact_match", "token_f1"], "model": {"dtype": "float32"}}
    one_cfg = write_config(strategies=[{**train, "batch_size": 2}], name="one.yaml", **light)
    two_cfg = write_config(
        strategies=[{**train, "batch_size": 1}], name="two.yaml", cache_dir=str(tmp_path / "cache2"), **light
    )
    res = CliRunner().invoke(main, ["train", str(one_cfg), "--out", str(tmp_path / "t1")])
    assert res.exit_code == 0, res.output
    out = torchrun("train", str(two_cfg), "--out", str(tmp_path / "t2"), cache=tmp_path / "c2")
    assert out.stdout.count("qlora: trained 4bit LoRA, 6 steps") == 1  # rank 0 reports

    r1 = json.loads((tmp_path / "t1" / "training" / "qlora.json").read_text())
    r2 = json.loads((tmp_path / "t2" / "training" / "qlora.json").read_text())
    assert (r1["world_size"], r2["world_size"]) == (1, 2)
    assert r1["global_batch"] == r2["global_batch"] == 2 and r1["steps"] == r2["steps"] == 6
    assert r2["quantization"] == "4bit" and r2["fallback_reason"] is None
    assert r1["key"] != r2["key"]  # the world size is part of the cache key
    for a, b in zip(r1["loss_curve"]["train"], r2["loss_curve"]["train"], strict=True):
        assert a["step"] == b["step"] and abs(a["loss"] - b["loss"]) < 1e-3, (a, b)
    assert abs(r1["val_loss_final"] - r2["val_loss_final"]) < 1e-3
    assert r2["val_loss_final"] < r2["val_loss_base"] - 0.05  # it learned

    w1 = load_file(str(Path(r1["adapter_dir"]) / "adapter_model.safetensors"))
    w2 = load_file(str(Path(r2["adapter_dir"]) / "adapter_model.safetensors"))
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
    assert not list(Path(r2["adapter_dir"]).parent.glob(".tmp-*"))  # rank 0 published, nothing left

    # Independent check: token-weighted validation NLL of both adapters on one inference base.
    from harness import plugin as registry
    from harness.config import load_config
    from harness.data import load_eval_set
    from harness.runner import open_context
    from strategies.adapters.data import build_data

    cfg = load_config(one_cfg)
    ctx = open_context(cfg, load_eval_set(cfg.eval_set.path), tmp_path / "check")
    strategy = registry.build(cfg.strategies[0], 0)
    strategy.setup(ctx)
    rows = build_data(ctx, strategy.params, strategy.training_prompts).validation
    ctx.backend.load_adapter(r1["adapter_dir"], "single")
    ctx.backend.load_adapter(r2["adapter_dir"], "ddp")
    single, ddp = ctx.backend.adapter_nll("single", rows), ctx.backend.adapter_nll("ddp", rows)
    assert abs(single - ddp) < 1e-3, (single, ddp)
    assert ddp < ctx.backend.adapter_nll(None, rows) - 0.05
