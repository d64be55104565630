"""Training data for adapters: eval-set rows -> chat prompts -> token ids with a completion mask.

Prompts are rendered with the *same* chat template the inference backend uses; the loss covers only the
answer and its end-of-turn token. Optional knowledge-base chunks are plain language-modelling text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.backends.base import Prompt, TrainableBase, require
from harness.data import Document, EvalSet
from harness.errors import DataError
from harness.plugin import RunContext
from strategies.adapters.params import TrainParams

log = logging.getLogger("adaptbench.training")

Row = dict[str, list[int]]  # {"input_ids": [...], "completion_mask": [...]}
# (prompt, reference answer) pairs for one split; ``split`` is "train" or "validation".
PromptBuilder = Callable[[list[dict[str, Any]], str], list[tuple[Prompt, str]]]


@dataclass
class TrainData:
    train: list[Row]
    validation: list[Row]
    kb_chunks: int
    validation_source: str
    digest: str
    n_truncated: int = 0


def completion_text(tokenizer: Any, render: Callable[[Prompt], str], prompt: Prompt, answer: str) -> str:
    """The text the model must produce after the rendered prompt: answer + the template's end of turn."""
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": answer}], tokenize=False
        )
        head = render(prompt)
        if full.startswith(head):
            return full[len(head) :].rstrip()
    return " " + answer + (tokenizer.eos_token or "")


def encode_example(
    tokenizer: Any, render: Callable[[Prompt], str], prompt: Prompt, answer: str, max_len: int
) -> Row:
    """Token ids + completion mask, tokenised exactly as the backend tokenises prompts at inference.

    An over-long prompt loses its start (the backend keeps the end of long prompts too).
    """
    p_ids = tokenizer(render(prompt), add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion_text(tokenizer, render, prompt, answer), add_special_tokens=False)[
        "input_ids"
    ]
    c_ids = c_ids[: max_len - 8]
    p_ids = p_ids[-(max_len - len(c_ids)) :]
    return {"input_ids": p_ids + c_ids, "completion_mask": [0] * len(p_ids) + [1] * len(c_ids)}


def kb_chunks(tokenizer: Any, documents: list[Document], max_len: int) -> list[Row]:
    """Knowledge-base documents as plain language-modelling text (every token trained)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = []
    for doc in documents:
        ids = tokenizer(f"# {doc.title}\n\n{doc.text}", add_special_tokens=False)["input_ids"] + eos
        for i in range(0, len(ids), max_len):
            piece = ids[i : i + max_len]
            if len(piece) > 8:
                out.append({"input_ids": piece, "completion_mask": [1] * len(piece)})
    return out


def split_rows(eval_set: EvalSet, seed: int, params: TrainParams) -> tuple[list[dict], list[dict], str]:
    """Train rows, validation rows and where validation came from (its split, or held out of train)."""
    train, validation, source = _split_rows(eval_set, seed, params)
    if params.validation_limit and len(validation) > params.validation_limit:
        validation = validation[: params.validation_limit]
        source += f" (first {params.validation_limit})"
    return train, validation, source


def split_problems(eval_set: EvalSet, params: TrainParams) -> list[str]:
    """What ``split_rows`` would refuse, as ``validate`` messages (no model needed)."""
    have = ", ".join(sorted(eval_set.splits)) or "none"
    train = eval_set.splits.get(params.train_split)
    if train is None:
        return [
            f"train_split: adapter training needs a {params.train_split!r} split in {eval_set.root} "
            f"(have: {have}); add train examples, set train_split, or give adapter_path"
        ]
    if params.validation_split not in eval_set.splits and len(train) < 2:
        return [
            f"validation_split: no {params.validation_split!r} split (have: {have}) and {params.train_split!r} "
            "has fewer than 2 examples to hold one out; add validation examples"
        ]
    return []


def _split_rows(eval_set: EvalSet, seed: int, params: TrainParams) -> tuple[list[dict], list[dict], str]:
    es = eval_set
    if params.train_split not in es.splits:
        have = ", ".join(sorted(es.splits)) or "none"
        raise DataError(
            f"{es.root}: adapter training needs a {params.train_split!r} split (have: {have}); "
            "add train.jsonl or set train_split"
        )
    train = list(es.splits[params.train_split])
    if params.validation_split in es.splits:
        return train, list(es.splits[params.validation_split]), params.validation_split
    if len(train) < 2:
        raise DataError(f"{es.root}: {params.train_split!r} needs at least 2 examples to hold out validation")
    idx = list(range(len(train)))
    random.Random(seed).shuffle(idx)
    n_val = max(1, len(train) // 10)
    held = set(idx[:n_val])
    return (
        [r for i, r in enumerate(train) if i not in held],
        [r for i, r in enumerate(train) if i in held],
        f"{n_val} held out of {params.train_split!r}",
    )


def build_data(ctx: RunContext, params: TrainParams, prompts: PromptBuilder) -> TrainData:
    """Tokenised train (+ KB chunks) and validation rows, with a digest for the adapter cache key."""
    backend = require(ctx.backend, TrainableBase, "adapter training")
    tokenizer, render = backend.tokenizer, ctx.backend.render
    train_rows, val_rows, val_source = split_rows(ctx.eval_set, ctx.seed, params)

    def encode(rows: list[dict[str, Any]], split: str) -> list[Row]:
        return [
            encode_example(tokenizer, render, prompt, answer, params.max_seq_length)
            for prompt, answer in prompts(rows, split)
        ]

    train = encode(train_rows, "train")
    validation = encode(val_rows, "validation")
    cut = sum(len(r["input_ids"]) >= params.max_seq_length for r in train + validation)
    if cut:
        log.warning(
            "%d training/validation prompts fill max_seq_length=%d and lost their start; raise max_seq_length",
            cut,
            params.max_seq_length,
        )
    kb = kb_chunks(tokenizer, ctx.eval_set.documents, params.max_seq_length) if params.include_kb else []
    h = hashlib.sha256()
    for name, rows in (("train", train + kb), ("validation", validation)):
        h.update(name.encode())
        for r in rows:
            h.update(json.dumps(r, separators=(",", ":")).encode())
    return TrainData(train + kb, validation, len(kb), val_source, h.hexdigest(), cut)
