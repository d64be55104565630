"""fp32 logits for a bf16/fp16 model's top candidates, so greedy decoding is not decided by rounding.

A 16-bit LM head rounds its *output* to 8 (bf16) mantissa bits: at SmolLM2's logit magnitudes (~30-60)
neighbouring representable logits are 0.25 apart, so two candidates closer than that come out equal and
``argmax`` picks the lower token id. Measured on the default model: the RAG answer "60 days" vs "14 days"
hangs on logits 38.206 vs 38.200, both 38.25 in bf16; a batched (left-padded) "capital of France" answer
went off the rails the same way. The matmul itself accumulates in fp32; only its result is rounded.

The hook keeps the fast 16-bit projection for the whole vocabulary and recomputes the ``k`` largest
logits of every position in fp32 from the same hidden state and weights (a ``k x hidden`` gather):
the argmax is then the fp32 argmax among them, and softmax-based scores (perplexity, sampling) get exact
values where the probability mass is. The hidden state and weights stay as the model computed them; this
removes the output rounding only. Cost on the demo: ~5% of a batched pass; answers identical to fp32 went
from 42 to 52 of 92 (the rest differ through the bf16 residual stream).
"""

from __future__ import annotations

from typing import Any

import torch

HALF = (torch.bfloat16, torch.float16)
TOP_K = 16  # bf16 rounding moves a logit by <= half a step; 16 candidates cover the ties that matter


def exact_top_logits(
    module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor
) -> torch.Tensor | None:
    """Forward hook on the LM head: fp32 logits, the top ``TOP_K`` per position recomputed in fp32.
    A head that computes in 32 or 64 bits by now (the model was cast after loading) is left alone."""
    if output.dtype not in HALF:
        return None
    (hidden,) = args[:1]
    k = min(TOP_K, output.shape[-1])
    top = output.topk(k, dim=-1).indices
    exact = torch.einsum("...d,...kd->...k", hidden.float(), module.weight[top].float())
    bias = getattr(module, "bias", None)
    if bias is not None:
        exact = exact + bias[top].float()
    return output.float().scatter(-1, top, exact)


def install(model: Any) -> bool:
    """Hook the model's LM head when it computes in 16 bits; returns whether it did."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if not isinstance(head, torch.nn.Linear) or weight is None or weight.dtype not in HALF:
        return False
    head.register_forward_hook(exact_top_logits)
    return True
