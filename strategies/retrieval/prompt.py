"""RAG prompt assembly: the context block, the user message template, and trimming to the window.

``build_rag_prompt(backend, system_prompt, question, chunks, max_new_tokens, template, history=())``
renders the chat prompt (optional demonstration turns in ``history``) and drops the lowest-ranked
chunks until it fits the model's context window (the question is never cut). Returns
``(prompt, used_chunks)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from strategies.retrieval.chunking import Chunk, RetrievedChunk
from strategies.templates import load_template

if TYPE_CHECKING:
    import jinja2

    from harness.backends.base import GenerationBackend, Prompt

DEFAULT_RAG_TEMPLATE = "rag.j2"


def format_context(chunks: Sequence[Chunk]) -> str:
    """The default context block: the passages' text, best first, one per line.

    Deliberately plain: with numbered "[1] Title: ..." passages small models answer with numbered
    lists or copy the titles. Templates that want numbering or titles can loop over ``chunks``.
    """
    return "\n".join(c.text.strip() for c in chunks)


def render_rag_user(question: str, chunks: Sequence[Chunk], template: jinja2.Template) -> str:
    """The user message for one question and its context pieces."""
    return template.render(question=question, chunks=list(chunks), context=format_context(chunks)).strip()


def render_rag_messages(
    system_prompt: str | None,
    question: str,
    chunks: Sequence[Chunk],
    template: jinja2.Template,
    history: Sequence[dict[str, str]] = (),
) -> Prompt:
    prompt: Prompt = []
    if system_prompt:
        prompt.append({"role": "system", "content": system_prompt})
    prompt.extend(dict(m) for m in history)
    prompt.append({"role": "user", "content": render_rag_user(question, chunks, template)})
    return prompt


def build_rag_prompt(
    backend: GenerationBackend,
    system_prompt: str | None,
    question: str,
    chunks: Sequence[RetrievedChunk],
    max_new_tokens: int,
    template: jinja2.Template | str | None = None,
    history: Sequence[dict[str, str]] = (),
) -> tuple[Prompt, list[RetrievedChunk]]:
    """Chat prompt with as many retrieved chunks as fit ``backend.context_window - max_new_tokens``.

    ``template`` (Jinja2; bundled file name, inline text, or a compiled template; default ``rag.j2``)
    gets ``question``, ``chunks`` (list of ``RetrievedChunk``) and ``context`` (preformatted block).
    ``history`` (optional demonstration turns) goes between the system prompt and the question.
    Chunks are dropped lowest-ranked first; if even the best chunk alone does not fit, its text is
    shortened. The question is never cut. Returns ``(prompt, used_chunks)``.
    """
    if template is None or isinstance(template, str):
        template = load_template(template, DEFAULT_RAG_TEMPLATE)
    tmpl = template
    budget = backend.context_window - max_new_tokens

    def fits(cs: Sequence[Chunk]) -> tuple[bool, Prompt]:
        prompt = render_rag_messages(system_prompt, question, cs, tmpl, history)
        return backend.count_tokens(backend.render(prompt)) <= budget, prompt

    used = list(chunks)
    while True:
        ok, prompt = fits(used)
        if ok or not used:
            break
        used.pop()
    if not used and chunks:
        # Even the best chunk alone is too long: keep the longest prefix of it that fits.
        best = chunks[0]
        lo, hi, found = 1, len(best.text) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            cut = best.text[:mid].rstrip()
            cand = dataclasses.replace(best, text=cut, end=best.start + len(cut))
            ok, cand_prompt = fits([cand])
            if ok:
                found, lo = (cand, cand_prompt), mid + 1
            else:
                hi = mid - 1
        if found is not None and len(found[0].text) >= 16:
            used, prompt = [found[0]], found[1]
    return prompt, used
