"""Generation (prefill and decoding) with bf16 weights packed once for oneDNN, on CPU.

Why: PyTorch's CPU ``linear`` in bf16 hands the weight to oneDNN in its plain layout, and oneDNN reorders
it into its blocked layout on *every* call. In isolation (weights hot in cache) that reorder doubles the
cost of a one-row product: 576 -> 1536 projection of the default model, 1 row 93 -> 39 us, 16 rows 212 ->
125 us (2-core Zen 4 EPYC). Inside the model every step streams all 270 MB of weights from memory, and the
reorder reads and writes each weight once more. Measured in the default model (eighth session, one
process, decoding steps of the same batch with and without packs, interleaved, identical tokens): 0.85x
the time per step at 1 row, 0.76x at 4, 0.78x at 8, **0.77x at 16** (46.8 vs 60.6 ms), 0.80x at 32. The
30 layers' products alone, weights cold: 0.65x at 16 rows, and never slower up to 4,096 rows (prefill
sizes, 0.91-0.98x), so every inference call packs: single requests, batched decoding steps and prefills.
(The sixth session packed only calls of at most 4 rows: its in-model comparison at 16 rows fell within
that VM's 25% arm-to-arm noise.) This is what ``torch.compile``'s CPU freezing pass does (inductor's mkldnn
fusion: ``mkldnn._reorder_linear_weight`` once, ``mkldnn._linear_pointwise`` per call), here without
compiling, so shapes may vary freely.

The product is the same oneDNN kernel on the same blocked weight: the outputs are bit-identical to
``F.linear`` (checked once per process by ``available()``, and by ``tests/test_packed_linear.py``), so
answers do not change.

A packed copy costs the weight's size again (256 MiB for the default model), so packs are freed before
adapter training, and ``suspended()`` keeps likelihood passes pack-free. Weights written in place (an
adapter merged into the base, and unmerged) are re-packed: the backend calls ``refresh`` for the weights a
merge touches (peft writes through ``.data``, unseen by the version counter), and every call checks the
weight's storage pointer and version counter. ``ADAPTBENCH_PACKED_LINEAR=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

_ATTR = "_adaptbench_pack"  # (storage pointer, version, packed weight) on the module


@functools.cache
def available() -> bool:
    """oneDNN has the two (private) ops, runs bf16 on this CPU, and the packed product equals ``F.linear``
    bit for bit here: checked once on a small product, never assumed."""
    try:
        ops = torch.ops.mkldnn
        if not (torch.backends.mkldnn.is_available() and ops._is_mkldnn_bf16_supported()):
            return False
        gen = torch.Generator().manual_seed(0)
        weight = torch.randn(96, 64, generator=gen).bfloat16()
        bias = torch.randn(96, generator=gen).bfloat16()
        packed = ops._reorder_linear_weight(weight, 1)
        for rows in (1, 3, 40):  # a decoding step, a small batch, a prefill
            x = torch.randn(rows, 64, generator=gen).bfloat16()
            got = ops._linear_pointwise(x, packed, bias, "none", [], "")
            if not torch.equal(got, F.linear(x, weight, bias)):
                return False
        return True
    except (AttributeError, RuntimeError):  # an op missing in this build, or refused on this CPU
        return False


def enabled_by_env() -> bool:
    return os.environ.get("ADAPTBENCH_PACKED_LINEAR", "1").strip() != "0"


class PackedLinears:
    """The plain bf16 ``nn.Linear`` modules of a CPU model, computing inference calls from packed weights."""

    def __init__(self, model: torch.nn.Module):
        self.modules: list[torch.nn.Linear] = [
            m
            for m in model.modules()
            if type(m) is torch.nn.Linear  # not bitsandbytes' quantized subclasses, not LoRA's own layers
            and m.weight.dtype == torch.bfloat16
            and m.weight.device.type == "cpu"
            and not hasattr(m, "_hf_hook")  # accelerate's offload hooks own forward
        ]
        self.active = True
        for module in self.modules:
            # An instance attribute: nn.Module.__call__ (hooks included) calls it instead of Linear.forward.
            module.forward = functools.partial(_packed_forward, module, self)

    @contextlib.contextmanager
    def suspended(self, release: bool = True) -> Iterator[None]:
        """Plain ``F.linear`` inside (no packs made or used), every pack freed first unless ``release`` is
        false: for passes that do not decode, such as likelihood scoring, whose calls would otherwise
        pack the model again (and for benchmarks comparing both paths)."""
        if release:
            self.release()
        self.active, before = False, self.active
        try:
            yield
        finally:
            self.active = before

    def refresh(self, tensors: list[torch.Tensor]) -> None:
        """Re-pack now the packed modules whose weight is one of ``tensors`` (written in place, e.g. by an
        adapter merge); modules without a pack stay without one."""
        ids = {id(t) for t in tensors}
        for module in self.modules:
            if id(module.weight) in ids and _ATTR in module.__dict__:
                module.__dict__[_ATTR] = _pack(module.weight)

    def release(self) -> None:
        """Free every packed copy (they are rebuilt at the next decoding call)."""
        for module in self.modules:
            module.__dict__.pop(_ATTR, None)

    @property
    def packed_bytes(self) -> int:
        packs = (m.__dict__.get(_ATTR) for m in self.modules)
        return sum(p[2].numel() * p[2].element_size() for p in packs if p is not None)


def _packed_forward(self: torch.nn.Linear, owner: PackedLinears, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if (
        not owner.active
        or x.dtype != torch.bfloat16  # the model may have been cast since install
        or weight.dtype != torch.bfloat16
        or x.device.type != "cpu"
        or torch.is_grad_enabled()  # the packed op has no backward
        or torch.is_autocast_enabled("cpu")
        or not x.is_contiguous()  # F.linear would round before adding the bias there: not the same numbers
    ):
        return F.linear(x, weight, self.bias)
    pack = self.__dict__.get(_ATTR)
    if pack is None or pack[:2] != (weight.data_ptr(), weight._version):
        pack = self.__dict__[_ATTR] = _pack(weight)
    return torch.ops.mkldnn._linear_pointwise(x, pack[2], self.bias, "none", [], "")


def _pack(weight: torch.Tensor) -> tuple[int, int, torch.Tensor]:
    """(storage pointer, version, weight in oneDNN's blocked layout; the row hint only picks the
    layout, and calls of any row count use it: measured above)."""
    return weight.data_ptr(), weight._version, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)


def install(model: Any) -> PackedLinears | None:
    """Pack-on-demand for ``model``'s bf16 linears on CPU, or ``None`` (off, unavailable, nothing to pack)."""
    if not enabled_by_env() or not available() or not isinstance(model, torch.nn.Module):
        return None
    packed = PackedLinears(model)
    return packed if packed.modules else None
