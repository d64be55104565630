"""Prompt engineering: zero-shot or few-shot, system prompt and Jinja2 user template configurable."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from harness.backends.base import Prompt
from harness.data import EvalSet
from harness.plugin import Params, PromptedStrategy, RunContext, register
from strategies.shots import sample_shots, shots_problems
from strategies.templates import check_template, load_template

DEFAULT_SYSTEM_PROMPT = (
    "You are a customer-support assistant. Answer the customer's question in one short, factual sentence."
)


class PromptParams(Params):
    shots: int = Field(0, ge=0, le=32, description="few-shot examples drawn from `example_split`")
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    template: str | None = Field(
        None, description="Jinja2 user-message template (file .j2 or inline); gets `question`"
    )
    example_split: str = "train"

    @field_validator("template")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return check_template(value, "question.j2")


@register
class PromptStrategy(PromptedStrategy):
    name = "prompt"
    Params = PromptParams
    params: PromptParams

    def validate(self, eval_set: EvalSet) -> list[str]:
        return shots_problems(eval_set, self.params.example_split, self.params.shots)

    def prepare(self, ctx: RunContext) -> None:
        super().prepare(ctx)
        self.template = load_template(self.params.template, "question.j2")
        # Deterministic by seed, and the same demonstrations for every question (fair comparison).
        self.shots = sample_shots(
            ctx.eval_set, self.params.example_split, self.params.shots, ctx.seed, self.id
        )
        self.cost["notes"] = [f"{self.params.shots}-shot prompt"]

    def user_message(self, example: dict[str, Any]) -> str:
        return self.template.render(question=example["question"], example=example).strip()

    def build_prompt(self, example: dict[str, Any]) -> tuple[Prompt, dict[str, Any]]:
        prompt: Prompt = []
        if self.params.system_prompt:
            prompt.append({"role": "system", "content": self.params.system_prompt})
        for shot in self.shots:
            prompt.append({"role": "user", "content": self.user_message(shot)})
            prompt.append({"role": "assistant", "content": shot["answer"]})
        prompt.append({"role": "user", "content": self.user_message(example)})
        return prompt, {"shot_ids": [s["id"] for s in self.shots]} if self.shots else {}
