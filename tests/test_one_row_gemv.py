"""Single requests' one-row products through PyTorch's gemv (harness/backends/packed_linear.py): only the
steps of a call of one prompt take it, batches keep the packs (their answers are the scored ones), and the
process-wide oneDNN switch is always back on afterwards."""

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


def native(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    torch._C._set_mkldnn_enabled(False)
    try:
        return F.linear(x, weight)
    finally:
        torch._C._set_mkldnn_enabled(True)


@pytest.fixture()
def layer_and_row():
    """The default model's MLP width, and a row whose product differs in the last bit between the two
    kernels (the reason batches must not take the gemv)."""
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(576, 1536, bias=False)).bfloat16()
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(1536, 576, generator=gen))
    x = torch.randn(1, 576, generator=gen).bfloat16()
    if torch.equal(native(x, model[0].weight), F.linear(x, model[0].weight)):
        pytest.skip("PyTorch's gemv and oneDNN agree here: the route cannot be told apart by its numbers")
    return model, x


def test_one_row_products_take_the_gemv_only_inside(layer_and_row):
    model, x = layer_and_row
    weight = model[0].weight
    packed = packed_linear.install(model)
    assert packed is not None and packed.gemv
    three = torch.cat([x, x.flip(-1), x * 2])
    with torch.inference_mode():
        assert torch.equal(model(x), F.linear(x, weight))  # outside: the pack, oneDNN's numbers
        assert packed.gemv_calls == 0
        with packed.one_row_gemv():
            for row in (x, x.view(1, 1, 576)):  # a step of [positions, hidden] or [batch, positions, hidden]
                got = model(row)
                assert torch.equal(got, native(row, weight)) and not torch.equal(got, F.linear(row, weight))
            assert torch.equal(model(three), F.linear(three, weight))  # several rows: the pack
            assert packed.gemv_calls == 2
            with packed.suspended(release=False):
                assert torch.equal(model(x), F.linear(x, weight))  # suspended: plain F.linear
        with packed.plain_rows(), packed.one_row_gemv():
            assert torch.equal(model(x), F.linear(x, weight))  # the bench's "off" arm
    assert packed.gemv_calls == 2
    assert torch._C._get_mkldnn_enabled()  # the process-wide switch is back on


def test_the_onednn_switch_comes_back_after_an_error(layer_and_row, monkeypatch):
    model, x = layer_and_row
    packed = packed_linear.install(model)

    def fails(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(packed_linear.F, "linear", fails)
    with torch.inference_mode(), packed.one_row_gemv(), pytest.raises(RuntimeError, match="boom"):
        model(x)
    assert torch._C._get_mkldnn_enabled()


@pytest.fixture()
def bf16_backend(tiny_model_dir, tmp_path) -> TransformersBackend:
    return randomised_backend(tiny_model_dir, tmp_path, "bfloat16")


def test_single_prompts_decode_through_the_gemv_and_batches_do_not(bf16_backend):
    backend = bf16_backend
    packed = backend.packed
    assert backend.describe()["one_row_gemv"] is True
    prompts = [[{"role": "user", "content": q}] for q in ("What?", "Where is my order", "Hi", "Battery size")]
    # 3 rows at a time: the 4th prompt decodes alone once the first three end together
    params = GenerationConfig(max_new_tokens=12, batch_size=3)
    batch = backend.generate(prompts, params).generations
    assert backend.continuous_stats.steps > 12
    assert packed.gemv_calls == 0  # a batch's rows never take it, not even a row decoding alone
    with packed.plain_rows():
        assert backend.generate(prompts, params).generations == batch
        backend.generate(prompts[:1], params)
    assert packed.gemv_calls == 0
    single = backend.generate(prompts[:1], params).generations[0]
    steps = single.new_tokens - 1  # the prefill's products have the prompt's rows...
    n_linear = len(packed.modules)
    assert packed.gemv_calls == steps * n_linear + 1 > 1  # ...but its LM head projects the last one alone


def test_switch_off(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTBENCH_ONE_ROW_GEMV", "0")
    backend = TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir), dtype="bfloat16"), tmp_path))
    assert backend.packed is not None and backend.describe()["one_row_gemv"] is False
    backend.generate([[{"role": "user", "content": "Hi"}]], GenerationConfig(max_new_tokens=6))
    assert backend.packed.gemv_calls == 0
