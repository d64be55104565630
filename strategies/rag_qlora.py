"""RAG + QLoRA: an adapter trained on retrieval-augmented prompts (RAFT-style, with distractors), served with RAG.

Training prompts are built with the same template, system prompt, chunk budget and context compression
(``context_sentences``) as test prompts, from the knowledge base as it was at training time (``kb/``, without
the ``kb_updates/`` overlay, so contexts agree with the reference answers). With probability ``raft_p_gold``
the context holds a chunk of a gold document (the best ranked one, swapped in for the last retrieved chunk if
retrieval missed it); otherwise it holds only distractors, which teaches the model to answer from memory when
retrieval fails and to prefer the context when it is right. At test time the regular RAG retriever (with
``kb_updates`` applied) supplies the context.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import Field

from harness.backends.base import Prompt
from harness.plugin import RunContext, register
from strategies.adapters import AdapterParams, AdapterStrategy, TrainParams
from strategies.rag import RagParams, RagStrategy
from strategies.retrieval import RetrievedChunk, Retriever, build_rag_prompt


class RagQLoRAParams(RagParams, TrainParams, AdapterParams):
    max_seq_length: int = Field(1024, ge=32, description="tokens per training sequence (context included)")
    raft_p_gold: float = Field(
        0.8, ge=0.0, le=1.0, description="share of training prompts whose context contains a gold chunk"
    )


def raft_context(
    hits: list[RetrievedChunk], pool: list[RetrievedChunk], gold: set[str], k: int, with_gold: bool
) -> tuple[list[RetrievedChunk], bool]:
    """Top-``k`` context for one training question; ``pool`` is a longer ranked list to draw from.

    ``with_gold``: make sure a gold-document chunk is present (the best-ranked one replaces the last hit);
    otherwise keep only distractors. Order stays by retrieval score, as at test time. Returns
    ``(chunks, has_gold)``; questions without gold documents keep plain top-k retrieval.
    """
    if not gold:
        return hits[:k], False
    if with_gold:
        if any(c.doc_id in gold for c in hits[:k]):
            return hits[:k], True
        best = next((c for c in pool if c.doc_id in gold), None)
        if best is None:
            return hits[:k], False
        chosen = [*hits[: k - 1], best]
        return sorted(chosen, key=lambda c: -c.score), True
    return [c for c in pool if c.doc_id not in gold][:k], False


@register
class RagQLoRAStrategy(AdapterStrategy, RagStrategy):
    name = "rag+qlora"
    Params = RagQLoRAParams
    params: RagQLoRAParams

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self._train_retriever: Retriever | None = None
        self.raft_stats: dict[str, Any] = {}

    def prepare(self, ctx: RunContext) -> None:
        super().prepare(ctx)
        self.cost["raft"] = self.raft_stats or None

    def training_key_extra(self) -> Any:
        return {"raft": "v1"}

    def training_prompts(self, rows: list[dict[str, Any]], split: str) -> list[tuple[Prompt, str]]:
        assert self.ctx is not None
        if self._train_retriever is None:
            # The KB as of training time: no kb_updates overlay (those facts post-date the train answers).
            self._train_retriever = Retriever.build(
                self.ctx.eval_set.documents, self.params, self.ctx.cache_dir
            )
        k = self.params.top_k
        pool_k = min(self._train_retriever.n_chunks, max(4 * k, 32))
        pools = self._train_retriever.search([r["question"] for r in rows], pool_k)
        rng = random.Random(f"{self.ctx.seed}:{split}")
        contexts: list[list[RetrievedChunk]] = []
        n_gold = 0
        for row, pool in zip(rows, pools, strict=True):
            if split == "train":
                with_gold = rng.random() < self.params.raft_p_gold
                chunks, has_gold = raft_context(
                    pool[:k], pool, set(row.get("context_ids") or []), k, with_gold
                )
            else:  # validation mirrors test time: plain top-k retrieval
                chunks = pool[:k]
                has_gold = any(c.doc_id in set(row.get("context_ids") or []) for c in chunks)
            n_gold += has_gold
            contexts.append(chunks)
        # Compressed (context_sentences) as at test time.
        contexts = self.context_for([r["question"] for r in rows], contexts, retriever=self._train_retriever)
        out: list[tuple[Prompt, str]] = []
        for row, chunks in zip(rows, contexts, strict=True):
            prompt, _ = build_rag_prompt(
                self.ctx.backend,
                self.params.system_prompt,
                row["question"],
                chunks,
                self.ctx.generation.max_new_tokens,
                self.template,
            )
            out.append((prompt, row["answer"]))
        self.raft_stats[split] = {"n": len(rows), "with_gold": n_gold}
        return out
