"""llama.cpp for real: the in-process ``llama_cpp`` backend, and the ``openai`` backend against a
``llama_cpp.server`` subprocess, both on the default model's GGUF (skipped without llama-cpp-python).

``ADAPTBENCH_LLAMA_PYTHON`` may name another interpreter for the server subprocess (one whose
environment has ``llama-cpp-python[server]``); by default it is this interpreter.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from harness.config import GenerationConfig, ModelConfig
from harness.errors import ModelError
from harness.latency import request_clock
from tests.support.llama_server import LlamaServer, missing_server_modules

GEN = GenerationConfig(max_new_tokens=12)
PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


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


@pytest.fixture(scope="module")
def in_process():
    from harness.backends import open_backend

    return open_backend(ModelConfig(backend="llama_cpp"), cache_dir=None)  # type: ignore[arg-type]


@pytest.mark.slow
@needs_llama
def test_in_process_backend_generates_on_default_gguf(in_process):
    backend = in_process
    rendered = backend.render(PROMPT)
    assert rendered.startswith("<|im_start|>") and rendered.endswith(
        "<|im_start|>assistant\n"
    )  # GGUF template
    with request_clock() as clock:
        (g,) = backend.generate([PROMPT], GEN).generations
    assert g.text and 0 < g.new_tokens <= GEN.max_new_tokens
    assert g.prompt_tokens == backend.count_tokens(rendered) and not g.prompt_truncated
    assert clock.first_token is not None and clock.start < clock.first_token  # TTFT without streaming
    (again,) = backend.generate([PROMPT], GEN).generations  # greedy: deterministic
    assert again.text == g.text and again.new_tokens == g.new_tokens
    info = backend.describe()
    assert info["backend"] == "llama_cpp" and info["render"] == "GGUF chat template"
    assert info["context_window"] == backend.context_window == 2048
    default = max(1, (os.cpu_count() or 2) // 2)  # one per physical core unless set
    assert info["threads"] == int(os.environ.get("ADAPTBENCH_LLAMA_THREADS") or default)


@pytest.mark.slow
@needs_llama
def test_in_process_stop_strings_end_generation_early(in_process):
    long = GenerationConfig(max_new_tokens=24)
    (full,) = in_process.generate([PROMPT], long).generations
    words = full.text.split()
    assert len(words) >= 2, full.text
    stop = " " + words[1]  # the second word ends the answer
    (cut,) = in_process.generate([PROMPT], GenerationConfig(max_new_tokens=24, stop=[stop])).generations
    assert cut.text == full.text[: full.text.index(stop)].strip()
    assert cut.new_tokens < full.new_tokens  # stopped inside llama.cpp, not cut afterwards


@pytest.mark.slow
@needs_llama
def test_in_process_long_prompt_keeps_its_end():
    from harness.backends import open_backend

    backend = open_backend(ModelConfig(backend="llama_cpp", max_context=96), cache_dir=None)  # type: ignore[arg-type]
    filler = "The warranty covers the frame for five years. " * 40
    prompt = [{"role": "user", "content": filler + "What is the capital of France?"}]
    (g,) = backend.generate([prompt], GEN).generations
    assert g.prompt_truncated and g.prompt_tokens == 96 - GEN.max_new_tokens
    assert 0 < g.new_tokens <= GEN.max_new_tokens


@pytest.fixture(scope="module")
def llama_server():
    if missing_server_modules():
        pytest.skip(f"llama-cpp-python[server] not installed (missing {', '.join(missing_server_modules())})")
    server = LlamaServer().start()
    try:
        yield server.url
    finally:
        server.stop()


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
    # llama-cpp-python streams no usage; one content event per token counts the answer exactly here
    assert streamed.new_tokens == out.generations[0].new_tokens
    print(f"functional only: {out.new_tokens} new tokens in {out.seconds:.2f}s")
