"""Optional NLI cross-encoder for faithfulness: P(entailment | premise = context, hypothesis = claim).

Any local Hugging Face sequence-classification NLI model works (``scoring.nli_model``: a folder path);
it is loaded with ``AutoModelForSequenceClassification`` from safetensors weights only, with
``trust_remote_code=False``. The entailment class is the ``id2label`` entry whose name starts with
"entail" (case-insensitive); a model without one is rejected.
"""

from __future__ import annotations

from functools import cache
from typing import Any

MAX_LENGTH = 512


def entailment_index(id2label: dict[Any, str]) -> int:
    for idx, label in id2label.items():
        if str(label).lower().startswith("entail"):
            return int(idx)
    raise ValueError(f"NLI model: no entailment label in id2label {dict(id2label)!r}")


@cache
def load_nli(path: str):
    """(tokenizer, model, entailment index) of the NLI model at ``path``, on CPU, in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, use_safetensors=True, trust_remote_code=False
    )
    model.eval()
    return tokenizer, model, entailment_index(model.config.id2label)


def entailment_probs(
    path: str, premises: list[str], hypotheses: list[str], batch_size: int = 16
) -> list[float]:
    """P(entailment) of each (premise, hypothesis) pair."""
    import torch

    if not premises:
        return []
    tokenizer, model, idx = load_nli(str(path))
    out: list[float] = []
    with torch.no_grad():
        for i in range(0, len(premises), batch_size):
            enc = tokenizer(
                premises[i : i + batch_size],
                hypotheses[i : i + batch_size],
                truncation=True,
                max_length=min(MAX_LENGTH, getattr(tokenizer, "model_max_length", MAX_LENGTH)),
                padding=True,
                return_tensors="pt",
            )
            probs = torch.softmax(model(**enc).logits.float(), dim=-1)[:, idx]
            out.extend(float(p) for p in probs)
    return out
