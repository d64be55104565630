"""Validation loss during adapter training: the harness's likelihood pass instead of trl's evaluation loop.

Why: the trainer evaluates the validation rows before training (the step-0 point of the loss curve) and
every ``eval_steps``. trl's loop projected every position of every row onto the vocabulary (prompt tokens
included) in batches of the training batch size (1 for the demo's rag_qlora) and averaged batch means,
so its number was not the token-weighted loss the run reports for the served base
(``AdapterHost.adapter_nll``), and in the demo those passes took about a quarter of the adapters'
preparation. ``harness.backends.likelihood.token_mean_nll`` is the pass behind the served-base numbers:
completion tokens only (the logits from each batch's earliest completion on), rows longest first, the
prompt prefix every validation row shares computed once, token-weighted over the whole set. So every
validation loss of a run (4-bit training base, served base, merged) is one quantity computed one way.
The model is evaluated as it trains (the trainer's model, under its mixed-precision autocast).
"""

from __future__ import annotations

from typing import Any

from harness.backends.likelihood import rows_from_masks, token_mean_nll


def validation_rows(dataset: Any) -> list[tuple[list[int], int]]:
    """``(ids, n_context)`` rows of the trainer's (processed) evaluation dataset: trl keeps
    ``completion_mask`` or turns it into ``labels`` (-100 on the prompt, the ids on the completion)."""
    return rows_from_masks(
        [
            {
                "input_ids": r["input_ids"],
                "completion_mask": r["completion_mask"]
                if "completion_mask" in r
                else [int(label != -100) for label in r["labels"]],
            }
            for r in dataset
        ]
    )


def with_token_validation(trainer_cls: type) -> type:
    """A subclass of a transformers/trl trainer class whose evaluation runs ``token_mean_nll``; the rest of
    ``evaluate`` (speed metrics, logging, callbacks such as early stopping, best-model tracking) is the
    library's."""

    class TokenValidationTrainer(trainer_cls):  # type: ignore[misc, valid-type]
        def evaluation_loop(
            self,
            dataloader: Any,
            description: str,
            prediction_loss_only: bool | None = None,
            ignore_keys: list[str] | None = None,
            metric_key_prefix: str = "eval",
        ) -> Any:
            from transformers.trainer_utils import EvalLoopOutput

            rows = validation_rows(self.eval_dataset)
            pad = getattr(self.processing_class, "pad_token_id", None)
            with self.accelerator.autocast():
                loss = token_mean_nll(
                    self.model, rows, pad if pad is not None else 0, self.args.per_device_eval_batch_size
                )
            metrics = {f"{metric_key_prefix}_loss": loss}
            return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=len(rows))

    TokenValidationTrainer.__name__ = TokenValidationTrainer.__qualname__ = (
        f"TokenValidation{trainer_cls.__name__}"
    )
    return TokenValidationTrainer
