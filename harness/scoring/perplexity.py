"""Answer perplexity under the run's base model, for the coherence metric's fluency term.

PPL(answer | question) = exp(mean negative log-likelihood of the answer's tokens), where the context is
the chat-template rendering of a single user turn holding the question (no system prompt, no retrieved
context, no few-shot examples: every strategy's answer is judged in the same setting) and adapters are
switched off, so a fine-tuned strategy is not graded by its own weights. The backend must provide the
``LogLikelihood`` capability.
"""

from __future__ import annotations

import math
from typing import Any

from harness.backends.base import LogLikelihood, require

WHO = "the coherence metric (answer perplexity)"


def supports_perplexity(backend: Any) -> bool:
    """The backend can score likelihoods (the ``LogLikelihood`` capability)."""
    return isinstance(backend, LogLikelihood)


def answer_perplexities(
    backend: Any, questions: list[str], answers: list[str], batch_size: int = 8, max_answer_tokens: int = 256
) -> list[float | None]:
    """Perplexity of each answer given its question; ``None`` for an empty answer."""
    scorer = require(backend, LogLikelihood, WHO)
    contexts = [[{"role": "user", "content": q}] for q in questions]
    nll = scorer.completion_nll(
        contexts, answers, batch_size=batch_size, max_completion_tokens=max_answer_tokens
    )
    return [None if v is None else float(math.exp(min(v, 50.0))) for v in nll]


def vocab_size(backend: Any) -> int:
    return int(require(backend, LogLikelihood, WHO).vocab_size)
