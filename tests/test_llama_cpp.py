"""llama.cpp for real: the in-process ``llama_cpp`` backend, and the ``openai`` backend against a
``llama_cpp.server`` subprocess, both on the default model's GGUF (skipped without llama-cpp-python).

``ADAPTBENCH_LLAMA_PYTHON`` may name another interpreter for the server subprocess (one whose
environment has ``llama-cpp-python[server]``); by default it is this interpreter.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from harness.config import GenerationConfig, ModelConfig
from harness.errors import ModelError
from harness.latency import request_clock

GEN = GenerationConfig(max_new_tokens=12)
PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
SERVER_MODULES = (
    "llama_cpp",
    "uvicorn",
    "fastapi",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)


def _missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


needs_llama = pytest.mark.skipif(
    bool(_missing(("llama_cpp",))),
    reason="llama-cpp-python not installed (optional; build the portable wheel, see docs/scaling.md)",
)


def test_without_llama_cpp_open_fails_with_install_hint(monkeypatch):
    from harness.backends.llama_cpp import LlamaCppBackend

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails, installed or not
    with pytest.raises(ModelError, match="llama-cpp-python is not installed.*docs/scaling.md"):
        LlamaCppBackend.open(ModelConfig(backend="llama_cpp"), cache_dir=None)  # type: ignore[arg-type]


def test_llama_cpp_rejects_non_gguf(tmp_path):
    from harness.backends.llama_cpp import gguf_path

    with pytest.raises(ModelError, match="needs a .gguf file"):
        gguf_path(ModelConfig(backend="llama_cpp", id=str(tmp_path)))


@pytest.mark.slow
@needs_llama
def test_in_process_backend_generates_on_default_gguf():
    from harness.backends import open_backend

    backend = open_backend(ModelConfig(backend="llama_cpp"), cache_dir=None)  # type: ignore[arg-type]
    rendered = backend.render(PROMPT)
    assert "capital of France" in rendered and rendered != PROMPT[0]["content"]  # GGUF chat template
    with request_clock() as clock:
        (g,) = backend.generate([PROMPT], GEN).generations
    assert g.text and 0 < g.new_tokens <= GEN.max_new_tokens and g.prompt_tokens > 10
    assert clock.first_token is not None
    (again,) = backend.generate([PROMPT], GEN).generations  # greedy: deterministic
    assert again.text == g.text
    assert backend.describe()["backend"] == "llama_cpp"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    python = os.environ.get("ADAPTBENCH_LLAMA_PYTHON", sys.executable)
    if python == sys.executable and _missing(SERVER_MODULES):
        pytest.skip(f"llama-cpp-python[server] not installed (missing {', '.join(_missing(SERVER_MODULES))})")
    from harness.backends.loading import smollm2_gguf_path

    port = _free_port()
    cmd = [python, "-m", "llama_cpp.server", "--model", str(smollm2_gguf_path())]
    cmd += ["--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-500:] if proc.stderr else ""
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {err}")
            try:
                urllib.request.urlopen(url + "/models", timeout=1).read()
                break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("llama_cpp.server did not come up within 60 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_openai_backend_on_real_llama_cpp_server(llama_server, endpoint):
    from harness.backends.openai import OpenAIBackend

    cfg = ModelConfig(backend="openai", base_url=llama_server, id="smollm2", endpoint=endpoint, concurrency=2)
    backend = OpenAIBackend(cfg)
    out = backend.generate([PROMPT, PROMPT], GEN)
    texts = [g.text for g in out.generations]
    assert all(texts) and texts[0] == texts[1]  # greedy
    assert all(0 < g.new_tokens <= GEN.max_new_tokens for g in out.generations)
    assert backend.stats["estimated"] == 0  # llama.cpp reports usage
    with request_clock() as clock:
        (streamed,) = backend.generate([PROMPT], GEN).generations
    assert clock.first_token is not None and streamed.text
    assert streamed.text == texts[0]  # streaming changes nothing in what is generated
    print(f"functional only: {out.new_tokens} new tokens in {out.seconds:.2f}s")
