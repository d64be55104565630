"""Retrieval-augmented generation: retrieve top-k knowledge-base chunks, put them in the prompt.

The index (sentence-transformers embeddings + faiss) is built once per knowledge base and cached
under ``<cache>/indexes/<hash>``; the eval set's ``kb_updates/`` overlay is applied incrementally, so
RAG answers from the updated facts without any retraining (the ``updated`` tag measures this).
Each answer carries the chunk texts it was given (``contexts``) and the documents retrieved for it
(``retrieved_ids``); the harness scores faithfulness and recall@k / MRR from those, not this strategy.
See ``strategies/retrieval/`` for the reusable pieces and ``docs/rag.md`` for the behaviour.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from harness.backends.base import Prompt
from harness.data import EvalSet
from harness.plugin import Answer, PromptedStrategy, RunContext, answers_from, register
from strategies.retrieval import (
    DEFAULT_RAG_TEMPLATE,
    RetrievalParams,
    RetrievedChunk,
    Retriever,
    build_rag_prompt,
    render_rag_user,
    source_chunk_id,
)
from strategies.shots import sample_shots, shots_problems
from strategies.templates import check_template, load_template

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
    context_sentences: int | None = Field(
        None,
        ge=1,
        le=64,
        description="context compression: put only the N sentences of the retrieved chunks most similar "
        "to the question in the prompt (None = whole chunks)",
    )
    shots: int = Field(
        0, ge=0, le=16, description="RAG-format demonstrations (question + its retrieved context + answer)"
    )
    example_split: str = Field("train", description="split the demonstrations are drawn from")
    faithfulness: bool = Field(
        True, description="hand each answer's context to the faithfulness metric (false: not scored)"
    )

    @field_validator("template")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return check_template(value, DEFAULT_RAG_TEMPLATE)


@register
class RagStrategy(PromptedStrategy):
    name = "rag"
    Params = RagParams
    params: RagParams

    def validate(self, eval_set: EvalSet) -> list[str]:
        problems = shots_problems(eval_set, self.params.example_split, self.params.shots)
        if not eval_set.current_documents():
            problems.insert(
                0,
                f"name: {self.name} needs a knowledge base, but {eval_set.root} has no documents "
                "(add .md/.txt files to kb/ or a kb.jsonl, or remove this strategy)",
            )
        return problems

    def prepare(self, ctx: RunContext) -> None:
        super().prepare(ctx)
        self.template = load_template(self.params.template, DEFAULT_RAG_TEMPLATE)
        self.retriever = Retriever.for_context(ctx, self.params)
        self.history, self.shot_ids = self.demonstrations(ctx)
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
                "context_sentences": self.params.context_sentences,
                "shots": len(self.shot_ids),
                "notes": [
                    f"{self.params.index} index over {self.retriever.n_chunks} chunks "
                    f"({self.params.chunk_tokens} tokens, overlap {self.params.chunk_overlap}), "
                    f"top-{self.params.top_k}"
                    + (
                        f" -> {self.params.context_sentences} sentences"
                        if self.params.context_sentences
                        else ""
                    )
                    + (f", {len(self.shot_ids)}-shot" if self.shot_ids else "")
                    + f", index cache {info['cache']}",
                    info.get("kb_updates", {}).get("summary", "no kb updates"),
                ],
            }
        )

    # -- context -------------------------------------------------------------------------------
    def context_for(
        self,
        questions: list[str],
        hits: list[list[RetrievedChunk]],
        query_vectors: Any = None,
        retriever: Retriever | None = None,
    ) -> list[list[RetrievedChunk]]:
        """What goes into the prompt for each question: the retrieved chunks, or (with
        ``context_sentences``) their sentences most similar to the question. ``retriever``: whose embedder
        selects them (default: the test-time retriever; rag+qlora's training prompts pass their own)."""
        if self.params.context_sentences:
            return (retriever or self.retriever).select_sentences(
                questions, hits, self.params.context_sentences, query_vectors
            )
        return [list(h) for h in hits]

    def demonstrations(self, ctx: RunContext) -> tuple[Prompt, list[str]]:
        """``shots`` demonstration turns in the test-time format (question + its own retrieved context,
        then the reference answer). Drawn deterministically by seed from ``example_split`` among the
        examples whose top-ranked chunk comes from one of their gold documents (so the demonstrations
        show answering from a relevant context); all examples qualify when none has ``context_ids``."""
        hits_by_id: dict[str, list[RetrievedChunk]] = {}

        def grounded(rows: list[dict[str, Any]]) -> list[int]:
            hits = self.retriever.search([r["question"] for r in rows])
            hits_by_id.update((r["id"], h) for r, h in zip(rows, hits, strict=True))
            return [
                i
                for i, (r, h) in enumerate(zip(rows, hits, strict=True))
                if h and h[0].doc_id in (r["context_ids"] or [])
            ]

        shots = sample_shots(
            ctx.eval_set, self.params.example_split, self.params.shots, ctx.seed, self.id, prefer=grounded
        )
        if not shots:
            return [], []
        contexts = self.context_for([r["question"] for r in shots], [hits_by_id[r["id"]] for r in shots])
        history: Prompt = []
        for row, context in zip(shots, contexts, strict=True):
            history.append(
                {"role": "user", "content": render_rag_user(row["question"], context, self.template)}
            )
            history.append({"role": "assistant", "content": row["answer"]})
        return history, [r["id"] for r in shots]

    def _prompt_for(
        self, example: dict[str, Any], hits: list[RetrievedChunk], context: list[RetrievedChunk]
    ) -> tuple[Prompt, dict[str, Any], list[RetrievedChunk]]:
        assert self.ctx is not None
        prompt, used = build_rag_prompt(
            self.ctx.backend,
            self.params.system_prompt,
            example["question"],
            context,
            self.ctx.generation.max_new_tokens,
            self.template,
            history=self.history,
        )
        used_ids = {source_chunk_id(c.chunk_id) for c in used}
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
            "top_k": self.params.top_k,  # the k of recall@k (fewer ids when min_score drops hits)
        }
        if self.params.context_sentences:
            extra["context"] = [{"id": c.chunk_id, "score": round(c.score, 4)} for c in used]
        if self.shot_ids:
            extra["shot_ids"] = self.shot_ids
        return prompt, extra, used

    def build_prompt(self, example: dict[str, Any]) -> tuple[Prompt, dict[str, Any]]:
        hits = self.retriever.search([example["question"]])
        context = self.context_for([example["question"]], hits)
        prompt, extra, _ = self._prompt_for(example, hits[0], context[0])
        return prompt, extra

    def length_key(self, example: dict[str, Any]) -> int:
        """The question's length: building the real prompt would retrieve per example a second time."""
        return len(example["question"])

    def predict(self, batch: list[dict[str, Any]]) -> list[Answer]:
        assert self.ctx is not None, "prepare() must run before predict()"
        questions = [ex["question"] for ex in batch]
        vectors = self.retriever.embed_queries(questions)  # the batch's questions, encoded in one call
        all_hits = self.retriever.search_vectors(vectors)
        contexts = self.context_for(questions, all_hits, vectors)
        built = [
            self._prompt_for(ex, hits, context)
            for ex, hits, context in zip(batch, all_hits, contexts, strict=True)
        ]
        result = self.ctx.backend.generate(
            [p for p, _, _ in built], self.ctx.generation, adapter=self.adapter
        )
        answers = answers_from(result, [extra for _, extra, _ in built])
        for answer, hits, (_, _, used) in zip(answers, all_hits, built, strict=True):
            answer.retrieved_ids = [c.doc_id for c in hits]
            if self.params.faithfulness:
                answer.contexts = [c.text for c in used]
        return answers
