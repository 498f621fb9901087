"""The Files and Batch APIs through the official `openai` package, end to end on the shared cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import Shared, expected_text, wait_for
from openai import OpenAI
from openai.types import Batch


def client(shared: Shared) -> OpenAI:
    return OpenAI(base_url=shared.gateway.base_url, api_key="unused", max_retries=0, timeout=30)


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def run_batch(c: OpenAI, path: Path, endpoint: str, timeout: float = 60) -> Batch:
    uploaded = c.files.create(file=path.open("rb"), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == path.stat().st_size
    batch = c.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h",  # type: ignore[arg-type]
                             metadata={"run": "test"})
    assert batch.status in ("validating", "in_progress")
    return wait_for(lambda: (b := c.batches.retrieve(batch.id)).status in ("completed", "failed", "cancelled") and b,
                    timeout, f"batch {batch.id} to finish")


def read_lines(c: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in c.files.content(file_id).text.splitlines() if line]


def test_chat_batch_end_to_end(shared: Shared, tmp_path: Path) -> None:
    c = client(shared)
    prompts = {f"req-{i}": " ".join(f"word{i}_{k}" for k in range(i % 20 + 1)) for i in range(120)}
    lines = [{"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "default", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8}}
             for cid, prompt in prompts.items()]
    batch = run_batch(c, write_jsonl(tmp_path / "chat.jsonl", lines), "/v1/chat/completions")
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (120, 120, 0)
    assert batch.error_file_id is None
    assert batch.metadata == {"run": "test"}
    assert batch.completed_at is not None and batch.in_progress_at is not None
    output = read_lines(c, batch.output_file_id)
    ids = [line["custom_id"] for line in output]
    assert sorted(ids) == sorted(prompts), "every custom_id exactly once"
    for line in output:
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == expected_text(prompts[line["custom_id"]], 8)
    info = c.files.retrieve(batch.output_file_id)  # type: ignore[arg-type]
    assert info.purpose == "batch_output"
    assert batch.id in [b.id for b in c.batches.list()]


def test_completions_batch_with_failing_requests(shared: Shared, tmp_path: Path) -> None:
    c = client(shared)
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
              "body": {"model": "default", "prompt": f"count {i} up"}} for i in range(20)]
    lines.append({"custom_id": "engine-fails", "method": "POST", "url": "/v1/completions",
                  "body": {"model": "default", "prompt": "@@fail this one"}})
    lines.append({"custom_id": "bad-n", "method": "POST", "url": "/v1/completions",
                  "body": {"model": "default", "prompt": "x", "n": 4}})
    batch = run_batch(c, write_jsonl(tmp_path / "mixed.jsonl", lines), "/v1/completions")
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (22, 20, 2)
    output = read_lines(c, batch.output_file_id)
    errors = read_lines(c, batch.error_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(f"c{i}" for i in range(20))
    for line in output:
        i = int(line["custom_id"][1:])
        assert line["response"]["body"]["choices"][0]["text"] == expected_text(f"count {i} up")
    by_id = {line["custom_id"]: line for line in errors}
    assert set(by_id) == {"engine-fails", "bad-n"}
    for line in errors:
        assert line["response"]["status_code"] == 400
        assert line["response"]["body"]["error"]["message"]


def test_completions_batch_with_logprobs_and_token_ids(shared: Shared, tmp_path: Path) -> None:
    """The Batch API reads bodies as the online API does: echo, logprobs, token-id prompts, and
    the request rules' 400 with the field named."""
    c = client(shared)
    lines = [{"custom_id": "ids", "method": "POST", "url": "/v1/completions",
              "body": {"model": "default", "prompt": [[4, 55]], "max_tokens": 1, "echo": True, "logprobs": 1}},
             {"custom_id": "text", "method": "POST", "url": "/v1/completions",
              "body": {"model": "default", "prompt": "ab c", "max_tokens": 0, "echo": True, "logprobs": 0}},
             {"custom_id": "bad-top-p", "method": "POST", "url": "/v1/completions",
              "body": {"model": "default", "prompt": "x", "top_p": 7}}]
    batch = run_batch(c, write_jsonl(tmp_path / "logprobs.jsonl", lines), "/v1/completions")
    assert batch.status == "completed"
    output = {line["custom_id"]: line["response"]["body"]["choices"][0] for line in read_lines(c, batch.output_file_id)}
    assert output["ids"]["text"] == "t4t55t55"
    assert output["ids"]["logprobs"]["token_logprobs"] == [None, -3, -0.125]
    assert output["ids"]["logprobs"]["top_logprobs"] == [None, {"t55": -3}, {"t55": -0.125}]
    assert output["text"]["text"] == "ab c"
    assert output["text"]["logprobs"]["tokens"] == ["ab", "c"] and output["text"]["logprobs"]["token_logprobs"] == [None, -1]
    errors = read_lines(c, batch.error_file_id)
    assert [line["custom_id"] for line in errors] == ["bad-top-p"]
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["param"] == "top_p"


def test_batch_that_fails_validation(shared: Shared, tmp_path: Path) -> None:
    c = client(shared)
    lines = [{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "no-such-pool", "messages": [{"role": "user", "content": "x"}]}},
             {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "default", "messages": [{"role": "user", "content": "x"}]}},
             {"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": {"model": "default", "prompt": "x"}}]
    batch = run_batch(c, write_jsonl(tmp_path / "invalid.jsonl", lines), "/v1/chat/completions")
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    codes = {(e.code, e.line) for e in batch.errors.data}
    assert codes == {("duplicate_custom_id", 2), ("mismatched_url", 3), ("model_not_found", 1)}


def test_cancel_a_running_batch(shared: Shared, tmp_path: Path) -> None:
    c = client(shared)
    # The 'slow' pool takes 300 ms a batch; 8 requests a batch and 2 in flight: about 2 s in all.
    lines = [{"custom_id": f"s{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "slow", "messages": [{"role": "user", "content": f"slow {i}"}]}} for i in range(56)]
    uploaded = c.files.create(file=write_jsonl(tmp_path / "slow.jsonl", lines).open("rb"), purpose="batch")
    batch = c.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(lambda: c.batches.retrieve(batch.id).status == "in_progress", 10, "the batch to start")
    cancelling = c.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_for(lambda: (b := c.batches.retrieve(batch.id)).status == "cancelled" and b, 20, "the batch to be cancelled")
    output = read_lines(c, done.output_file_id)
    errors = read_lines(c, done.error_file_id)
    ids = [line["custom_id"] for line in output + errors]
    assert sorted(ids) == sorted(f"s{i}" for i in range(56)), "every custom_id exactly once"
    assert any(line["error"] and line["error"]["code"] == "batch_cancelled" for line in errors)
    assert done.request_counts is not None
    assert done.request_counts.completed == len(output)
    assert c.batches.cancel(batch.id).status == "cancelled"


def test_cancel_a_finished_batch_is_409(shared: Shared, tmp_path: Path) -> None:
    c = client(shared)
    lines = [{"custom_id": "only", "method": "POST", "url": "/v1/completions", "body": {"model": "default", "prompt": "p q"}}]
    batch = run_batch(c, write_jsonl(tmp_path / "one.jsonl", lines), "/v1/completions")
    assert batch.status == "completed"
    with pytest.raises(openai.ConflictError):
        c.batches.cancel(batch.id)


def test_files_api(shared: Shared, tmp_path: Path) -> None:
    c = client(shared)
    path = write_jsonl(tmp_path / "f.jsonl", [{"custom_id": "x", "body": {"model": "default", "prompt": "p"}}])
    uploaded = c.files.create(file=path.open("rb"), purpose="batch")
    assert uploaded.filename == "f.jsonl"
    assert c.files.retrieve(uploaded.id).bytes == path.stat().st_size
    assert c.files.content(uploaded.id).read() == path.read_bytes()
    assert uploaded.id in [f.id for f in c.files.list()]
    assert c.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        c.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        c.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
