"""The LM head hooks (harness/backends/lm_head.py): contiguous input, fp32 logits for a 16-bit head's top candidates."""

from __future__ import annotations

import pytest
import torch

from harness.backends import lm_head
from harness.backends.hf import TransformersBackend
from harness.backends.loading import load_model
from harness.config import GenerationConfig, ModelConfig


def _tie_head() -> tuple[torch.nn.Linear, torch.Tensor]:
    """A bf16 head whose two best logits (38.2 for id 1, 38.225 for id 6) round to the same bf16 value."""
    head = torch.nn.Linear(2, 8, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[1] = torch.tensor([38.0, 0.25])  # exactly representable in bf16
        head.weight[6] = torch.tensor([38.0, 0.28125])
        head.weight[3] = torch.tensor([30.0, 0.0])
    hidden = torch.tensor([[1.0, 0.8]], dtype=torch.bfloat16)  # logits 38.2 vs 38.225: one bf16 value
    return head, hidden


def test_a_bf16_tie_is_decided_by_the_fp32_logits_not_by_the_lower_token_id():
    head, hidden = _tie_head()
    plain = head(hidden)
    assert plain[0, 1] == plain[0, 6] and plain.argmax(-1).item() == 1  # the rounding artefact
    assert lm_head.install(torch.nn.Module()) is False  # nothing to hook: no output embeddings

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head

        def get_output_embeddings(self):
            return self.head

    assert lm_head.install(Toy())
    out = head(hidden)
    want = hidden.double() @ head.weight.double().T
    assert out.dtype == torch.float32 and out.argmax(-1).item() == 6
    top = want[0].topk(3).indices
    assert torch.allclose(out[0, top].double(), want[0, top], atol=1e-5)
    # positions outside the recomputed top keep the head's own (upcast) values
    assert torch.equal(out[0, 0], plain[0, 0].float())


def test_the_top_logits_stay_fp32_under_a_trainers_bf16_autocast():
    """A trainer's mixed precision wraps the forward in a bf16 autocast: the recomputation must not drop
    back to bf16 (it did, and the fp32 scatter failed on the plain-Trainer bench arm)."""
    head, hidden = _tie_head()
    handle = head.register_forward_hook(lm_head.exact_top_logits)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(hidden)
    handle.remove()
    assert out.dtype == torch.float32 and out.argmax(-1).item() == 6  # the fp32 tie-break, not the bf16 one
    want = hidden.double() @ head.weight.double().T
    assert abs(out[0, 6].item() - want[0, 6].item()) < 1e-5


def test_top_candidates_match_an_fp32_head_on_a_real_bf16_model(tiny_model_dir, tmp_path):
    loaded = load_model(ModelConfig(id=str(tiny_model_dir), dtype="bfloat16"), tmp_path)
    backend = TransformersBackend(loaded)
    assert backend.exact_logits and backend.describe()["exact_top_logits"] is True
    model = loaded.model
    x = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        out = model(input_ids=x, output_hidden_states=True)
        hidden = out.hidden_states[-1]  # after the final norm: what the head reads
        want = hidden.double() @ model.get_output_embeddings().weight.double().T
    assert out.logits.dtype == torch.float32
    top = out.logits.topk(lm_head.TOP_K, dim=-1).indices
    assert torch.allclose(out.logits.gather(-1, top).double(), want.gather(-1, top), rtol=1e-5, atol=1e-4)
    assert torch.equal(out.logits.argmax(-1), want.argmax(-1))
    # generation reads the same head: greedy text is still produced and the hook is on the shared model
    assert backend.generate([[{"role": "user", "content": "hi"}]], GenerationConfig(max_new_tokens=3))
    model.to(torch.float64)  # cast after loading (as the float64 tests do): a 64-bit head is left alone
    with torch.no_grad():
        assert model(input_ids=x).logits.dtype == torch.float64


@pytest.mark.parametrize("env", ["", "0"])
def test_fp32_models_are_left_alone_and_the_switch_turns_it_off(tiny_model_dir, tmp_path, monkeypatch, env):
    monkeypatch.setenv("ADAPTBENCH_EXACT_LOGITS", env)
    fp32 = TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir), dtype="float32"), tmp_path))
    assert fp32.exact_logits is False and not fp32.model.get_output_embeddings()._forward_hooks
    bf16 = TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir), dtype="bfloat16"), tmp_path))
    assert bf16.exact_logits is (env != "0")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_head_reads_a_contiguous_input_in_batched_generation(tiny_model_dir, tmp_path, dtype):
    """transformers hands the head ``hidden[:, -1:, :]`` (strided for a batch); PyTorch's CPU linear then
    multiplies against the weight expanded per row (a [batch, hidden, vocab] copy). The pre-hook makes
    the input contiguous; the logits stay the same numbers."""
    backend = TransformersBackend(load_model(ModelConfig(id=str(tiny_model_dir), dtype=dtype), tmp_path))
    head = backend.model.get_output_embeddings()
    seen = []
    head.register_forward_pre_hook(lambda mod, args: seen.append((args[0].shape, args[0].is_contiguous())))
    prompts = [
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "a longer question, please"}],
    ]
    backend.generate(prompts, GenerationConfig(max_new_tokens=3))
    assert seen and seen[0][0][0] == 2 and all(ok for _, ok in seen)
    strided = torch.randn(2, 7, head.in_features).to(head.weight.dtype)[:, -1:, :]
    assert not strided.is_contiguous()
    with torch.no_grad():
        assert torch.equal(head(strided), head(strided.contiguous()))
