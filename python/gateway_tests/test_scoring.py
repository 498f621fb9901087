"""Scoring through the official `openai` package: logprobs, echo, `max_tokens: 0` and token-id
prompts on /v1/completions, `logprobs` + `top_logprobs` on chat, the validation 400s, and the 400
of a pool whose engine cannot score. Values are exact: the synthetic engine's logprobs follow a
rule (compass' SyntheticModel) that `synthetic` below restates."""

from __future__ import annotations

import json
from typing import Any, Optional

import openai
import pytest
from conftest import Cluster, Shared, http
from openai import OpenAI

PREDICTED = -0.125  # the synthetic model's logprob of the token it predicts


def client(shared: Shared) -> OpenAI:
    # max_retries=0: an error must come back as it is, not be retried by the client.
    return OpenAI(base_url=shared.gateway.base_url, api_key="unused", max_retries=0, timeout=30)


def synthetic_tokens(prompt: str | list[int]) -> list[str]:
    """The synthetic engine's tokens: a text's words, or `t<id>` for a token id."""
    return [f"t{i}" for i in prompt] if isinstance(prompt, list) else prompt.split()


def synthetic(prompt: str | list[int], max_tokens: int, k: int, echo: bool) -> dict[str, Any]:
    """The completions `logprobs` the gateway must answer for the synthetic engine. A prompt token
    is predicted by nothing: its logprob is minus its length in bytes (the first has none); a
    generated token is the predicted one (-0.125). The top k of a position are the token (or the
    prediction) and then `<alt1>`, `<alt2>`, ... each 1 less likely."""
    prompt_tokens = synthetic_tokens(prompt)
    generated = prompt_tokens[::-1][:max_tokens]
    tokens: list[str] = []
    values: list[Optional[float]] = []
    tops: list[Optional[dict[str, float]]] = []
    if echo:
        for i, token in enumerate(prompt_tokens):
            value = None if i == 0 else -float(len(token.encode()))
            tokens.append(token)
            values.append(value)
            tops.append(None if value is None else {token: value, **{f"<alt{j}>": value - j for j in range(1, k)}})
    for token in generated:
        tokens.append(token)
        values.append(PREDICTED)
        tops.append({token: PREDICTED, **{f"<alt{j}>": PREDICTED - j for j in range(1, k)}})
    offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def logprobs_of(choice: Any) -> dict[str, Any]:
    lp = choice.logprobs
    assert lp is not None, "no logprobs in the choice"
    return {"tokens": lp.tokens, "token_logprobs": lp.token_logprobs, "top_logprobs": lp.top_logprobs,
            "text_offset": lp.text_offset}


def test_echo_with_max_tokens_0_is_the_prompts_logprobs(shared: Shared) -> None:
    prompt = "the quick brown fox"
    response = client(shared).completions.create(model="default", prompt=prompt, echo=True, logprobs=1, max_tokens=0)
    choice = response.choices[0]
    assert choice.text == prompt
    assert logprobs_of(choice) == synthetic(prompt, 0, 1, echo=True)
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    assert response.usage is not None and (response.usage.prompt_tokens, response.usage.completion_tokens) == (4, 0)


def test_lm_eval_loglikelihood_request(shared: Shared) -> None:
    """What lm-evaluation-harness sends for a loglikelihood: max_tokens 1, echo, logprobs 1; it
    reads token_logprobs[ctxlen:-1] and calls a token greedy when it equals max(top_logprobs[i])."""
    prompt = "alpha beta gamma delta"
    choice = client(shared).completions.create(model="default", prompt=prompt, echo=True, logprobs=1,
                                               max_tokens=1, temperature=0, seed=1234).choices[0]
    got = logprobs_of(choice)
    assert got == synthetic(prompt, 1, 1, echo=True)
    assert choice.text == prompt + "delta"
    ctxlen = 2
    assert sum(got["token_logprobs"][ctxlen:-1]) == -5.0 - 5.0  # "gamma", "delta"
    assert all(v == max(top.values()) for v, top in zip(got["token_logprobs"][ctxlen:-1], got["top_logprobs"][ctxlen:-1]))


def test_generated_logprobs_with_top_k(shared: Shared) -> None:
    prompt = "one two three four five"
    c = client(shared)
    plain = c.completions.create(model="default", prompt=prompt, logprobs=3, max_tokens=2).choices[0]
    assert plain.text == "five four"
    assert logprobs_of(plain) == synthetic(prompt, 2, 3, echo=False)
    echoed = c.completions.create(model="default", prompt=prompt, logprobs=2, max_tokens=2, echo=True).choices[0]
    assert logprobs_of(echoed) == synthetic(prompt, 2, 2, echo=True)
    # logprobs 0: the chosen token alone in each position's top_logprobs.
    zero = c.completions.create(model="default", prompt=prompt, logprobs=0, max_tokens=1).choices[0]
    assert zero.logprobs.top_logprobs == [{"five": PREDICTED}]
    assert c.completions.create(model="default", prompt=prompt, max_tokens=1).choices[0].logprobs is None


def test_token_id_prompts(shared: Shared) -> None:
    c = client(shared)
    one = c.completions.create(model="default", prompt=[5, 17, 300], echo=True, logprobs=1, max_tokens=1).choices
    assert len(one) == 1
    assert one[0].text == "t5t17t300" + "t300"  # a token-id prompt echoes as the engine's tokens, joined
    assert logprobs_of(one[0]) == synthetic([5, 17, 300], 1, 1, echo=True)
    many = c.completions.create(model="default", prompt=[[1, 2], [3], [40, 41, 42]], max_tokens=2)
    assert [ch.text for ch in many.choices] == ["t2 t1", "t3", "t42 t41"]
    assert [ch.index for ch in many.choices] == [0, 1, 2]
    bare = c.completions.create(model="default", prompt=[[7, 8]], max_tokens=0, echo=True).choices[0]
    assert bare.text == "t7t8" and bare.logprobs is None


def test_several_prompts_with_echo_and_logprobs(shared: Shared) -> None:
    prompts = ["a bb ccc", "dddd e"]
    response = client(shared).completions.create(model="default", prompt=prompts, echo=True, logprobs=1, max_tokens=1)
    assert [logprobs_of(ch) for ch in response.choices] == [synthetic(p, 1, 1, echo=True) for p in prompts]


def test_chat_logprobs_with_top_logprobs(shared: Shared) -> None:
    response = client(shared).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "one two three"}], logprobs=True, top_logprobs=2)
    choice = response.choices[0]
    assert choice.message.content == "three two one"
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = [(t.token, t.logprob, t.bytes, [(a.token, a.logprob, a.bytes) for a in t.top_logprobs])
               for t in choice.logprobs.content]
    assert content == [(w, PREDICTED, list(w.encode()), [(w, PREDICTED, list(w.encode())), ("<alt1>", PREDICTED - 1, list(b"<alt1>"))])
                       for w in ("three", "two", "one")]
    bare = client(shared).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "a b"}], logprobs=True).choices[0]
    assert [(t.token, t.top_logprobs) for t in bare.logprobs.content] == [("b", []), ("a", [])]
    assert client(shared).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "a b"}]).choices[0].logprobs is None


def test_streamed_logprobs(shared: Shared) -> None:
    prompt = "red green blue"
    chunks = list(client(shared).completions.create(model="default", prompt=prompt, echo=True, logprobs=1,
                                                    max_tokens=2, stream=True))
    with_logprobs = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert len(with_logprobs) == 1
    lp = with_logprobs[0]
    assert {"tokens": lp.tokens, "token_logprobs": lp.token_logprobs, "top_logprobs": lp.top_logprobs,
            "text_offset": lp.text_offset} == synthetic(prompt, 2, 1, echo=True)
    chat = list(client(shared).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "x y"}], logprobs=True, top_logprobs=1, stream=True))
    tokens = [t.token for c in chat if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert tokens == ["y", "x"]


@pytest.mark.parametrize("fields, param, message", [
    ({"temperature": -5}, "temperature", "temperature must be a number from 0 to 100"),
    ({"top_p": 7}, "top_p", "top_p must be a number above 0 and at most 1"),
    ({"max_tokens": 2**63 - 1}, "max_tokens", "max_tokens must be an integer from 0 to 1048576"),
    ({"logprobs": 21}, "logprobs", "logprobs must be an integer from 0 to 20"),
    ({"prompt": [[1, -2]]}, "prompt", "prompt_token_ids must be a non-empty list of non-negative integers"),
    ({"prompt": [1, "two"]}, "prompt", None),
])
def test_invalid_completions_are_400_naming_the_field(shared: Shared, fields: dict[str, Any], param: str,
                                                      message: Optional[str]) -> None:
    arguments: dict[str, Any] = {"model": "default", "prompt": "x", **fields}
    with pytest.raises(openai.BadRequestError) as info:
        client(shared).completions.create(**arguments)
    assert info.value.status_code == 400
    assert info.value.param == param
    if message is not None:
        assert info.value.body["message"] == message  # type: ignore[index]


def test_invalid_chat_logprobs_are_400(shared: Shared) -> None:
    c = client(shared)
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="default", messages=messages, top_logprobs=2)  # type: ignore[arg-type]
    assert info.value.param == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="default", messages=messages, logprobs=True, top_logprobs=21)  # type: ignore[arg-type]
    assert info.value.param == "top_logprobs"
    status, _, data = http("POST", shared.gateway.base_url + "/chat/completions",
                           json.dumps({"model": "default", "messages": messages, "temperature": -5}).encode(),
                           {"Content-Type": "application/json"})
    assert status == 400 and json.loads(data)["error"]["param"] == "temperature"


@pytest.mark.parametrize("refuses", [True, False], ids=["engine-refuses", "engine-ignores"])
def test_a_pool_that_cannot_score_answers_400(cluster: Cluster, refuses: bool) -> None:
    """An engine that cannot score either refuses the request (`unsupported`, as the example exec
    engine does) or ignores the logprobs fields and answers text alone (as engines did before
    scoring): either way the gateway answers 400 `unsupported`, which the openai package does not
    retry; when the engine ignored them, the gateway's own message says the pool cannot score."""
    cluster.start_broker(pools=("plain",))
    cluster.start_plain_worker("plain", refuses=refuses)
    gateway = cluster.start_gateway()
    cluster.wait_for_workers(gateway, {"plain": 1})
    c = OpenAI(base_url=gateway.base_url, api_key="x", max_retries=2, timeout=30)
    assert c.completions.create(model="plain", prompt="still works").choices[0].text == "STILL WORKS"
    before = gateway.health()["batcher"]["requests"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:
        c.completions.create(model="plain", prompt="a b c", echo=True, logprobs=1, max_tokens=1)
    assert info.value.code == "unsupported"
    if refuses:
        assert "logprobs, prompt_logprobs: not supported by this engine" in info.value.message, info.value.message
    else:
        assert "cannot score" in info.value.message and "'plain'" in info.value.message, info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}], logprobs=True)
    assert info.value.code == "unsupported"
    # max_retries=2, yet each request reached the pool once: a 400 is not retried.
    assert gateway.health()["batcher"]["requests"] - before == 2  # type: ignore[index]


def test_no_remote_tokenizer_endpoints(shared: Shared) -> None:
    """lm-eval's `tokenizer_backend=auto` probes /tokenizer_info and /tokenize beside the base URL:
    the gateway has no tokenizer, so a prompt 404 sends it to its huggingface backend."""
    status, _, data = http("GET", shared.gateway.url + "/tokenizer_info")
    assert status == 404 and json.loads(data)["error"]["code"] == "unknown_url"
    status, _, _ = http("POST", shared.gateway.url + "/tokenize", b'{"prompt": "test"}', {"Content-Type": "application/json"})
    assert status == 404
