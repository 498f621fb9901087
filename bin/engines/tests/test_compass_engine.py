"""compass_engine.py, the protocol library, through a scripted backend (scripted_engine.py)."""

from __future__ import annotations

import json
import os
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


def test_the_loaded_engine_heap_is_frozen_before_ready(start_engine: StartEngine) -> None:
    # A full garbage collection over the loaded engine's objects stalled the vLLM adapter's
    # stepper; they are frozen (gc.freeze) once loaded, before `ready`.
    engine = started(start_engine, args={"step_ms": "0"})
    deadline = time.monotonic() + 10  # stderr is read by its own thread: the line may trail `ready`
    while "garbage collector:" not in engine.output and time.monotonic() < deadline:
        time.sleep(0.02)
    line = next((l for l in engine.output.splitlines() if "garbage collector:" in l), "")
    frozen = int(line.split("engine's ")[1].split()[0]) if line else 0
    assert frozen > 1000, engine.output


def test_requests_are_validated_one_by_one(start_engine: StartEngine) -> None:
    engine = started(start_engine, args={"step_ms": "0"})
    good = {"custom_id": "good", "messages": [{"role": "user", "content": [{"type": "text", "text": "a "},
                                                                          {"type": "text", "text": "b"}]}],
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
        {"custom_id": "image", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        {"custom_id": "scoring-chat", "messages": [{"role": "user", "content": "x"}], "continuations": ["y"]},
        {"custom_id": "plain", "prompt": "two words", "stop": ["", "z"]},
    ]
    engine.batch("v1", requests)
    answer = engine.answer("v1")
    results = answer["results"]
    assert [r["custom_id"] for r in results] == ["good", "#1", "#2", "empty", "neg", "str-max", "bool-max", "hot",
                                                 "top-p", "stops", "seed", "eos", "roles", "no-messages", "image",
                                                 "scoring-chat", "plain"]
    parsed = json.loads(results[0]["text"])
    assert parsed["messages"] == [{"role": "user", "content": "a b"}]  # the text parts, joined
    assert (parsed["max_tokens"], parsed["temperature"], parsed["top_p"], parsed["stop"], parsed["seed"],
            parsed["ignore_eos"]) == (2, 1.0, 0.5, ["\n"], 9, True)
    assert json.loads(results[-1]["text"])["stop"] == ["z"]  # empty stop strings are dropped
    for bad in results[1:-1]:
        assert bad["error"]["code"] == "bad_request" and bad["text"] is None and bad["finish_reason"] is None, bad
        assert bad["prompt_tokens"] == 0 and bad["completion_tokens"] == 0
    # The messages of spec/requests.json (test_request_rules.py checks them all).
    assert results[3]["error"]["message"] == "request empty: give one of prompt, prompt_token_ids or messages"
    assert results[1]["error"]["message"] == "request #1: a request must be a JSON object"
    assert answer["stats"]["requests"] == 17 and answer["stats"]["failed_requests"] == 15
    assert answer["stats"]["completion_tokens"] == 2 + 3


def test_the_backend_gets_the_new_request_fields(start_engine: StartEngine) -> None:
    engine = started(start_engine, args={"step_ms": "0"})
    requests = [{"custom_id": "score", "prompt": "Q: 2+2? A:", "continuations": [" 4", [5, 6]], "max_tokens": 0},
                {"custom_id": "ids", "prompt_token_ids": [1, 2, 3], "max_tokens": 1, "logprobs": 2, "prompt_logprobs": 0}]
    results = engine.result("fields", requests)
    score, ids = (json.loads(r["text"]) for r in results)
    assert (score["prompt"], score["continuations"], score["logprobs"]) == ("Q: 2+2? A:", [" 4", [5, 6]], None)
    assert (ids["prompt"], ids["prompt_token_ids"], ids["logprobs"], ids["prompt_logprobs"]) == (None, [1, 2, 3], 2, 0)


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
    ({"colour": "red"}, {}, "startup_failed", "no argument 'colour'; it takes: capacity"),
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


def test_no_progress_says_a_batch_is_done_its_result_says_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress's own rule (no threads: a ticker that does nothing, and `_flush` called as the real
    one calls it). A message with every request done would only precede the result: for a stream
    of one-request batches it doubled the messages to the worker."""
    import compass_engine
    from compass_engine import Progress

    class QuietTicker:
        def moved(self, progress: Any, urgent: bool) -> None: ...
        def forget(self, progress: Any) -> None: ...
    monkeypatch.setattr(compass_engine._Ticker, "_instance", QuietTicker())

    sent: list[dict[str, Any]] = []
    one = Progress(sent.append, "one", 1, total=1)
    one.add(tokens=5)
    assert one._flush(100.0) is False and [(m["done"], m["tokens"]) for m in sent] == [(0, 5)]
    one.add(done=1, tokens=3)
    assert one._flush(200.0) is False and len(sent) == 1  # done: the result follows
    three = Progress(sent.append, "three", 1, total=3)
    three.add(done=1, tokens=4)
    assert three._flush(100.0) is False and (sent[-1]["batch_id"], sent[-1]["done"]) == ("three", 1)
    three.add(done=1)
    assert three._flush(100.05) is True and len(sent) == 2  # news, but too soon after the last: waits
    assert three._flush(100.2) is False and sent[-1]["done"] == 2
    three.add(done=1)
    assert three._flush(300.0) is False and len(sent) == 3
    one.close()
    three.close()


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


@pytest.mark.parametrize("loaded", [True, False])
def test_a_killed_worker_leaves_no_engine_behind(start_engine: StartEngine, loaded: bool) -> None:
    # A SIGKILLed worker closes the request pipe and stops reading the engine's stderr: logging
    # "stopping" then fails with EPIPE, and the engine must still exit (it used to hang for ever,
    # its reader thread dead of the BrokenPipeError, orphaned beside the next worker's engine).
    engine = start_engine(SCRIPT, args={"step_ms": "50", "load_ms": "0" if loaded else "60000"}, read_log=False)
    if loaded:
        engine.ready()
        engine.batch("long", [{"custom_id": "a", "prompt": "x", "max_tokens": 1000}])
        engine.wait_for("progress")
    engine.worker_gone()
    assert engine.wait_exit(timeout=10) == 0


def test_end_of_file_while_loading_exits_at_once(start_engine: StartEngine) -> None:
    engine = start_engine(SCRIPT, args={"load_ms": "60000"})
    engine.close_requests()
    assert engine.wait_exit(timeout=10) == 0
    assert engine.events == []


# MARK: max_batches > 1: several batches inside the backend at once


def answered(engine: Engine, batch_id: str) -> list[dict[str, Any]]:
    return [e for e in engine.events if e["type"] in ("result", "failed") and e.get("batch_id") == batch_id]


def running_of(result: dict[str, Any]) -> set[int]:
    """How many batches were inside the scripted backend when this batch's generate began."""
    return {json.loads(r["text"])["running"] for r in result["results"]}


def wait_progress(engine: Engine, *batch_ids: str) -> None:
    """Until each of `batch_ids` has sent progress (so each is inside the backend)."""
    while not all(engine.progress(b) for b in batch_ids):
        engine.wait_for("progress")


LONG = [{"custom_id": "l", "prompt": "x", "max_tokens": 100_000}]  # ~17 minutes at 10 ms a token: until cancelled


def test_max_batches_two_runs_a_second_batch_beside_the_first(start_engine: StartEngine) -> None:
    engine = start_engine(SCRIPT, args={"step_ms": "10", "max_batches": "2"})
    assert engine.ready()["max_batches"] == 2
    engine.batch("long", LONG)
    wait_progress(engine, "long")
    short = [{"custom_id": f"s{i}", "prompt": "y z", "max_tokens": 2} for i in range(3)]
    # Answered while `long` runs, each on its own, beside it (running == 2).
    for name in ("short-1", "short-2"):
        engine.batch(name, short)
        answer = engine.answer(name)
        assert answer["type"] == "result" and [r["custom_id"] for r in answer["results"]] == ["s0", "s1", "s2"]
        assert running_of(answer) == {2} and answer["stats"]["completion_tokens"] == 6
        assert all(p["total"] == 3 for p in engine.progress(name))
    assert answered(engine, "long") == []
    engine.cancel("long")
    failed = engine.answer("long")
    assert (failed["type"], failed["code"]) == ("failed", "cancelled")
    assert all(p["total"] == 1 for p in engine.progress("long"))
    # Both slots free again: two batches sent together are both answered, in either order.
    engine.batch("a", short[:1])
    engine.batch("b", short[:2])
    answers = {e["batch_id"]: e for e in (engine.wait_for("result"), engine.wait_for("result"))}
    assert [r["custom_id"] for r in answers["a"]["results"]] == ["s0"]
    assert [r["custom_id"] for r in answers["b"]["results"]] == ["s0", "s1"]


def test_max_batches_caps_the_batches_inside_and_cancels_reach_queued_ones(start_engine: StartEngine) -> None:
    engine = start_engine(SCRIPT, args={"step_ms": "10", "max_batches": "2"})
    engine.ready()
    quick = [{"custom_id": "q", "prompt": "x", "max_tokens": 1}]
    engine.batch("a", LONG)
    engine.batch("b", LONG)
    engine.batch("c", quick)  # waits for a free slot
    engine.batch("d", quick)  # and this behind it
    engine.cancel("d")  # before it started
    wait_progress(engine, "a", "b")
    engine.cancel("a")
    assert engine.answer("a")["code"] == "cancelled"
    c = engine.answer("c")
    assert c["type"] == "result" and running_of(c) == {2}  # b and c: never three at once
    engine.cancel("b")
    b_and_d = {e["batch_id"]: e for e in (engine.wait_for("failed"), engine.wait_for("failed"))}
    assert b_and_d["b"]["code"] == "cancelled" and b_and_d["d"]["code"] == "cancelled"
    assert engine.progress("d") == []  # cancelled before it started
    assert engine.result("e", quick)[0]["error"] is None


def test_max_batches_one_is_the_default_behaviour(start_engine: StartEngine) -> None:
    engine = start_engine(SCRIPT, args={"step_ms": "10", "max_batches": "1"})
    assert "max_batches" not in engine.ready()  # 1 is the protocol's default: not said
    engine.batch("first", [{"custom_id": "f", "prompt": "x", "max_tokens": 20}])
    engine.batch("second", [{"custom_id": "s", "prompt": "x", "max_tokens": 1}])
    assert engine.answer("first")["type"] == "result"
    assert running_of(engine.answer("second")) == {1}  # after the first, never beside it


@pytest.mark.parametrize("how", ["shutdown", "eof"])
def test_stop_with_two_batches_running_exits_without_answers(start_engine: StartEngine, how: str) -> None:
    engine = start_engine(SCRIPT, args={"step_ms": "10", "max_batches": "2"})
    engine.ready()
    engine.batch("a", LONG)
    engine.batch("b", LONG)
    wait_progress(engine, "a", "b")
    began = time.monotonic()
    if how == "shutdown":
        engine.send({"type": "shutdown"})
    else:
        engine.close_requests()
    assert engine.wait_exit() == 0
    assert time.monotonic() - began < 5
    assert {e["type"] for e in engine.events[1:]} == {"progress"}


def test_fatal_in_one_batch_ends_the_engine_once(start_engine: StartEngine) -> None:
    engine = start_engine(SCRIPT, args={"step_ms": "10", "max_batches": "3"})
    engine.ready()
    engine.batch("long", LONG)
    wait_progress(engine, "long")
    engine.batch("f1", [{"custom_id": "a", "prompt": "@fatal"}])
    engine.batch("f2", [{"custom_id": "a", "prompt": "@fatal"}])
    assert engine.wait_for("fatal", "result", "failed") == {"type": "fatal", "code": "engine_dead",
                                                            "message": "rank 1 died"}
    while engine.next_event() is not None:  # until fd 4 closes: nothing after the one fatal
        pass
    assert engine.wait_exit() == 1
    assert [e["type"] for e in engine.events if e["type"] != "progress"] == ["ready", "fatal"]


# MARK: capacity: the worker, not the host, bounds the batches inside


def test_capacity_is_said_in_ready_and_any_number_of_batches_run_at_once(start_engine: StartEngine) -> None:
    engine = start_engine(SCRIPT, args={"step_ms": "10", "capacity": "64", "capacity_tokens": "4096",
                                        "max_batches": "2"})
    ready = engine.ready()
    assert (ready["capacity"], ready["capacity_tokens"]) == (64, 4096) and "max_batches" not in ready
    names = [f"long{i}" for i in range(12)]  # more than max_batches, and than the old limit of 8
    for name in names:
        engine.batch(name, LONG)
    wait_progress(engine, *names)  # all twelve inside the backend at once
    engine.batch("short", [{"custom_id": "s", "prompt": "y", "max_tokens": 2}])
    answer = engine.answer("short")
    assert answer["type"] == "result" and running_of(answer) == {13}
    stats = answer["stats"]["engine"]
    assert stats["capacity"] == 64 and stats["steps"] > 0 and stats["sequence_steps"] >= stats["steps"]
    assert 0 < stats["occupancy"] <= 13 / 64 + 1e-9  # at most the 13 batches inside, over capacity
    for name in names:
        engine.cancel(name)
    assert {a["code"] for a in engine.answers(names).values()} == {"cancelled"}


@pytest.mark.parametrize("args, needle", [({"capacity": "0"}, "capacity=0"), ({"capacity": "70000"}, "capacity=70000"),
                                          ({"capacity": "-1"}, "capacity=-1")])
def test_a_backend_with_a_bad_capacity_does_not_start(start_engine: StartEngine, args: dict[str, str], needle: str) -> None:
    engine = start_engine(SCRIPT, args=args)
    fatal = engine.wait_for("fatal", "ready")
    assert fatal["type"] == "fatal" and fatal["code"] == "startup_failed" and needle in fatal["message"], fatal
    assert engine.wait_exit() == 1


def test_many_batches_share_one_progress_thread_and_report_their_own(start_engine: StartEngine) -> None:
    engine = start_engine(SCRIPT, args={"step_ms": "5", "capacity": "256"})
    engine.ready()
    names = [f"b{i}" for i in range(50)]
    for name in names:
        engine.batch(name, LONG)
    wait_progress(engine, *names)
    # 50 batch threads, the reader, the main thread and one progress ticker (not one per batch).
    threads = len(os.listdir(f"/proc/{engine.pid}/task"))
    assert 50 < threads < 60, threads
    for name in names:
        engine.cancel(name)
    assert {a["code"] for a in engine.answers(names).values()} == {"cancelled"}
    for name in names:  # each counted its own request's tokens only, never going back
        progress = engine.progress(name)
        assert all(p["total"] == 1 and p["done"] == 0 for p in progress)
        assert [p["tokens"] for p in progress] == sorted(p["tokens"] for p in progress)


# MARK: merge_requests: a static-batching backend runs the batches waiting as one call


def call_of(result: dict[str, Any]) -> set[int]:
    return {json.loads(r["text"])["call"] for r in result["results"]}


def test_batches_waiting_together_run_as_one_call_each_answered_on_its_own(start_engine: StartEngine) -> None:
    engine = start_engine(SCRIPT, args={"step_ms": "10", "merge_requests": "8"})
    assert engine.ready()["capacity"] == 8  # said as its capacity
    engine.batch("first", [{"custom_id": "f", "prompt": "x", "max_tokens": 30}])  # runs alone: nothing else waits
    wait_progress(engine, "first")
    # While it runs, six one-request batches and one of three arrive: the next call takes the six
    # and the 3-request batch would pass 8, so it waits for the call after.
    names = [f"one{i}" for i in range(6)] + ["three"]
    for name in names[:6]:
        engine.batch(name, [{"custom_id": "r", "prompt": f"p {name}", "max_tokens": 2}])
    engine.batch("three", [{"custom_id": f"t{i}", "prompt": "q", "max_tokens": 2} for i in range(3)])
    answers = engine.answers(["first"] + names)
    assert call_of(answers["first"]) == {1}
    assert {c for name in names[:6] for c in call_of(answers[name])} == {2}
    assert call_of(answers["three"]) == {3} and len(answers["three"]["results"]) == 3
    for name in names[:6]:  # each batch gets its own request's result and counts
        assert [r["custom_id"] for r in answers[name]["results"]] == ["r"]
        assert json.loads(answers[name]["results"][0]["text"])["prompt"] == f"p {name}"
        assert answers[name]["stats"]["completion_tokens"] == 2
        assert all(p["done"] <= 1 and p["total"] == 1 for p in engine.progress(name))  # never another batch's count


def test_a_merged_call_answers_a_cancelled_batch_cancelled_and_the_others_with_results(start_engine: StartEngine) -> None:
    engine = start_engine(SCRIPT, args={"step_ms": "10", "merge_requests": "8"})
    engine.ready()
    engine.batch("first", [{"custom_id": "f", "prompt": "x", "max_tokens": 20}])
    wait_progress(engine, "first")
    engine.batch("a", [{"custom_id": "a", "prompt": "x", "max_tokens": 40}])
    engine.batch("b", [{"custom_id": "b", "prompt": "x", "max_tokens": 40}, {"custom_id": "bad", "prompt": 7}])
    answers = engine.answers(["first"])
    wait_progress(engine, "a")  # the merged call of a and b is under way
    engine.cancel("a")
    answers = engine.answers(["a", "b"])
    assert answers["a"]["code"] == "cancelled"
    b = answers["b"]
    assert b["type"] == "result" and [r["custom_id"] for r in b["results"]] == ["b", "bad"]
    assert b["results"][1]["error"]["code"] == "bad_request" and call_of({"results": b["results"][:1]}) == {2}


def test_a_failure_of_a_merged_call_fails_each_of_its_batches(start_engine: StartEngine) -> None:
    engine = start_engine(SCRIPT, args={"step_ms": "10", "merge_requests": "8"})
    engine.ready()
    engine.batch("first", [{"custom_id": "f", "prompt": "x", "max_tokens": 20}])
    wait_progress(engine, "first")
    engine.batch("a", [{"custom_id": "a", "prompt": "fine"}])
    engine.batch("b", [{"custom_id": "b", "prompt": "@raise"}])
    answers = engine.answers(["first", "a", "b"])
    assert answers["first"]["type"] == "result"
    for name in ("a", "b"):
        assert (answers[name]["type"], answers[name]["code"]) == ("failed", "engine_error")
        assert "the backend exploded" in answers[name]["message"]
    assert engine.result("after", [{"custom_id": "n", "prompt": "x", "max_tokens": 1}])[0]["error"] is None


@pytest.mark.parametrize("value, needle", [("0", "merge_requests=0"), ("70000", "merge_requests=70000")])
def test_a_backend_with_a_bad_merge_requests_does_not_start(start_engine: StartEngine, value: str, needle: str) -> None:
    engine = start_engine(SCRIPT, args={"merge_requests": value})
    fatal = engine.wait_for("fatal", "ready")
    assert fatal["type"] == "fatal" and needle in fatal["message"], fatal


@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_backend_with_a_bad_max_batches_does_not_start(start_engine: StartEngine, value: str) -> None:
    engine = start_engine(SCRIPT, args={"max_batches": value})
    fatal = engine.wait_for("fatal", "ready")
    assert fatal["type"] == "fatal" and fatal["code"] == "startup_failed", fatal
    assert f"max_batches={value}" in fatal["message"]
    assert engine.wait_exit() == 1
