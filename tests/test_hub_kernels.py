"""Loading a model installs a guard: no kernel comes from the Hugging Face Hub unless the config trusts
remote code (harness/backends/hub_kernels.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from harness.backends import hub_kernels

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
    monkeypatch.setitem(hub_kernels._state, "allowed", False)
    return calls


def test_refused_unless_trusted(recorder):
    from transformers.integrations import hub_kernels as transformers_hub

    assert hub_kernels.guard(False)
    with pytest.raises(hub_kernels.HubKernelRefused, match="kernels-community/x.*trust_remote_code"):
        kernels.get_kernel("kernels-community/x", version=1)
    # transformers' own path (fp8, mxfp4, GGUF kernels ...) goes through its reference: refused as well
    with pytest.raises(hub_kernels.HubKernelRefused, match="kernels-community/fp8-fbgemm"):
        transformers_hub.get_kernel("kernels-community/fp8-fbgemm", version=1)
    assert recorder == [] and not hub_kernels.allowed()
    hub_kernels.guard(True)  # the same guards, now permitting: one wrapper each, not two
    assert kernels.get_kernel("kernels-community/x", version=1) == "kernel"
    assert transformers_hub.get_kernel("kernels-community/fp8-fbgemm", version=1) == "kernel"
    assert recorder == ["kernels-community/x", "kernels-community/fp8-fbgemm"] and hub_kernels.allowed()


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
        from harness.backends import hub_kernels
        hub_kernels.guard(False)
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
        assert hub_kernels.allowed() is trust
