"""Continuous batching for the transformers backend's greedy evaluation pass.

Why: ``model.generate`` decodes a batch until its longest answer ends; a row that finished early still
computes pad tokens at every step. In the demo's batches of 16, half the row-steps were such filler
(answers of 20-60 tokens on average in batches that ran 33-96 steps), and on a CPU a long-context row's
attention is not cheap (RAG batches: 0.64x the time without the filler, docs/benchmarks.md).
Served engines keep their batch full instead (vLLM, TGI, transformers' own ``generate_batch``, which
needs a paged cache and ran 1.4x slower than ``generate`` on this CPU): a finished row leaves at once and
the next waiting prompt takes its slot. ``decode`` does that on the model's plain dynamic cache:

* up to ``slots`` rows decode together, one token per step, each at its own position;
* a finished row (EOS, a stop string, ``max_new_tokens``) is removed from the cache after the step;
* waiting prompts are prefilled as one left-padded batch (through the prefix cache when it has their
  shared prefix) and joined to the running batch by left-padding the narrower of the two caches;
* cache columns no remaining row attends to (every mask zero) are cut off.

Greedy only, and only where the library would add nothing to the logits (no repetition penalty, bad
words, minimum length...): the loop takes the argmax of the logits as ``generate`` does for such a
config; anything else stays with ``generate``. A row's tokens are those ``generate`` gives it up to
rounding: its padding differs (masked positions weigh zero; the sums run over other lengths), so at a
near-tie a greedy answer may flip, as it may between two batch compositions in ``generate``
(``tests/test_continuous.py`` checks equality in float64). ``ADAPTBENCH_CONTINUOUS=0`` turns it off.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from harness.backends import shared_prefix, switched_on

# generation_config fields that make generate change the logits or the choice; any set -> generate
_PROCESSING = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "sequence_bias": (None,),
    "num_beams": (None, 1),
    "exponential_decay_length_penalty": (None,),
    "watermarking_config": (None,),
}

# (prefill inputs for new rows) -> (input_ids to run, attention_mask over cache + them, the cache)
Prefill = Callable[[list[list[int]]], tuple[torch.Tensor, torch.Tensor, Any]]
# (each row's new tokens so far) -> whether a stop string ends it
StopCheck = Callable[[list[list[int]]], list[bool]]


def enabled_by_env() -> bool:
    """On unless ``ADAPTBENCH_CONTINUOUS=0`` (an escape hatch and the benchmark's baseline arm)."""
    return switched_on("ADAPTBENCH_CONTINUOUS")


def plain_greedy(generation_config: Any) -> bool:
    """Whether ``generate`` with ``do_sample=False`` would take the plain argmax for this model's config."""
    if generation_config is None:
        return True
    return all(getattr(generation_config, k, None) in ok for k, ok in _PROCESSING.items())


@dataclass
class DecodeStats:
    """What a ``decode`` call did: forward passes and the rows they carried (a full batch: ``slots`` each)."""

    prefills: int = 0
    steps: int = 0
    row_steps: int = 0
    max_rows: int = 0  # the most rows one step carried


def _join(cache: Any, mask: torch.Tensor, new_cache: Any, new_mask: torch.Tensor) -> torch.Tensor:
    """Append ``new_cache``'s rows to ``cache`` (in place), left-padding the narrower one's keys and
    values with zeros that its mask marks as absent; returns the joined mask."""
    shared_prefix.expand_layers(cache)  # rows of different prefixes and paddings: one plain layout
    shared_prefix.expand_layers(new_cache)
    width = max(mask.shape[1], new_mask.shape[1])
    for layer, new in zip(cache.layers, new_cache.layers, strict=True):
        pad_old, pad_new = width - layer.keys.shape[-2], width - new.keys.shape[-2]
        layer.keys = torch.cat([F.pad(layer.keys, (0, 0, pad_old, 0)), F.pad(new.keys, (0, 0, pad_new, 0))])
        layer.values = torch.cat(
            [F.pad(layer.values, (0, 0, pad_old, 0)), F.pad(new.values, (0, 0, pad_new, 0))]
        )
    return torch.cat(
        [F.pad(mask, (width - mask.shape[1], 0)), F.pad(new_mask, (width - new_mask.shape[1], 0))]
    )


def _keep(cache: Any, mask: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Only rows ``keep`` stay in ``cache`` (in place); leading columns none of them attends to are cut."""
    index = torch.tensor(keep, device=mask.device)
    mask = mask.index_select(0, index)
    start = int(mask.any(0).long().argmax())  # first column some row attends to
    for layer in cache.layers:
        if hasattr(layer, "keep_rows"):  # kv_buffers.BufferedLayer: its spare columns stay with the rows
            layer.keep_rows(index, start)
            continue
        layer.keys = layer.keys.index_select(0, index)[..., start:, :]
        layer.values = layer.values.index_select(0, index)[..., start:, :]
    return mask[:, start:]


def positions(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Position ids of the last ``width`` columns: each row counts only its own (unmasked) tokens, as
    ``generate`` derives them from the attention mask."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)[:, -width:]


def decode(
    model: Any,
    rows: Sequence[list[int]],
    slots: int,
    max_new_tokens: int,
    stop_ids: set[int],
    stop_check: StopCheck | None,
    prefill: Prefill,
    stats: DecodeStats | None = None,
    cache_kwarg: str = "cache",
) -> list[list[int]]:
    """Greedy continuation of every row of ``rows`` (token ids), at most ``slots`` decoding together.

    Returns each row's new tokens, ending with its EOS (kept, as ``generate`` keeps it) or with the token
    that completed a stop string; ``prefill`` builds the forward inputs for rows joining the batch;
    ``cache_kwarg`` is the forward's name for the cache (``past_key_values`` before transformers 5)."""
    stats = stats if stats is not None else DecodeStats()
    waiting = deque(range(len(rows)))
    out: list[list[int]] = [[] for _ in rows]
    active: list[int] = []  # row indices, in the batch's order
    cache: Any = None
    mask = last = torch.empty(0)
    while waiting or active:
        if waiting and len(active) < slots:
            joining = [waiting.popleft() for _ in range(min(slots - len(active), len(waiting)))]
            ids, new_mask, new_cache = prefill([list(rows[i]) for i in joining])
            logits = model(
                input_ids=ids,
                attention_mask=new_mask,
                position_ids=positions(new_mask, ids.shape[1]),
                use_cache=True,
                logits_to_keep=1,
                **{cache_kwarg: new_cache},
            ).logits
            first = logits[:, -1].argmax(-1)
            stats.prefills += 1
            if cache is None:
                cache, mask, last = new_cache, new_mask, first
            else:
                mask = _join(cache, mask, new_cache, new_mask)
                last = torch.cat([last, first])
            active += joining
            moved, tokens = joining, first.tolist()  # the running rows wait for the next step
        else:
            mask = F.pad(mask, (0, 1), value=1)
            logits = model(
                input_ids=last[:, None],
                attention_mask=mask,
                position_ids=positions(mask, 1),
                use_cache=True,
                logits_to_keep=1,
                **{cache_kwarg: cache},
            ).logits
            last = logits[:, -1].argmax(-1)
            stats.steps += 1
            stats.row_steps += len(active)
            stats.max_rows = max(stats.max_rows, len(active))
            moved, tokens = active, last.tolist()
        ended = set()
        for i, tok in zip(moved, tokens, strict=True):
            out[i].append(tok)
            if tok in stop_ids or len(out[i]) >= max_new_tokens:
                ended.add(i)
        if stop_check is not None:
            pending = [i for i in moved if i not in ended]
            ended.update(
                i for i, hit in zip(pending, stop_check([out[i] for i in pending]), strict=True) if hit
            )
        done = [i in ended for i in active]
        if any(done):
            keep = [j for j, d in enumerate(done) if not d]
            active = [active[j] for j in keep]
            if keep:
                mask = _keep(cache, mask, keep)
                last = last[torch.tensor(keep, device=last.device)]
            else:
                cache, mask, last = None, torch.empty(0), torch.empty(0)
    return out


def plain_cache(config: Any) -> bool:
    """Whether every layer of this model's dynamic cache is a plain one (no sliding window or recurrent
    state, which keep a cropped or folded history that rows cannot be joined into)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    try:
        layers = DynamicCache(config=config).layers
    except (TypeError, ValueError, AttributeError):
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def stop_strings_check(criteria: Any) -> StopCheck:
    """A ``StopCheck`` from the library's ``StopStringCriteria`` (vectorised over rows of equal length;
    it reads only a row's last ``maximum_token_len`` tokens, so longer rows group together)."""

    def check(rows: list[list[int]]) -> list[bool]:
        tail = criteria.maximum_token_len
        groups: dict[int, list[int]] = {}
        for j, row in enumerate(rows):
            groups.setdefault(min(len(row), tail), []).append(j)
        hits = [False] * len(rows)
        for n, members in groups.items():
            ids = torch.tensor([rows[j][-n:] for j in members], dtype=torch.long)
            for j, hit in zip(members, criteria(ids, None).tolist(), strict=True):
                hits[j] = bool(hit)
        return hits

    return check
