"""trl's fused LM head in the compact layout on CPU (``strategies.adapters.fused_head``): the same loss and the
same LoRA gradients as trl's all-positions CPU layout, while projecting only the labelled positions.

Rows have long prompts and short answers, padded to different lengths, so the two layouts project very
different numbers of rows: a slicing or masking slip would change the loss or a gradient.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from harness.backends.hf import TransformersBackend
from harness.backends.loading import load_model
from harness.config import ModelConfig
from strategies.adapters.data import TrainData, encode_example
from strategies.adapters.fused_head import compact_lm_head_on_cpu
from strategies.adapters.params import TrainParams
from strategies.adapters.trainer import build_trainer

pytest.importorskip("peft")
trl_utils = pytest.importorskip("trl.trainer.utils")
if not hasattr(trl_utils, "add_fused_lm_head"):
    pytest.skip("this trl has no fused LM head", allow_module_level=True)

QA = [
    ("How long is the return window for a bike that was delivered last month? " * 3, "45 days."),
    ("Can I pause my membership?", "Yes, in the app, for up to three months at a time."),
    ("Which battery does the Stratus use, and how long does a full charge take? " * 2, "NB-540, 4 hours."),
    ("Hi", "Hello! How can I help with your bike today?"),
]


class RowSpy:
    """Counts the hidden-state rows trl hands to its chunked log-prob function."""

    def __init__(self, monkeypatch):
        self.rows: list[int] = []
        real = trl_utils._ChunkedLogProbFunction
        spy = self

        class Spy:
            @staticmethod
            def apply(hidden, *args):
                spy.rows.append(hidden.shape[0])
                return real.apply(hidden, *args)

        monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)


def loss_and_grads(trainer, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model = trainer.model
    model.zero_grad(set_to_none=True)
    model.train()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


def test_compact_layout_gives_the_same_loss_and_gradients(tiny_model_dir, tmp_path, monkeypatch):
    loaded = load_model(ModelConfig(id=str(tiny_model_dir)), tmp_path)
    backend = TransformersBackend(loaded)
    rows = [
        encode_example(loaded.tokenizer, backend.render, [{"role": "user", "content": q}], a, 256)
        for q, a in QA
    ]
    params = TrainParams(max_steps=1, batch_size=4, dropout=0.0, warmup_ratio=0.0, quantization="none")
    data = TrainData(rows, [], 0, "none", "test")
    torch.manual_seed(0)
    trainer = build_trainer(
        loaded.model, loaded.tokenizer, params, data, "cpu", tmp_path / "out", 0, "t", evaluate=False
    )
    # LoRA B starts at zero, which would make every gradient below it zero: give the adapter a real state.
    with torch.no_grad():
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    batch = next(iter(trainer.get_train_dataloader()))
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    spy = RowSpy(monkeypatch)

    loss_all, grads_all = loss_and_grads(trainer, batch)
    with compact_lm_head_on_cpu() as applied:
        loss_compact, grads_compact = loss_and_grads(trainer, batch)
    assert applied
    # trl's CPU layout projects every position; the compact one only the labelled next tokens.
    assert spy.rows == [batch["input_ids"].numel() - batch["input_ids"].shape[0], labelled]
    assert labelled < spy.rows[0] / 2
    assert loss_compact == pytest.approx(loss_all, rel=1e-6)
    assert grads_compact.keys() == grads_all.keys() and any(g.abs().sum() > 0 for g in grads_all.values())
    for name, grad in grads_all.items():
        torch.testing.assert_close(grads_compact[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_switch_is_scoped_and_keeps_the_non_cpu_choice():
    utils = importlib.import_module("trl.trainer.utils")
    original = utils._use_triton
    with compact_lm_head_on_cpu():
        assert utils._use_triton(torch.device("cpu")) is True
        assert utils._use_triton(torch.device("meta")) == original(torch.device("meta"))
    assert utils._use_triton is original
    with pytest.raises(RuntimeError), compact_lm_head_on_cpu():
        raise RuntimeError("training failed")
    assert utils._use_triton is original
