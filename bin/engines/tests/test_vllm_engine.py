"""vllm_engine.py against the stand-in vLLM 0.24 in fake_vllm/ (no GPU here): the tests check what
the adapter asks of vLLM (engine arguments, sampling parameters, token-id prompts, chat rendering,
aborts) and how it maps vLLM's outputs back onto the protocol."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import TESTS, Engine, StartEngine

FAKE = TESTS / "fake_vllm"
sys.path.insert(0, str(FAKE))
from vllm import _fake as toy  # noqa: E402 - the fake's toy model, to compute expected logprobs


class Fake:
    """A model directory and the log of what the fake vLLM was asked to do."""

    def __init__(self, root: Path) -> None:
        self.model = root / "model"
        self.model.mkdir()
        self.log = root / "vllm-calls.jsonl"

    def calls(self, event: str) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [c for c in lines if c["event"] == event]

    def env(self, **extra: str) -> dict[str, str]:
        # The fake's engine core computes on its own, as vLLM's does: the adapter's default
        # (eager_add) path, as on a GPU.
        return {"PYTHONPATH": str(FAKE), "FAKE_VLLM_LOG": str(self.log), "FAKE_VLLM_OUTPUT_QUEUE": "1", **extra}


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    return Fake(tmp_path)


def start(start_engine: StartEngine, fake: Fake, tp: int = 1, args: dict[str, str] | None = None, **env: str) -> Engine:
    engine = start_engine("vllm_engine.py", model=str(fake.model), tp=tp, args=args, env=fake.env(**env))
    return engine


def test_engine_arguments_are_converted_and_passed(start_engine: StartEngine, fake: Fake) -> None:
    args = {"gpu_memory_utilization": "0.55", "max_model_len": "48", "enforce_eager": "true", "dtype": "bfloat16",
            "max_num_seqs": "4", "seed": "11", "max_tokens": "5"}
    engine = start(start_engine, fake, tp=2, args=args)
    ready = engine.ready()
    assert ready["start_method"] == "spawn"
    assert "vllm 0.24.0" in ready["detail"] and "tp=2" in ready["detail"] and "max_model_len 48" in ready["detail"]
    assert "add_request/step loop" in ready["detail"]
    (init,) = fake.calls("init")
    assert init["model"] == str(fake.model) and init["tensor_parallel_size"] == 2
    assert init["gpu_memory_utilization"] == 0.55 and init["enforce_eager"] is True and init["dtype"] == "bfloat16"
    assert init["seed"] == 11 and init["kwargs"] == {"max_model_len": 48, "max_num_seqs": 4}
    assert init["types"] == {"max_model_len": "int", "max_num_seqs": "int", "seed": "int",
                             "gpu_memory_utilization": "float", "enforce_eager": "bool"}
    assert init["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"


def test_defaults_pass_nothing_extra(start_engine: StartEngine, fake: Fake) -> None:
    engine = start(start_engine, fake)
    engine.ready()
    (init,) = fake.calls("init")
    # Only the model and tp: vLLM's own defaults apply to everything else.
    assert init["tensor_parallel_size"] == 1 and init["kwargs"] == {} and init["dtype"] == "auto"


def test_sampling_mapping_chat_and_results(start_engine: StartEngine, fake: Fake) -> None:
    engine = start(start_engine, fake, args={"max_tokens": "6"})
    engine.ready()
    requests = [
        {"custom_id": "greedy", "prompt": "one two three"},
        {"custom_id": "sampled", "prompt": "alpha beta gamma delta", "max_tokens": 3, "temperature": 0.7,
         "top_p": 0.9, "seed": 5, "stop": "never", "ignore_eos": True},
        {"custom_id": "chat", "messages": [{"role": "system", "content": "be brief"},
                                           {"role": "user", "content": [{"type": "text", "text": "hello there"}]}]},
        {"custom_id": "stopped", "prompt": "a b c d e f", "stop": ["d c"], "max_tokens": 10},
        {"custom_id": "long", "prompt": "x y z", "max_tokens": 5, "ignore_eos": True},
    ]
    results = {r["custom_id"]: r for r in engine.result("v1", requests)}

    added = {c["request_id"]: c for c in fake.calls("add_request")}
    assert len(added) == 5
    by_text = {c["prompt_text"]: c for c in added.values()}
    greedy = by_text["<s> one two three"]
    assert greedy["prompt_kind"] == "engine_input"  # token ids, as vllm.inputs.tokens_input builds them
    assert greedy["params"]["max_tokens"] == 6 and greedy["params"]["temperature"] == 0.0  # absent: greedy
    assert greedy["params"]["top_p"] == 1.0 and greedy["params"]["stop"] == [] and greedy["params"]["seed"] is None
    assert greedy["params"]["output_kind"] == "FINAL_ONLY" and greedy["params"]["ignore_eos"] is False
    sampled = by_text["<s> alpha beta gamma delta"]["params"]
    assert (sampled["max_tokens"], sampled["temperature"], sampled["top_p"], sampled["seed"], sampled["stop"],
            sampled["ignore_eos"]) == (3, 0.7, 0.9, 5, ["never"], True)
    # Chat goes through the tokenizer's chat template, without a second BOS.
    chat = by_text["<s> <|system|> be brief </s> <|user|> hello there </s> <|assistant|>"]
    assert chat["prompt_token_ids"].count(1) == 1

    assert results["greedy"] == {"custom_id": "greedy", "text": "three two one", "prompt_tokens": 4,
                                 "completion_tokens": 4, "finish_reason": "stop", "error": None}  # 3 words + EOS
    assert results["sampled"]["completion_tokens"] == 3 and results["sampled"]["finish_reason"] == "length"
    assert set(results["sampled"]["text"].split()) <= {"alpha", "beta", "gamma", "delta"}
    assert results["chat"]["text"] == "there hello brief be" and results["chat"]["prompt_tokens"] == len(chat["prompt_token_ids"])
    assert results["stopped"]["text"] == "f e " and results["stopped"]["finish_reason"] == "stop"
    assert results["long"] == {"custom_id": "long", "text": "z y x z y", "prompt_tokens": 4, "completion_tokens": 5,
                               "finish_reason": "length", "error": None}
    assert engine.events[-1]["stats"]["engine_ms"] > 0


def test_per_request_errors_leave_the_rest(start_engine: StartEngine, fake: Fake) -> None:
    engine = start(start_engine, fake, args={"max_model_len": "16"})
    engine.ready()
    requests = [
        {"custom_id": "ok", "prompt": "fine words"},
        {"custom_id": "too-long", "prompt": " ".join(["w"] * 15)},  # 16 tokens with BOS: no room left
        {"custom_id": "hot", "prompt": "too hot", "temperature": 3.5},  # vLLM accepts at most 2
        {"custom_id": "zero", "prompt": "nothing", "max_tokens": 0},
        {"custom_id": "fits", "prompt": " ".join(["w"] * 14), "max_tokens": 1},
    ]
    results = engine.result("v-err", requests)
    assert results[0]["text"] == "words fine" and results[0]["error"] is None
    assert results[1]["error"]["code"] == "bad_request" and "too long" in results[1]["error"]["message"]
    assert results[2]["error"]["code"] == "bad_request" and "temperature" in results[2]["error"]["message"]
    assert results[3] == {"custom_id": "zero", "text": "", "prompt_tokens": 2, "completion_tokens": 0,
                          "finish_reason": "length", "error": None}
    assert results[4]["completion_tokens"] == 1 and results[4]["error"] is None
    # The over-long prompt never reached vLLM.
    assert all(len(c["prompt_token_ids"]) < 16 for c in fake.calls("add_request"))


def test_progress_and_cancel_abort_what_runs(start_engine: StartEngine, fake: Fake) -> None:
    engine = start(start_engine, fake, args={"max_num_seqs": "4"}, FAKE_VLLM_STEP_DELAY="0.02")
    engine.ready()
    requests = [{"custom_id": f"r{i}", "prompt": f"word{i} more words", "max_tokens": 20, "ignore_eos": True}
                for i in range(12)]
    engine.batch("v-cancel", requests)
    # Four run at a time, 20 steps each: wait until some are done, then cancel.
    while engine.wait_for("progress")["done"] < 4:
        pass
    engine.cancel("v-cancel")
    failed = engine.answer("v-cancel")
    assert failed["type"] == "failed" and failed["code"] == "cancelled" and failed["retryable"] is False
    progress = engine.progress("v-cancel")
    assert progress[-1]["total"] == 12 and 4 <= progress[-1]["done"] < 12
    assert [p["tokens"] for p in progress] == sorted(p["tokens"] for p in progress) and progress[0]["tokens"] > 0
    (abort,) = fake.calls("abort_request")
    added = [c["request_id"] for c in fake.calls("add_request")]
    assert 0 < len(abort["request_ids"]) <= 8 and set(abort["request_ids"]) <= set(added)
    # Nothing of the cancelled batch is left in the engine: the next batch runs alone.
    results = engine.result("v-next", [{"custom_id": "n", "prompt": "next one"}])
    assert results[0]["text"] == "one next"


def test_fallback_to_llm_generate(start_engine: StartEngine, fake: Fake) -> None:
    engine = start(start_engine, fake, args={"batch_size": "2"}, FAKE_VLLM_NO_STEP="1", FAKE_VLLM_STEP_DELAY="0.1")
    assert "LLM.generate in chunks of 2" in engine.ready()["detail"]
    requests = [{"custom_id": f"g{i}", "prompt": f"b{i} a{i}"} for i in range(5)]
    results = engine.result("v-fallback", requests)
    assert [r["text"] for r in results] == [f"a{i} b{i}" for i in range(5)]
    assert [c["count"] for c in fake.calls("generate")] == [2, 2, 1]
    # Progress after each chunk (a chunk takes 3 steps of 0.1 s here, ample time to report it).
    assert max(p["done"] for p in engine.progress("v-fallback")) >= 2


def test_out_of_memory_at_load_is_fatal_oom(start_engine: StartEngine, fake: Fake) -> None:
    (fake.model / "FAKE_OOM").touch()
    engine = start(start_engine, fake)
    fatal = engine.wait_for("fatal", "ready")
    assert fatal["type"] == "fatal" and fatal["code"] == "oom" and "out of memory" in fatal["message"]
    assert engine.wait_exit() == 1


@pytest.mark.parametrize("args, needle", [
    ({"gpu_mem": "0.5"}, "'gpu_mem'"),
    ({"gpu_memory_utilization": "most"}, "gpu_memory_utilization=most"),
    ({"enforce_eager": "perhaps"}, "enforce_eager=perhaps"),
])
def test_bad_engine_args(start_engine: StartEngine, fake: Fake, args: dict[str, str], needle: str) -> None:
    engine = start(start_engine, fake, args=args)
    fatal = engine.wait_for("fatal", "ready")
    assert fatal["type"] == "fatal" and fatal["code"] == "startup_failed" and needle in fatal["message"]
    if needle == "'gpu_mem'":
        assert "gpu_memory_utilization" in fatal["message"] and "max_model_len" in fatal["message"]
    assert fake.calls("init") == []  # refused before vLLM was touched


# MARK: Several batches inside the engine at once (capacity, continuous batching)


def ids_of(fake: Fake, word: str) -> list[str]:
    """The request ids of the requests whose prompt has `word` (each batch's prompts carry their own)."""
    return [c["request_id"] for c in fake.calls("add_request") if word in c["prompt_text"].split()]


def engine_threads(fake: Fake) -> set[str]:
    """The threads that called into LLMEngine after load."""
    return {c["thread"] for c in fake.calls("add_request") + fake.calls("step") + fake.calls("abort_request")}


def test_two_batches_share_the_engine_and_are_answered_on_their_own(start_engine: StartEngine, fake: Fake,
                                                                    tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    engine = start(start_engine, fake, FAKE_VLLM_GATE=str(gate))
    ready = engine.ready()
    assert ready["capacity"] == 256 and "max_batches" not in ready  # the fake's max_num_seqs
    assert ready["capacity_tokens"] == 1024 * 4  # num_gpu_blocks x block_size
    assert "capacity 256 sequences and 4096 KV-cache tokens" in ready["detail"]
    # a: one quick request, and three held inside the engine (`gated`) until the gate opens.
    a = [{"custom_id": "a-quick", "prompt": "first"}] + [{"custom_id": f"a{i}", "prompt": f"gated first{i} one"}
                                                         for i in range(3)]
    engine.batch("a", a)
    while not any(p["done"] for p in engine.progress("a")):  # a is inside
        engine.wait_for("progress")
    # b, sent now, runs beside a and is answered while a's requests are still inside.
    b = [{"custom_id": f"b{i}", "prompt": f"second{i} two", "max_tokens": 6, "ignore_eos": True} for i in range(4)]
    engine.batch("b", b)
    answer_b = engine.answer("b")
    assert answer_b["type"] == "result"
    assert [r["text"] for r in answer_b["results"]] == [f"two second{i} two second{i} two second{i}" for i in range(4)]
    assert answer_b["stats"]["completion_tokens"] == 24
    gate.touch()
    answer_a = engine.answer("a")
    assert answer_a["type"] == "result"
    assert [r["text"] for r in answer_a["results"]] == ["first"] + [f"one first{i} gated" for i in range(3)]
    assert [r["finish_reason"] for r in answer_a["results"]] == ["stop"] * 4
    assert answer_a["stats"]["completion_tokens"] == 2 + 3 * 4  # words + EOS

    # What vLLM saw: b's requests were added after a's and before any of a's held ones finished,
    # and steps ran both batches' requests together.
    a_ids, b_ids, held = ids_of(fake, "first") + ids_of(fake, "gated"), ids_of(fake, "two"), ids_of(fake, "gated")
    log = [json.loads(line) for line in fake.log.read_text().splitlines()]
    at = {c["request_id"]: i for i, c in enumerate(log) if c["event"] == "add_request"}
    held_finish = min(i for i, c in enumerate(log) if c["event"] == "step" and set(c["finished"]) & set(held))
    assert max(at[r] for r in a_ids) < min(at[r] for r in b_ids) <= max(at[r] for r in b_ids) < held_finish
    together = [c for c in log if c["event"] == "step" and set(c["scheduled"]) >= set(held) | set(b_ids)]
    assert together and all(set(c["outputs"]) <= set(b_ids) for c in together)  # a held, b generating
    # One thread did all of it: the engine is not thread-safe (the fake would have said "concurrent").
    assert engine_threads(fake) == {"compass-vllm-stepper"} and fake.calls("concurrent") == []
    assert fake.calls("abort_request") == []
    for name, total in (("a", 4), ("b", 4)):
        progress = engine.progress(name)
        assert all(p["total"] == total for p in progress)
        assert [p["tokens"] for p in progress] == sorted(p["tokens"] for p in progress)


def test_cancel_of_one_batch_aborts_only_its_requests_and_progress_is_per_batch(
        start_engine: StartEngine, fake: Fake, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    engine = start(start_engine, fake, FAKE_VLLM_GATE=str(gate))
    engine.ready()
    # Each batch: one quick request (its progress says the batch is inside) and held ones.
    a = [{"custom_id": "a-quick", "prompt": "alpha"}] + [{"custom_id": f"a{i}", "prompt": f"gated alpha-held {i}"}
                                                         for i in range(3)]
    b = [{"custom_id": "b-quick", "prompt": "beta"}] + [{"custom_id": f"b{i}", "prompt": f"gated beta-held {i}"}
                                                        for i in range(2)]
    engine.batch("a", a)
    engine.batch("b", b)
    while not all(any(p["done"] for p in engine.progress(name)) for name in ("a", "b")):
        engine.wait_for("progress")
    # Each batch's progress counts its own requests and tokens only: the quick one ("alpha" + EOS).
    assert {(p["done"], p["total"], p["tokens"]) for p in engine.progress("a") if p["done"]} == {(1, 4, 2)}
    assert {(p["done"], p["total"], p["tokens"]) for p in engine.progress("b") if p["done"]} == {(1, 3, 2)}
    engine.cancel("a")
    failed = engine.answer("a")
    assert (failed["type"], failed["code"]) == ("failed", "cancelled")
    (abort,) = fake.calls("abort_request")
    assert sorted(abort["request_ids"]) == sorted(ids_of(fake, "alpha-held"))  # a's held ones, nothing of b's
    gate.touch()
    results = engine.answer("b")["results"]
    assert [r["text"] for r in results] == ["beta", "0 beta-held gated", "1 beta-held gated"]
    assert max(p["done"] for p in engine.progress("a")) == 1  # nothing of b's counted for a
    # The freed slot takes the next batch.
    assert [r["text"] for r in engine.result("c", [{"custom_id": "c", "prompt": "next one"}])] == ["one next"]
    assert len(fake.calls("abort_request")) == 1 and fake.calls("concurrent") == []


def test_capacity_is_max_num_seqs_and_many_one_request_batches_run_together(start_engine: StartEngine, fake: Fake,
                                                                           tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    trace = tmp_path / "steps.txt"
    engine = start(start_engine, fake, args={"max_num_seqs": "64", "step_trace": str(trace)}, FAKE_VLLM_GATE=str(gate),
                   FAKE_VLLM_GPU_BLOCKS="50")
    ready = engine.ready()
    assert (ready["capacity"], ready["capacity_tokens"]) == (64, 200)
    # 40 one-request batches, all held inside the engine until the gate opens: the host takes
    # them all at once (the worker, not the engine, bounds how many it sends).
    for i in range(40):
        engine.batch(f"one{i}", [{"custom_id": f"r{i}", "prompt": f"gated solo{i}"}])
    deadline = time.monotonic() + 30
    while len(fake.calls("add_request")) < 40:  # the fake's log, polled: nothing else tells
        assert time.monotonic() < deadline and engine.alive(), "the 40 batches never all reached vLLM"
        time.sleep(0.02)
    gate.touch()
    answers = engine.answers([f"one{i}" for i in range(40)])
    for i in range(40):
        answer = answers[f"one{i}"]
        assert answer["type"] == "result" and [r["text"] for r in answer["results"]] == [f"solo{i} gated"]
        stats = answer["stats"]["engine"]
        assert stats["capacity"] == 64 and stats["steps"] > 0 and 0 < stats["sequence_steps"] <= 64 * stats["steps"]
        assert 0 < stats["occupancy"] <= 1
    together = [c for c in fake.calls("step") if len(c["scheduled"]) == 40]
    assert together, "the 40 batches' requests never ran in one step"
    assert engine_threads(fake) == {"compass-vllm-stepper"} and fake.calls("concurrent") == []
    # No thread per batch: the host hands each batch over from its main thread and the finisher
    # answers it (main, reader, progress ticker, stepper, finisher, and the writer's few).
    assert max(c["threads"] for c in fake.calls("step")) <= 8
    # step_trace: a line per step the engine took ("start end inside"), the 40 inside at once.
    lines = [line.split() for line in trace.read_text().splitlines()]
    assert len(lines) >= len(fake.calls("step")) > 0 and all(len(line) == 3 for line in lines)  # gated steps unrecorded
    assert all(float(a) <= float(b) for a, b, _ in lines) and max(int(n) for _, _, n in lines) == 40


def test_generation_outputs_are_final_only_unless_stream_progress(start_engine: StartEngine, fake: Fake) -> None:
    request = [{"custom_id": "g", "prompt": "one two three", "max_tokens": 6, "ignore_eos": True}]
    engine = start(start_engine, fake)
    engine.ready()
    assert engine.result("a", request)[0]["completion_tokens"] == 6
    streamed = start(start_engine, fake, args={"stream_progress": "true"})
    streamed.ready()
    assert streamed.result("b", request)[0]["completion_tokens"] == 6
    kinds = [c["params"]["output_kind"] for c in fake.calls("add_request")]
    assert kinds == ["FINAL_ONLY", "DELTA"]  # FINAL_ONLY as LLM.generate asks, then DELTA


def test_max_batches_one_adds_a_batch_after_the_last(start_engine: StartEngine, fake: Fake) -> None:
    engine = start(start_engine, fake, args={"max_batches": "1"})
    ready = engine.ready()
    assert "max_batches" not in ready and "1 batches at once" in ready["detail"]
    first = [{"custom_id": f"f{i}", "prompt": f"first{i}", "max_tokens": 8, "ignore_eos": True} for i in range(3)]
    second = [{"custom_id": f"s{i}", "prompt": f"second{i}"} for i in range(2)]
    engine.batch("first", first)
    engine.batch("second", second)
    assert engine.answer("first")["type"] == "result"
    assert [r["text"] for r in engine.answer("second")["results"]] == ["second0", "second1"]
    log = [json.loads(line) for line in fake.log.read_text().splitlines()]
    first_ids = set(ids_of(fake, "first0") + ids_of(fake, "first1") + ids_of(fake, "first2"))
    last_first_finish = max(i for i, c in enumerate(log) if c["event"] == "step" and set(c["finished"]) & first_ids)
    second_added = [i for i, c in enumerate(log) if c["event"] == "add_request" and c["request_id"] not in first_ids]
    assert min(second_added) > last_first_finish


def test_a_step_error_fails_the_batches_inside_and_the_engine_goes_on(start_engine: StartEngine, fake: Fake,
                                                                      tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    engine = start(start_engine, fake, FAKE_VLLM_GATE=str(gate))
    engine.ready()
    engine.batch("held", [{"custom_id": "h", "prompt": "gated words"}, {"custom_id": "q", "prompt": "quick"}])
    while not any(p["done"] for p in engine.progress("held")):
        engine.wait_for("progress")
    engine.batch("bad", [{"custom_id": "x", "prompt": "boom @raise"}])
    answers = {e["batch_id"]: e for e in (engine.wait_for("failed"), engine.wait_for("failed"))}
    for answer in answers.values():
        assert answer["code"] == "engine_error" and "illegal memory access" in answer["message"], answer
    # What was left of each batch is aborted, batch by batch (vLLM ignores ids it no longer has).
    aborts = sorted(sorted(c["request_ids"]) for c in fake.calls("abort_request"))
    assert aborts == sorted([ids_of(fake, "gated"), ids_of(fake, "@raise")])
    assert [r["text"] for r in engine.result("after", [{"custom_id": "n", "prompt": "still fine"}])] == ["fine still"]


def test_engine_death_with_two_batches_inside_is_one_fatal(start_engine: StartEngine, fake: Fake) -> None:
    engine = start(start_engine, fake)
    engine.ready()
    engine.batch("held", [{"custom_id": "h", "prompt": "gated words"}, {"custom_id": "q", "prompt": "quick"}])
    while not any(p["done"] for p in engine.progress("held")):
        engine.wait_for("progress")
    engine.batch("dies", [{"custom_id": "x", "prompt": "@dead"}])
    fatal = engine.wait_for("fatal", "result", "failed")
    assert fatal["type"] == "fatal" and fatal["code"] == "engine_dead" and "EngineCore" in fatal["message"]
    while engine.next_event() is not None:  # until fd 4 closes: nothing after the one fatal
        pass
    assert engine.wait_exit() == 1
    assert [e["type"] for e in engine.events if e["type"] != "progress"] == ["ready", "fatal"]


@pytest.mark.parametrize("value, needle", [("0", "max_batches=0: expected an integer >= 1"),
                                           ("9", "max_batches=9: expected 1 to 8"),
                                           ("two", "max_batches=two: expected an integer")])
def test_max_batches_bounds(start_engine: StartEngine, fake: Fake, value: str, needle: str) -> None:
    engine = start(start_engine, fake, args={"max_batches": value})
    fatal = engine.wait_for("fatal", "ready")
    assert fatal["type"] == "fatal" and fatal["code"] == "startup_failed" and needle in fatal["message"], fatal
    assert fake.calls("init") == []


def test_max_batches_eight_and_the_fallback_runs_one(start_engine: StartEngine, fake: Fake) -> None:
    assert start(start_engine, fake, args={"max_batches": "8"}).ready()["max_batches"] == 8
    fallback = start(start_engine, fake, args={"max_batches": "4"}, FAKE_VLLM_NO_STEP="1").ready()
    assert "max_batches" not in fallback and "LLM.generate" in fallback["detail"]


# MARK: Logprobs and scoring (docs/protocol.md, Payloads)


def best(values: list[float], k: int) -> list[int]:
    """The toy model's k most likely token ids, most likely first."""
    return sorted(range(len(values)), key=lambda t: (-values[t], t))[:k]


def expected_score(ids: list[int], start: int) -> tuple[float, bool]:
    """The toy model's log-likelihood of ids[start:] after ids[:start], and whether it is greedy."""
    total, greedy = 0.0, True
    for i in range(start, len(ids)):
        values = toy.logprobs_at(ids[:i], toy.favoured_after(ids[:i]))
        total += values[ids[i]]
        greedy = greedy and best(values, 1) == [ids[i]]
    return total, greedy


def check_scores(scores: list[dict[str, Any]], prompts: list[list[int]], start: int) -> None:
    assert len(scores) == len(prompts)
    for score, ids in zip(scores, prompts, strict=True):
        logprob, greedy = expected_score(ids, start)
        assert score["tokens"] == len(ids) - start and score["greedy"] is greedy
        assert math.isclose(score["logprob"], logprob, rel_tol=1e-9), (score, logprob)


def scoring_calls(fake: Fake) -> list[dict[str, Any]]:
    return [c for c in fake.calls("add_request") if c["params"]["prompt_logprobs"] == 1 and c["params"]["max_tokens"] == 1]


def test_scoring_sums_the_continuation_positions_in_one_engine_batch(start_engine: StartEngine, fake: Fake) -> None:
    engine = start(start_engine, fake)
    assert "scoring computes prompts in full" in engine.ready()["detail"]
    requests = [
        # Trailing whitespace moves to the continuations; " gamma gamma" is what greedy decoding says.
        {"custom_id": "s", "prompt": "alpha beta gamma ", "continuations": ["gamma gamma", "delta", "gamma delta"]},
        {"custom_id": "g", "prompt": "one two", "max_tokens": 2},  # generation in the same batch
    ]
    results = engine.result("sc", requests)
    calls = scoring_calls(fake)
    assert [c["prompt_text"] for c in calls] == ["alpha beta gamma gamma gamma", "alpha beta gamma delta",
                                                 "alpha beta gamma gamma delta"]
    for call in calls:
        params = call["params"]
        assert (params["temperature"], params["detokenize"], params["flat_logprobs"], params["output_kind"],
                params["skip_reading_prefix_cache"]) == (0.0, False, True, "FINAL_ONLY", True)
    # Every continuation was handed to vLLM before the step that ran them: one engine batch.
    first_step = fake.calls("step")[0]
    assert {c["request_id"] for c in calls} <= set(first_step["scheduled"])
    score = results[0]
    scores = score.pop("scores")
    check_scores(scores, [c["prompt_token_ids"] for c in calls], start=3)
    assert [s["greedy"] for s in scores] == [True, False, False] and [s["tokens"] for s in scores] == [2, 1, 2]
    assert score == {"custom_id": "s", "text": "", "prompt_tokens": 3, "completion_tokens": 0,
                     "finish_reason": "score", "error": None}
    assert results[1] == {"custom_id": "g", "text": "two one", "prompt_tokens": 3, "completion_tokens": 2,
                          "finish_reason": "length", "error": None}


def test_scoring_greedy_flags_token_id_and_empty_contexts(start_engine: StartEngine, fake: Fake) -> None:
    engine = start(start_engine, fake)
    engine.ready()
    requests = [
        {"custom_id": "ids", "prompt_token_ids": [20, 21, 22], "continuations": [[22], [23, 22], "word"]},
        {"custom_id": "empty", "prompt": "", "continuations": ["start here"]},
    ]
    ids_result, empty = engine.result("sc-ids", requests)
    prompts = {tuple(c["prompt_token_ids"]) for c in scoring_calls(fake)}
    word = next(p for p in prompts if p[:3] == (20, 21, 22) and len(p) == 4 and p[3] not in (22, 23))
    assert {(20, 21, 22, 22), (20, 21, 22, 23, 22)} <= prompts
    check_scores(ids_result["scores"], [[20, 21, 22, 22], [20, 21, 22, 23, 22], list(word)], start=3)
    assert [s["greedy"] for s in ids_result["scores"]] == [True, False, False]
    assert ids_result["prompt_tokens"] == 3
    # An empty context is scored after BOS.
    (after_bos,) = [p for p in prompts if p[0] == toy.BOS]
    assert len(after_bos) == 3 and empty["prompt_tokens"] == 1
    check_scores(empty["scores"], [list(after_bos)], start=1)


def test_generation_logprobs_and_prompt_logprobs(start_engine: StartEngine, fake: Fake) -> None:
    engine = start(start_engine, fake)
    engine.ready()
    requests = [
        {"custom_id": "lp", "prompt": "red green blue", "max_tokens": 3, "logprobs": 2, "prompt_logprobs": 1},
        {"custom_id": "ids", "prompt_token_ids": [1, 40, 41], "max_tokens": 1},
    ]
    lp, ids = engine.result("lp", requests)
    by_text = {c["prompt_text"]: c for c in fake.calls("add_request")}
    call = by_text["<s> red green blue"]
    assert (call["params"]["logprobs"], call["params"]["prompt_logprobs"], call["params"]["max_tokens"]) == (2, 1, 3)
    assert by_text["<s> <40> <41>"]["prompt_token_ids"] == [1, 40, 41]  # token ids as given: no BOS added
    assert "logprobs" not in ids and "prompt_logprobs" not in ids and ids["prompt_tokens"] == 3
    prompt = call["prompt_token_ids"]
    generated = lp["logprobs"]["token_ids"]
    assert lp["text"] == "blue green red" and lp["completion_tokens"] == 3 and len(generated) == 3

    def decode(t: int) -> str:
        return {1: "<s>", 2: "</s>", prompt[1]: "red", prompt[2]: "green", prompt[3]: "blue"}.get(t, f"<{t}>")

    # The prompt: no logprob for the first token; each later one given the tokens before it, top 1.
    expected_prompt: dict[str, Any] = {"token_ids": prompt, "tokens": ["<s>", "red", "green", "blue"],
                                       "token_logprobs": [None], "top_logprobs": [None]}
    for i in range(1, len(prompt)):
        values = toy.logprobs_at(prompt[:i], toy.favoured_after(prompt[:i]))
        expected_prompt["token_logprobs"].append(values[prompt[i]])
        expected_prompt["top_logprobs"].append([{"token_id": t, "token": decode(t), "logprob": values[t]}
                                                for t in best(values, 1)])
    assert lp["prompt_logprobs"] == expected_prompt
    # The generated tokens: greedy, so each is its position's most likely; top 2, most likely first.
    assert generated == [prompt[3], prompt[2], prompt[1]] and lp["logprobs"]["tokens"] == ["blue", "green", "red"]
    for j, token in enumerate(generated):
        values = toy.logprobs_at(prompt + generated[:j], token)
        assert lp["logprobs"]["token_logprobs"][j] == values[token]
        assert lp["logprobs"]["top_logprobs"][j] == [{"token_id": t, "token": decode(t), "logprob": values[t]}
                                                     for t in best(values, 2)]
        assert lp["logprobs"]["top_logprobs"][j][0]["token_id"] == token


def test_perplexity_with_max_tokens_zero(start_engine: StartEngine, fake: Fake) -> None:
    engine = start(start_engine, fake)
    engine.ready()
    requests = [{"custom_id": "ppl", "prompt": "one two three", "max_tokens": 0, "prompt_logprobs": 0},
                {"custom_id": "nothing", "prompt": "x", "max_tokens": 0, "logprobs": 3}]
    ppl, nothing = engine.result("ppl", requests)
    (call,) = fake.calls("add_request")  # `nothing` generates nothing and never reaches vLLM
    assert (call["params"]["max_tokens"], call["params"]["prompt_logprobs"]) == (1, 0)  # vLLM wants max_tokens >= 1
    logprobs = ppl.pop("prompt_logprobs")
    assert ppl == {"custom_id": "ppl", "text": "", "prompt_tokens": 4, "completion_tokens": 0,
                   "finish_reason": "length", "error": None}
    assert logprobs["top_logprobs"] == [None, [], [], []] and logprobs["token_logprobs"][0] is None
    assert all(isinstance(v, float) and v < 0 for v in logprobs["token_logprobs"][1:])
    assert nothing["logprobs"] == {"token_ids": [], "tokens": [], "token_logprobs": [], "top_logprobs": []}
    assert nothing["completion_tokens"] == 0 and nothing["finish_reason"] == "length"


@pytest.mark.parametrize("stepwise, runner", [(True, "v2"), (True, "v1"), (False, "v2")])
def test_score_prefix_cache_reuses_the_context_and_reruns_what_it_spoilt(start_engine: StartEngine, fake: Fake,
                                                                        stepwise: bool, runner: str) -> None:
    # The V2 runner leaves the cached rows out of prompt_logprobs; the V1 runner leaves them unwritten.
    env = {"FAKE_VLLM_RUNNER": runner} | ({} if stepwise else {"FAKE_VLLM_NO_STEP": "1"})
    engine = start(start_engine, fake, args={"score_prefix_cache": "true"}, **env)
    assert "scoring reads the prefix cache" in engine.ready()["detail"]
    six, eight = "w1 w2 w3 w4 w5 w6", "c1 c2 c3 c4 c5 c6 c7 c8"
    # The first batch computes the contexts (blocks of 4 tokens go into the cache) ...
    warm = engine.result("warm", [{"custom_id": "a", "prompt": six, "continuations": [" w6"]},
                                  {"custom_id": "b", "prompt": eight, "continuations": [" c8"]}])
    assert [r["error"] for r in warm] == [None, None]
    # ... the second reads them. A 6-token context: the cache holds 4 of them, so the rows the
    # continuation needs are computed. An 8-token one: the cache holds all 8, the row of the
    # context's last token was not computed, and the adapter runs that continuation again in full.
    results = engine.result("read", [{"custom_id": "a2", "prompt": six, "continuations": [" w6 w6", " x"]},
                                     {"custom_id": "b2", "prompt": eight, "continuations": [" zz"]}])
    assert [r["error"] for r in results] == [None, None]
    calls = scoring_calls(fake)
    reads = [c for c in calls if c["params"]["skip_reading_prefix_cache"] is False]
    rerun = [c for c in calls if c["params"]["skip_reading_prefix_cache"] is True]
    assert len(reads) == 5 and [c["prompt_text"] for c in rerun] == [eight + " zz"]
    cached = {}
    for step in fake.calls("step"):
        cached.update(step["cached"])
    by_text = {c["prompt_text"]: c for c in reads}
    assert cached.get(by_text[six + " w6 w6"]["request_id"], 0) == 4 or not stepwise
    check_scores(results[0]["scores"], [by_text[six + " w6 w6"]["prompt_token_ids"],
                                        by_text[six + " x"]["prompt_token_ids"]], start=6)
    check_scores(results[1]["scores"], [rerun[0]["prompt_token_ids"]], start=8)  # not the cache's garbage rows
    assert all(abs(s["logprob"]) < 50 for r in results for s in r["scores"])


def test_scoring_errors_and_cancel(start_engine: StartEngine, fake: Fake) -> None:
    engine = start(start_engine, fake, args={"max_model_len": "16"})
    engine.ready()
    results = engine.result("bad", [{"custom_id": "long", "prompt": " ".join(["w"] * 14), "continuations": [" a b"]},
                                    {"custom_id": "ok", "prompt": "w", "continuations": [" a"]}])
    assert results[0]["error"]["code"] == "bad_request" and "too long" in results[0]["error"]["message"]
    assert results[1]["error"] is None and len(results[1]["scores"]) == 1
    # Cancel aborts every continuation of the batch still inside.
    engine.batch("held", [{"custom_id": "q", "prompt": "quick"},
                          {"custom_id": "s", "prompt": "gated context", "continuations": [" one", " two"]}])
    while not any(p["done"] for p in engine.progress("held")):
        engine.wait_for("progress")
    engine.cancel("held")
    assert engine.answer("held")["code"] == "cancelled"
    (abort,) = fake.calls("abort_request")
    assert sorted(abort["request_ids"]) == sorted(ids_of(fake, "gated"))
    assert len(abort["request_ids"]) == 2


class MergingTokenizer:
    """Characters as tokens, except that a space merges with the character after it (" b" is one
    token, as byte-level BPE tokenizers make it): the case the whitespace rule is for."""

    def __init__(self, bos: int | None = 1, eos: int | None = 2) -> None:
        self.bos_token_id, self.eos_token_id = bos, eos

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        out = [1] if add_special_tokens else []
        i = 0
        while i < len(text):
            if text[i] == " " and i + 1 < len(text) and text[i + 1] != " ":
                out.append(1000 + ord(text[i + 1]))
                i += 2
            else:
                out.append(ord(text[i]))
                i += 1
        return out


def test_continuations_are_tokenized_by_the_protocol_rule() -> None:
    sys.path.insert(0, str(TESTS.parent))
    from types import SimpleNamespace

    import vllm_engine

    def split(tok: Any, **request: Any) -> tuple[list[int], list[list[int]]]:
        fields = {"prompt": None, "prompt_token_ids": None}
        return vllm_engine.score_tokens(tok, SimpleNamespace(**(fields | request)))

    tok = MergingTokenizer()
    # The context's trailing space joins the continuation's first token, as in encode("ab c").
    assert split(tok, prompt="ab ", continuations=["c", "cd", [7, 8]]) == ([97, 98], [[1099], [1099, 100], [7, 8]])
    assert split(tok, prompt="ab", continuations=[" c"]) == ([97, 98], [[1099]])
    # Nothing but whitespace is an empty context: BOS, else EOS, then the continuation on its own.
    assert split(tok, prompt="", continuations=["hi"]) == ([1], [[104, 105]])
    assert split(tok, prompt="  ", continuations=["x"]) == ([1], [[32, 1120]])
    assert split(MergingTokenizer(bos=None), prompt="", continuations=["x"]) == ([2], [[120]])
    with pytest.raises(ValueError, match="BOS or EOS"):
        split(MergingTokenizer(bos=None, eos=None), prompt="", continuations=["x"])
    # A token-id context: token-id continuations as they are, text ones encoded on their own.
    assert split(tok, prompt_token_ids=[5, 6], continuations=[[7], " c"]) == ([5, 6], [[7], [1099]])


def test_a_batch_of_scoring_requests_is_encoded_in_one_call_with_the_same_tokens() -> None:
    """prefetch_encoder: every text the batch's scoring requests need goes to the tokenizer's batch
    call once; the tokens are those of encoding each on its own, whatever the request's shape."""
    sys.path.insert(0, str(TESTS.parent))
    from compass_request import parse_request, prefetch_encoder

    import vllm_engine

    tok = MergingTokenizer()
    plain = vllm_engine.plain_encoder(tok)
    requests = [parse_request(i, r) for i, r in enumerate((
        {"custom_id": "a", "prompt": "ab ", "continuations": ["c", "cd", [7, 8]]},
        {"custom_id": "b", "prompt": "ab", "continuations": [" c"]},
        {"custom_id": "c", "prompt": "  ", "continuations": ["x"]},
        {"custom_id": "d", "prompt_token_ids": [5, 6], "continuations": [[7], " c"]},
        {"custom_id": "e", "prompt": "no scoring here", "max_tokens": 1},
    ))]
    calls: list[list[str]] = []
    singles: list[str] = []

    def many(texts: list[str]) -> list[list[int]]:
        calls.append(texts)
        return [plain(t) for t in texts]

    def one(text: str) -> list[int]:
        singles.append(text)
        return plain(text)

    encode = prefetch_encoder(requests, one, many)
    for request in requests[:4]:
        assert vllm_engine.score_tokens(tok, request, encode) == vllm_engine.score_tokens(tok, request)
    assert len(calls) == 1 and singles == []
    assert sorted(calls[0]) == sorted({"ab", "ab c", "ab cd", " c", "  x", "ab c"})

    # A batch call that fails (or answers the wrong number of texts) leaves each text to `encode`.
    singles.clear()
    encode = prefetch_encoder(requests, one, lambda texts: [])
    assert vllm_engine.score_tokens(tok, requests[0], encode) == vllm_engine.score_tokens(tok, requests[0])
    assert singles == ["ab", "ab c", "ab cd"]
    # A tokenizer without a fast batch call is not asked for one.
    assert vllm_engine.many_encoder(tok) is None


def test_a_finished_batch_is_freed_by_reference_counting(tmp_path: Path) -> None:
    # A batch's objects must not form reference cycles: cyclic garbage waits for a full collection,
    # which holds the GIL while it frees them (130-170 ms per 2,048 one-request batches, stalling
    # the stepper). With the cycle collector off, a finished batch is gone once nothing uses it.
    import gc
    import threading
    import weakref

    sys.path.insert(0, str(TESTS.parent))
    import vllm_engine
    from compass_engine import EngineArgs, EngineSettings, Progress
    from compass_request import parse_request

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    backend = vllm_engine.VLLMBackend()
    backend.load(EngineSettings(str(model), 1, [0], EngineArgs({}, "vllm", vllm_engine.ARGUMENTS)))
    runs: list[weakref.ref[Any]] = []
    prepare = backend.prepare_batch

    def traced(*args: Any) -> Any:
        run = prepare(*args)
        runs.append(weakref.ref(run))
        return run

    backend.prepare_batch = traced  # type: ignore[method-assign]

    def one(i: int) -> list[Any]:
        answered = threading.Event()
        out: list[Any] = []
        request = parse_request(0, {"custom_id": f"r{i}", "prompt": f"solo{i}", "max_tokens": 3})
        progress = Progress(lambda message: None, f"b{i}", 1, 1)
        backend.start([request], progress, threading.Event(), lambda results, error: (out.append((results, error)),
                                                                                       answered.set()))
        assert answered.wait(10), "the batch was never answered"
        progress.close()
        return out

    gc.disable()
    try:
        first, second = one(1), one(2)  # the second moves the stepper's and finisher's locals on
        assert first[0][1] is None and second[0][1] is None
        assert runs[0]() is None, "the first batch's BatchRun is still alive: a reference cycle holds it"
    finally:
        gc.enable()
        backend.close()


@pytest.mark.parametrize("eager", [True, False])
def test_eager_add_hands_requests_over_while_the_core_computes(start_engine: StartEngine, fake: Fake, tmp_path: Path,
                                                               eager: bool) -> None:
    """With eager_add (the default) a request that arrives while the engine core computes a step goes in at once
    (the stepper watches vLLM's output queue instead of blocking in step()); without it, after that
    step's outputs. The fake's core holds its first step's outputs until the gate file exists."""
    gate = tmp_path / "step-gate"
    engine = start(start_engine, fake, args=None if eager else {"eager_add": "false"},  # on by default
                   FAKE_VLLM_STEP_GATE=str(gate))
    engine.ready()
    engine.batch("first", [{"custom_id": "a", "prompt": "first one"}])
    deadline = time.monotonic() + 30
    while not ids_of(fake, "first"):  # the fake's log, polled: nothing else tells
        assert time.monotonic() < deadline and engine.alive(), "the first request never reached vLLM"
        time.sleep(0.02)
    engine.batch("second", [{"custom_id": "b", "prompt": "second one"}])
    if eager:
        while not ids_of(fake, "second"):
            assert time.monotonic() < deadline and engine.alive(), "the second request waited for the step"
            time.sleep(0.02)
        assert fake.calls("step") == []  # in while the first step computed
    gate.touch()
    answers = engine.answers(["first", "second"])
    assert [r["text"] for r in answers["first"]["results"]] == ["one first"]
    assert [r["text"] for r in answers["second"]["results"]] == ["one second"]
    log = [c for c in (json.loads(line) for line in fake.log.read_text().splitlines()) if c["event"] in ("add_request", "step")]
    second = next(i for i, c in enumerate(log) if c["event"] == "add_request" and "second" in c["prompt_text"].split())
    steps_before = sum(c["event"] == "step" for c in log[:second])
    assert steps_before == 0 if eager else steps_before >= 1, [c["event"] for c in log]  # not added mid-step
    assert fake.calls("concurrent") == []


def test_an_engine_core_that_is_gone_is_fatal_while_the_stepper_waits_for_its_outputs(
        start_engine: StartEngine, fake: Fake) -> None:
    """A core process killed outright (SIGKILL, the OOM killer) puts nothing in vLLM's output queue;
    only the client's `engine_dead` flag says so. The stepper, waiting for outputs, must see it
    and end the engine (the worker restarts it), not wait until the progress watchdog."""
    engine = start(start_engine, fake)
    engine.ready()
    engine.batch("dies", [{"custom_id": "x", "prompt": "@gone words"}])
    fatal = engine.wait_for("fatal", "result", "failed")
    assert fatal["type"] == "fatal" and fatal["code"] == "engine_dead" and "engine core process is gone" in fatal["message"]
    assert engine.wait_exit() == 1
