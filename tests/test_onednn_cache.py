"""oneDNN's primitive cache and ideep's computation cache are capped before the first bf16 matmul
(``harness.memory.cap_onednn_primitive_cache``).

PyTorch runs bf16 ``linear`` on CPUs with native bf16 through ideep/oneDNN, which cache a computation per
input shape; prompts of new lengths and training steps pile them up. The behaviour test runs in fresh
interpreters (both libraries read their capacity once per process): 100 new shapes of the default model's
projection sizes, forward and backward, with the harness's caps vs the libraries' default capacities, and
compares what stays resident after ``malloc_trim``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.backends.loading import load_model
from harness.config import ModelConfig
from harness.manifest import cpu_native_bf16
from harness.memory import (
    IDEEP_CACHE_ENV,
    ONEDNN_CACHE_CAPACITY,
    ONEDNN_CACHE_ENV,
    ONEDNN_CACHE_ENVS,
    cap_onednn_primitive_cache,
)

SCRIPT = r"""
import json, psutil, torch
from harness.memory import cap_onednn_primitive_cache, release_free_heap
applied = cap_onednn_primitive_cache()
weights = [
    torch.randn(n, k, dtype=torch.bfloat16, requires_grad=True)
    for k, n in [(576, 576), (576, 192), (576, 1536), (1536, 576)]
]
def shape(m):  # a training step's shapes: forward, and backward for the input and the weight
    for w in weights:
        x = torch.randn(m, w.shape[1], dtype=torch.bfloat16, requires_grad=True)
        torch.nn.functional.linear(x, w).float().sum().backward()
shape(100)
proc = psutil.Process()
release_free_heap(); base = proc.memory_info().rss
for m in range(200, 300):
    shape(m)
release_free_heap()
print(json.dumps({"applied": applied, "kept_mb": (proc.memory_info().rss - base) / 2**20}))
"""


def _clear(monkeypatch):
    for name in (*ONEDNN_CACHE_ENVS, IDEEP_CACHE_ENV):
        monkeypatch.delenv(name, raising=False)


def test_cap_is_set_only_where_the_user_set_none(monkeypatch):
    _clear(monkeypatch)
    assert cap_onednn_primitive_cache() is True
    assert os.environ[ONEDNN_CACHE_ENV] == str(ONEDNN_CACHE_CAPACITY)
    assert os.environ[IDEEP_CACHE_ENV] == str(ONEDNN_CACHE_CAPACITY)
    monkeypatch.setenv(ONEDNN_CACHE_ENV, "512")
    monkeypatch.setenv(IDEEP_CACHE_ENV, "256")
    assert cap_onednn_primitive_cache() is False
    assert (os.environ[ONEDNN_CACHE_ENV], os.environ[IDEEP_CACHE_ENV]) == ("512", "256")
    _clear(monkeypatch)
    monkeypatch.setenv("DNNL_PRIMITIVE_CACHE_CAPACITY", "64")  # oneDNN's older spelling wins too
    assert cap_onednn_primitive_cache() is True  # ideep's is still set
    assert ONEDNN_CACHE_ENV not in os.environ
    assert os.environ[IDEEP_CACHE_ENV] == str(ONEDNN_CACHE_CAPACITY)


def test_loading_a_cpu_model_caps_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    _clear(monkeypatch)
    load_model(ModelConfig(id=str(tiny_model_dir), dtype="float32"), tmp_path)
    assert os.environ[ONEDNN_CACHE_ENV] == str(ONEDNN_CACHE_CAPACITY)
    assert os.environ[IDEEP_CACHE_ENV] == str(ONEDNN_CACHE_CAPACITY)


def _kept(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
@pytest.mark.skipif(
    not cpu_native_bf16(), reason="bf16 linear goes through oneDNN only on CPUs with native bf16"
)
def test_capped_cache_keeps_less_resident_for_new_shapes():
    env = {k: v for k, v in os.environ.items() if k not in (*ONEDNN_CACHE_ENVS, IDEEP_CACHE_ENV)}
    capped = _kept(env)
    default = _kept({**env, ONEDNN_CACHE_ENV: "1024", IDEEP_CACHE_ENV: "1024"})
    onednn_only = _kept({**env, ONEDNN_CACHE_ENV: "128", IDEEP_CACHE_ENV: "1024"})  # before ideep's cap
    assert capped["applied"] is True and default["applied"] is False
    # measured: 13 MiB capped, 607 with both defaults, 315 with only oneDNN's cache at 128 (100 shapes x 4
    # projection sizes, forward and backward): ideep's cache held half of it
    assert capped["kept_mb"] < 0.2 * default["kept_mb"], (capped, default)
    assert capped["kept_mb"] < 0.3 * onednn_only["kept_mb"], (capped, onednn_only)
