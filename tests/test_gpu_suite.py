"""The GPU suite's parts that run without a GPU: the carried kit, the shapes' tokenizer, a CPU dry run."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gpu_kit import KEEP_BNB, slim_bitsandbytes  # noqa: E402
from bench.shapes import shape_tokenizer  # noqa: E402


def _fake_bnb_wheel(folder: Path) -> Path:
    libs = ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda118.so", "libbitsandbytes_cuda130.so"]
    libs += ["libbitsandbytes_rocm64.so"]
    wheel = folder / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("bitsandbytes/__init__.py", "x = 1\n")
        for lib in libs:
            z.writestr(f"bitsandbytes/{lib}", b"\0" * 64)
        record = [f"bitsandbytes/{name},sha256=abc,64" for name in ["__init__.py", *libs]]
        z.writestr("bitsandbytes-0.50.2.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def test_slim_bitsandbytes_keeps_cpu_and_cuda13_and_a_consistent_record(tmp_path):
    wheel = _fake_bnb_wheel(tmp_path)
    slim_bitsandbytes(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        names = {Path(n).name for n in z.namelist()}
        record = z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert names == {"__init__.py", "libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "RECORD"}
    listed = {Path(line.split(",")[0]).name for line in record.splitlines() if line}
    assert listed == names - {"RECORD"}  # every file still there is listed, nothing dropped is
    assert "libbitsandbytes_cuda130.so" in KEEP_BNB


def test_shape_tokenizer_comes_from_the_named_folder(tmp_path, monkeypatch):
    from tests.support.tiny_model import build_tokenizer

    tok = build_tokenizer(["a shape needs a tokenizer", "the default model's is too large to carry"], 300)
    tok.save_pretrained(tmp_path / "tok")
    monkeypatch.setenv("ADAPTBENCH_SHAPE_TOKENIZER", str(tmp_path / "tok"))
    got = shape_tokenizer()
    assert len(got) == len(tok) and got.chat_template == tok.chat_template
    monkeypatch.setenv("ADAPTBENCH_SHAPE_TOKENIZER", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="no tokenizer_config.json"):
        shape_tokenizer()


@pytest.mark.slow
def test_suite_dry_run_on_cpu_runs_its_steps_and_reports_them(tmp_path):
    """``SUITE_DEVICE=cpu SUITE_SMALL=1``: the script's plumbing (steps, limits, logs, the harness run and its
    summary) on the tiny model, so a lent GPU's minutes are not spent finding a typo."""
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "SUITE_DEVICE": "cpu",
        "SUITE_SMALL": "1",
        "SUITE_NO_INSTALL": "1",
        "SUITE_STEPS": "gen_1b e2e_1b",
        "PYTHON": sys.executable,
        "TMPDIR": str(tmp_path),  # the tiny checkpoint is built here, not in a shared temp folder
        "ADAPTBENCH_CACHE": str(tmp_path / "cache"),
    }
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_suite.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    suite = (out / "suite.txt").read_text()
    assert "gen_1b: exit 0" in suite and "e2e_1b: exit 0" in suite and "suite done" in suite
    assert "train_1b" not in suite  # SUITE_STEPS picks steps
    gen = (out / "gen_1b.txt").read_text()
    assert "harness_vs_bare_tokens_per_s" in gen
    e2e = (out / "e2e_1b.txt").read_text()
    assert "phase generate" in e2e and "phase latency_probe" in e2e
    assert "Recommendation" in e2e and "qlora" in e2e
    assert "torch" in (out / "env.txt").read_text()
