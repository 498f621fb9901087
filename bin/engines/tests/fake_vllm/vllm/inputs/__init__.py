"""vllm/inputs (0.24): the prompt schemas (inputs/llm.py) and engine inputs (inputs/engine.py)."""

from __future__ import annotations

from typing import Literal

from typing_extensions import NotRequired, TypedDict


class TextPrompt(TypedDict):
    prompt: str


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]
    prompt: NotRequired[str]


class TokensInput(TypedDict):
    type: Literal["token"]
    prompt_token_ids: list[int]
    prompt: NotRequired[str]


def tokens_input(prompt_token_ids: list[int], *, prompt: str | None = None, cache_salt: str | None = None) -> TokensInput:
    inputs = TokensInput(type="token", prompt_token_ids=prompt_token_ids)
    if prompt is not None:
        inputs["prompt"] = prompt
    return inputs


PromptType = TextPrompt | TokensPrompt | str
EngineInput = TokensInput
