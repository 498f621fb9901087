"""The online API through the official `openai` package: completions, chat, streaming, models, and
the request errors (400, 404, 503) on a shared cluster."""

from __future__ import annotations

import json

import openai
import pytest
from conftest import Shared, expected_text, http
from openai import OpenAI


def client(shared: Shared) -> OpenAI:
    # max_retries=0: an error must come back as it is, not be retried by the client.
    return OpenAI(base_url=shared.gateway.base_url, api_key="unused", max_retries=0, timeout=30)


def test_models_lists_one_model_per_pool(shared: Shared) -> None:
    models = client(shared).models.list()
    by_id = {m.id: m for m in models.data}
    assert {"default", "slow", "empty"} <= set(by_id)
    assert all(m.object == "model" and m.owned_by == "compass" for m in models.data)
    assert client(shared).models.retrieve("default").id == "default"
    with pytest.raises(openai.NotFoundError):
        client(shared).models.retrieve("no-such-pool")


def test_completion(shared: Shared) -> None:
    prompt = "the quick brown fox jumps over the lazy dog"
    response = client(shared).completions.create(model="default", prompt=prompt, max_tokens=4)
    assert response.object == "text_completion"
    assert response.model == "default"
    assert len(response.choices) == 1
    choice = response.choices[0]
    assert choice.text == expected_text(prompt, 4)
    assert choice.finish_reason == "length"
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.total_tokens) == (9, 4, 13)


def test_completion_defaults_to_16_tokens_and_honours_stop_and_echo(shared: Shared) -> None:
    prompt = " ".join(f"w{i}" for i in range(30))
    c = client(shared)
    assert c.completions.create(model="default", prompt=prompt).choices[0].text == expected_text(prompt, 16)
    stopped = c.completions.create(model="default", prompt="a b c d e", stop=["b"], max_tokens=10).choices[0]
    assert stopped.text == "e d c " and stopped.finish_reason == "stop"
    echoed = c.completions.create(model="default", prompt="x y", echo=True).choices[0]
    assert echoed.text == "x y" + "y x"


def test_completion_with_a_list_of_prompts(shared: Shared) -> None:
    prompts = [f"prompt number {i} says hello" for i in range(5)]
    response = client(shared).completions.create(model="default", prompt=prompts, max_tokens=3)
    assert [c.index for c in response.choices] == list(range(5))
    assert [c.text for c in response.choices] == [expected_text(p, 3) for p in prompts]
    assert response.usage is not None and response.usage.completion_tokens == 15


def test_chat(shared: Shared) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is a compass"}]
    response = client(shared).chat.completions.create(model="default", messages=messages)  # type: ignore[arg-type]
    assert response.object == "chat.completion"
    message = response.choices[0].message
    assert message.role == "assistant"
    assert message.content == expected_text("be brief\nwhat is a compass")
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None and response.usage.prompt_tokens == 6


def test_chat_with_text_parts_and_max_completion_tokens(shared: Shared) -> None:
    response = client(shared).chat.completions.create(
        model="default", max_completion_tokens=2,
        messages=[{"role": "user", "content": [{"type": "text", "text": "one two "}, {"type": "text", "text": "three"}]}])
    assert response.choices[0].message.content == "three two"
    assert response.choices[0].finish_reason == "length"


def test_chat_streaming(shared: Shared) -> None:
    prompt = "stream these words back to me please"
    stream = client(shared).chat.completions.create(
        model="default", messages=[{"role": "user", "content": prompt}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text(prompt)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    assert len({c.id for c in chunks}) == 1


def test_completion_streaming(shared: Shared) -> None:
    prompt = "alpha beta gamma delta"
    stream = client(shared).completions.create(model="default", prompt=prompt, stream=True, max_tokens=3)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == expected_text(prompt, 3)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_raw_stream_is_server_sent_events(shared: Shared) -> None:
    body = json.dumps({"model": "default", "messages": [{"role": "user", "content": "a b"}], "stream": True}).encode()
    status, headers, data = http("POST", shared.gateway.base_url + "/chat/completions", body,
                                 {"Content-Type": "application/json"})
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    events = [e for e in data.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_unknown_model_is_404(shared: Shared) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(shared).chat.completions.create(model="no-such-pool", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"


def test_pool_without_workers_is_503(shared: Shared) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client(shared).completions.create(model="empty", prompt="anyone there")
    assert info.value.status_code == 503
    assert info.value.code == "no_workers"
    assert "retry-after-ms" in info.value.response.headers


@pytest.mark.parametrize("body, param", [
    ({"model": "default", "messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "default"}, "messages"),
    ({"model": "default", "messages": []}, "messages"),
    ({"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}, "max_tokens"),
    ({"model": "default", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
])
def test_bad_chat_requests_are_400(shared: Shared, body: dict, param: str) -> None:
    status, headers, data = http("POST", shared.gateway.base_url + "/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    assert status == 400, data
    error = json.loads(data)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_bad_requests_through_the_openai_client_are_400(shared: Shared) -> None:
    c = client(shared)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}], n=3)
    assert "n=3 is not supported" in info.value.message
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="default", prompt=[1, -2, 3])
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="default", prompt="x", temperature=-5)


def test_invalid_json_is_400(shared: Shared) -> None:
    status, _, data = http("POST", shared.gateway.base_url + "/completions", b'{"model": "default", "prompt": ',
                           {"Content-Type": "application/json"})
    assert status == 400
    assert json.loads(data)["error"]["code"] == "invalid_json"


def test_engine_error_of_one_request_is_400_and_the_rest_of_its_batch_is_fine(shared: Shared) -> None:
    # @@fail makes the synthetic engine fail that request alone with bad_request.
    with pytest.raises(openai.BadRequestError) as info:
        client(shared).completions.create(model="default", prompt="please @@fail now")
    assert info.value.code == "bad_request"
    assert client(shared).completions.create(model="default", prompt="still fine").choices[0].text == "fine still"


def test_unknown_route_is_404_in_openai_shape(shared: Shared) -> None:
    status, _, data = http("POST", shared.gateway.base_url + "/embeddings", b"{}", {"Content-Type": "application/json"})
    assert status == 404
    assert json.loads(data)["error"]["code"] == "unknown_url"


def test_health(shared: Shared) -> None:
    health = shared.gateway.health()
    assert health is not None and health["status"] == "ok" and health["broker"]["reachable"] is True
    assert health["batcher"]["max_batch"] == 32
