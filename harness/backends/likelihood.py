"""Masked negative log-likelihood of token rows: the one loop behind perplexity and adapter validation loss."""

from __future__ import annotations

from typing import Any

import torch


def pad_batch(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` (-100 outside the completion)."""
    n = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for j, r in enumerate(rows):
        k = len(r["input_ids"])
        ids[j, :k] = torch.tensor(r["input_ids"])
        mask[j, :k] = 1
        labels[j, :k] = torch.tensor(
            [t if m else -100 for t, m in zip(r["input_ids"], r["completion_mask"], strict=True)]
        )
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def masked_mean_nll(
    model: Any, rows: list[dict[str, list[int]]], pad_id: int, batch_size: int = 8
) -> list[float]:
    """Per row: mean NLL over the tokens whose ``completion_mask`` is 1 (nan when none is predicted)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(rows), batch_size):
        batch = pad_batch(rows[i : i + batch_size], pad_id)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = batch["labels"][:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
        ).view(target.shape)
        counted = (target != -100).float()
        out += ((nll * counted).sum(1) / counted.sum(1)).tolist()
    model.train(was_training)
    return out


def completion_tokens(row: dict[str, list[int]]) -> int:
    """Tokens of ``row`` that ``masked_mean_nll`` averages over (the first token is never predicted)."""
    return sum(row["completion_mask"][1:])
