"""Unit tests of the payload types (no broker needed): requests against the shared table of
spec/requests.json, and the result fields of scoring and logprobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from compass_client.types import Logprobs, Request, Result, Score, TopLogprob, decode_results

TABLE = json.loads((Path(__file__).resolve().parents[2] / "spec" / "requests.json").read_text())
KNOWN = set(Request._FIELDS) | {"custom_id"}


@pytest.mark.parametrize("case", [c for c in TABLE["valid"] if set(c["request"]) <= KNOWN], ids=lambda c: c["name"])
def test_every_valid_request_of_the_table_round_trips(case: dict[str, Any]) -> None:
    request = Request(**case["request"])
    assert request.to_json() == {k: v for k, v in case["request"].items() if v is not None}


def test_new_request_fields() -> None:
    scoring = Request(custom_id="q", prompt="Q: 2+2? A:", continuations=[" 4", [5, 6]])
    assert scoring.to_json() == {"custom_id": "q", "prompt": "Q: 2+2? A:", "continuations": [" 4", [5, 6]]}
    ppl = Request(custom_id="p", prompt_token_ids=[1, 2], max_tokens=0, prompt_logprobs=0, logprobs=3)
    assert ppl.to_json() == {"custom_id": "p", "prompt_token_ids": [1, 2], "max_tokens": 0, "logprobs": 3,
                             "prompt_logprobs": 0}


def test_results_with_scores_and_logprobs() -> None:
    payload = json.dumps([
        {"custom_id": "q3", "text": "", "prompt_tokens": 11, "completion_tokens": 0, "finish_reason": "score",
         "error": None, "scores": [{"logprob": -0.71, "tokens": 1, "greedy": True},
                                   {"logprob": -9.5, "tokens": 2, "greedy": False}]},
        {"custom_id": "q4", "text": "", "prompt_tokens": 3, "completion_tokens": 1, "finish_reason": "length",
         "error": None,
         "prompt_logprobs": {"token_ids": [1, 450, 4996], "tokens": ["<s>", "The", " quick"],
                             "token_logprobs": [None, -7.1, -9.0],
                             "top_logprobs": [None, [{"token_id": 7, "token": "a", "logprob": -1.0}], []]},
         "logprobs": {"token_ids": [9], "tokens": [" fox"], "token_logprobs": [-0.5], "top_logprobs": [[]]}},
        {"custom_id": "q1", "text": "Bonjour", "prompt_tokens": 5, "completion_tokens": 3, "finish_reason": "stop",
         "error": None},
    ]).encode()
    scored, ppl, plain = decode_results(payload, "b")
    assert scored.ok and scored.scores == [Score(-0.71, 1, True), Score(-9.5, 2, False)]
    assert scored.logprobs is None and scored.prompt_logprobs is None
    assert ppl.prompt_logprobs == Logprobs([1, 450, 4996], ["<s>", "The", " quick"], [None, -7.1, -9.0],
                                           [None, [TopLogprob(7, "a", -1.0)], []])
    assert ppl.logprobs == Logprobs([9], [" fox"], [-0.5], [[]]) and ppl.scores is None
    assert (plain.text, plain.scores, plain.logprobs, plain.prompt_logprobs) == ("Bonjour", None, None, None)
    assert Result.from_json({"custom_id": "x", "scores": [{"logprob": None, "tokens": 0, "greedy": True}]}).scores == \
        [Score(None, 0, True)]


def test_the_package_exports_the_result_types() -> None:
    import compass_client

    assert (compass_client.Score, compass_client.Logprobs, compass_client.TopLogprob) == (Score, Logprobs, TopLogprob)
    assert {"Score", "Logprobs", "TopLogprob"} <= set(compass_client.__all__)
