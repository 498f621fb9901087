#!/usr/bin/env python3
"""A complete compass engine in standard-library Python: it answers every request with its prompt
upper-cased. Copy it to write your own `--engine exec` engine; docs/engines.md is the protocol.

Scoring requests (`continuations`), `logprobs`, `prompt_logprobs` and `prompt_token_ids` (see
docs/protocol.md, Payloads) fail alone with code `unsupported`: an engine answers what it cannot do
per request, and the rest of the batch runs.

Test markers in a prompt: `@@crash` exits at once (status 3), `@@hang` stops making progress
until cancelled, `@@oom` reports `fatal oom` and exits. Engine args: startup_ms=N delays `ready`,
never_ready=1 never sends it, stuck_after_eof=1 keeps the process alive after the worker is gone
(as an engine stuck in a CUDA call would be: the tests of the next worker's orphan reaping).
"""
import json
import os
import queue
import sys
import threading
import time

# The protocol's message types (docs/engines.md): the worker's, then the engine's.
BATCH, CANCEL, SHUTDOWN = "batch", "cancel", "shutdown"
READY, PROGRESS, RESULT, FAILED, FATAL = "ready", "progress", "result", "failed", "fatal"

ARGS = json.loads(os.environ.get("COMPASS_ENGINE_ARGS") or "{}")
events = os.fdopen(int(os.environ.get("COMPASS_ENGINE_OUT", "4")), "w", encoding="utf-8")
requests = os.fdopen(int(os.environ.get("COMPASS_ENGINE_IN", "3")), "r", encoding="utf-8")
lock = threading.Lock()  # the reader thread and the main thread both write events
batches: "queue.Queue[dict | None]" = queue.Queue()
cancels = threading.Condition()  # guards `cancelled`: the (batch_id, attempt) pairs cancelled
cancelled: "set[tuple[str, int]]" = set()


def send(**message):
    with lock:
        events.write(json.dumps(message) + "\n")
        events.flush()


def read_requests():
    """Reads fd 3 on its own thread, so that a cancel reaches a batch that is running."""
    for line in requests:
        message = json.loads(line)
        if message["type"] == BATCH:
            batches.put(message)
        elif message["type"] == CANCEL:
            with cancels:
                cancelled.add((message["batch_id"], message["attempt"]))
                cancels.notify_all()
        elif message["type"] == SHUTDOWN:
            break
    batches.put(None)  # shutdown, or end of file: the worker is gone


UNSUPPORTED = ("continuations", "logprobs", "prompt_logprobs", "prompt_token_ids")


def answer(request, key):
    asked = [name for name in UNSUPPORTED if request.get(name) is not None]
    if asked:
        return {"custom_id": request["custom_id"], "text": None, "prompt_tokens": 0, "completion_tokens": 0,
                "finish_reason": None, "error": {"code": "unsupported", "message":
                f"request {request['custom_id']}: {', '.join(asked)}: not supported by this engine (it upper-cases text)"}}
    text = request.get("prompt")
    if text is None:
        text = "\n".join(m["content"] for m in request.get("messages") or [])
    if "@@crash" in text:
        os._exit(3)
    if "@@oom" in text:
        send(type=FATAL, code="oom", message="example engine: out of memory (@@oom)")
        sys.exit(1)
    if "@@hang" in text:
        with cancels:
            cancels.wait_for(lambda: key in cancelled)
    return {"custom_id": request["custom_id"], "text": text.upper(), "prompt_tokens": len(text.split()),
            "completion_tokens": len(text.split()), "finish_reason": "stop", "error": None}


def main():
    unknown = set(ARGS) - {"startup_ms", "never_ready", "stuck_after_eof"}
    if unknown:
        send(type=FATAL, code="startup_failed", message=f"unknown engine args: {sorted(unknown)}")
        sys.exit(1)
    time.sleep(int(ARGS.get("startup_ms", "0")) / 1000)
    while ARGS.get("never_ready") == "1":
        time.sleep(3600)
    threading.Thread(target=read_requests, daemon=True).start()
    send(type=READY, model=os.environ.get("COMPASS_MODEL", ""), detail="example engine: upper-cases prompts",
         start_method="none")
    while (batch := batches.get()) is not None:
        started, ids = time.monotonic(), {"batch_id": batch["batch_id"], "attempt": batch["attempt"]}
        key = (batch["batch_id"], batch["attempt"])
        results, tokens = [], 0
        for request in batch["requests"]:
            results.append(answer(request, key))
            if key in cancelled:
                break
            tokens += results[-1]["completion_tokens"]
            send(type=PROGRESS, **ids, done=len(results), total=len(batch["requests"]), tokens=tokens)
        if key in cancelled:
            send(type=FAILED, **ids, code="cancelled", retryable=False, message="cancelled")
        else:
            send(type=RESULT, **ids, results=results, stats={"engine_ms": (time.monotonic() - started) * 1000})
    while ARGS.get("stuck_after_eof") == "1":
        time.sleep(3600)


if __name__ == "__main__":
    main()
