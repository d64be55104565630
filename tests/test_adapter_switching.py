"""Switching between the plain base and adapters on the transformers backend's shared model.

Base requests switch the adapter layers off once and leave them off (peft's ``disable_adapter()`` context
per call walked every module for the adapter status: ~75 ms of each base request's first token in the
latency probe, a cost no base-model deployment pays); adapter requests switch them back on, merged or not.
"""

from __future__ import annotations

import pytest
from peft import PeftModel

from harness.backends.hf import TransformersBackend
from harness.backends.loading import load_model
from harness.config import GenerationConfig, ModelConfig
from tests.support.tiny_model import attach_strong_adapter
from tests.test_prefix_cache import QUESTIONS, few_shot, sensitive


@pytest.fixture()
def backend(tiny_model_dir, tmp_path) -> TransformersBackend:
    return sensitive(TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path)))


def test_base_requests_switch_the_adapter_layers_off_once(backend, tiny_model_dir, tmp_path, monkeypatch):
    params = GenerationConfig(max_new_tokens=6)
    prompts = [few_shot(q) for q in QUESTIONS[:2]]

    def texts(adapter=None):
        return [g.text for g in backend.generate(prompts, params, adapter=adapter).generations]

    base = texts()
    attach_strong_adapter(backend, tiny_model_dir, tmp_path)
    status_walks, switches = [], []
    monkeypatch.setattr(PeftModel, "get_model_status", lambda self: status_walks.append(1))
    real_off = backend.model.base_model.disable_adapter_layers
    monkeypatch.setattr(
        backend.model.base_model, "disable_adapter_layers", lambda: (switches.append(1), real_off())[1]
    )

    adapted = texts("a")
    assert adapted != base  # the adapter is on for its requests
    assert [texts() for _ in range(3)] == [base] * 3  # and off for the base's...
    assert len(switches) == 1 and backend.adapters_off  # ...switched once, left off
    assert status_walks == []  # no per-call walk over the modules for the adapter status

    backend.merge_adapter("a")  # merging needs the layers on (peft unmerges a merged, switched-off layer)
    assert not backend.adapters_off and texts("a") == adapted
    backend.unmerge_adapter()  # a base strategy's activate(): untimed
    assert backend.merged_adapter is None and backend.adapters_off and len(switches) == 2
    assert texts() == base and len(switches) == 2  # the request itself switches nothing
    assert texts("a") == adapted


def test_a_selected_adapter_is_in_place_before_its_request(backend, tiny_model_dir, tmp_path, monkeypatch):
    """An unmerged adapter strategy selects its adapter in its untimed activate(): its request then
    neither switches the layers on nor walks the modules to set the adapter active."""
    params = GenerationConfig(max_new_tokens=6)
    prompts = [few_shot(q) for q in QUESTIONS[:2]]
    attach_strong_adapter(backend, tiny_model_dir, tmp_path)
    first = [g.text for g in backend.generate(prompts, params, adapter="a").generations]
    backend.select_adapter(None)
    assert backend.adapters_off
    backend.select_adapter("a")  # untimed, before the request
    assert not backend.adapters_off and backend.model.active_adapter == "a"
    walks = []
    monkeypatch.setattr(PeftModel, "set_adapter", lambda self, *a, **k: walks.append(a))
    real_on = backend.model.base_model.enable_adapter_layers
    monkeypatch.setattr(
        backend.model.base_model, "enable_adapter_layers", lambda: (walks.append("on"), real_on())[1]
    )
    assert [g.text for g in backend.generate(prompts, params, adapter="a").generations] == first
    assert walks == []


def test_plain_linears_serve_while_no_adapter_layer_computes(backend, tiny_model_dir, tmp_path):
    """Layers off (base requests) or an adapter merged: each LoRA layer is swapped for the linear it wraps,
    so these requests run as a plain or merged deployment would, without the wrappers' per-call checks;
    an unmerged adapter's requests run through its LoRA layers again, with the same answers as before."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    params = GenerationConfig(max_new_tokens=6)
    prompts = [few_shot(q) for q in QUESTIONS[:2]]

    def texts(adapter=None):
        return [g.text for g in backend.generate(prompts, params, adapter=adapter).generations]

    def lora_layers() -> int:
        return sum(isinstance(m, BaseTunerLayer) for m in backend.model.modules())

    base = texts()
    attach_strong_adapter(backend, tiny_model_dir, tmp_path)
    wrapped = lora_layers()
    adapted = texts("a")
    assert wrapped > 0 and lora_layers() == wrapped and adapted != base  # unmerged: through the LoRA layers
    assert texts() == base and lora_layers() == 0  # layers off: plain linears
    with backend.wrappers_kept():  # the benchmark's baseline: peft's layers in place, the same answers
        assert lora_layers() == wrapped and texts() == base and lora_layers() == wrapped
    assert lora_layers() == 0
    assert texts("a") == adapted and lora_layers() == wrapped
    backend.merge_adapter("a")
    assert lora_layers() == 0 and texts("a") == adapted  # merged: the plain linears hold W + BA
    backend.unmerge_adapter()
    assert lora_layers() == 0 and texts() == base
    backend.merge_adapter("a")  # merging from the unwrapped state puts the layers back for peft first
    assert texts("a") == adapted and texts() == base and texts("a") == adapted
    # Loading another adapter (peft walks the model for its layers) also starts from the wrapped model.
    backend.select_adapter(None)
    assert lora_layers() == 0
    backend.load_adapter(str(tmp_path / "adapter"), "b")
    assert lora_layers() == wrapped  # b joined a's layers: none wraps another...
    layers = [m for m in backend.model.modules() if isinstance(m, BaseTunerLayer)]
    assert all({"a", "b"} <= set(m.lora_A) for m in layers)  # ...and none was lost by a swap back
    assert texts("a") == adapted and texts() == base
