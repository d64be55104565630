"""Masked negative log-likelihood of completions: the one implementation behind answer perplexity
(``LogLikelihood.completion_nll``) and adapter validation loss (``AdapterHost.adapter_nll``, and the
trainer's own evaluations: strategies/adapters/validation.py).

A row is ``(ids, n_context)``: the first ``n_context`` tokens are context, the rest the completion
whose tokens are scored. Rows are right-padded (positions stay ``0..len-1``) and batched; a prompt prefix
every row shares is computed once and the rows continue from its keys and values (``_shared_prefix``).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
from collections.abc import Iterator
from typing import Any

import torch

from harness.backends import switched_on
from harness.backends.continuous import plain_cache, positions

Row = tuple[list[int], int]
MIN_SHARED_PREFIX = 16  # tokens: a shorter prefix shared by every row saves too little to run on its own


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


def _unwrapped(model: Any) -> Any:
    """The transformers model under a peft wrapper (the model itself when not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def keeps_logits(model: Any) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs do; custom
    ``trust_remote_code`` models may not), looked up through a peft wrapper."""
    inner = _unwrapped(model)
    try:
        return "logits_to_keep" in inspect.signature(type(inner).forward).parameters
    except (TypeError, ValueError):
        return False


@contextlib.contextmanager
def _scoring(model: Any) -> Iterator[None]:
    """Eval mode and no autograd inside; the model's mode is restored (a trainer may be mid-run)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _each_batch(
    model: Any,
    rows: list[Row],
    pad_id: int,
    batch_size: int,
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Yield ``(row indices, nll, mask)`` per batch: the NLL of every scored next-token prediction and the
    completion mask, both ``[batch, kept]``. Eval mode and no autograd inside; the model's mode is restored.

    Why it is shaped like this: on a CPU the forward pass is the whole cost, so rows are batched longest
    first (similar lengths, little padding) and the LM head projects only the positions from the batch's
    earliest completion on (``logits_to_keep``): context positions need no ``[width, vocab]`` logits.
    """
    device = next(model.parameters()).device
    keep_ok = keeps_logits(model)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    with _scoring(model):
        shared, prefix_kv = _shared_prefix(model, rows, device) if keep_ok else (0, None)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            chunk = [(rows[i][0][shared:], rows[i][1] - shared) for i in idx]
            batch = pad_rows(chunk, pad_id)
            width = batch["input_ids"].shape[1]
            # The first scored prediction is made at the last context token of the earliest completion.
            first = max(0, min(n_ctx for _, n_ctx in chunk) - 1) if keep_ok else 0
            kwargs: dict[str, Any] = {"logits_to_keep": width - first} if first else {}
            mask = batch["attention_mask"].to(device)
            if prefix_kv is not None:  # each row's own tokens continue from the shared prefix's keys
                from harness.backends.prefix_cache import cache_kwarg, expand

                mask = torch.cat([torch.ones(len(chunk), shared, dtype=mask.dtype, device=device), mask], 1)
                kwargs[cache_kwarg()] = expand(prefix_kv, len(chunk))
                kwargs["position_ids"] = torch.arange(shared, shared + width, device=device).expand(
                    len(chunk), -1
                )
                kwargs["use_cache"] = True
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=mask, **kwargs).logits
            logits = logits[:, :-1]
            dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16/fp16 scored in fp32
            target = batch["labels"][:, first + 1 :].to(device)
            # Row by row: one cross-entropy over the batch reshaped a view of the [batch, kept, vocab]
            # logits (a full copy) and built a log-softmax of the same size beside it. The demo's
            # rag_qlora validation pass (12 rows, bf16) peaked 433 MB above its start; now 217 MB.
            nll = torch.stack(
                [
                    torch.nn.functional.cross_entropy(
                        logits[r].to(dtype), target[r], ignore_index=-100, reduction="none"
                    )
                    for r in range(len(chunk))
                ]
            )
            yield idx, nll, (target != -100).float()


def _shared_prefix(model: Any, rows: list[Row], device: Any) -> tuple[int, Any]:
    """``(length, keys and values)`` of the token prefix every row starts with, computed once, or
    ``(0, None)``. Why: validation rows share their prompt's start (system prompt, chat template,
    demonstrations), and on a CPU the forward pass is the whole cost. The prefix leaves every row at least
    one context token of its own, so no scored prediction falls inside it; a prefix shorter than
    ``MIN_SHARED_PREFIX`` tokens is not worth its own pass; ``ADAPTBENCH_PREFIX_CACHE=0`` turns it off, and
    models whose cache cannot be continued (``shares_contexts``) never take it."""
    if len(rows) < 2 or not switched_on("ADAPTBENCH_PREFIX_CACHE"):
        return 0, None
    n = min(len(os.path.commonprefix([ids for ids, _ in rows])), min(c for _, c in rows) - 1)
    if n < MIN_SHARED_PREFIX or not shares_contexts(model):
        return 0, None
    from harness.backends.prefix_cache import compute_prefix_kv

    kv = compute_prefix_kv(model, rows[0][0][:n], device)
    return (n, kv) if kv is not None else (0, None)


def masked_mean_nll(model: Any, rows: list[Row], pad_id: int, batch_size: int = 8) -> list[float]:
    """Mean NLL per completion token of each row (0.0 for a row without completion tokens)."""
    out = [0.0] * len(rows)
    for idx, nll, mask in _each_batch(model, rows, pad_id, batch_size):
        for i, value in zip(idx, ((nll * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist(), strict=True):
            out[i] = value
    return out


def token_mean_nll(model: Any, rows: list[Row], pad_id: int, batch_size: int = 8) -> float:
    """Token-weighted mean NLL over the completion tokens of all rows (a validation loss)."""
    total, count = 0.0, 0
    for _, nll, mask in _each_batch(model, rows, pad_id, batch_size):
        total += (nll * mask).sum().item()
        count += int(mask.sum().item())
    return total / max(1, count)


def shares_contexts(model: Any) -> bool:
    """Whether ``shared_context_nll`` can run on ``model``: its forward takes ``logits_to_keep`` and its
    cache is a plain dynamic one that rows can be picked from (not sliding-window or recurrent layers)."""
    return keeps_logits(model) and plain_cache(getattr(_unwrapped(model), "config", None))


def shared_context_nll(
    model: Any, rows: list[Row], pad_id: int, batch_size: int = 8, cache_kwarg: str = "cache"
) -> list[float]:
    """Mean NLL per completion token of each row, as ``masked_mean_nll``, each distinct context computed once.

    Why: answer perplexity scores every strategy's answer to a question after the same context (the
    question in a chat turn), and on a CPU the forward pass is the whole cost: the demo's 460 answers (5
    strategies x 92 questions) ran 35,005 positions through the model, 19,400 of them contexts that
    repeat 5 times. Here contexts run ``batch_size`` at a time (distinct ones, longest first, left-padded;
    the last position predicts each answer's first token); then their answers, longest first in batches
    of ``batch_size`` rows (little padding), continue from a copy of their contexts' keys and values
    (``reorder_cache`` picks each row's) at their own positions. Every row needs a context of at least one
    token (its completion's first token is then scored).
    """
    if any(n_ctx < 1 or n_ctx >= len(ids) for ids, n_ctx in rows):
        raise ValueError("every row needs a context and a completion")
    from transformers.cache_utils import DynamicCache

    inner = _unwrapped(model)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ids, n_ctx) in enumerate(rows):
        groups.setdefault(tuple(ids[:n_ctx]), []).append(i)
    contexts = sorted(groups, key=len, reverse=True)
    device = next(model.parameters()).device
    out = [0.0] * len(rows)
    with _scoring(model):
        for start in range(0, len(contexts), batch_size):
            chunk = contexts[start : start + batch_size]
            width = len(chunk[0])
            ctx_ids = torch.tensor([[pad_id] * (width - len(c)) + list(c) for c in chunk], device=device)
            ctx_mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=device)
            cache = DynamicCache(config=inner.config)
            first = model(
                input_ids=ctx_ids,
                attention_mask=ctx_mask,
                position_ids=positions(ctx_mask, width),
                use_cache=True,
                logits_to_keep=1,
                **{cache_kwarg: cache},
            ).logits[:, -1]
            members = [(c, i) for c, ctx in enumerate(chunk) for i in groups[ctx]]
            members.sort(key=lambda m: rows[m[1]][1] - len(rows[m[1]][0]))  # longest answer first
            for b in range(0, len(members), batch_size):
                part = members[b : b + batch_size]
                _score_part(model, rows, part, first, ctx_mask, cache, pad_id, cache_kwarg, out)
    return out


def _score_part(
    model: Any,
    rows: list[Row],
    part: list[tuple[int, int]],
    first: torch.Tensor,
    ctx_mask: torch.Tensor,
    cache: Any,
    pad_id: int,
    cache_kwarg: str,
    out: list[float],
) -> None:
    """Score the completions of ``part`` (``(context index in the chunk, row index)`` pairs) after their
    contexts' cached keys and values; writes each row's mean NLL into ``out``."""
    device = ctx_mask.device
    pick = torch.tensor([c for c, _ in part], device=device)
    picked = copy.deepcopy(cache)
    picked.reorder_cache(pick)  # each row gets its own context's keys and values
    answers = [rows[i][0][rows[i][1] :] for _, i in part]
    span = len(answers[0])  # longest first
    ans_ids = torch.tensor([a + [pad_id] * (span - len(a)) for a in answers], device=device)
    ans_mask = torch.tensor([[1] * len(a) + [0] * (span - len(a)) for a in answers], device=device)
    mask = torch.cat([ctx_mask.index_select(0, pick), ans_mask], dim=1)
    logits = model(
        input_ids=ans_ids,
        attention_mask=mask,
        position_ids=positions(mask, span),  # each answer continues right after its own context
        use_cache=True,
        **{cache_kwarg: picked},
    ).logits
    for r, ((c, i), answer) in enumerate(zip(part, answers, strict=True)):
        scored = torch.cat([first[c : c + 1], logits[r, : len(answer) - 1]])
        dtype = torch.promote_types(scored.dtype, torch.float32)  # bf16/fp16 scored in fp32
        out[i] = float(
            torch.nn.functional.cross_entropy(scored.to(dtype), torch.tensor(answer, device=device))
        )
