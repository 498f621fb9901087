"""hf_engine.py end to end: a real (tiny, random) Llama loaded by transformers on CPU."""

from __future__ import annotations

import sys
from typing import Any
from collections.abc import Iterator

import pytest

from conftest import ENGINES, Engine, StartEngine, engine_env

pytest.importorskip("torch")
pytest.importorskip("transformers")

PROMPTS: list[dict[str, Any]] = [
    {"custom_id": "p1", "prompt": "Hello world, how are you?"},
    {"custom_id": "p2", "prompt": "The quick brown fox"},
    {"custom_id": "c1", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "What is the capital of France?"}]},
    {"custom_id": "c2", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "},
                                                                  {"type": "text", "text": "there"}]}]},
    {"custom_id": "p3", "prompt": "Two plus two equals", "max_tokens": 12},
]


@pytest.fixture(scope="module")
def hf(tiny_model: str) -> Iterator[Engine]:
    """One engine for the module's tests: small micro-batches, so batches span several."""
    engine = Engine([sys.executable, str(ENGINES / "hf_engine.py")],
                    engine_env(tiny_model, 1, {"batch_size": "4", "max_tokens": "8"}))
    engine.ready(timeout=120)
    yield engine
    engine.kill()


@pytest.fixture(scope="module")
def tokenizer(tiny_model: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)


def texts(results: list[dict[str, Any]]) -> list[str]:
    return [r["text"] for r in results]


def assert_close(got: Any, expected: Any, path: str = "") -> None:
    """Equal JSON, floats within 1e-4 (two engines' arithmetic differs in the last bits)."""
    if isinstance(expected, float):
        assert isinstance(got, float) and abs(got - expected) <= 1e-4, (path, got, expected)
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), (path, got, expected)
        for key in expected:
            assert_close(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (path, got, expected)
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_close(g, e, f"{path}[{i}]")
    else:
        assert got == expected, (path, got, expected)


def test_ready_reports_the_model(hf: Engine, tiny_model: str) -> None:
    ready = next(e for e in hf.events if e["type"] == "ready")
    assert ready["model"] == tiny_model
    assert "transformers 5." in ready["detail"] and "cpu float32" in ready["detail"] and "tp=1" in ready["detail"]
    assert ready["start_method"] == "spawn"


def test_prompts_and_chat_messages(hf: Engine, tokenizer: Any) -> None:
    results = hf.result("hf-basic", PROMPTS, timeout=60)
    for request, result in zip(PROMPTS, results, strict=True):
        assert result["error"] is None, result
        assert isinstance(result["text"], str) and result["text"]
        limit = request.get("max_tokens", 8)
        assert 1 <= result["completion_tokens"] <= limit
        assert result["finish_reason"] == ("length" if result["completion_tokens"] == limit else "stop")
        # Exact prompt token counts: plain prompts get BOS; chat goes through the template.
        if "prompt" in request:
            expected = len(tokenizer(request["prompt"])["input_ids"])
        else:
            messages = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
                         else "".join(p["text"] for p in m["content"])} for m in request["messages"]]
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert "<|assistant|>" in rendered
            expected = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        assert result["prompt_tokens"] == expected, request["custom_id"]


def test_greedy_is_deterministic_and_independent_of_batching(hf: Engine, tiny_model: str,
                                                             start_engine: StartEngine) -> None:
    first = texts(hf.result("hf-det-1", PROMPTS, timeout=60))
    assert texts(hf.result("hf-det-2", PROMPTS, timeout=60)) == first
    # A second engine process that runs one request per generate call gives the same text:
    # left padding and per-row cutting do not leak between rows.
    other = start_engine("hf_engine.py", model=tiny_model, args={"batch_size": "1", "max_tokens": "8"})
    other.ready(timeout=120)
    assert texts(other.result("hf-det-3", PROMPTS, timeout=60)) == first


def test_max_tokens(hf: Engine) -> None:
    requests = [{"custom_id": f"m{n}", "prompt": "Once upon a time", "max_tokens": n, "ignore_eos": True}
                for n in (0, 1, 3, 7)]
    results = hf.result("hf-max", requests, timeout=60)
    assert [r["completion_tokens"] for r in results] == [0, 1, 3, 7]
    assert {r["finish_reason"] for r in results} == {"length"}
    assert results[0]["text"] == ""
    # Greedy decoding: a longer completion starts with the shorter one.
    assert results[3]["text"].startswith(results[2]["text"])


def test_stop_strings(hf: Engine) -> None:
    base = {"custom_id": "s", "prompt": "Write a short poem about the sea", "max_tokens": 16, "ignore_eos": True}
    full = hf.result("hf-stop-1", [base], timeout=60)[0]
    text = full["text"]
    assert len(text) >= 6, text
    stop = text[3:5]
    cut = text[:text.find(stop)]
    stopped = hf.result("hf-stop-2", [{**base, "stop": [stop, "never-in-this-text"]},
                                      {**base, "custom_id": "s2", "stop": stop}], timeout=60)
    for result in stopped:
        assert result["text"] == cut
        assert result["finish_reason"] == "stop"
        assert 1 <= result["completion_tokens"] < full["completion_tokens"]


def test_overlong_prompt_fails_alone(hf: Engine) -> None:
    requests = [{"custom_id": "ok1", "prompt": "short one"},
                {"custom_id": "long", "prompt": "sea " * 400},
                {"custom_id": "bad", "max_tokens": 3},  # neither prompt nor messages
                {"custom_id": "ok2", "messages": [{"role": "user", "content": "short two"}]}]
    results = hf.result("hf-long", requests, timeout=60)
    assert results[1]["error"]["code"] == "bad_request" and "too long" in results[1]["error"]["message"]
    assert results[1]["text"] is None and results[1]["finish_reason"] is None
    assert results[2]["error"]["code"] == "bad_request"
    for ok in (results[0], results[3]):
        assert ok["error"] is None and ok["text"]


def test_progress_across_micro_batches(hf: Engine) -> None:
    requests = [{"custom_id": f"r{i}", "prompt": f"request number {i}", "max_tokens": 6, "ignore_eos": True}
                for i in range(12)]
    hf.result("hf-progress", requests, timeout=60)
    progress = hf.progress("hf-progress")
    assert progress, "no progress messages"
    assert all(p["total"] == 12 and p["attempt"] == 1 for p in progress)
    done = [p["done"] for p in progress]
    tokens = [p["tokens"] for p in progress]
    assert done == sorted(done) and tokens == sorted(tokens)
    assert tokens[-1] > 0


def test_cancel_mid_batch(hf: Engine) -> None:
    # 60 requests in micro-batches of 4 with long completions: far from done when cancelled.
    requests = [{"custom_id": f"k{i}", "prompt": f"cancel me {i}", "max_tokens": 200, "ignore_eos": True}
                for i in range(60)]
    hf.batch("hf-cancel", requests)
    hf.wait_for("progress", timeout=60)
    hf.cancel("hf-cancel")
    failed = hf.answer("hf-cancel", timeout=60)
    assert failed["type"] == "failed" and failed["code"] == "cancelled" and failed["retryable"] is False
    assert max(p["done"] for p in hf.progress("hf-cancel")) < 60
    # The engine goes on serving.
    assert hf.result("hf-after-cancel", PROMPTS[:1], timeout=60)[0]["error"] is None


def test_sampling_with_a_seed_is_repeatable(hf: Engine) -> None:
    request = {"custom_id": "t", "prompt": "The sea", "max_tokens": 10, "temperature": 1.5, "top_p": 0.95,
               "seed": 7, "ignore_eos": True}
    one = hf.result("hf-seed-1", [request], timeout=60)[0]["text"]
    two = hf.result("hf-seed-2", [request], timeout=60)[0]["text"]
    assert one == two
    others = {hf.result(f"hf-seed-x{s}", [{**request, "seed": s}], timeout=60)[0]["text"] for s in range(8, 12)}
    assert len(others | {one}) > 1  # the seed does steer the sampling


def test_bad_batch_fails_as_a_whole(hf: Engine) -> None:
    hf.send({"type": "batch", "batch_id": "hf-bad", "attempt": 2, "deadline_ms": 0, "requests": {"not": "a list"}})
    failed = hf.answer("hf-bad")
    assert failed["type"] == "failed" and failed["code"] == "bad_request" and failed["attempt"] == 2


@pytest.mark.parametrize("args, needle", [
    ({"batch_sise": "4"}, "batch_sise"),
    ({"dtype": "float8"}, "dtype=float8"),
    ({"batch_size": "many"}, "batch_size=many"),
])
def test_bad_engine_args_are_fatal(start_engine: StartEngine, tiny_model: str, args: dict[str, str], needle: str) -> None:
    engine = start_engine("hf_engine.py", model=tiny_model, args=args)
    fatal = engine.wait_for("fatal", "ready", timeout=60)
    assert fatal["type"] == "fatal" and fatal["code"] == "startup_failed"
    assert needle in fatal["message"]
    if needle == "batch_sise":  # an unknown key: the message lists the accepted ones
        assert "batch_size" in fatal["message"] and "dtype" in fatal["message"]
    assert engine.wait_exit() == 1


def test_missing_model_is_fatal(start_engine: StartEngine, tmp_path: Any) -> None:
    engine = start_engine("hf_engine.py", model=str(tmp_path / "nowhere"))
    fatal = engine.wait_for("fatal", "ready", timeout=60)
    assert fatal["type"] == "fatal" and fatal["code"] == "startup_failed" and "not found" in fatal["message"]
    assert engine.wait_exit() == 1


@pytest.mark.timeout(240)
def test_tensor_parallel_two_ranks_on_gloo(hf: Engine, tiny_model: str, start_engine: StartEngine) -> None:
    """tp=2 on CPU: rank 0 spawns rank 1, both load a half of every projection over gloo, and the
    greedy (and seeded sampling) output equals the tp=1 engine's."""
    requests = PROMPTS + [{"custom_id": "s", "prompt": "The sea", "max_tokens": 6, "temperature": 0.9,
                           "seed": 3, "ignore_eos": True}]
    expected = texts(hf.result("hf-tp-ref", requests, timeout=60))
    engine = start_engine("hf_engine.py", model=tiny_model, tp=2, args={"batch_size": "4", "max_tokens": "8"})
    ready = engine.ready(timeout=180)
    assert ready["start_method"] == "spawn"
    assert "tp=2" in ready["detail"] and "gloo" in ready["detail"] and "rank 1 pid" in ready["detail"]
    assert "q_proj 32x64 of 64x64" in ready["detail"]  # each rank holds half of the heads
    log = engine.output
    assert "starting tensor-parallel ranks 1..1 with the spawn start method" in log
    assert "hf rank 0/2" in log and "hf rank 1/2" in log and ": loaded, q_proj 32x64" in log
    assert texts(engine.result("hf-tp", requests, timeout=120)) == expected
    # Scoring (with a shared-prefix pass) and logprob passes run in lockstep too, and agree with tp=1.
    scoring = [{"custom_id": "sc1", "prompt": "Two plus two equals ", "continuations": ["four", " 4 and more"]},
               {"custom_id": "sc2", "prompt": "The sea. " * 8 + "Q: a", "continuations": [" b"]},
               {"custom_id": "sc3", "prompt": "The sea. " * 8 + "Q: c", "continuations": [" d", [5, 6]]},
               {"custom_id": "lp", "prompt": "Once upon a time", "max_tokens": 3, "ignore_eos": True,
                "logprobs": 2, "prompt_logprobs": 1}]
    scored = engine.result("hf-tp-score", scoring, timeout=120)
    assert all(r["error"] is None for r in scored) and [len(r.get("scores", [])) for r in scored] == [2, 1, 2, 0]
    assert len(scored[3]["logprobs"]["token_ids"]) == 3
    assert_close(scored, hf.result("hf-tp-score-ref", scoring, timeout=60))
    # Cancel works in lockstep: both ranks stop at the same step and the engine stays usable.
    engine.batch("hf-tp-cancel", [{"custom_id": f"k{i}", "prompt": "x", "max_tokens": 200, "ignore_eos": True}
                                  for i in range(16)])
    engine.wait_for("progress", timeout=60)
    engine.cancel("hf-tp-cancel")
    assert engine.answer("hf-tp-cancel", timeout=60)["code"] == "cancelled"
    assert texts(engine.result("hf-tp-2", requests[:2], timeout=60)) == expected[:2]
    engine.send({"type": "shutdown"})
    assert engine.wait_exit(timeout=60) == 0
