"""Adapters on the transformers backend's shared base: attached, selected per call, merged and unmerged.

A mixin of ``TransformersBackend`` (harness/backends/hf.py), which owns the state used here: the model
(a ``PeftModel`` once an adapter is loaded), its load info (dtype), the prefix cache (keyed by adapter),
the packed linears (re-packed after a merge writes weights) and ``merged_adapter``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch

from harness.backends.loading import LoadedModel
from harness.backends.packed_linear import PackedLinears
from harness.backends.prefix_cache import PrefixCache
from harness.errors import ModelError


class AdapterSwitching:
    """peft adapters on one base model: no second copy of the base weights, one adapter merged at most."""

    model: Any
    loaded: LoadedModel
    prefix_cache: PrefixCache | None
    packed: PackedLinears | None
    merged_adapter: str | None
    # The adapter layers are switched off (the plain base serves) until an adapter is asked for. Kept
    # between calls instead of peft's ``disable_adapter()`` context per call, which walks every module for
    # the model's adapter status: ~75 ms of each base request's first-token time on the default model.
    adapters_off: bool = False
    # While no adapter layer computes anything (layers off, or an adapter merged), each LoRA layer is
    # swapped out of its parent for the plain linear it wraps: the wrappers' per-call checks cost 6-10% of a
    # single request's time on the default model, which neither a plain nor a merged deployment pays.
    # Every peft operation puts the wrappers back first (``_wrap``).
    _swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] | None = None
    _keep_wrappers: bool = False  # ``wrappers_kept()``: the previous behaviour, for the benchmark's baseline

    def load_adapter(self, path: str, name: str) -> None:
        """Attach a peft adapter to the shared base (no second copy of the base weights)."""
        from peft import PeftModel

        self._unmerge()
        self._wrap()
        if self.prefix_cache is not None:
            # Entries are keyed by adapter name and a name may be reused for other weights: drop that name's.
            # The base's entries stay: the probe's base requests would otherwise prefill whole prompts
            # while the adapters' requests, batched after the last load, hit theirs.
            self.prefix_cache.forget(name)
        if isinstance(self.model, PeftModel):
            if name not in self.model.peft_config:
                self.model.load_adapter(path, adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        self.model.eval()
        if not hasattr(self.model.base_model, "disable_adapter_layers"):  # prompt learning: no layers
            kind = getattr(self.model.peft_config.get(name), "peft_type", "?")
            raise ModelError(f"adapter {path}: peft type {kind} is not supported; use a LoRA-style adapter")
        self._adapters_on()  # the new adapter's layers and the others' in one state

    def merge_adapter(self, name: str) -> None:
        """Fold adapter ``name`` into the base weights for faster generation with it (unquantized bases).

        Merging the adapter already merged does nothing. Any other request (another adapter, or none)
        unmerges first and gets the base back: in fp32 peft's
        subtraction restores it up to float rounding (~1e-7 relative); in bf16/fp16 it cannot (W + BA was
        rounded to 8 mantissa bits: measured, 875k of the default model's weights came back off by up to
        4e-3), so the base weights the merge touches are kept on the CPU and copied back exactly.
        """
        if self.merged_adapter == name:
            return
        self._wrap()
        unmerged = self._unmerge(refresh=False)  # re-packed below, once with what the merge writes
        self._adapters_on()  # peft unmerges a merged adapter whose layers are off at their next call
        self.model.set_adapter(name)
        weights = self._merged_weights(name)
        if self.loaded.info.dtype not in ("float32", "float64"):
            self._merge_backup = [(w, w.detach().to("cpu", copy=True)) for w in weights]
        self.model.merge_adapter([name])
        self.merged_adapter = name
        if self.packed is not None:
            # peft merges through ``.data`` (no version bump): re-pack what it wrote now, while merging is
            # untimed, not in the next (maybe timed) request. Unmerging does the same.
            self.packed.refresh(unmerged + weights)
        self._unwrap()

    def unmerge_adapter(self) -> None:
        """Serve the plain base weights: a merged adapter is unmerged and the adapter layers are switched
        off now (before a base request, untimed)."""
        self._unmerge()
        self._adapters_off()
        self._unwrap()

    def _wrapped(self) -> bool:
        """The model is a ``PeftModel`` (an adapter is loaded)."""
        # Not imported here: a PeftModel exists only once peft is imported, and importing it (with
        # bitsandbytes) costs seconds in runs that load no adapter.
        peft = sys.modules.get("peft")
        return peft is not None and isinstance(self.model, peft.PeftModel)

    def _wrap(self) -> None:
        """Put the LoRA layers back into the model (before any peft call: it finds them by walking it)."""
        for parent, name, layer in self.__dict__.pop("_swapped", None) or []:
            setattr(parent, name, layer)

    def _unwrap(self) -> None:
        """Swap each LoRA layer for the linear it wraps while none computes (off, or merged: then the
        wrapped linear's weights hold the merge). The layers are kept here, with their weights."""
        if self._swapped is not None or self._keep_wrappers or not self._wrapped():
            return
        if not (self.adapters_off or self.merged_adapter is not None):
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        swapped = [
            (parent, name, child)
            for parent in self.model.modules()
            for name, child in parent.named_children()
            if isinstance(child, BaseTunerLayer)
        ]
        for parent, name, layer in swapped:
            setattr(parent, name, layer.get_base_layer())
        self._swapped = swapped

    @contextlib.contextmanager
    def wrappers_kept(self) -> Iterator[None]:
        """Inside, every call goes through peft's LoRA layers, also where none computes (the state before
        plain linears served; ``bench_generation.py --arms lora`` compares the two)."""
        self._wrap()
        self._keep_wrappers = True
        try:
            yield
        finally:
            self._keep_wrappers = False
            self._unwrap()

    def _adapters_off(self) -> None:
        if not self.adapters_off and self._wrapped():
            self._wrap()
            self.model.base_model.disable_adapter_layers()
            self.adapters_off = True

    def _adapters_on(self) -> None:
        if self.adapters_off:
            self._wrap()
            self.model.base_model.enable_adapter_layers()
            self.adapters_off = False

    def _merged_weights(self, name: str) -> list[torch.Tensor]:
        """The base-layer weights and biases a merge of adapter ``name`` writes to."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._wrap()
        out: list[torch.Tensor] = []
        for module in self.model.modules():
            if isinstance(module, BaseTunerLayer) and any(
                name in getattr(module, attr, {}) for attr in module.adapter_layer_names
            ):
                base = module.get_base_layer()
                out += [t for t in (base.weight, getattr(base, "bias", None)) if t is not None]
        return out

    def _unmerge(self, refresh: bool = True) -> list[torch.Tensor]:
        """Give the base weights back; returns the weights written. ``refresh=False`` leaves their packs
        stale for the caller to re-pack (a merge of another adapter right after: one re-pack, not two)."""
        if self.merged_adapter is None:
            return []
        self._wrap()
        backup = self.__dict__.pop("_merge_backup", None)
        if backup is None:
            self.model.unmerge_adapter()  # fp32: peft's subtraction gives the base back to float rounding
        else:  # bf16/fp16: the saved weights are the base; peft's subtraction would only be overwritten
            with torch.no_grad():
                for weight, saved in backup:
                    weight.copy_(saved)
            from peft.tuners.tuners_utils import BaseTunerLayer

            for module in self.model.modules():  # what peft's unmerge leaves: no adapter merged
                if isinstance(module, BaseTunerLayer):
                    module.merged_adapters = []
        # Only packs need to know which weights were written (a walk over every module otherwise wasted).
        written = self._merged_weights(self.merged_adapter) if self.packed is not None else []
        if self.packed is not None and refresh:
            self.packed.refresh(written)
        self.merged_adapter = None
        return written

    def select_adapter(self, name: str | None) -> None:
        """Serve adapter ``name`` (``None``: the plain base) from now on, unmerged unless it is the one
        merged. Strategies call it before a request, untimed, so that the request switches nothing; every
        model call of the backend calls it too (a no-op when the state is already in place)."""
        if not self._wrapped():
            if name is not None:
                raise ValueError(f"adapter {name!r} requested but none is loaded")
            return
        if name is None:
            self.unmerge_adapter()
            return
        if name == self.merged_adapter:
            return
        self._unmerge()
        self._adapters_on()
        self._wrap()  # an unmerged adapter computes through its LoRA layers
        if self.model.active_adapter != name:  # set_adapter walks every module
            self.model.set_adapter(name)
