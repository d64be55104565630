"""The content-addressed adapter cache and adapter folders on disk.

A trained adapter lives in ``<cache>/adapters/<key[:24]>/`` (peft ``adapter_config.json`` + safetensors
weights + ``training_record.json``). The key hashes everything that changes the trained weights: the base
model's fingerprint, training hyper-parameters, the tokenised data, seed, device, load dtype and strategy extras.
Folders are written under a temporary name and renamed into place only once complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import distributed
from harness.errors import ConfigError, ModelError
from harness.plugin import RunContext
from harness.rundir import read_json
from strategies.adapters.data import TrainData
from strategies.adapters.params import TRAIN_KEYS, TrainParams

RECORD_FILE = "training_record.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CACHE_FORMAT = 3  # 2: base identity from backend.base_fingerprint(); 3: token-weighted validation loss


def cache_key(ctx: RunContext, params: TrainParams, data: TrainData, key_extra: Any = None) -> str:
    backend: Any = ctx.backend
    material = {
        "format": CACHE_FORMAT,
        "base": backend.base_fingerprint(),
        "train": params.model_dump(mode="json", include=set(TRAIN_KEYS) - {"cache"}),
        "data": data.digest,
        "seed": ctx.seed,
        "device": backend.device,
        "dtype": backend.describe().get("dtype"),  # bf16 vs fp32 compute trains different weights
        "extra": key_extra,
    }
    if distributed.world_size() > 1:  # DDP: the global batch is batch_size x grad_accum x world_size
        material["world_size"] = distributed.world_size()
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def adapter_dir(cache_dir: Path, key: str) -> Path:
    return cache_dir / "adapters" / key[:24]


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file() and (path / ADAPTER_WEIGHTS).is_file()


def is_cached(path: Path) -> bool:
    """A complete cache entry: adapter weights and the training record that describes them."""
    return is_adapter_dir(path) and (path / RECORD_FILE).is_file()


def adapter_folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be evaluated as a trained adapter (``--adapter``), or None."""
    if not path.is_dir():
        return f"adapter folder not found: {path}"
    if not (path / ADAPTER_CONFIG).is_file() or not any(path.glob("adapter_model.*")):
        return (
            f"{path} is not a peft adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}); "
            "use the path `adaptbench train` printed"
        )
    if not (path / ADAPTER_WEIGHTS).is_file():
        return (
            f"{path}: adapter weights are not safetensors ({', '.join(p.name for p in path.glob('adapter_model.*'))}); "
            "pickle files can run code when loaded and are refused; save the adapter with safe_serialization=True"
        )
    return None


def adapter_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("adapter_model.*"))


@contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A temporary folder next to ``target`` (same file system, so ``publish`` is one rename).

    Under DDP rank 0 makes and removes it and every rank gets its path: the trainer's checkpoints
    (early stopping reloads the best one on every rank) live in one folder.
    """
    tmp = None
    if distributed.is_main():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    tmp = distributed.broadcast_object(tmp)
    assert tmp is not None
    try:
        yield tmp
    finally:
        if distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, target: Path) -> None:
    """Move a finished staging folder into place; refuses one without weights or training record."""
    if not is_cached(tmp):
        missing = [f for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, RECORD_FILE) if not (tmp / f).is_file()]
        raise RuntimeError(f"adapter for {target.name} incomplete after training (missing {missing})")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def check_adapter(backend: Any, path: Path) -> dict[str, Any]:
    """Validate an adapter folder against the run's base model; return its training record (or {})."""
    where = f"adapter {path}"
    try:
        peft_cfg = read_json(path / ADAPTER_CONFIG)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: unreadable {ADAPTER_CONFIG} ({exc})") from None
    record = read_json(path / RECORD_FILE) if (path / RECORD_FILE).is_file() else {}
    fingerprint = backend.base_fingerprint()
    model_id = fingerprint.get("id")
    if record:
        trained_for = record.get("base_model", {}).get("id")
        if trained_for and trained_for != model_id:
            raise ModelError(
                f"{where}: trained for base model {trained_for!r}, but this run uses {model_id!r}; "
                "evaluate it with that model (--model) or retrain"
            )
        return record
    base = peft_cfg.get("base_model_name_or_path")
    if base and base.rstrip("/") not in base_names(backend, fingerprint):
        raise ModelError(
            f"{where}: adapter_config.json says base_model_name_or_path={base!r}, but this run uses "
            f"{model_id!r}; pass the matching --model or retrain"
        )
    return record


def base_names(backend: Any, fingerprint: dict[str, Any]) -> set[str]:
    """Names a peft config may give the run's base: its id, local path, and source (hub id of a built-in)."""
    source = str(backend.describe().get("source") or "")
    names = {fingerprint.get("id"), fingerprint.get("path"), source, source.split(" ")[0]}
    return {str(n).rstrip("/") for n in names if n}
