"""On a CPU, let trl's fused LM head project only the positions the loss reads.

trl's ``SFTTrainer`` (1.x) computes the loss through a fused LM head (``trl.trainer.utils.add_fused_lm_head``)
that never builds the ``[batch, length, vocab]`` logits. On Triton devices it projects only the positions
that have a label ("compact"); everywhere else it projects *every* position — prompt, padding and all —
because on compiled backends (Neuron, XLA) a token count that changes per batch recompiles the graph. A CPU
compiles nothing, and there the head is what costs: with SmolLM2's 49k vocabulary the fused head's
forward + backward was a third of a demo qlora step (profiled: 12.8 of 39.9 s over 3 steps of 8 rows),
most of it on prompt and padding positions whose loss is zero anyway.

``compact_lm_head_on_cpu()`` turns the compact layout on for CPU tensors while an adapter trains. The loss
and the gradients are the same (masked positions contribute exactly zero either way;
``tests/test_fused_head.py``). On a trl without the fused head it does nothing and says so (``False``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _trl_utils() -> Any | None:
    try:
        utils = importlib.import_module("trl.trainer.utils")
    except ImportError:
        return None
    if not hasattr(utils, "add_fused_lm_head") or not callable(getattr(utils, "_use_triton", None)):
        return None
    return utils


@contextmanager
def compact_lm_head_on_cpu() -> Iterator[bool]:
    """Within the block trl's fused LM head projects labelled positions only, on CPU as on CUDA.

    Yields whether the switch applies (recorded in the training record as ``compact_lm_head``).
    """
    utils = _trl_utils()
    if utils is None:
        yield False
        return
    original = utils._use_triton

    def compact_here(device: Any) -> bool:
        # Only the layout choice in ``add_fused_lm_head`` reads this name in trl.trainer.utils; the kernels
        # module keeps its own reference, so CPU tiles still fold with plain torch ops.
        return getattr(device, "type", None) == "cpu" or original(device)

    utils._use_triton = compact_here
    try:
        yield True
    finally:
        utils._use_triton = original
