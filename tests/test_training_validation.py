"""The adapter trainer's validation loss (strategies/adapters/validation.py): the token-weighted mean NLL of
the validation rows' completion tokens under the model being trained, the same quantity the run reports
for the served base; computed on the trainer's own processed validation set; and still reported to the
trainer's log history and callbacks (the loss curve, early stopping) at every evaluation.
"""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from harness.backends.hf import TransformersBackend
from harness.backends.likelihood import rows_from_masks
from harness.backends.loading import load_model
from harness.config import ModelConfig
from strategies.adapters.data import TrainData, encode_example
from strategies.adapters.params import TrainParams
from strategies.adapters.trainer import build_trainer
from strategies.adapters.validation import validation_rows

SYSTEM = "You are the support assistant of a bike shop. Answer in one short, factual sentence, please."
QA = [
    ("How long is the return window?", "45 days from delivery."),
    ("Do you ship abroad?", "Only within the EU."),
    ("Is the battery removable?", "Yes, with the frame key."),
    ("What does the warranty cover?", "Frame and motor for three years."),
    ("Can I pause my membership?", "Yes, in the app under settings."),
    ("Where is my order?", "Check the tracking link in your email."),
]


class Evaluations(TrainerCallback):
    def __init__(self):
        self.metrics: list[dict] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.metrics.append(dict(metrics or {}))


def reference_loss(model, rows) -> float:
    """Token-weighted completion NLL, one row at a time with full logits (no padding, no shared prefix)."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for ids, n_ctx in rows:
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            logp = torch.log_softmax(logits[:-1], dim=-1)
            targets = torch.tensor(ids[1:])
            per = -logp[torch.arange(len(targets)), targets][n_ctx - 1 :]
            total, count = total + float(per.sum()), count + len(per)
    return total / count


def test_validation_loss_is_the_token_weighted_completion_loss(tiny_model_dir, tmp_path):
    loaded = load_model(ModelConfig(id=str(tiny_model_dir), dtype="float32"), tmp_path)
    backend = TransformersBackend(loaded)
    rows = [
        encode_example(
            loaded.tokenizer,
            backend.render,
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
            a,
            256,
        )
        for q, a in QA
    ]
    params = TrainParams(
        max_steps=2,
        batch_size=2,
        eval_steps=1,
        early_stopping_patience=0,  # the final model is the last step's, not the best one reloaded
        dropout=0.0,
        warmup_ratio=0.0,
        quantization="none",
        learning_rate=0.05,
    )
    data = TrainData(rows[:4], rows[4:] + rows[:2], 0, "test", "digest")
    trainer = build_trainer(loaded.model, loaded.tokenizer, params, data, "cpu", tmp_path / "out", 0, "t")
    seen = Evaluations()
    trainer.add_callback(seen)
    # the trainer's processed validation set holds the rows as built (nothing truncated or re-tokenised)
    val = rows_from_masks(data.validation)
    assert validation_rows(trainer.eval_dataset) == val
    with torch.no_grad():  # a trained-looking adapter, so the loss depends on the LoRA weights too
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    before = trainer.evaluate()["eval_loss"]
    assert before == pytest.approx(reference_loss(trainer.model, val), rel=1e-5)
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [1, 2]  # every eval_steps, in the history the loss curve reads
    assert evals[-1]["eval_loss"] == pytest.approx(reference_loss(trainer.model, val), rel=1e-5)
    assert evals[-1]["eval_loss"] != pytest.approx(before, rel=1e-3), "training must move the loss"
    assert [m["eval_loss"] for m in seen.metrics] == [before, *(h["eval_loss"] for h in evals)]
