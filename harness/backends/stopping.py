"""Where a generated answer ends, for the transformers backend: stop strings through the library's
``StopStringCriteria`` (matched on the new tokens only), the end-of-sequence ids, each row's real length,
and the streamer that marks a latency-probe request's first token.

Why a module of its own: ``generate`` (per-row stopping inside the library's loop) and continuous batching
(``continuous.decode``) end rows by the same rules, and the answer's text and token count must not depend
on which of the two produced it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.generation.stopping_criteria import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from harness.latency import mark_first_token


class FirstTokenStreamer(BaseStreamer):
    """``generate`` hands a streamer the prompt first, then each new token: the second ``put`` is the
    first generated token (time to first token for the latency probe)."""

    def __init__(self) -> None:
        self.calls = 0

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:
            mark_first_token()

    def end(self) -> None:
        pass


class NewTokens(StoppingCriteria):
    """Apply a stopping criterion to the generated tokens only (left padding: they start at one column)."""

    def __init__(self, inner: StoppingCriteria, prompt_width: int):
        self.inner = inner
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_width :]
        if new.shape[1] == 0:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return self.inner(new, scores, **kwargs)


class StopStrings:
    """The library's ``StopStringCriteria`` per tuple of stop strings, built once per tokenizer:
    construction reads and hashes the whole vocabulary (tens of ms), which would otherwise land in every
    request's time to first token."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._built: dict[tuple[str, ...], Any] = {}

    def criteria(self, stops: tuple[str, ...]) -> Any:
        from transformers import StopStringCriteria

        if stops not in self._built:
            self._built[stops] = StopStringCriteria(self.tokenizer, list(stops))
        return self._built[stops]

    def for_generate(self, stops: tuple[str, ...], prompt_width: int) -> Any:
        """``stopping_criteria`` for ``generate``: the stop strings matched on the new tokens only.

        The library's criterion reads the whole sequence, so a prompt ending in "\\n" (every chat
        template's generation prompt) plus a first generated "\\n" would match "\\n\\n" and end the answer
        before it starts, which cutting afterwards never did.
        """
        from transformers import StoppingCriteriaList

        return StoppingCriteriaList([NewTokens(self.criteria(stops), prompt_width)])


def end_ids(tokenizer: Any, model: Any) -> set[int]:
    """Token ids that end a row: the tokenizer's EOS and pad, and the model's generation-config EOS ids."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    ids.discard(None)
    return ids


def row_length(tokenizer: Any, row: list[int], stop_ids: set[int], stops: list[str]) -> tuple[int, str]:
    """(tokens this row really generated, their text). A row ends at its EOS (counted, it was generated)
    or, with stop strings, at the token completing one: the pad after it is filler."""
    end = next((i for i, tok in enumerate(row) if tok in stop_ids), None)
    if end is None:
        return len(row), tokenizer.decode(row, skip_special_tokens=True)
    before = tokenizer.decode(row[:end], skip_special_tokens=True)
    if stops and any(stop in before for stop in stops):
        return end, before
    return end + 1, tokenizer.decode(row[: end + 1], skip_special_tokens=True)
