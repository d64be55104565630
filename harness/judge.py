"""Optional LLM-as-judge rubric score (``scoring.judge.enabled: true``; off by default).

The judge is any local causal LM: by default the run's own base model with adapters switched off,
or ``scoring.judge.model`` (id or path) loaded once. Each answer is graded with the configured prompt
(recorded in ``scores.json["judge"]``) by greedy decoding; the first digit 1-5 in the reply becomes
``judge_score = (digit - 1) / 4``; a reply without one is recorded as missing (``None``), not as 0.
"""

from __future__ import annotations

import re
from typing import Any

from harness.config import GenerationConfig, JudgeConfig, ModelConfig, RunConfig

_DIGIT = re.compile(r"[1-5]")


def parse_grade(text: str) -> float | None:
    m = _DIGIT.search(text or "")
    return (int(m.group()) - 1) / 4 if m else None


class Judge:
    def __init__(self, cfg: JudgeConfig, config: RunConfig, backend: Any | None):
        self.cfg = cfg
        self.config = config
        self._backend = backend if cfg.model is None else None
        self.raw: list[str] = []

    def backend(self) -> Any:
        if self._backend is None:
            from harness.backends import open_backend
            from harness.rundir import cache_root

            model_cfg = ModelConfig(
                id=self.cfg.model or self.config.model.id,
                device=self.config.model.device,
                backend=self.config.model.backend,
            )
            self._backend = open_backend(model_cfg, cache_root(self.config.cache_dir))
        return self._backend

    def prompt(self, rec: dict[str, Any]) -> list[dict[str, str]]:
        text = self.cfg.prompt.format(
            question=rec["question"], reference=rec.get("reference", ""), answer=rec["prediction"]
        )
        return [{"role": "user", "content": text}]

    def score(self, records: list[dict[str, Any]]) -> list[float | None]:
        backend = self.backend()
        params = GenerationConfig(max_new_tokens=self.cfg.max_new_tokens, temperature=0.0)
        out: list[float | None] = []
        for start in range(0, len(records), self.cfg.batch_size):
            chunk = records[start : start + self.cfg.batch_size]
            gen = backend.generate([self.prompt(r) for r in chunk], params, adapter=None)
            for g in gen.generations:
                self.raw.append(g.text)
                out.append(parse_grade(g.text))
        return out
