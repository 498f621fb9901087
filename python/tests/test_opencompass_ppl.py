"""How ``CompassModel.get_ppl`` sends a perplexity and reads it back (compass_client._opencompass_scoring).

No OpenCompass here: the requests and the arithmetic are pure. A perplexity whose scored tokens
(from ``max(1, mask_length)`` on) hold no pad token goes as a scoring request and must give what
``perplexity`` (OpenCompass's formula, checked against its loop in python/opencompass_tests) gives
from every token's logprob; any other goes as a ``prompt_logprobs`` request, as before.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, Optional

import pytest

from compass_client import _opencompass_scoring as scoring
from compass_client.types import Logprobs, Result, Score

PAD = 0


def engine(request: dict[str, Any], logprobs: Sequence[Optional[float]]) -> Result:
    """What an engine answers `request` with, `logprobs[t]` being the model's logprob of token t of the
    whole sequence given the tokens before it: a scoring request's summed logprob, or prompt logprobs."""
    context = request["prompt_token_ids"]
    if "continuations" in request:
        (cont,) = request["continuations"]
        total = sum(float(v) for v in logprobs[len(context):len(context) + len(cont)])
        return Result(request["custom_id"], "", len(context), 0, "score",
                      scores=[Score(total, len(cont), False)])
    assert request["max_tokens"] == 0 and request["prompt_logprobs"] == 0
    block = Logprobs(list(context), [f"t{t}" for t in context], list(logprobs), [None] + [[] for _ in context[1:]])
    return Result(request["custom_id"], "", len(context), 0, "length", prompt_logprobs=block)


def random_case(rng: random.Random) -> tuple[list[int], list[Optional[float]], int, Optional[int]]:
    n = rng.randint(1, 12)
    pad_rate = rng.choice([0.0, 0.0, 0.15, 0.4])
    ids = [PAD if rng.random() < pad_rate else rng.randint(1, 50) for _ in range(n)]
    logprobs: list[Optional[float]] = [None] + [-rng.uniform(0.0, 12.0) for _ in range(n - 1)]
    mask = rng.choice([0, 0, 1, rng.randint(0, n + 1)])
    pad = rng.choice([PAD, PAD, None])
    return ids, logprobs, mask, pad


@pytest.mark.parametrize("seed", range(8))
def test_random_sequences_give_what_perplexity_gives(seed: int) -> None:
    rng = random.Random(seed)
    kinds = set()
    for case in range(300):
        ids, logprobs, mask, pad = random_case(rng)
        request = scoring.ppl_request_for(f"r{case}", ids, mask, pad)
        kinds.add("continuations" in request)
        got = scoring.ppl_from_result(ids, engine(request, logprobs), mask, pad)
        want = scoring.perplexity(ids, logprobs, mask, pad)
        if math.isnan(want):
            assert math.isnan(got), (ids, mask, pad)
        else:
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12), (ids, logprobs, mask, pad, request)
    assert kinds == {True, False}  # both paths taken


def test_scored_tokens_without_pad_become_one_scoring_request() -> None:
    assert scoring.ppl_request_for("a", [1, 7, 8, 9], 0, PAD) == {
        "custom_id": "a", "prompt_token_ids": [1], "continuations": [[7, 8, 9]]}
    assert scoring.ppl_request_for("b", (1, 7, 8, 9), 3, PAD) == {
        "custom_id": "b", "prompt_token_ids": [1, 7, 8], "continuations": [[9]]}
    # A pad token in the masked context is not scored: the scoring request still computes it.
    assert scoring.ppl_request_for("c", [PAD, 7, PAD, 9], 3, PAD) == {
        "custom_id": "c", "prompt_token_ids": [PAD, 7, PAD], "continuations": [[9]]}
    assert scoring.ppl_request_for("d", [5, 6, 0], 1, None)["continuations"] == [[6, 0]]  # no pad token


def test_pad_tokens_or_nothing_to_score_keep_prompt_logprobs() -> None:
    prompt_logprobs = {"max_tokens": 0, "prompt_logprobs": 0}
    for ids, mask in (([1, 7, PAD, 9], 0), ([1, 7, 8, PAD], 2), ([1], 0), ([1, 7], 2), ([1, 7], 5)):
        assert scoring.ppl_request_for("x", ids, mask, PAD) == {"custom_id": "x", "prompt_token_ids": ids,
                                                                **prompt_logprobs}
    assert scoring.ppl_scored_start([1, 7, PAD, 9], 3, PAD) == 3
    assert scoring.ppl_scored_start([1, 7, PAD, 9], 2, PAD) is None


def test_ppl_divides_by_non_pad_tokens_minus_mask() -> None:
    # [1, 7, 8, 9], mask 2: tokens 8 and 9 scored (-2 - 4), divided by 4 - 2.
    result = Result("s", "", 2, 0, "score", scores=[Score(-6.0, 2, False)])
    assert scoring.ppl_from_result([1, 7, 8, 9], result, 2, PAD) == pytest.approx(3.0)
    # A pad token in the context counts nothing: [PAD, 7, 8], mask 1: -3 / (2 - 1).
    result = Result("s", "", 1, 0, "score", scores=[Score(-3.0, 2, False)])
    assert scoring.ppl_from_result([PAD, 7, 8], result, 1, PAD) == pytest.approx(3.0)


def test_results_that_do_not_fit_the_request_are_refused() -> None:
    with pytest.raises(ValueError, match="a score over 1 tokens, 3 sent"):
        scoring.ppl_from_result([1, 7, 8, 9], Result("s", "", 1, 0, "score", scores=[Score(-1.0, 1, False)]))
    with pytest.raises(ValueError, match="no scores"):
        scoring.ppl_from_result([1, 7, 8, 9], Result("s", "", 1, 0, "length"))
    other = Logprobs([1, 7, 3], ["a", "b", "c"], [None, -1.0, -1.0], [None, [], []])
    with pytest.raises(ValueError, match="prompt_logprobs for other tokens than sent"):
        scoring.ppl_from_result([1, 7, PAD], Result("p", "", 3, 0, "length", prompt_logprobs=other), 0, PAD)
