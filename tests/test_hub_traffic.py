"""Loading a model installs a guard: no kernel comes from the Hugging Face Hub unless the config trusts
remote code, and no telemetry leaves (harness/backends/hub_traffic.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from harness.backends import hub_traffic

kernels = pytest.importorskip("kernels")


@pytest.fixture
def recorder(monkeypatch):
    """``kernels.get_kernel`` and transformers' own reference to it replaced by one that records its
    repositories (no network)."""
    from transformers.integrations import hub_kernels as transformers_hub

    calls: list[str] = []

    def fake(repo_id, *args, **kwargs):
        calls.append(repo_id)
        return "kernel"

    monkeypatch.setattr(kernels, "get_kernel", fake)
    monkeypatch.setattr(transformers_hub, "get_kernel_hub", fake)
    monkeypatch.setitem(hub_traffic._state, "allowed", False)
    return calls


def test_refused_unless_trusted(recorder):
    from transformers.integrations import hub_kernels as transformers_hub

    assert hub_traffic.guard(False)
    with pytest.raises(hub_traffic.HubKernelRefused, match="kernels-community/x.*trust_remote_code"):
        kernels.get_kernel("kernels-community/x", version=1)
    # transformers' own path (fp8, mxfp4, GGUF kernels ...) goes through its reference: refused as well
    with pytest.raises(hub_traffic.HubKernelRefused, match="kernels-community/fp8-fbgemm"):
        transformers_hub.get_kernel("kernels-community/fp8-fbgemm", version=1)
    assert recorder == [] and not hub_traffic.allowed()
    hub_traffic.guard(True)  # the same guards, now permitting: one wrapper each, not two
    assert kernels.get_kernel("kernels-community/x", version=1) == "kernel"
    assert transformers_hub.get_kernel("kernels-community/fp8-fbgemm", version=1) == "kernel"
    assert recorder == ["kernels-community/x", "kernels-community/fp8-fbgemm"] and hub_traffic.allowed()


# A fresh interpreter: bitsandbytes asks for its kernel once, when it is imported.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import kernels
    calls = []
    def fake(repo_id, *a, **k):
        calls.append(repo_id)
        raise RuntimeError("no network in this test")
    kernels.get_kernel = fake
    if sys.argv[1] == "guarded":
        from harness.backends.loading import load_model  # noqa: F401 - the import path a run takes
        from harness.backends import hub_traffic
        hub_traffic.guard(False)
    import bitsandbytes  # noqa: F401
    from bitsandbytes.backends.cpu import ops
    print(json.dumps({"calls": calls, "avx512bf16": bool(ops.has_avx512bf16())}))
    """
)


def _import_bitsandbytes(arm: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, arm], capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_bitsandbytes_import_asks_no_hub_kernel():
    pytest.importorskip("bitsandbytes")
    plain = _import_bitsandbytes("plain")
    if not plain["avx512bf16"]:
        pytest.skip("bitsandbytes asks the Hub for its CPU kernel only on CPUs with AVX512-BF16")
    assert plain["calls"] == ["kernels-community/quantization-bitsandbytes"]  # what the guard stops
    assert _import_bitsandbytes("guarded")["calls"] == []


def test_load_model_installs_the_guard(monkeypatch, recorder):
    """``load_model`` guards before it loads anything, following ``model.trust_remote_code``."""
    from harness.backends import loading
    from harness.config import ModelConfig

    def stop(*args, **kwargs):
        raise RuntimeError("stop after the guard")

    monkeypatch.setattr(loading, "resolve_device", stop)
    for trust in (False, True):
        with pytest.raises(RuntimeError, match="stop after the guard"):
            loading.load_model(ModelConfig(id="m", trust_remote_code=trust), loading.cache_root())
        assert hub_traffic.allowed() is trust


def test_no_telemetry_after_the_guard(monkeypatch):
    """What trl's trainers call at every start: nothing is queued for the Hub once the guard is in."""
    import queue

    from huggingface_hub import constants
    from huggingface_hub.utils import _telemetry, send_telemetry

    sent: queue.Queue = queue.Queue()
    monkeypatch.setattr(_telemetry, "_TELEMETRY_QUEUE", sent)
    monkeypatch.setattr(_telemetry, "_start_telemetry_thread", lambda: None)  # nothing leaves this test
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)
    monkeypatch.setitem(hub_traffic._state, "allowed", False)
    send_telemetry("trl/SFTTrainer", library_name="trl")
    assert sent.qsize() == 1  # without the guard, the ping is queued
    sent.get()
    hub_traffic.guard(False)
    send_telemetry("trl/SFTTrainer", library_name="trl")
    assert sent.qsize() == 0


RUN_CONFIG = """
name: offline
model: {{id: smollm2-135m-instruct}}
eval_set: {{path: {eval_set}, split: test}}
strategies:
  - {{name: prompt, id: prompt}}
  - {{name: rag, id: rag, top_k: 2}}
  - {{name: qlora, id: qlora, max_steps: 1, batch_size: 2, validation_limit: 4, merge: true, cache: false}}
generation: {{max_new_tokens: 8, batch_size: 4}}
latency_probe: {{requests: 1, warmup: 1}}
metrics: [fact_accuracy, fact_recall, exact_match, token_f1, rouge_l, answer_recall, semantic_similarity,
          coherence, style_adherence, faithfulness, recall_at_k, mrr]
primary_metric: token_f1
"""


@pytest.mark.slow
def test_a_run_opens_no_network_connection(tmp_path, monkeypatch):
    """Every kind of work a run does (the default model, retrieval, QLoRA training with trl, every metric, the
    probe, the report) without one network lookup, on a machine that is not CI: trl reports to the Hub
    unless ``CI`` is set, and bitsandbytes asks for a Hub kernel when it is imported (once per process)."""
    import socket

    from click.testing import CliRunner

    from harness.cli import main

    from .conftest import REPO

    lookups: list[str] = []

    def refuse(host, *args, **kwargs):
        lookups.append(str(host))
        raise socket.gaierror(socket.EAI_NONAME, "no network in this test")

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    config = tmp_path / "offline.yaml"
    config.write_text(RUN_CONFIG.format(eval_set=REPO / "eval_sets" / "nimbus_support"))
    args = ["run", str(config), "--limit", "2", "--out", str(tmp_path / "run"), "--no-progress"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "report.html").is_file()
    assert lookups == []
