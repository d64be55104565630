"""``AdapterStrategy``: the train/prepare entry points shared by adapter strategies (qlora, rag+qlora).

The host strategy says how an eval-set row becomes a chat prompt (``training_prompts``); this base trains
or loads the adapter and attaches it to the backend's shared base model, through the backend's
``AdapterHost`` capability only (no model objects here), and records the training cost.

Two entry points, each called once per strategy object:

* ``train(ctx)`` (``adaptbench train``): train, or hit the adapter cache; no attaching.
* ``prepare(ctx)`` (``adaptbench run``): the adapter from ``adapter_path`` (``--adapter``) or from
  training/cache, attached under a per-strategy name, optionally merged, then ``predict`` generates with it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

from harness import distributed
from harness.backends.base import AdapterHost, Prompt, ServedAdapters, require
from harness.data import EvalSet
from harness.errors import ConfigError, ModelError
from harness.plugin import RunContext
from harness.rundir import atomic_write_json
from strategies.adapters import cache
from strategies.adapters.data import Row, build_data, split_problems
from strategies.adapters.params import AdapterParams, TrainParams
from strategies.adapters.trainer import TrainResult, train_adapter

log = logging.getLogger("adaptbench.training")

# Training-record fields copied into the strategy's cost (manifest) entry.
COST_TRAINING_KEYS = (
    "source",
    "adapter_dir",
    "device",
    "quantization",
    "fallback_reason",
    "steps",
    "epochs",
    "tokens_seen",
    "tokens_per_s",
    "peak_memory_kind",
    "trainable_params",
    "trainable_share",
    "val_loss_base",
    "val_loss_final",
    "inference_base",
    "loss_curve",
)


def adapter_name(strategy_id: str, adapter_path: Path) -> str:
    """A peft adapter name unique per strategy and adapter (peft names must not contain dots)."""
    digest = hashlib.sha256(str(adapter_path.resolve()).encode()).hexdigest()[:8]
    return re.sub(r"\W", "_", strategy_id) + "_" + digest


def inference_val_loss(backend: AdapterHost, name: str, rows: list[Row]) -> dict[str, Any]:
    """Validation loss on the run's own inference base, without and with the adapter attached.

    The adapter may have been trained on a 4-bit copy; this shows it still helps the base it is served on.
    """
    info = backend.describe()  # type: ignore[attr-defined]
    return {
        "dtype": info.get("dtype"),
        "quantization": info.get("quantization"),
        "val_loss_base": round(backend.adapter_nll(None, rows), 5),  # type: ignore[arg-type]
        "val_loss_adapter": round(backend.adapter_nll(name, rows), 5),
    }


class AdapterStrategy:
    """Mixin placed before the host strategy class: ``class QLoRAStrategy(AdapterStrategy, PromptStrategy)``.

    The host's params subclass ``TrainParams`` and ``AdapterParams``; it implements ``training_prompts``.
    """

    id: str
    params: Any  # TrainParams + AdapterParams
    cost: dict[str, Any]
    adapter: str | None
    training_record: dict[str, Any]
    merged: bool = False  # the adapter is merged into the base while this strategy answers

    # -- hooks -------------------------------------------------------------------------------------
    def training_prompts(self, rows: list[dict[str, Any]], split: str) -> list[tuple[Prompt, str]]:
        raise NotImplementedError

    def setup(self, ctx: RunContext) -> None:
        """Per-run state ``training_prompts`` and ``predict`` need (templates, retriever): the host's prepare."""
        super().prepare(ctx)  # type: ignore[misc]

    def training_key_extra(self) -> Any:
        return None

    def validate(self, eval_set: EvalSet) -> list[str]:
        """The host's checks plus the training splits (skipped when the adapter exists: ``adapter_path``
        or ``served_adapter``)."""
        problems: list[str] = super().validate(eval_set)  # type: ignore[misc]
        if self.params.served_adapter and self.params.adapter_path:
            problems.append(
                "served_adapter: set either served_adapter (the server hosts the adapter) or adapter_path "
                "(load a local folder), not both"
            )
        elif not (self.params.adapter_path or self.params.served_adapter):
            problems += split_problems(eval_set, self.params)
        return problems

    def required_capabilities(self) -> dict[str, str]:
        """Training or loading needs a backend that hosts adapters; a served adapter, one that selects
        adapters by name on its server."""
        if self.params.served_adapter:
            return {
                "ServedAdapters": "served_adapter names an adapter on a server; use model.backend: openai, "
                "or drop served_adapter to train/load the adapter here (backend: transformers)"
            }
        return {
            "AdapterHost": "train and load adapters with model.backend: transformers, or, on a served "
            "model, set this strategy's served_adapter: <the name the server serves the adapter under>"
        }

    # -- entry points ------------------------------------------------------------------------------
    def train(self, ctx: RunContext) -> TrainResult:
        """``adaptbench train``: train the adapter (or reuse the cached one); nothing is attached."""
        if self.params.served_adapter:
            raise ConfigError(
                f"strategy {self.id!r}: served_adapter is set, so the adapter is served, not trained here; "
                "drop served_adapter to train it"
            )
        self.setup(ctx)
        return self._train(ctx)

    def prepare(self, ctx: RunContext) -> None:
        """``adaptbench run``: adapter from ``adapter_path`` or training/cache, attached to the shared base;
        or, with ``served_adapter``, the adapter a server hosts, selected by name per request."""
        if self.params.served_adapter:
            self._use_served(ctx, self.params.served_adapter)
            return
        host = require(ctx.backend, AdapterHost, f"strategy {self.id!r}")
        self.setup(ctx)
        params = self.params
        if params.adapter_path:
            path = Path(params.adapter_path).expanduser().resolve()
            record = cache.check_adapter(ctx.backend, path)
            result = TrainResult(path, record, True, None)
            self.write_training_record(ctx, result, source="--adapter")
        else:
            result = self._train(ctx)
        self._attach(ctx, host, result)

    # -- steps -------------------------------------------------------------------------------------
    def _use_served(self, ctx: RunContext, name: str) -> None:
        server = require(ctx.backend, ServedAdapters, f"strategy {self.id!r} (served_adapter)")
        server.check_served_adapter(name)
        self.setup(ctx)
        self.adapter = name
        self.training_record = {"source": "served", "served_adapter": name}
        self.cost.setdefault("notes", []).append(
            f"adapter served by the server as {name!r} (trained elsewhere; no training cost here)"
        )

    def _train(self, ctx: RunContext) -> TrainResult:
        result = train_adapter(
            ctx, self.params, self.training_prompts, key_extra=self.training_key_extra(), label=self.id
        )
        self.write_training_record(ctx, result, source="cache" if result.cache_hit else "trained")
        return result

    def _attach(self, ctx: RunContext, host: AdapterHost, result: TrainResult) -> None:
        params: TrainParams | AdapterParams = self.params
        name = adapter_name(self.id, result.adapter_dir)
        info = ctx.backend.describe()
        try:
            host.load_adapter(str(result.adapter_dir), name)
        except (RuntimeError, ValueError, KeyError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelError(
                f"adapter {result.adapter_dir}: does not fit this run's base model {info.get('id')!r} ({first})"
            ) from None
        self.adapter = name
        served = result.record.get("inference_base") or {}
        if (served.get("dtype"), served.get("quantization")) != (info.get("dtype"), info.get("quantization")):
            self._remember(result, inference_val_loss(host, name, self._validation(ctx, result)))
        notes = self.cost.setdefault("notes", [])
        rec = result.record
        if rec.get("quantization") == "4bit" and info.get("quantization") != "4bit":
            notes.append(
                f"LoRA trained on the 4-bit NF4 base, served on the {info.get('dtype')} base "
                "(standard QLoRA deployment)"
            )
        if rec.get("fallback_reason"):
            notes.append(f"4-bit unavailable, trained full-precision LoRA: {rec['fallback_reason']}")
        if params.merge:
            if info.get("quantization") != "none":
                msg = f"merge ignored: the inference base is {info.get('quantization')}-quantised"
                log.warning("%s: %s", self.id, msg)
                notes.append(msg)
            else:
                host.merge_adapter(name)
                self.merged = True
                notes.append(
                    "LoRA merged into the base while this strategy generates" + self._merged(ctx, result)
                )
        self.write_training_record(ctx, result, source=self.training_record["source"])

    def activate(self) -> None:
        """Merged adapters are merged again before a request once another strategy unmerged them (the latency
        probe interleaves strategies): requests are timed as the merged model serves them, as they were
        answered in the batched pass. An unmerged adapter is selected (its layers on, set active) on a host
        that switches adapters (``select_adapter``); elsewhere the host's default applies."""
        select = getattr(self.ctx.backend, "select_adapter", None) if self.ctx is not None else None
        if self.merged and self.ctx is not None:
            self.ctx.backend.merge_adapter(self.adapter)  # type: ignore[attr-defined]
        elif select is not None and self.adapter is not None:
            select(self.adapter)  # unmerged: its layers on and selected here, not in the timed request
        else:
            super().activate()  # type: ignore[misc]

    def _merged(self, ctx: RunContext, result: TrainResult) -> str:
        """On a bf16/fp16 base a merge rounds W + BA to the base's precision: measure what that costs in
        validation loss (once per adapter and base; the merged adapter is the one generating now)."""
        served = result.record["inference_base"]
        if served.get("dtype") in ("float32", "float64"):
            return ""
        if "val_loss_merged" not in served:
            host: Any = ctx.backend
            merged = round(host.adapter_nll(self.adapter, self._validation(ctx, result)), 5)
            self._remember(result, {**served, "val_loss_merged": merged})
            served = result.record["inference_base"]
        return (
            f" ({served['dtype']} rounding: validation loss {served['val_loss_merged']:.4f} merged vs "
            f"{served['val_loss_adapter']:.4f} unmerged)"
        )

    def _validation(self, ctx: RunContext, result: TrainResult) -> list[Row]:
        data = result.data or build_data(ctx, self.params, self.training_prompts)
        result.data = data
        return data.validation

    def _remember(self, result: TrainResult, inference_base: dict[str, Any]) -> None:
        """Add what was measured on the run's inference base to the adapter's record (and, for our own
        cache entry, to its file: never write into a user's ``--adapter`` folder)."""
        result.record = {**result.record, "inference_base": inference_base}
        if not self.params.adapter_path and distributed.is_main():
            atomic_write_json(result.adapter_dir / cache.RECORD_FILE, result.record)

    def write_training_record(self, ctx: RunContext, result: TrainResult, source: str) -> None:
        rec = {**result.record, "adapter_dir": str(result.adapter_dir), "source": source}
        if distributed.is_main():  # torchrun / accelerate: rank 0 writes the run folder
            atomic_write_json(ctx.run_dir / "training" / f"{self.id}.json", rec)
        self.training_record = rec
        self.cost.update(
            train_seconds=rec.get("train_seconds"),
            peak_memory_bytes=rec.get("peak_memory_bytes"),
            adapter_bytes=cache.adapter_bytes(result.adapter_dir),
            training={k: rec.get(k) for k in COST_TRAINING_KEYS},
        )
