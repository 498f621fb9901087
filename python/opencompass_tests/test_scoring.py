"""The arithmetic of compass_client._opencompass_scoring, against OpenCompass's own formula.

``reference_ppl`` is HuggingFaceCausalLM._get_ppl (opencompass/models/huggingface.py, 0.5.4) with
the model's logits replaced by given per-token logprobs, loop for loop, so the two can be compared
on the cases that matter: masks, pad tokens, one-token prompts.
"""

from __future__ import annotations

import json
import math
from typing import Optional

import pytest

from compass_client import _opencompass_scoring as scoring
from compass_client.types import Result, decode_results


def reference_ppl(ids: list[int], logprobs: list[Optional[float]], mask_length: Optional[int],
                  pad: Optional[int]) -> float:
    """OpenCompass's loop: loss over shifted labels (ignore_index=pad), mask from mask_length - 1,
    divided by the non-pad tokens minus mask_length."""
    labels = ids[1:]
    loss = [0.0 if label == pad else -float(logprobs[j + 1] or 0.0) for j, label in enumerate(labels)]
    if mask_length is not None:
        mask = [0] * len(labels)
        for j in range(mask_length - 1, len(mask)):
            mask[j] = 1
        loss = [value * m for value, m in zip(loss, mask)]
    lens = sum(1 for t in ids if t != pad) - (mask_length or 0)
    return sum(loss) / lens if lens else math.nan


CASES = [
    ([1, 7, 8, 9], [None, -1.0, -2.0, -4.0], None, 0),
    ([1, 7, 8, 9], [None, -1.0, -2.0, -4.0], 0, 0),
    ([1, 7, 8, 9], [None, -1.0, -2.0, -4.0], 2, 0),
    ([1, 7, 8, 9], [None, -1.0, -2.0, -4.0], 3, 0),
    ([1, 7, 0, 9], [None, -1.0, -2.0, -4.0], None, 0),  # a pad token inside: no loss, not counted
    ([1, 7, 0, 9], [None, -1.0, -2.0, -4.0], 1, 0),
    ([5, 6], [None, -0.5], None, None),
    ([5], [None], None, 3),
]


@pytest.mark.parametrize("ids, logprobs, mask, pad", CASES)
def test_perplexity_is_opencompass_formula(ids: list[int], logprobs: list[Optional[float]], mask: Optional[int],
                                           pad: Optional[int]) -> None:
    assert scoring.perplexity(ids, logprobs, mask or 0, pad) == pytest.approx(reference_ppl(ids, logprobs, mask, pad))


def test_perplexity_divides_by_all_tokens_not_the_scored_ones() -> None:
    # OpenCompass counts the first token in the denominator though it has no loss.
    assert scoring.perplexity([1, 2, 3], [None, -3.0, -3.0]) == pytest.approx(2.0)


def test_perplexity_with_nothing_left_is_nan() -> None:
    assert math.isnan(scoring.perplexity([1, 2], [None, -1.0], mask_length=2))


def test_perplexity_refuses_mismatched_or_missing_logprobs() -> None:
    with pytest.raises(ValueError, match="2 logprobs for 3 tokens"):
        scoring.perplexity([1, 2, 3], [None, -1.0])
    with pytest.raises(ValueError, match="no logprob for prompt token 1"):
        scoring.perplexity([1, 2], [None, None])


def test_chat_messages_merge_roles_and_drop_empty_rounds() -> None:
    prompt = [{"role": "SYSTEM", "prompt": "be brief"}, {"role": "HUMAN", "prompt": "hi"},
              {"role": "HUMAN", "prompt": "there"}, {"role": "BOT", "prompt": ""}]
    assert scoring.chat_messages(prompt) == [{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": "hi\nthere"}]
    assert scoring.chat_messages("plain") == [{"role": "user", "content": "plain"}]
    with pytest.raises(ValueError, match="'TOOL'"):
        scoring.chat_messages([{"role": "TOOL", "prompt": "x"}])


def test_requests_follow_the_protocol() -> None:
    assert scoring.ppl_request("a", (1, 2)) == {"custom_id": "a", "prompt_token_ids": [1, 2], "max_tokens": 0,
                                                "prompt_logprobs": 0}
    assert scoring.score_request("b", [1], (2, 3)) == {"custom_id": "b", "prompt_token_ids": [1],
                                                       "continuations": [[2, 3]]}


def test_scores_and_prompt_logprobs_are_read_from_results() -> None:
    payload = json.dumps([
        {"custom_id": "s", "text": "", "finish_reason": "score", "error": None,
         "scores": [{"logprob": -1.5, "tokens": 2, "greedy": False}]},
        {"custom_id": "p", "text": "", "finish_reason": "length", "error": None,
         "prompt_logprobs": {"token_ids": [4, 5], "tokens": ["a", "b"], "token_logprobs": [None, -0.25],
                             "top_logprobs": [None, []]}},
        {"custom_id": "g", "text": "x", "finish_reason": "stop", "error": None},
        {"custom_id": "n", "text": "", "finish_reason": "score", "error": None,
         "scores": [{"logprob": None, "tokens": 1, "greedy": False}]},
        {"custom_id": "m", "text": "", "finish_reason": "length", "error": None,
         "prompt_logprobs": {"token_ids": [4, 5], "tokens": ["a", "b"], "token_logprobs": [None],
                             "top_logprobs": [None]}},
    ]).encode()
    s, p, g, n, m = decode_results(payload, "batch-1")
    assert scoring.continuation_logprob(s) == -1.5
    assert scoring.prompt_token_logprobs(p) == ([4, 5], [None, -0.25])
    with pytest.raises(ValueError, match="no scores"):
        scoring.continuation_logprob(g)
    with pytest.raises(ValueError, match="no prompt_logprobs"):
        scoring.prompt_token_logprobs(g)
    with pytest.raises(ValueError, match="score without a logprob"):
        scoring.continuation_logprob(n)
    with pytest.raises(ValueError, match="malformed prompt_logprobs: 1 logprobs for 2 tokens"):
        scoring.prompt_token_logprobs(m)
    assert isinstance(g, Result) and g.text == "x"
