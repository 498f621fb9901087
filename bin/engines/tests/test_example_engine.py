"""example_engine.py: the stdlib-only reference engine, driven through real pipes on fds 3 and 4."""

from __future__ import annotations

import time

from conftest import StartEngine


def test_ready_and_results_in_order(start_engine: StartEngine) -> None:
    engine = start_engine("example_engine.py", model="/models/none")
    ready = engine.ready()
    assert ready["model"] == "/models/none"
    requests = [
        {"custom_id": "a", "prompt": "hello world"},
        {"custom_id": "b", "messages": [{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": "say hi"}]},
        {"custom_id": "c", "prompt": "one two three", "max_tokens": 4},
    ]
    results = engine.result("b1", requests)
    assert [r["text"] for r in results] == ["HELLO WORLD", "BE BRIEF\nSAY HI", "ONE TWO THREE"]
    assert [r["prompt_tokens"] for r in results] == [2, 4, 3]
    assert [r["completion_tokens"] for r in results] == [2, 4, 3]
    assert {r["finish_reason"] for r in results} == {"stop"}
    assert all(r["error"] is None for r in results)
    progress = engine.progress("b1")
    assert progress[-1]["done"] == 3 and progress[-1]["total"] == 3 and progress[-1]["tokens"] == 9
    # A second batch on the same engine, then shutdown: exit 0.
    assert engine.result("b2", [{"custom_id": "x", "prompt": "again"}])[0]["text"] == "AGAIN"
    engine.send({"type": "shutdown"})
    assert engine.wait_exit() == 0


def test_end_of_file_on_fd3_exits(start_engine: StartEngine) -> None:
    engine = start_engine("example_engine.py")
    engine.ready()
    engine.close_requests()
    assert engine.wait_exit() == 0


def test_crash_mid_batch_exits_nonzero(start_engine: StartEngine) -> None:
    engine = start_engine("example_engine.py")
    engine.ready()
    engine.batch("c1", [{"custom_id": "ok", "prompt": "fine"}, {"custom_id": "boom", "prompt": "x @@crash"},
                        {"custom_id": "never", "prompt": "not reached"}])
    # The first request's progress arrives, then fd 4 closes without an answer.
    assert engine.wait_for("progress")["done"] == 1
    assert engine.next_event() is None
    assert engine.wait_exit() == 3
    assert not [e for e in engine.events if e["type"] in ("result", "failed")]


def test_hang_then_cancel(start_engine: StartEngine) -> None:
    engine = start_engine("example_engine.py")
    engine.ready()
    engine.batch("h1", [{"custom_id": "a", "prompt": "first"}, {"custom_id": "b", "prompt": "@@hang here"}])
    assert engine.wait_for("progress")["done"] == 1  # it is now stuck on the second request
    engine.cancel("h1")
    failed = engine.answer("h1")
    assert failed["type"] == "failed" and failed["code"] == "cancelled" and failed["retryable"] is False
    # Still usable afterwards.
    assert engine.result("h2", [{"custom_id": "z", "prompt": "ok"}])[0]["text"] == "OK"


def test_cancel_of_another_batch_does_not_stop_this_one(start_engine: StartEngine) -> None:
    engine = start_engine("example_engine.py")
    engine.ready()
    engine.cancel("other")
    assert engine.result("mine", [{"custom_id": "a", "prompt": "go"}])[0]["text"] == "GO"


def test_oom_is_fatal(start_engine: StartEngine) -> None:
    engine = start_engine("example_engine.py")
    engine.ready()
    engine.batch("o1", [{"custom_id": "a", "prompt": "@@oom please"}])
    fatal = engine.wait_for("fatal")
    assert fatal["code"] == "oom"
    assert engine.wait_exit() == 1


def test_startup_delay_and_never_ready(start_engine: StartEngine) -> None:
    slow = start_engine("example_engine.py", args={"startup_ms": "700"})
    never = start_engine("example_engine.py", args={"never_ready": "1"})
    began = time.monotonic()
    slow.ready()
    assert time.monotonic() - began >= 0.7
    # By the time the slow one is ready, the other has had as long: it runs and says nothing.
    assert never.alive() and never.events == []
    never.kill()
    assert never.next_event() is None  # fd 4 closed with nothing on it
    assert never.events == []


def test_unknown_engine_arg_is_fatal(start_engine: StartEngine) -> None:
    engine = start_engine("example_engine.py", args={"colour": "blue"})
    fatal = engine.wait_for("fatal", "ready")
    assert fatal["type"] == "fatal" and fatal["code"] == "startup_failed" and "colour" in fatal["message"]
    assert engine.wait_exit() == 1


def test_scoring_and_logprobs_fail_alone_as_unsupported(start_engine: StartEngine) -> None:
    engine = start_engine("example_engine.py")
    engine.ready()
    results = engine.result("s1", [
        {"custom_id": "score", "prompt": "Q: A:", "continuations": [" yes", " no"]},
        {"custom_id": "lp", "prompt": "hi", "logprobs": 2, "prompt_logprobs": 0},
        {"custom_id": "ids", "prompt_token_ids": [1, 2, 3]},
        {"custom_id": "plain", "prompt": "still fine", "logprobs": None},
    ])
    for result, asked in zip(results, ["continuations", "logprobs, prompt_logprobs", "prompt_token_ids"]):
        assert result["text"] is None and result["error"]["code"] == "unsupported"
        assert result["error"]["message"] == (f"request {result['custom_id']}: {asked}: not supported by this engine "
                                              "(it upper-cases text)")
    assert results[3]["text"] == "STILL FINE" and results[3]["error"] is None
