"""What ``compass_client.opencompass`` sends and computes, kept free of OpenCompass, torch and numpy.

The numbers follow OpenCompass's own ``HuggingFaceCausalLM`` (``opencompass/models/huggingface.py``,
0.5.x, one sample at a time as with its default ``batch_padding=False``), so that an evaluation
through compass scores what OpenCompass computes on the model directly:

- ``get_ppl``: the prompt is tokenized with special tokens (the tokenizer's BOS), cut at
  ``max_seq_len``; each token after the first has a cross-entropy ``-logprob(token | before)``;
  tokens equal to the pad token count nothing; positions before ``mask_length`` (the context) are
  masked out; the sum is divided by the number of non-pad tokens minus ``mask_length`` (the first
  token included, as OpenCompass does).
  Sent as a scoring request (context: the tokens before ``max(1, mask_length)``, continuation:
  the rest) when the scored tokens hold no pad token, whose one summed logprob is that sum; else
  (pad tokens inside, or nothing to score) as a ``prompt_logprobs`` request whose per-token
  logprobs ``perplexity`` sums (``ppl_request_for``, ``ppl_from_result``).
- ``get_loglikelihood``: the input is tokenized whole; the context is the input with every
  occurrence of the continuation removed, tokenized the same way; the score is the sum of the
  logprobs of the input's tokens from the context's length on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from .types import Result

Prompt = Union[str, Sequence[Mapping[str, Any]]]

#: OpenCompass's roles as chat roles (``_convert_chat_messages`` in huggingface_above_v4_33.py).
CHAT_ROLES = {"HUMAN": "user", "BOT": "assistant", "SYSTEM": "system"}


def perplexity(token_ids: Sequence[int], token_logprobs: Sequence[Optional[float]], mask_length: int = 0,
               pad_token_id: Optional[int] = None) -> float:
    """Mean cross-entropy of a prompt's tokens, as ``HuggingFaceCausalLM._get_ppl`` computes it.

    ``token_logprobs[t]`` is the logprob of ``token_ids[t]`` given the tokens before it (the first is
    None). NaN where nothing is left to average (OpenCompass divides 0 by 0 there too).
    """
    if len(token_ids) != len(token_logprobs):
        raise ValueError(f"{len(token_logprobs)} logprobs for {len(token_ids)} tokens")
    total = 0.0
    for t in range(max(1, mask_length), len(token_ids)):
        if token_ids[t] == pad_token_id:
            continue  # CrossEntropyLoss(ignore_index=pad_token_id)
        value = token_logprobs[t]
        if value is None:
            raise ValueError(f"no logprob for prompt token {t}")
        total -= value
    count = sum(1 for token in token_ids if token != pad_token_id) - mask_length
    return total / count if count else math.nan


def ppl_request(custom_id: str, token_ids: Sequence[int]) -> dict[str, Any]:
    """A request for every prompt token's logprob, generating nothing (docs/protocol.md)."""
    return {"custom_id": custom_id, "prompt_token_ids": list(token_ids), "max_tokens": 0, "prompt_logprobs": 0}


def score_request(custom_id: str, context_ids: Sequence[int], continuation_ids: Sequence[int]) -> dict[str, Any]:
    """A scoring request for one continuation given as token ids after a token-id context."""
    return {"custom_id": custom_id, "prompt_token_ids": list(context_ids), "continuations": [list(continuation_ids)]}


def ppl_scored_start(token_ids: Sequence[int], mask_length: int = 0,
                     pad_token_id: Optional[int] = None) -> Optional[int]:
    """Where a perplexity's scored tokens start when a scoring request can compute it, else None.

    ``perplexity`` sums the logprobs of the tokens from ``max(1, mask_length)`` on, skipping pad
    tokens. When that tail is non-empty and holds no pad token, the sum is exactly the summed
    logprob of the tail as a continuation of the tokens before it: one scoring request, which
    engines answer with a single number instead of a logprob (and decoded token) per position.
    """
    start = max(1, mask_length)
    if start >= len(token_ids):
        return None  # nothing to score
    if pad_token_id is not None and any(token == pad_token_id for token in token_ids[start:]):
        return None  # pad tokens inside count nothing: only per-token logprobs can leave them out
    return start


def ppl_request_for(custom_id: str, token_ids: Sequence[int], mask_length: int = 0,
                    pad_token_id: Optional[int] = None) -> dict[str, Any]:
    """The request ``get_ppl`` sends for one sequence: a scoring request for its scored tokens
    (context ``token_ids[:start]``, continuation ``token_ids[start:]``) where ``ppl_scored_start``
    allows one, else a ``prompt_logprobs`` request for every token."""
    start = ppl_scored_start(token_ids, mask_length, pad_token_id)
    if start is None:
        return ppl_request(custom_id, token_ids)
    return score_request(custom_id, token_ids[:start], token_ids[start:])


def ppl_from_result(token_ids: Sequence[int], result: Result, mask_length: int = 0,
                    pad_token_id: Optional[int] = None) -> float:
    """The perplexity of ``token_ids`` from the result of ``ppl_request_for``'s request: the same
    value ``perplexity`` computes from every token's logprob (the same divisor: non-pad tokens
    minus ``mask_length``)."""
    start = ppl_scored_start(token_ids, mask_length, pad_token_id)
    if start is None:
        got, logprobs = prompt_token_logprobs(result)
        if got != list(token_ids):
            raise ValueError(f"request {result.custom_id}: prompt_logprobs for other tokens than sent "
                             f"({len(got)} tokens back, {len(token_ids)} sent)")
        return perplexity(token_ids, logprobs, mask_length, pad_token_id)
    total = continuation_logprob(result)
    if result.scores[0].tokens != len(token_ids) - start:
        raise ValueError(f"request {result.custom_id}: a score over {result.scores[0].tokens} tokens, "
                         f"{len(token_ids) - start} sent")
    count = sum(1 for token in token_ids if token != pad_token_id) - mask_length
    return -total / count if count else math.nan


def chat_messages(prompt: Prompt) -> list[dict[str, str]]:
    """OpenCompass's prompt (a string, or a PromptList of ``{"role", "prompt"}`` rounds from its
    API template parser) as chat messages: empty rounds dropped, adjacent rounds of one role merged
    with a newline, as ``HuggingFacewithChatTemplate`` does."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages: list[dict[str, str]] = []
    for item in prompt:
        text = item.get("prompt") or ""
        if not text:
            continue
        role = CHAT_ROLES.get(str(item.get("role")))
        if role is None:
            raise ValueError(f"prompt round with role {item.get('role')!r}: expected HUMAN, BOT or SYSTEM")
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n" + text
        else:
            messages.append({"role": role, "content": text})
    return messages


def plain_text(prompt: Prompt) -> str:
    """A PromptList's rounds joined as they are (how OpenCompass's base models read them)."""
    if isinstance(prompt, str):
        return prompt
    return "".join(str(item.get("prompt") or "") for item in prompt)


# MARK: Reading results

def continuation_logprob(result: Result) -> float:
    """The summed logprob of a scoring request's single continuation."""
    if not result.scores:
        raise ValueError(f"request {result.custom_id}: the result has no scores (finish_reason "
                         f"{result.finish_reason!r}); does this pool's engine support scoring?")
    value = result.scores[0].logprob
    if value is None:
        raise ValueError(f"request {result.custom_id}: score without a logprob: {result.scores[0]!r}")
    return value


def prompt_token_logprobs(result: Result) -> tuple[list[int], list[Optional[float]]]:
    """The token ids and their logprobs of a ``prompt_logprobs`` result."""
    block = result.prompt_logprobs
    if block is None:
        raise ValueError(f"request {result.custom_id}: the result has no prompt_logprobs; does this pool's "
                         "engine support them?")
    if len(block.token_ids) != len(block.token_logprobs):
        raise ValueError(f"request {result.custom_id}: malformed prompt_logprobs: {len(block.token_logprobs)} "
                         f"logprobs for {len(block.token_ids)} tokens")
    return [int(t) for t in block.token_ids], [None if v is None else float(v) for v in block.token_logprobs]
