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

**Sibling projections, one product.** The projections of one input (attention's q/k/v, the MLP's
gate/up: ``GROUPS``) are packed stacked, as vLLM's ``QKVParallelLinear`` and llama.cpp do: the first
sibling called computes all of them, the others take their slice of the same input's result. The 30
layers' products in one decoding step, weights cold (twelfth session, 2-core Zen 4, interleaved):
0.86x the time at 1 row (18.4 -> 15.8 ms), 0.84x at 4, 0.89x at 16. Each output column is the same
dot product over the same blocked weight rows, so the numbers do not change; ``fusable`` checks that
per shape once (against ``F.linear``) rather than assuming it, and the siblings compute apart when it
fails. ``ADAPTBENCH_FUSED_PROJECTIONS=0`` keeps them apart.

The product is the same oneDNN kernel on the same blocked weight: the outputs are bit-identical to
``F.linear`` (checked once per process by ``available()``, and by ``tests/test_packed_linear.py``), so
answers do not change.

A packed copy costs the weight's size again (256 MiB for the default model), so packs are freed before
adapter training, and ``suspended()`` keeps likelihood passes pack-free. Weights written in place (an
adapter merged into the base, and unmerged) are re-packed: the backend calls ``refresh`` for the weights a
merge touches (peft writes through ``.data``, unseen by the version counter), and every call checks the
weight's storage pointer and version counter. ``ADAPTBENCH_PACKED_LINEAR=0`` turns it off.

**Single requests: one-row products through PyTorch's own gemv.** oneDNN is a matrix-matrix library; a
one-row product (every decoding step of a single request) reads its weight at about a third of the
memory bandwidth this CPU has for a plain sum. PyTorch's native bf16 matrix-vector kernel (taken when
oneDNN is off for the call) accumulates in fp32 as oneDNN does and streams the plain weight: the 30
layers' products of one decoding step 0.69x the time of the stacked packed products, the LM head 0.81x
(thirteenth session, 2-core Zen 4, interleaved). Its summation order is not oneDNN's, so the last bit of
an output can differ and a greedy answer can take another word; that is why it serves only calls of a
single prompt (``one_row_gemv``, set by the backend), never the rows of a batch, whose answers are the ones
scored. A single request's answer already differs from its batched answer (another padding, another
prefill shape: 7 of 24 zero-shot answers differ without this, 8 of 24 with it), so the latency probe
measures what it measured: single requests as one user sends them. ``ADAPTBENCH_ONE_ROW_GEMV=0`` keeps one-row products on oneDNN.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from harness.backends import switched_on

_ATTR = "_adaptbench_pack"  # (storage pointer, version, packed weight) on the module
# Sibling projections of one input, by attribute name (Llama, Mistral, Qwen2, Gemma, SmolLM, ...).
GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@functools.cache
def available() -> bool:
    """oneDNN has the two (private) ops, runs bf16 on this CPU, and the packed product equals ``F.linear``
    bit for bit here: checked once on a small product, never assumed."""
    try:
        ops = torch.ops.mkldnn
        if not (torch.backends.mkldnn.is_available() and ops._is_mkldnn_bf16_supported()):
            return False
        return fusable(64, (96,), True)  # one weight, with a bias
    except (AttributeError, RuntimeError):  # an op missing in this build, or refused on this CPU
        return False


def enabled_by_env() -> bool:
    return switched_on("ADAPTBENCH_PACKED_LINEAR")


def _gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` of one row with oneDNN off for this call only: PyTorch's native bf16 gemv. The flag is
    process-wide, but generation runs on one thread, and nothing else is called while it is off."""
    before = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        return F.linear(x, weight, bias)
    finally:
        torch._C._set_mkldnn_enabled(before)


@contextlib.contextmanager
def _setting(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.<name>`` is ``value`` inside the block and what it was before after it."""
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)


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
        # single requests may take PyTorch's gemv (``plain_rows`` turns it off)
        self.gemv = switched_on("ADAPTBENCH_ONE_ROW_GEMV")
        self.one_row = False  # one-row products through PyTorch's gemv now: ``one_row_gemv``
        self.gemv_calls = 0  # how many products took that route (tests, the bench)
        self.sibling_groups = (
            sibling_groups(model, self.modules) if switched_on("ADAPTBENCH_FUSED_PROJECTIONS") else []
        )
        # id(member module) -> its group: the lookup of every call
        self.groups = {id(m): g for g in self.sibling_groups for m in g.members}
        for module in self.modules:
            # An instance attribute: nn.Module.__call__ (hooks included) calls it instead of Linear.forward.
            module.forward = functools.partial(_packed_forward, module, self)

    def suspended(self, release: bool = True) -> contextlib.AbstractContextManager[None]:
        """Plain ``F.linear`` inside (no packs made or used), every pack freed first unless ``release`` is
        false: for passes that do not decode, such as likelihood scoring, whose calls would otherwise
        pack the model again (and for benchmarks comparing both paths)."""
        if release:
            self.release()
        return _setting(self, "active", False)

    def one_row_gemv(self) -> contextlib.AbstractContextManager[None]:
        """Inside, products of a single row (decoding steps of a single request) use PyTorch's gemv
        instead of the packs; other calls are unchanged. The backend enters it for calls of one prompt."""
        return _setting(self, "one_row", self.gemv)

    def plain_rows(self) -> contextlib.AbstractContextManager[None]:
        """One-row products stay on the packs inside, single requests included (benchmarks compare)."""
        return _setting(self, "gemv", False)

    def separate(self) -> contextlib.AbstractContextManager[None]:
        """Sibling projections computed apart inside, from single packs (benchmarks compare both; the
        stacked packs are kept and refreshed as usual)."""
        return _setting(self, "groups", {})

    def refresh(self, tensors: list[torch.Tensor]) -> None:
        """Re-pack now the packed modules whose weight is one of ``tensors`` (written in place, e.g. by an
        adapter merge); modules without a pack stay without one."""
        ids = {id(t) for t in tensors}
        for module in self.modules:
            if id(module.weight) in ids and _ATTR in module.__dict__:
                module.__dict__[_ATTR] = _pack(module.weight)
        for group in self.sibling_groups:
            if group.pack is not None and any(id(t) in ids for m in group.members for t in _params(m)):
                group.pack = group.build()

    def release(self) -> None:
        """Free every packed copy (they are rebuilt at the next decoding call)."""
        for module in self.modules:
            module.__dict__.pop(_ATTR, None)
        for group in self.sibling_groups:
            group.pack, group.pending = None, None

    @property
    def packed_bytes(self) -> int:
        packs = [m.__dict__[_ATTR][2] for m in self.modules if _ATTR in m.__dict__]
        packs += [g.pack[1] for g in self.sibling_groups if g.pack is not None]
        return sum(p.numel() * p.element_size() for p in packs)


def _packed_forward(self: torch.nn.Linear, owner: PackedLinears, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if owner.one_row and owner.active and x.numel() == x.shape[-1]:  # first: fewer checks per step
        owner.gemv_calls += 1
        return _gemv(x, weight, self.bias)
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
    group = owner.groups.get(id(self))
    if group is not None and group.enabled:
        out = group.forward(self, x)
        if out is not None:
            return out
    pack = self.__dict__.get(_ATTR)
    if pack is None or pack[:2] != (weight.data_ptr(), weight._version):
        pack = self.__dict__[_ATTR] = _pack(weight)
    return torch.ops.mkldnn._linear_pointwise(x, pack[2], self.bias, "none", [], "")


def _pack(weight: torch.Tensor) -> tuple[int, int, torch.Tensor]:
    """(storage pointer, version, weight in oneDNN's blocked layout; the row hint only picks the
    layout, and calls of any row count use it: measured above)."""
    return weight.data_ptr(), weight._version, _reorder(weight)


def _reorder(weight: torch.Tensor) -> torch.Tensor:
    """Every pack, single or stacked, is made here (tests count them)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)


def _version(x: torch.Tensor) -> int:
    """In-place writes bump a tensor's version; inference-mode tensors have none (-1: not checked)."""
    return -1 if x.is_inference() else x._version


def _params(module: torch.nn.Linear) -> list[torch.Tensor]:
    return [module.weight] if module.bias is None else [module.weight, module.bias]


class SiblingGroup:
    """Linears of one parent that read the same input: one product over their stacked packed weights.

    The first member called with an input computes every member's output and keeps the others' until
    they are asked for with that very input (the same object, unchanged since: identity and version
    counter, where it has one), each once. A sibling called with another input while outputs are still
    waiting (cross-attention: k/v read the encoder's states) turns the group off for good: its members
    then compute apart. The pack follows the members' weights as a single pack does (storage pointer and
    version of each, ``refresh`` for writes through ``.data``).
    """

    def __init__(self, members: list[torch.nn.Linear]):
        self.members = members
        self.sizes = [m.out_features for m in members]
        self.pack: tuple[tuple[tuple[int, int], ...], torch.Tensor, torch.Tensor | None] | None = None
        # (input, its version, outputs not taken yet by member index)
        self.pending: tuple[torch.Tensor, int, dict[int, torch.Tensor]] | None = None
        self.enabled = True

    def keys(self) -> tuple[tuple[int, int], ...]:
        return tuple((t.data_ptr(), t._version) for m in self.members for t in _params(m))

    def build(self) -> tuple[tuple[tuple[int, int], ...], torch.Tensor, torch.Tensor | None]:
        weight = torch.cat([m.weight.detach() for m in self.members])
        bias = None if self.members[0].bias is None else torch.cat([m.bias.detach() for m in self.members])
        return self.keys(), _reorder(weight), bias

    def forward(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
        """``module``'s output for ``x``, or ``None`` once the group is off (compute it apart)."""
        i = self.members.index(module)
        if self.pending is not None:
            waiting, version, outputs = self.pending
            if waiting is x and version == _version(x) and i in outputs:
                out = outputs.pop(i)
                if not outputs:
                    self.pending = None  # every sibling served: drop the input reference
                return out
            if waiting is not x:  # siblings read different inputs here
                self.enabled, self.pending, self.pack = False, None, None
                return None
        if self.pack is None or self.pack[0] != self.keys():
            self.pack = self.build()
        result = torch.ops.mkldnn._linear_pointwise(x, self.pack[1], self.pack[2], "none", [], "")
        # contiguous slices: callers view them as heads, as they would a plain product
        parts = [p.contiguous() for p in result.split(self.sizes, dim=-1)]
        self.pending = (x, _version(x), {j: p for j, p in enumerate(parts) if j != i})
        return parts[i]


def sibling_groups(model: torch.nn.Module, packable: list[torch.nn.Linear]) -> list[SiblingGroup]:
    """``GROUPS`` found in ``model`` among ``packable``: same parent, same input width, all with or all
    without bias, and shapes whose stacked product ``fusable`` showed equal to the separate ones."""
    ok = {id(m) for m in packable}
    out = []
    for parent in model.modules():
        for names in GROUPS:
            members = [getattr(parent, n, None) for n in names]
            if not all(isinstance(m, torch.nn.Linear) and id(m) in ok for m in members):
                continue
            widths = {m.in_features for m in members}
            biased = {m.bias is not None for m in members}
            if len(widths) == 1 and len(biased) == 1:
                sizes = tuple(m.out_features for m in members)
                if fusable(widths.pop(), sizes, biased.pop()):
                    out.append(SiblingGroup(members))
    return out


@functools.cache
def fusable(width: int, sizes: tuple[int, ...], bias: bool) -> bool:
    """The packed product of weights stacked in ``sizes`` (one size: a single pack) gives each member's
    ``F.linear`` bit for bit at this shape (oneDNN may pick its kernel by the output width): random
    weights, 1, 3 and 40 rows (a decoding step, a small batch, a prefill)."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, width, generator=gen).bfloat16() for n in sizes]
    biases = [torch.randn(n, generator=gen).bfloat16() if bias else None for n in sizes]
    packed = torch.ops.mkldnn._reorder_linear_weight(torch.cat(weights), 1)
    stacked_bias = torch.cat(biases) if bias else None  # type: ignore[arg-type]
    for rows in (1, 3, 40):
        x = torch.randn(rows, width, generator=gen).bfloat16()
        got = torch.ops.mkldnn._linear_pointwise(x, packed, stacked_bias, "none", [], "").split(
            list(sizes), -1
        )
        if not all(torch.equal(g, F.linear(x, w, b)) for g, w, b in zip(got, weights, biases, strict=True)):
            return False
    return True


def install(model: Any) -> PackedLinears | None:
    """Pack-on-demand for ``model``'s bf16 linears on CPU, or ``None`` (off, unavailable, nothing to pack)."""
    if not enabled_by_env() or not available() or not isinstance(model, torch.nn.Module):
        return None
    packed = PackedLinears(model)
    return packed if packed.modules else None
