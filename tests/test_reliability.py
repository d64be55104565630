"""Reliability: OOM back-off, graceful signals, disk-full / read-only output, cache locks, safety.

Each test fails without its fix: the fakes raise exactly what torch, the OS or a user would."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from harness import plugin as registry
from harness import signals
from harness.cli import main
from harness.config import load_config
from harness.errors import ConfigError, ModelError, StorageError
from harness.oom import BatchBackoff, is_oom, retry_halving
from harness.plugin import Answer, Strategy
from harness.rundir import PredictionLog, atomic_write_json, atomic_write_text
from harness.runner import run

LIGHT = {"metrics": ["exact_match", "token_f1"], "latency_probe": {"requests": 0}}


# -- out of memory --------------------------------------------------------------------------------


class OomAbove2(Strategy):
    """Raises the allocator's out-of-memory for batches larger than 2 (what a full GPU does)."""

    name = "oom-test"
    calls: list[int] = []
    error: type[BaseException] = torch.cuda.OutOfMemoryError

    def predict(self, batch):
        type(self).calls.append(len(batch))
        if len(batch) > 2:
            raise type(self).error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [Answer(text=ex["answer"], new_tokens=1, prompt_tokens=1) for ex in batch]


class OomAlways(OomAbove2):
    name = "oom-always"

    def predict(self, batch):
        raise MemoryError()


@pytest.fixture()
def oom_registered():
    for cls in (OomAbove2, OomAlways):
        registry.register(cls)
    OomAbove2.calls = []
    yield
    for name in ("oom-test", "oom-always"):
        registry._REGISTRY.pop(name, None)


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError,
        MemoryError,
        lambda msg: RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried"),
    ],
)
def test_oom_halves_batch_to_two_and_records_it(oom_registered, write_config, tmp_path, error):
    OomAbove2.error = error
    cfg = write_config(strategies=[{"name": "oom-test", "id": "o"}], generation={"batch_size": 8}, **LIGHT)
    result = run(load_config(cfg), config_path=cfg, run_dir=tmp_path / "run", progress=False)
    assert result.scores["strategies"]["o"]["n"] == 6
    # 6 examples: tried 6 (first batch is all of them), then 3, then 2 for the rest
    assert OomAbove2.calls == [6, 3, 2, 2, 2]
    preds = PredictionLog(tmp_path / "run" / "predictions.jsonl").records
    assert len(preds) == 6 and all(p["batch_size"] <= 2 for p in preds.values())
    cost = json.loads((tmp_path / "run" / "manifest.json").read_text())["strategies"]["o"]["cost"]
    assert cost["batch_size_configured"] == 8 and cost["batch_size_used"] == 2
    assert [(e["from"], e["to"]) for e in cost["oom_retries"]] == [(6, 3), (3, 2)]
    assert "memory" in cost["oom_retries"][0]["error"].lower()


def test_oom_at_batch_one_is_one_clear_cli_error(oom_registered, write_config, tmp_path):
    cfg = write_config(strategies=[{"name": "oom-always", "id": "a"}], **LIGHT)
    res = CliRunner().invoke(main, ["run", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "error: strategy 'a': out of memory even at batch size 1" in res.output
    assert "Traceback" not in res.output


def test_backoff_keeps_answers_before_the_failure_and_other_errors_pass():
    seen = []

    def fn(chunk):
        seen.append(list(chunk))
        if len(chunk) > 2:
            raise RuntimeError("CUDA error: out of memory")
        return chunk

    b = BatchBackoff("x", 4)
    out = [c for c, _ in b.run(fn, [1, 2, 3, 4, 5])]
    assert out == [[1, 2], [3, 4], [5]] and b.size == 2
    with pytest.raises(ValueError):
        list(BatchBackoff("x", 4).run(lambda c: (_ for _ in ()).throw(ValueError("bug")), [1]))
    assert not is_oom(RuntimeError("shape mismatch")) and is_oom(MemoryError())


def test_training_retry_halves_batch_then_gives_up():
    sizes = []

    def train(size):
        sizes.append(size)
        if size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return "ok"

    result, events = retry_halving("qlora training", 8, train)
    assert result == "ok" and sizes == [8, 4, 2] and [e["to"] for e in events] == [4, 2]
    with pytest.raises(ModelError, match="qlora training: out of memory even at batch size 1"):
        retry_halving("qlora training", 4, lambda s: (_ for _ in ()).throw(MemoryError()))


# -- signals --------------------------------------------------------------------------------------


def test_sigterm_is_deferred_to_the_next_checkpoint(tmp_path):
    with signals.graceful_stop():
        signals.set_run_dir(tmp_path)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs; nothing is interrupted yet
        survived = True
        with pytest.raises(signals.Interrupted) as info:
            signals.checkpoint()
    assert survived and info.value.exit_code == 143 and info.value.run_dir == tmp_path
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_signal_inside_immediate_block_interrupts_at_once():
    with signals.graceful_stop(), pytest.raises(signals.Interrupted) as info, signals.immediate():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
        pytest.fail("not interrupted")
    assert info.value.exit_code == 130


# -- disk full / read-only output ------------------------------------------------------------------


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_write_enospc_names_path_and_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"status": "running"})
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(StorageError, match=rf"cannot write {target}: no space left"):
        atomic_write_json(target, {"status": "complete"})
    assert json.loads(target.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left


def test_prediction_log_enospc_leaves_no_torn_line(tmp_path, monkeypatch):
    log = PredictionLog(tmp_path / "predictions.jsonl")
    log.append([{"strategy": "s", "example_id": "1", "prediction": "a"}])
    before = log.path.read_bytes()
    real_open = Path.open

    class Torn:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, text):
            self.fh.write(text[: len(text) // 2])  # half the batch reaches the disk
            self.fh.flush()
            _enospc()

    monkeypatch.setattr(
        Path,
        "open",
        lambda self, mode="r", **kw: (
            Torn(real_open(self, mode, **kw)) if mode == "a" else real_open(self, mode, **kw)
        ),
    )
    with pytest.raises(StorageError, match="predictions.jsonl: no space left"):
        log.append([{"strategy": "s", "example_id": str(i), "prediction": "x" * 50} for i in range(2, 6)])
    monkeypatch.undo()
    assert log.path.read_bytes() == before
    assert set(PredictionLog(log.path).records) == {("s", "1")}


def test_read_only_output_folder_is_one_clear_cli_error(write_config, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):  # a read-only mount (chmod would not stop root)
        if str(self).startswith(str(ro)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    cfg = write_config(**LIGHT)
    res = CliRunner().invoke(main, ["run", str(cfg), "--out", str(ro / "run"), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert f"error: cannot write {ro / 'run'}: the file system is read-only" in res.output
    assert not any(ro.iterdir())


# -- safety ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sid", ["../escape", "a/b", "..", "/abs", "x\\y"])
def test_strategy_id_cannot_name_a_path(write_config, sid):
    cfg = write_config(strategies=[{"name": "prompt", "id": sid}])
    with pytest.raises(ConfigError, match=r"strategies\[0\]: .*use letters, digits"):
        load_config(cfg)


def test_pickle_only_model_refused_unless_allowed(tmp_path, tiny_model_dir, cache_dir):
    import shutil

    from harness.backends.loading import load_model
    from harness.config import ModelConfig

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="only pickle weights .*model.allow_pickle: true"):
        load_model(ModelConfig(id=str(folder), device="cpu"), cache_dir)
    loaded = load_model(ModelConfig(id=str(folder), device="cpu", allow_pickle=True), cache_dir)
    assert loaded.info.allow_pickle is True


def test_adapter_with_pickle_weights_refused(tmp_path):
    from strategies.adapters.cache import adapter_folder_problem

    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04")
    assert "not safetensors" in adapter_folder_problem(tmp_path)


# -- shared cache lock -----------------------------------------------------------------------------


def _builder(target: str, log: str) -> None:
    from harness.locks import build_lock

    path = Path(target)
    with build_lock(path, "test entry"):
        if not (path / "done").exists():
            with open(log, "a") as fh:
                fh.write("built\n")
            time.sleep(0.5)
            path.mkdir(parents=True, exist_ok=True)
            (path / "done").write_text("x")


def test_build_lock_second_process_waits_then_hits(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_builder, args=(str(tmp_path / "e"), str(tmp_path / "log"))) for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "log").read_text() == "built\n"


def test_atomic_write_text_roundtrip(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "x")
    assert (tmp_path / "a" / "b.txt").read_text() == "x"


# -- untrusted text in Markdown; truncation shown ---------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "<script>alert(1)</script>",
        '"><img src=x onerror=alert(1)>',
        "a | b | c",
        "[click](javascript:alert(1))",
        "![img](http://x/y.png)",
        "`code` ```fence```",
        "bell\x07 esc\x1b[31m rtl\u202eevil nul\x00",
        "**bold** _it_ # head",
    ],
)
def test_markdown_cells_neutralise_untrusted_text(payload):
    import re

    from harness.report.markdown import _md

    out = _md(payload)
    assert "<" not in out and ">" not in out
    assert not re.search(r"(?<!\\)[|`\[\]()*_]", out), out  # every Markdown metacharacter escaped
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u202e]", out)
    assert "\n" not in out


def test_truncated_prompts_are_counted_in_the_report(write_config, tmp_path):
    cfg = write_config(model={"max_context": 24}, **LIGHT)
    out = tmp_path / "run"
    run(load_config(cfg), config_path=cfg, run_dir=out, progress=False)
    n = sum(json.loads(x)["prompt_truncated"] for x in (out / "predictions.jsonl").read_text().splitlines())
    assert n > 0
    assert f"prompts truncated to fit the context window: zero_shot {n}" in (out / "report.html").read_text()
    assert (
        f"Prompts truncated to fit the context window: zero\\_shot {n}." in (out / "summary.md").read_text()
    )
