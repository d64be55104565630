"""Answer perplexity under the run's base model, for the coherence metric's fluency term.

PPL(answer | question) = exp(mean negative log-likelihood of the answer's tokens), where the context is
the chat-template rendering of a single user turn holding the question (no system prompt, no retrieved
context, no few-shot examples: every strategy's answer is judged in the same setting) and adapters are
switched off, so a fine-tuned strategy is not graded by its own weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def supports_perplexity(backend: Any) -> bool:
    """The backend can score likelihoods: the ``LogLikelihood`` capability (``completion_nll``), or
    (until every backend has it) a Hugging Face model and tokenizer."""
    return callable(getattr(backend, "completion_nll", None)) or (
        hasattr(backend, "model") and hasattr(backend, "tokenizer") and hasattr(backend, "_adapter_context")
    )


def answer_perplexities(
    backend: Any, questions: list[str], answers: list[str], batch_size: int = 8, max_answer_tokens: int = 256
) -> list[float | None]:
    """Perplexity of each answer given its question; ``None`` for an empty answer."""
    if callable(getattr(backend, "completion_nll", None)):
        nll = backend.completion_nll(
            [[{"role": "user", "content": q}] for q in questions],
            list(answers),
            batch_size=batch_size,
            max_completion_tokens=max_answer_tokens,
        )
        return [None if v is None else float(math.exp(min(v, 50.0))) for v in nll]
    tokenizer, model = backend.tokenizer, backend.model
    window = int(getattr(backend, "context_window", 2048) or 2048)
    rows: list[tuple[int, list[int], int]] = []  # (position, ids, n_context)
    out: list[float | None] = [None] * len(answers)
    for i, (q, a) in enumerate(zip(questions, answers, strict=True)):
        ans = _encode(tokenizer, a)[:max_answer_tokens] if a and a.strip() else []
        if not ans:
            continue
        ctx = _encode(tokenizer, backend.render([{"role": "user", "content": q}]))
        ctx = ctx[-max(1, window - len(ans)) :]
        rows.append((i, ctx + ans, len(ctx)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    adapters_off = backend._adapter_context(None)
    with torch.inference_mode(), adapters_off:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(ids) for _, ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for r, (_, ids, n_ctx) in enumerate(chunk):  # right padding: positions stay 0..len-1
                input_ids[r, : len(ids)] = torch.tensor(ids)
                attention[r, : len(ids)] = 1
                labels[r, n_ctx : len(ids)] = torch.tensor(ids[n_ctx:])
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            logits = logits[:, :-1].float()
            target = labels[:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
            ).view(target.shape)
            mask = (target != -100).float()
            mean_nll = (nll * mask).sum(1) / mask.sum(1).clamp(min=1)
            for (pos, _, _), v in zip(chunk, mean_nll.tolist(), strict=True):
                out[pos] = float(math.exp(min(v, 50.0)))
    return out


def vocab_size(backend: Any) -> int:
    if isinstance(getattr(backend, "vocab_size", None), int):
        return int(backend.vocab_size)
    config = getattr(backend.model, "config", None)
    return int(getattr(config, "vocab_size", None) or len(backend.tokenizer))
