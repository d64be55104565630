"""QLoRA: a LoRA adapter trained in the harness on the train split (4-bit NF4 base, peft + trl), then evaluated."""

from __future__ import annotations

from typing import Any

from harness.backends.base import Prompt
from harness.plugin import RunContext, register
from strategies.adapters import AdapterParams, AdapterStrategy, TrainParams
from strategies.prompt import PromptParams, PromptStrategy


class QLoRAParams(PromptParams, TrainParams, AdapterParams):
    """Prompt options (the same prompt at training and test time) + training + adapter options."""


@register
class QLoRAStrategy(AdapterStrategy, PromptStrategy):
    name = "qlora"
    Params = QLoRAParams
    params: QLoRAParams

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.cost["notes"] = [f"LoRA r={self.params.r} adapter; {self.params.shots}-shot prompt"]

    def training_prompts(self, rows: list[dict[str, Any]], split: str) -> list[tuple[Prompt, str]]:
        return [(self.build_prompt(row)[0], row["answer"]) for row in rows]
