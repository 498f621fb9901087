"""compass_engine.py, the protocol library, through a scripted backend (scripted_engine.py)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from conftest import Engine, StartEngine

SCRIPT = "tests/scripted_engine.py"


def started(start_engine: StartEngine, **kwargs: Any) -> Engine:
    engine = start_engine(SCRIPT, **kwargs)
    engine.ready()
    return engine


def test_ready_carries_the_settings(start_engine: StartEngine) -> None:
    # `python` and `command` are the worker's own engine-args: never an error here.
    engine = start_engine(SCRIPT, model="/models/m", tp=2, args={"step_ms": "1", "python": "/usr/bin/python3"},
                          env={"COMPASS_GPUS": "4,5"})
    ready = engine.ready()
    assert ready == {"type": "ready", "model": "/models/m", "detail": "scripted: model /models/m, tp 2, gpus [4, 5]",
                     "start_method": "spawn"}


def test_requests_are_validated_one_by_one(start_engine: StartEngine) -> None:
    engine = started(start_engine, args={"step_ms": "0"})
    good = {"custom_id": "good", "messages": [{"role": "user", "content": [{"type": "text", "text": "a "},
                                                                          {"type": "image_url"}, {"type": "text", "text": "b"}]}],
            "max_tokens": 2, "temperature": 1, "top_p": 0.5, "stop": "\n", "seed": 9, "ignore_eos": True}
    requests = [
        good,
        "not an object",
        {"prompt": "no id"},
        {"custom_id": "empty"},
        {"custom_id": "neg", "prompt": "x", "max_tokens": -1},
        {"custom_id": "str-max", "prompt": "x", "max_tokens": "5"},
        {"custom_id": "bool-max", "prompt": "x", "max_tokens": True},
        {"custom_id": "hot", "prompt": "x", "temperature": -0.5},
        {"custom_id": "top-p", "prompt": "x", "top_p": 0},
        {"custom_id": "stops", "prompt": "x", "stop": ["ok", 3]},
        {"custom_id": "seed", "prompt": "x", "seed": "7"},
        {"custom_id": "eos", "prompt": "x", "ignore_eos": "yes"},
        {"custom_id": "roles", "messages": [{"content": "no role"}]},
        {"custom_id": "no-messages", "messages": []},
        {"custom_id": "plain", "prompt": "two words", "stop": ["", "z"]},
    ]
    engine.batch("v1", requests)
    answer = engine.answer("v1")
    results = answer["results"]
    assert [r["custom_id"] for r in results] == ["good", "#1", "#2", "empty", "neg", "str-max", "bool-max", "hot",
                                                 "top-p", "stops", "seed", "eos", "roles", "no-messages", "plain"]
    parsed = json.loads(results[0]["text"])
    assert parsed["messages"] == [{"role": "user", "content": "a b"}]  # the text parts, joined
    assert (parsed["max_tokens"], parsed["temperature"], parsed["top_p"], parsed["stop"], parsed["seed"],
            parsed["ignore_eos"]) == (2, 1.0, 0.5, ["\n"], 9, True)
    assert json.loads(results[-1]["text"])["stop"] == ["z"]  # empty stop strings are dropped
    for bad in results[1:-1]:
        assert bad["error"]["code"] == "bad_request" and bad["text"] is None and bad["finish_reason"] is None, bad
        assert bad["prompt_tokens"] == 0 and bad["completion_tokens"] == 0
    assert "neither prompt nor messages" in results[3]["error"]["message"]
    assert answer["stats"]["requests"] == 15 and answer["stats"]["failed_requests"] == 13
    assert answer["stats"]["completion_tokens"] == 2 + 3


def test_batch_failures_are_classified_and_the_engine_goes_on(start_engine: StartEngine) -> None:
    engine = started(start_engine, args={"step_ms": "0"})
    engine.send({"type": "batch", "batch_id": "notalist", "attempt": 1, "requests": "nope"})
    failed = engine.answer("notalist")
    assert (failed["type"], failed["code"], failed["retryable"]) == ("failed", "bad_request", False)
    engine.batch("raise", [{"custom_id": "a", "prompt": "@raise"}])
    failed = engine.answer("raise")
    assert (failed["code"], failed["retryable"]) == ("engine_error", True)
    assert "RuntimeError: the backend exploded" in failed["message"]
    engine.batch("oom", [{"custom_id": "a", "prompt": "@oom"}], attempt=3)
    failed = engine.answer("oom")
    assert (failed["code"], failed["retryable"], failed["attempt"]) == ("oom", True, 3)
    assert engine.result("fine", [{"custom_id": "a", "prompt": "ok"}])[0]["error"] is None
    engine.send({"not": "a message"})
    engine.send({"type": "mystery"})
    assert engine.result("still-fine", [{"custom_id": "a", "prompt": "ok"}])[0]["error"] is None


def test_fatal_error_in_a_batch(start_engine: StartEngine) -> None:
    engine = started(start_engine, args={"step_ms": "0"})
    engine.batch("f", [{"custom_id": "a", "prompt": "@fatal"}])
    fatal = engine.wait_for("fatal", "result", "failed")
    assert fatal == {"type": "fatal", "code": "engine_dead", "message": "rank 1 died"}
    assert engine.wait_exit() == 1


@pytest.mark.parametrize("args, env, code, needle", [
    ({"fail_load": "oom"}, {}, "oom", "CUDA out of memory"),
    ({"fail_load": "error"}, {}, "startup_failed", "ValueError: the weights are corrupt"),
    ({"fail_load": "config"}, {}, "startup_failed", "model directory not found: /nowhere"),
    ({"colour": "red"}, {}, "startup_failed", "no argument 'colour'; it takes: fail_load"),
    ({"step_ms": "fast"}, {}, "startup_failed", "step_ms=fast: expected an integer"),
    ({}, {"COMPASS_TP": "two"}, "startup_failed", "COMPASS_TP"),
    ({}, {"COMPASS_ENGINE_ARGS": "{not json"}, "startup_failed", "COMPASS_ENGINE_ARGS is not JSON"),
])
def test_start_failures_are_fatal(start_engine: StartEngine, args: dict[str, str], env: dict[str, str],
                                  code: str, needle: str) -> None:
    engine = start_engine(SCRIPT, args=args, env=env)
    fatal = engine.wait_for("fatal", "ready")
    assert fatal["type"] == "fatal" and fatal["code"] == code and needle in fatal["message"], fatal
    assert engine.wait_exit() == 1


def test_progress_is_throttled_and_stops_before_the_result(start_engine: StartEngine) -> None:
    engine = started(start_engine, args={"step_ms": "10"})
    requests = [{"custom_id": f"r{i}", "prompt": "x", "max_tokens": 10} for i in range(8)]  # ~0.8 s
    engine.result("p", requests)
    progress = engine.progress("p")
    assert 2 <= len(progress) <= 20  # not one per token (80)
    assert all(p["total"] == 8 for p in progress)
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
    assert [p["tokens"] for p in progress] == sorted(p["tokens"] for p in progress)
    result_at = next(i for i, e in enumerate(engine.events) if e["type"] == "result")
    assert all(e["type"] != "progress" for e in engine.events[result_at:])


def test_cancel_running_queued_and_other_attempts(start_engine: StartEngine) -> None:
    engine = started(start_engine, args={"step_ms": "20"})
    slow = [{"custom_id": f"s{i}", "prompt": "x", "max_tokens": 10} for i in range(5)]  # ~1 s
    engine.batch("a", slow, attempt=2)
    engine.batch("b", slow)  # queued behind a (the worker never does this, but cancel must cope)
    engine.cancel("b")
    engine.cancel("a", attempt=1)  # an older attempt: not the running one
    first = engine.answer("a")
    assert first["type"] == "result" and first["attempt"] == 2
    second = engine.answer("b")
    assert second["type"] == "failed" and second["code"] == "cancelled"
    assert engine.progress("b") == []  # cancelled before it started
    engine.batch("c", slow)
    engine.wait_for("progress")
    engine.cancel("c")
    assert engine.answer("c")["code"] == "cancelled"


def test_shutdown_mid_batch_exits_without_an_answer(start_engine: StartEngine) -> None:
    engine = started(start_engine, args={"step_ms": "50"})
    engine.batch("long", [{"custom_id": "a", "prompt": "x", "max_tokens": 1000}])
    engine.wait_for("progress")
    began = time.monotonic()
    engine.send({"type": "shutdown"})
    assert engine.wait_exit() == 0
    assert time.monotonic() - began < 5
    assert all(e["type"] == "progress" for e in engine.events[1:])


def test_end_of_file_mid_batch_exits(start_engine: StartEngine) -> None:
    engine = started(start_engine, args={"step_ms": "50"})
    engine.batch("long", [{"custom_id": "a", "prompt": "x", "max_tokens": 1000}])
    engine.wait_for("progress")
    engine.close_requests()
    assert engine.wait_exit() == 0


def test_end_of_file_while_loading_exits_at_once(start_engine: StartEngine) -> None:
    engine = start_engine(SCRIPT, args={"load_ms": "60000"})
    engine.close_requests()
    assert engine.wait_exit(timeout=10) == 0
    assert engine.events == []
