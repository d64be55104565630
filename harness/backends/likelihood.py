"""Masked negative log-likelihood of completions: the one implementation behind answer perplexity
(``LogLikelihood.completion_nll``) and adapter validation loss (``AdapterHost.adapter_nll``).

A row is ``(ids, n_context)``: the first ``n_context`` tokens are context, the rest the completion
whose tokens are scored. Rows are right-padded (positions stay ``0..len-1``) and batched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Row = tuple[list[int], int]


def rows_from_masks(rows: list[dict[str, list[int]]]) -> list[Row]:
    """Training-style rows (``input_ids`` + ``completion_mask``: zeros then ones) as ``(ids, n_context)``."""
    out: list[Row] = []
    for r in rows:
        mask = r["completion_mask"]
        n_ctx = next((i for i, m in enumerate(mask) if m), len(mask))
        if any(not m for m in mask[n_ctx:]):
            raise ValueError("completion_mask must be zeros (context) followed by ones (completion)")
        out.append((list(r["input_ids"]), n_ctx))
    return out


def pad_rows(rows: list[Row], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` (-100 outside the completion)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (ids, n_ctx) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention[r, : len(ids)] = 1
        labels[r, n_ctx : len(ids)] = torch.tensor(ids[n_ctx:])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _each_batch(
    model: Any,
    rows: list[Row],
    pad_id: int,
    batch_size: int,
    use: Callable[[torch.Tensor, torch.Tensor], None],
) -> None:
    """Call ``use(nll, mask)`` per batch: the NLL of every next-token prediction and the completion mask,
    both ``[batch, width-1]``. Eval mode and no autograd inside; the model's train/eval mode is restored."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                batch = pad_rows(rows[start : start + batch_size], pad_id)
                logits = model(
                    input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
                ).logits
                logits = logits[:, :-1].float()
                target = batch["labels"][:, 1:].to(device)
                nll = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    target.reshape(-1),
                    ignore_index=-100,
                    reduction="none",
                ).view(target.shape)
                use(nll, (target != -100).float())
    finally:
        model.train(was_training)


def masked_mean_nll(model: Any, rows: list[Row], pad_id: int, batch_size: int = 8) -> list[float]:
    """Mean NLL per completion token of each row (0.0 for a row without completion tokens)."""
    out: list[float] = []

    def use(nll: torch.Tensor, mask: torch.Tensor) -> None:
        out.extend(((nll * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist())

    _each_batch(model, rows, pad_id, batch_size, use)
    return out


def token_mean_nll(model: Any, rows: list[Row], pad_id: int, batch_size: int = 8) -> float:
    """Token-weighted mean NLL over the completion tokens of all rows (a validation loss)."""
    acc = [0.0, 0]

    def use(nll: torch.Tensor, mask: torch.Tensor) -> None:
        acc[0] += (nll * mask).sum().item()
        acc[1] += int(mask.sum().item())

    _each_batch(model, rows, pad_id, batch_size, use)
    return acc[0] / max(1, acc[1])
