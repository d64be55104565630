"""Optional LLM-as-judge rubric score (``scoring.judge.enabled: true``; off by default).

The judge is any local causal LM: by default the run's own base model with adapters switched off,
or ``scoring.judge.model`` (id or path) loaded once. Each answer is graded with the configured prompt
(recorded in ``scores.json["judge"]``) by greedy decoding; the first digit 1-5 in the reply becomes
``judge_score = (digit - 1) / 4``; a reply without one is recorded as missing (``None``), not as 0.
"""

from __future__ import annotations

import re
from typing import Any

from harness.config import GenerationConfig, JudgeConfig, ModelConfig

_DIGIT = re.compile(r"[1-5]")


def parse_grade(text: str) -> float | None:
    m = _DIGIT.search(text or "")
    return (int(m.group()) - 1) / 4 if m else None


class Judge:
    """Grades answers with ``cfg.prompt``: the run's backend (adapters off), or ``cfg.model`` loaded once."""

    def __init__(self, cfg: JudgeConfig, backend: Any | None):
        self.cfg = cfg
        self._run_backend = backend
        self._backend = backend if cfg.model is None else None

    def backend(self) -> Any:
        if self._backend is None:
            from harness.backends import open_backend
            from harness.rundir import cache_root

            device = getattr(self._run_backend, "device", "auto") or "auto"
            model_cfg = ModelConfig(id=self.cfg.model, device=device if device in ("cpu", "cuda") else "auto")
            self._backend = open_backend(model_cfg, cache_root(None))
        return self._backend

    def prompt(self, question: str, reference: str, answer: str) -> list[dict[str, str]]:
        text = self.cfg.prompt.format(question=question, reference=reference or "", answer=answer)
        return [{"role": "user", "content": text}]

    def score(self, questions: list[str], references: list[str], answers: list[str]) -> list[float | None]:
        backend = self.backend()
        params = GenerationConfig(max_new_tokens=self.cfg.max_new_tokens, temperature=0.0)
        rows = list(zip(questions, references, answers, strict=True))
        out: list[float | None] = []
        for start in range(0, len(rows), self.cfg.batch_size):
            chunk = rows[start : start + self.cfg.batch_size]
            gen = backend.generate([self.prompt(*r) for r in chunk], params, adapter=None)
            out.extend(parse_grade(g.text) for g in gen.generations)
        return out
