"""Sibling projections (q/k/v, gate/up) computed as one product over a stacked pack
(harness/backends/packed_linear.py): the numbers of separate ``F.linear`` calls, one product per input,
and the cases where it must not reuse a result: another input, an input written in place, new weights."""

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


class Attention(torch.nn.Module):
    def __init__(self, bias: bool):
        super().__init__()
        self.q_proj = torch.nn.Linear(64, 64, bias=bias)
        self.k_proj = torch.nn.Linear(64, 32, bias=bias)
        self.v_proj = torch.nn.Linear(64, 32, bias=bias)
        self.o_proj = torch.nn.Linear(64, 64, bias=bias)


def attention(bias: bool = False, seed: int = 0) -> tuple[Attention, packed_linear.PackedLinears]:
    torch.manual_seed(seed)
    module = Attention(bias).bfloat16()
    packed = packed_linear.install(module)
    assert packed is not None
    return module, packed


def reference(module: Attention, x: torch.Tensor) -> list[torch.Tensor]:
    return [F.linear(x, m.weight, m.bias) for m in (module.q_proj, module.k_proj, module.v_proj)]


@pytest.mark.parametrize("bias", [False, True])
def test_siblings_share_one_stacked_pack_and_give_the_separate_numbers(bias):
    module, packed = attention(bias)
    (group,) = set(packed.groups.values())  # q/k/v; o_proj reads another input and stays alone
    assert group.members == [module.q_proj, module.k_proj, module.v_proj]
    gen = torch.Generator().manual_seed(1)
    for shape in [
        (1, 64),
        (3, 64),
        (2, 5, 64),
        (4, 300, 64),
    ]:  # a step, a batch, [batch, pos, hidden], prefill
        x = torch.randn(*shape, generator=gen).bfloat16()
        with torch.inference_mode():
            got = [module.q_proj(x), module.k_proj(x), module.v_proj(x)]
        for g, want in zip(got, reference(module, x), strict=True):
            assert g.is_contiguous() and torch.equal(g, want)
    weights = sum(m.weight.numel() for m in group.members)
    assert packed.packed_bytes == weights * 2  # one stacked pack, no single ones beside it


def test_the_first_sibling_computes_all_and_each_other_takes_its_output_once():
    module, packed = attention()
    (group,) = set(packed.groups.values())
    x = torch.randn(2, 64).bfloat16()
    with torch.inference_mode():
        module.k_proj(x)  # any member may come first
        assert group.pending is not None and sorted(group.pending[2]) == [0, 2]
        module.q_proj(x)
        module.v_proj(x)
        assert group.pending is None  # all served: the input is no longer held
        again = module.q_proj(x)  # the same input asked for again: computed again, not a stale slice
    assert torch.equal(again, reference(module, x)[0])


def test_an_input_written_in_place_between_siblings_is_computed_again():
    module, _ = attention()
    x = torch.randn(2, 64).bfloat16()
    with torch.no_grad():  # a tensor with a version counter (inference tensors have none)
        module.q_proj(x)
        x.mul_(2)
        k = module.k_proj(x)
    assert torch.equal(k, reference(module, x)[1])


def test_siblings_reading_different_inputs_turn_the_group_off():
    """Cross-attention: q reads the decoder's states, k and v the encoder's."""
    module, packed = attention()
    (group,) = set(packed.groups.values())
    dec, enc = torch.randn(1, 64).bfloat16(), torch.randn(7, 64).bfloat16()
    for _ in range(2):
        with torch.inference_mode():
            got = [module.q_proj(dec), module.k_proj(enc), module.v_proj(enc)]
        want = [reference(module, dec)[0], *reference(module, enc)[1:]]
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert not group.enabled and group.pack is None  # the members compute apart from then on


def test_weights_written_through_data_are_repacked_on_refresh():
    module, packed = attention()
    x = torch.randn(2, 64).bfloat16()
    with torch.inference_mode():
        module.q_proj(x), module.k_proj(x), module.v_proj(x)
    module.k_proj.weight.data += 1  # peft's merge: no version bump; the backend refreshes
    packed.refresh([module.k_proj.weight])
    with torch.inference_mode():
        got = [module.q_proj(x), module.k_proj(x), module.v_proj(x)]
    assert all(torch.equal(g, w) for g, w in zip(got, reference(module, x), strict=True))


def test_model_logits_and_answers_equal_the_plain_products(tiny_model_dir, tmp_path):
    backend = randomised_backend(tiny_model_dir, tmp_path, "bfloat16")
    groups = set(backend.packed.groups.values())
    layers = backend.model.config.num_hidden_layers
    assert len(groups) == 2 * layers == backend.describe()["fused_projections"]  # q/k/v, gate/up
    ids = backend.tokenizer("Where is my order? It left the depot", return_tensors="pt").input_ids
    with torch.inference_mode():
        fused = backend.model(ids).logits
        with backend.packed.suspended(release=False):
            plain = backend.model(ids).logits
    assert torch.equal(fused, plain)
    prompts = [[{"role": "user", "content": q}] for q in ("What?", "Where is my order", "Hi")]
    params = GenerationConfig(max_new_tokens=8)
    got = backend.generate(prompts, params).generations
    with backend.packed.suspended():
        assert backend.generate(prompts, params).generations == got


def test_switch_off(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTBENCH_FUSED_PROJECTIONS", "0")
    backend = TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir), dtype="bfloat16"), tmp_path))
    assert backend.packed is not None and not backend.packed.groups
    assert backend.describe()["fused_projections"] == 0
