"""Packed bf16 linears (harness/backends/packed_linear.py): same numbers as ``F.linear``, packs that follow
the weights, and memory handed back when decoding stops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.backends import packed_linear
from harness.backends.hf import TransformersBackend
from harness.backends.loading import load_model
from harness.config import GenerationConfig, ModelConfig
from tests.support.tiny_model import randomised_backend

pytestmark = pytest.mark.skipif(
    not packed_linear.available(), reason="oneDNN bf16 linear not available on this CPU"
)


def bf16_linear(seed: int = 0, bias: bool = True) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 96, bias=bias)).bfloat16()


@pytest.mark.parametrize("bias", [True, False])
def test_inference_calls_are_packed_and_bit_identical(bias):
    model = bf16_linear(bias=bias)
    layer = model[0]
    packed = packed_linear.install(model)
    assert packed is not None and packed.modules == [layer]
    gen = torch.Generator().manual_seed(1)
    wide = torch.randn(3, 64, 10, generator=gen).bfloat16()
    inputs = [
        torch.randn(1, 64, generator=gen).bfloat16(),  # one decoding step
        torch.randn(3, 64, generator=gen).bfloat16(),  # a small batch's step
        torch.randn(2, 2, 64, generator=gen).bfloat16(),  # [batch, positions, hidden]
        torch.randn(1, 1, 64, generator=gen).bfloat16(),
        torch.randn(16, 64, generator=gen).bfloat16(),  # a batch of 16 rows' step
        torch.randn(4, 300, 64, generator=gen).bfloat16(),  # a batched prefill: 1,200 rows
        wide.transpose(1, 2),  # not contiguous: the plain product
    ]
    with torch.inference_mode():
        for x in inputs:
            assert torch.equal(model(x), F.linear(x, layer.weight, layer.bias))
    assert packed.packed_bytes == layer.weight.numel() * 2  # one pack, reused by every call


def test_batched_steps_and_prefills_use_the_pack():
    """Packs pay at every row count (docs in packed_linear.py): a 16-row step or a prefill alone packs."""
    for x in (torch.randn(16, 64).bfloat16(), torch.randn(4, 300, 64).bfloat16()):
        model = bf16_linear()
        packed = packed_linear.install(model)
        with torch.inference_mode():
            assert torch.equal(model(x), F.linear(x, model[0].weight, model[0].bias))
        assert packed.packed_bytes == model[0].weight.numel() * 2


def test_training_uses_the_plain_product():
    model = bf16_linear()
    packed = packed_linear.install(model)
    model(torch.randn(2, 64).bfloat16()).float().sum().backward()  # grad mode: differentiable path
    assert model[0].weight.grad is not None and packed.packed_bytes == 0
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        model(torch.randn(2, 64).bfloat16())  # autocast (adapter training's evaluation): plain too
    assert packed.packed_bytes == 0


def test_weights_written_in_place_are_repacked():
    model = bf16_linear()
    layer, packed = model[0], packed_linear.install(model)
    x = torch.randn(4, 64).bfloat16()
    with torch.inference_mode():
        before = model(x)
    with torch.no_grad():
        layer.weight.copy_(layer.weight * 2)  # a tracked write: the version counter moves
    with torch.inference_mode():
        after = model(x)
    assert not torch.equal(after, before)
    assert torch.equal(after, F.linear(x, layer.weight, layer.bias))
    layer.weight.data += 1  # peft's merge writes through .data: untracked, the caller refreshes
    packed.refresh([layer.weight])
    with torch.inference_mode():
        assert torch.equal(model(x), F.linear(x, layer.weight, layer.bias))
    packed.refresh([torch.zeros(1)])  # another tensor: this layer's pack stays as it is
    assert packed.packed_bytes > 0
    packed.release()
    assert packed.packed_bytes == 0


@pytest.fixture()
def bf16_backend(tiny_model_dir, tmp_path) -> TransformersBackend:
    """The tiny model in bf16 with weights large enough that its greedy answers differ by prompt."""
    return randomised_backend(tiny_model_dir, tmp_path, "bfloat16")


def test_generation_is_identical_with_and_without_packing(bf16_backend):
    backend = bf16_backend
    assert backend.describe()["packed_linear"] is True
    prompts = [[{"role": "user", "content": q}] for q in ("What?", "Where is my order", "Hi", "Battery size")]
    params = GenerationConfig(max_new_tokens=12)
    packed = [backend.generate(prompts, params).generations]
    with backend.packed.plain_rows():  # single requests' steps on the packs too (not PyTorch's gemv)
        packed += [backend.generate([p], params).generations[0] for p in prompts]  # one row each
    assert backend.packed.packed_bytes > 0
    with backend.packed.suspended():
        plain = [backend.generate(prompts, params).generations]
        plain += [backend.generate([p], params).generations[0] for p in prompts]
        assert backend.packed.packed_bytes == 0  # suspended: nothing packed again
    assert len({g.text for g in packed[0]}) == 4, "the model must answer each prompt differently"
    assert packed == plain


def test_backend_releases_packs_before_work_that_does_not_decode(bf16_backend):
    backend = bf16_backend
    prompt = [{"role": "user", "content": "Where is my order"}]
    backend.generate([prompt], GenerationConfig(max_new_tokens=4))
    assert backend.packed.packed_bytes > 0
    backend.completion_nll([prompt], ["It ships tomorrow."])  # small calls, yet no packs made
    assert backend.packed.packed_bytes == 0  # a scoring pass: no packs kept beside it
    backend.generate([prompt], GenerationConfig(max_new_tokens=4))
    assert backend.packed.packed_bytes > 0
    backend.training_copy("none")
    assert backend.packed.packed_bytes == 0  # adapter training: the run's memory peak


def test_adapter_merges_repack_before_the_request(bf16_backend, tiny_model_dir, tmp_path, monkeypatch):
    """The latency probe merges an adapter untimed, then times a request: the request must not pay for
    packing the merged weights, and a base strategy's untimed ``activate`` gives the base back."""
    from peft import LoraConfig, get_peft_model

    from harness.plugin import Params, PromptedStrategy

    donor = load_model(ModelConfig(id=str(tiny_model_dir), dtype="bfloat16"), tmp_path / "donor").model
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(donor, lora).save_pretrained(tmp_path / "adapter")
    backend, prompt = bf16_backend, [[{"role": "user", "content": "Where is my order"}]]
    params = GenerationConfig(max_new_tokens=8)
    backend.load_adapter(str(tmp_path / "adapter"), "a")
    base = backend.generate(prompt, params).generations
    packs: list[int] = []
    real = packed_linear._reorder
    monkeypatch.setattr(packed_linear, "_reorder", lambda w: packs.append(1) or real(w))
    backend.merge_adapter("a")
    at_merge = len(packs)
    assert at_merge > 0  # the merged weights were packed at the merge...
    merged = backend.generate(prompt, params, adapter="a").generations
    assert len(packs) == at_merge  # ...so the request packed nothing
    assert merged != base

    strategy = PromptedStrategy("p", Params())
    strategy.ctx = type("Ctx", (), {"backend": backend})()
    strategy.activate()  # a base strategy's turn: unmerged here, not in its request
    assert backend.merged_adapter is None
    at_unmerge = len(packs)
    assert backend.generate(prompt, params).generations == base
    assert len(packs) == at_unmerge


def test_switching_merged_adapters_repacks_each_weight_once(
    bf16_backend, tiny_model_dir, tmp_path, monkeypatch
):
    """The probe alternates two merged adapters: unmerging one and merging the other write the same
    weights, so they are re-packed once (after the merge), and the request then packs nothing."""
    from peft import LoraConfig, get_peft_model

    backend, prompt = bf16_backend, [[{"role": "user", "content": "Where is my order"}]]
    params = GenerationConfig(max_new_tokens=8)
    for seed, name in ((1, "a"), (2, "b")):
        torch.manual_seed(seed)
        donor = load_model(ModelConfig(id=str(tiny_model_dir), dtype="bfloat16"), tmp_path / name).model
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        get_peft_model(donor, lora).save_pretrained(tmp_path / f"adapter-{name}")
        backend.load_adapter(str(tmp_path / f"adapter-{name}"), name)
    with backend.packed.suspended(release=False):  # the reference: plain products, adapter merged
        backend.merge_adapter("b")
        want = backend.generate(prompt, params, adapter="b").generations
    backend.merge_adapter("a")
    backend.generate(prompt, params, adapter="a")
    packs: list[int] = []
    real = packed_linear._reorder
    monkeypatch.setattr(packed_linear, "_reorder", lambda w: packs.append(1) or real(w))
    backend.merge_adapter("b")
    written = {id(w) for w in backend._merged_weights("a") + backend._merged_weights("b")}
    groups = set(backend.packed.groups.values())  # q/k/v and gate/up: one stacked pack each
    touched = [
        m for m in backend.packed.modules if id(m.weight) in written and id(m) not in backend.packed.groups
    ]
    touched += [g for g in groups if any(id(m.weight) in written for m in g.members)]
    assert groups and touched and len(packs) == len(touched)  # once each, not per unmerge and per merge
    assert backend.generate(prompt, params, adapter="b").generations == want
    assert len(packs) == len(touched)


def test_switch_off(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTBENCH_PACKED_LINEAR", "0")
    backend = TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir), dtype="bfloat16"), tmp_path))
    assert backend.packed is None and backend.describe()["packed_linear"] is False
    fp32 = TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir), dtype="float32"), tmp_path))
    monkeypatch.delenv("ADAPTBENCH_PACKED_LINEAR")
    assert packed_linear.install(fp32.model) is None  # fp32: MKL's path, no per-call reorder to save
