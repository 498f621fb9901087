"""compass_engine.parse_request against the shared table of valid and invalid requests
(spec/requests.json, which the Swift validator is tested against too)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import ENGINES

sys.path.insert(0, str(ENGINES))
from compass_engine import Request, Result, Score, TokenLogprobs, parse_request  # noqa: E402

TABLE = json.loads((Path(__file__).resolve().parents[3] / "spec" / "requests.json").read_text())


def test_the_table_is_there_and_full() -> None:
    assert len(TABLE["valid"]) >= 15 and len(TABLE["invalid"]) >= 30
    names = [case["name"] for case in TABLE["valid"] + TABLE["invalid"]]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", TABLE["valid"], ids=lambda case: case["name"])
def test_valid(case: dict[str, Any]) -> None:
    request = parse_request(0, case["request"])
    assert isinstance(request, Request), request
    # The request as the validator hands it on: the table's `normalized`, else the request itself.
    assert request.to_json() == case.get("normalized", case["request"])
    assert request.is_scoring == ("continuations" in case["request"])


@pytest.mark.parametrize("case", TABLE["invalid"], ids=lambda case: case["name"])
def test_invalid(case: dict[str, Any]) -> None:
    raw = case["request"]
    result = parse_request(3, raw)
    assert isinstance(result, Result), result
    has_id = isinstance(raw, dict) and isinstance(raw.get("custom_id"), str) and raw["custom_id"]
    custom_id = raw["custom_id"] if has_id else "#3"
    assert result.custom_id == custom_id
    assert result.error == {"code": "bad_request", "message": f"request {custom_id}: {case['error']}"}
    assert result.to_json() == {"custom_id": custom_id, "text": None, "prompt_tokens": 0, "completion_tokens": 0,
                                "finish_reason": None, "error": result.error}


def test_helpers() -> None:
    chat = parse_request(0, {"custom_id": "c", "messages": [{"role": "system", "content": "a"},
                                                           {"role": "user", "content": "b"}], "temperature": 0})
    assert isinstance(chat, Request) and chat.flattened_prompt == "a\nb" and chat.greedy
    ids = parse_request(1, {"custom_id": "i", "prompt_token_ids": [1, 2], "temperature": 0.5})
    assert isinstance(ids, Request) and ids.flattened_prompt == "" and not ids.greedy and not ids.is_scoring
    assert ids.index == 1 and ids.prompt_token_ids == [1, 2]


def test_result_fields_only_when_asked_for() -> None:
    plain = Result("a", "text", 3, 2, "stop")
    assert set(plain.to_json()) == {"custom_id", "text", "prompt_tokens", "completion_tokens", "finish_reason", "error"}
    lp = TokenLogprobs([5, 6], ["<s>", " x"], [None, float("-inf")],
                       [None, [{"token_id": 6, "token": " x", "logprob": float("-inf")}]])
    scored = Result("b", "", 4, 0, "score", scores=[Score(-1.5, 2, True), Score(float("nan"), 1, False)],
                    prompt_logprobs=lp)
    out = json.loads(json.dumps(scored.to_json(), allow_nan=False))  # strict JSON: no -Infinity, no NaN
    assert out["scores"] == [{"logprob": -1.5, "tokens": 2, "greedy": True}, {"logprob": None, "tokens": 1, "greedy": False}]
    assert out["prompt_logprobs"]["token_logprobs"] == [None, -1.7976931348623157e308]
    assert out["prompt_logprobs"]["top_logprobs"][0] is None
    assert out["prompt_logprobs"]["top_logprobs"][1][0]["logprob"] == -1.7976931348623157e308
    assert "logprobs" not in out
    # An adapter may hand over the JSON shape itself (relaying another server's answer).
    relayed = Result("c", "", 2, 0, "score", scores=[{"logprob": float("-inf"), "tokens": 1, "greedy": False}],
                     logprobs={"token_ids": [1], "tokens": ["a"], "token_logprobs": [-0.5], "top_logprobs": [[]]})
    out = json.loads(json.dumps(relayed.to_json(), allow_nan=False))
    assert out["scores"] == [{"logprob": -1.7976931348623157e308, "tokens": 1, "greedy": False}]
    assert out["logprobs"] == {"token_ids": [1], "tokens": ["a"], "token_logprobs": [-0.5], "top_logprobs": [[]]}
