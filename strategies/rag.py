"""Retrieval-augmented generation: retrieve top-k knowledge-base chunks, put them in the prompt.

The index (sentence-transformers embeddings + faiss) is built once per knowledge base and cached
under ``<cache>/indexes/<hash>``; the eval set's ``kb_updates/`` overlay is applied incrementally, so
RAG answers from the updated facts without any retraining (the ``updated`` tag measures this).
See ``strategies/retrieval.py`` for the reusable pieces and ``docs/rag.md`` for the behaviour.
"""

from __future__ import annotations

from typing import Any

import jinja2
from pydantic import Field, field_validator

from harness.generation import Prompt
from strategies.base import Answer, RunContext, Strategy, answers_from
from strategies.registry import register
from strategies.retrieval import (
    DEFAULT_RAG_TEMPLATE,
    RetrievalParams,
    RetrievedChunk,
    Retriever,
    build_rag_prompt,
    retrieval_metrics,
)
from strategies.templates import load_template

DEFAULT_RAG_SYSTEM_PROMPT = (
    "You are a customer-support assistant. Answer the question using only the facts in the context. "
    "Reply with one short sentence."
)


class RagParams(RetrievalParams):
    system_prompt: str | None = DEFAULT_RAG_SYSTEM_PROMPT
    template: str | None = Field(
        None,
        description="Jinja2 user-message template (bundled .j2 name, file path or inline text); "
        "gets `question`, `chunks` and `context`",
    )
    faithfulness: bool = Field(True, description="score each answer's groundedness in its context")

    @field_validator("template")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                load_template(value, DEFAULT_RAG_TEMPLATE)
            except jinja2.TemplateError as exc:
                raise ValueError(f"template does not compile: {exc}") from None
        return value


def faithfulness_scores(predictions: list[str], contexts: list[list[str]]) -> list[float]:
    """Per-answer groundedness via the local ``faithfulness`` evaluate module."""
    from harness.scoring import load_metric

    if not predictions:
        return []
    return load_metric("faithfulness").compute(predictions=predictions, contexts=contexts)["scores"]


@register
class RagStrategy(Strategy):
    name = "rag"
    Params = RagParams
    params: RagParams

    def prepare(self, ctx: RunContext) -> None:
        super().prepare(ctx)
        self.template = load_template(self.params.template, DEFAULT_RAG_TEMPLATE)
        self.retriever = Retriever.for_context(ctx, self.params)
        info = self.retriever.info
        self.cost.update(
            {
                "index_build_seconds": info["build_seconds"],
                "index_bytes": self.retriever.index_bytes,
                "n_chunks": self.retriever.n_chunks,
                "index": info["index"],
                "embedding_model": info["embedding_model"],
                "embedding_dim": info["embedding_dim"],
                "embeddings_per_s": info["embeddings_per_s"],
                "cache": info["cache"],
                "cache_key": info["cache_key"],
                "kb_updates": info.get("kb_updates", {"applied": 0}),
                "top_k": self.params.top_k,
                "notes": [
                    f"{self.params.index} index over {self.retriever.n_chunks} chunks "
                    f"({self.params.chunk_tokens} tokens, overlap {self.params.chunk_overlap}), "
                    f"top-{self.params.top_k}, index cache {info['cache']}",
                    info.get("kb_updates", {}).get("summary", "no kb updates"),
                ],
            }
        )

    def _prompt_for(
        self, example: dict[str, Any], hits: list[RetrievedChunk]
    ) -> tuple[Prompt, dict[str, Any], list[RetrievedChunk]]:
        assert self.ctx is not None
        prompt, used = build_rag_prompt(
            self.ctx.backend,
            self.params.system_prompt,
            example["question"],
            hits,
            self.ctx.config.generation.max_new_tokens,
            self.template,
        )
        used_ids = {c.chunk_id for c in used}
        extra: dict[str, Any] = {
            "retrieved": [
                {
                    "chunk_id": c.chunk_id,
                    "doc_id": c.doc_id,
                    "score": round(c.score, 4),
                    "in_prompt": c.chunk_id in used_ids,
                }
                for c in hits
            ],
            "metrics": retrieval_metrics(hits, example.get("context_ids") or [], self.params.top_k),
        }
        return prompt, extra, used

    def build_prompt(self, example: dict[str, Any]) -> tuple[Prompt, dict[str, Any]]:
        hits = self.retriever.search([example["question"]])[0]
        prompt, extra, _ = self._prompt_for(example, hits)
        return prompt, extra

    def predict(self, batch: list[dict[str, Any]]) -> list[Answer]:
        assert self.ctx is not None, "prepare() must run before predict()"
        all_hits = self.retriever.search([ex["question"] for ex in batch])
        built = [self._prompt_for(ex, hits) for ex, hits in zip(batch, all_hits, strict=True)]
        result = self.ctx.backend.generate(
            [p for p, _, _ in built], self.ctx.config.generation, adapter=self.adapter
        )
        answers = answers_from(result, [extra for _, extra, _ in built])
        if self.params.faithfulness:
            scores = faithfulness_scores(
                [a.text for a in answers], [[c.text for c in used] for _, _, used in built]
            )
            for answer, score in zip(answers, scores, strict=True):
                answer.extra["metrics"]["faithfulness"] = score
        return answers
