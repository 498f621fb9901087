#!/usr/bin/env python3
"""The `vllm` engine: vLLM's offline engine with `tensor_parallel_size = COMPASS_TP` (docs/engines.md).

Written against vLLM 0.24 (vllm/entrypoints/llm.py, vllm/entrypoints/offline_utils.py,
vllm/v1/engine/llm_engine.py, vllm/v1/engine/input_processor.py, vllm/v1/engine/output_processor.py,
vllm/v1/engine/logprobs.py, vllm/v1/engine/core_client.py, vllm/inputs/engine.py,
vllm/sampling_params.py, vllm/logprobs.py, vllm/outputs.py of the 0.24.0 wheel).

How it drives vLLM, and why: `LLM.generate` runs a whole list to the end with no way to report
progress or to stop, so this adapter does what `LLM.generate` does inside (offline_utils.py:
`_add_request` then `_run_engine`) itself, on `LLM(...).llm_engine`: `add_request` for every
prompt, then `step()` while any is unfinished. Each step reports generated tokens and finished
requests, and cancel calls `abort_request` on what is still running, so nothing is left behind.
Prompts are tokenized here (chat messages through the
tokenizer's chat template, as `LLM.chat` does; `prompt_token_ids` as given) and passed as token ids
(`vllm.inputs.tokens_input`), so the length check against max_model_len is exact and a prompt that
is too long fails alone before it reaches the engine.

Logprobs (docs/protocol.md, Payloads): `logprobs` and `prompt_logprobs` map onto SamplingParams'
fields of the same names. vLLM gives, per position, a dict token id -> Logprob(logprob, rank,
decoded_token) holding the position's own token (with its rank in the vocabulary) and the top k;
the adapter turns that into the protocol's logprobs object, top k most likely first, each token
decoded on its own with the engine's tokenizer. `max_tokens: 0` with `prompt_logprobs` (perplexity)
runs with max_tokens 1, as vLLM needs, and drops the generated token.

Scoring requests (`continuations`): each continuation becomes one prompt, the context's tokens
followed by the continuation's (tokenized by the protocol's rule, the same as
lm-evaluation-harness), run with max_tokens 1 and prompt_logprobs 1; its score is the sum of the
prompt logprobs at the continuation's positions, and it is greedy when the continuation's token is
the most likely one (rank 1: the top-1 entry) at each of them. Every continuation of the batch is
handed to vLLM at once, so the engine batches them. detokenize=False keeps vLLM from decoding every
prompt position's tokens (nobody reads them), and flat_logprobs (where this vLLM has it) keeps the
prompt logprobs in a few flat lists instead of a dict per position.

Prefix caching and scoring: vLLM never reads the prefix cache for a request with prompt_logprobs
(SamplingParams derives skip_reading_prefix_cache=True from it; vllm-project/vllm#17251, #28194):
the rows of cached positions would have no logits. So by default every context+continuation prompt
is computed in full (it still writes the cache). With the engine argument `score_prefix_cache=true`
the adapter sets skip_reading_prefix_cache=False: vLLM then reuses the cached blocks of the shared
context (a five-shot preamble, say) and computes only the rest. The prompt logprob rows of the
cached positions are then not computed: the V2 model runner (0.24's default for Llama) leaves them
out, so the list is shorter than the prompt and is read aligned at its end; the V1 runner returns
them uninitialised (vllm-project/vllm#42019). A continuation needs the rows from the context's last
token on, so the adapter checks `num_cached_tokens` of each output: when the cache reached past the
context's last token (or the output does not say), that continuation is run again without reading
the cache. See bench/gpu/SCORING.md.

Continuous batching across batches: the adapter says its `capacity`, vLLM's `max_num_seqs` (the
sequences one step runs; 1,024 by default for LLM on a GPU of 70 GiB or more, 256 on smaller
ones), and `capacity_tokens`, its KV cache (num_gpu_blocks x block_size, which the engine core
reports back at startup). The worker then hands over batches, however many, while the requests
inside stay below capacity plus a queue as large (docs/engines.md, Admission), so a stream of
one-request batches keeps the engine as full as one large batch would, and the next batch's
requests join the running ones instead of waiting for the slowest request of the current one.
`engine_stats()` counts the steps and, per step, the requests inside the engine (at most
capacity), which the worker reports as occupancy. The engine arg `max_batches` (1..8) selects the
older admission by whole batches instead. Outputs are FINAL_ONLY, as `LLM.generate` asks for them
(no RequestOutput per running request per step): generated tokens are reported when a request
finishes; `stream_progress=true` asks for DELTA outputs and reports them every step. One thread, the
stepper (`Stepper`), owns `llm_engine`: it alone calls `add_request`, `step`, `abort_request` and
`has_unfinished_requests` (the engine is not thread-safe, and a single owner needs no lock around
a step that blocks on the GPU). Each batch's `generate` (on the host's thread for that batch)
tokenizes its requests, hands their prompts (`Part`s) to the stepper and waits for its own to
finish. The stepper adds handed-over prompts while the engine core computes a step (it watches
vLLM's output queue rather than block in `step()`: `eager_add`, on by default; through the gateway
on an H200 a request's mean time from its arrival in this process to vLLM went from 22 to 11 ms),
routes each step's outputs to the
batch and request that own their request id (ids are unique, `compass-N`; vLLM's RequestOutput
carries the id passed to `add_request`), reports progress on that batch's Progress, aborts the
running prompts of a batch whose cancel event is set (that batch's only), and wakes a batch when
its last prompt finished. The batch's thread then builds the results (decoding tokens there, never
on the stepper, so that the tokenizer is used by one thread at a time).

If an older or newer vLLM lacks that engine API, the adapter falls back to `LLM.generate` on
micro-batches of `batch_size` prompts, with progress and cancel checks between them, one batch
at a time (max_batches 1).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compass_engine import (  # noqa: E402
    Cancelled,
    EngineConfigError,
    EngineSettings,
    FatalEngineError,
    Progress,
    Request,
    Result,
    log,
    many_encoder,
    prefetch_encoder,
    run,
    scoring_tokens,
    trace_event,
)

ARGUMENTS = {
    "gpu_memory_utilization": "fraction of each GPU's memory vLLM may use (float)",
    "max_model_len": "context length, prompt plus completion (int)",
    "enforce_eager": "true disables CUDA graphs (bool)",
    "dtype": "auto, bfloat16, float16 or float32",
    "max_num_seqs": "most sequences in one engine step (int)",
    "seed": "the engine's random seed (int)",
    "max_tokens": "completion limit of requests without max_tokens, default 16",
    "batch_size": "prompts per LLM.generate call when the step API is missing, default 256",
    "max_batches": "admit whole batches, 1 to 8 at once, instead of requests up to max_num_seqs (1 without "
                   "the step API)",
    "stream_progress": "report generated tokens every step (DELTA outputs) instead of when each request "
                       "finishes (bool, default false)",
    "score_prefix_cache": "scoring reads vLLM's prefix cache for the shared context (bool, default false; "
                          "see bench/gpu/SCORING.md)",
    "step_trace": "a file to append one line per engine step to: start and end (unix seconds) and the requests "
                  "inside (a diagnostic for bench/gpu/stream.sh; default none)",
    "eager_add": "hand requests that arrive while the engine core computes a step to it at once, instead of after "
                 "that step's outputs (watches vLLM's output queue where its client has one; bool, default true)",
}
MAX_BATCHES_LIMIT = 8

Decode = Callable[[int], str]


# MARK: What a request asks for, in the request model of docs/protocol.md


def plain_encoder(tok: Any) -> Callable[[str], list[int]]:
    return lambda text: list(tok.encode(text, add_special_tokens=False))


def score_tokens(tok: Any, request: Request, encode: Callable[[str], list[int]] | None = None,
                 ) -> tuple[list[int], list[list[int]]]:
    """The context's token ids and each continuation's (compass_request.scoring_tokens) with vLLM's
    tokenizer (`encode`: the batch's prefetched one, compass_request.prefetch_encoder)."""

    def start() -> list[int]:
        token = getattr(tok, "bos_token_id", None)
        if token is None:
            token = getattr(tok, "eos_token_id", None)
        if token is None:
            raise ValueError("scoring after an empty context needs the model's BOS or EOS token; its tokenizer has neither")
        return [int(token)]

    return scoring_tokens(request, encode or plain_encoder(tok), start)


# MARK: vLLM's logprobs, read


def position(logprobs: Any, index: int, length: int) -> dict[int, Any] | None:
    """Position `index` (of a prompt of `length` tokens) of vLLM's prompt logprobs: a list (or
    FlatLogprobs) of dicts token id -> Logprob, None first. A list shorter than the prompt (vLLM
    leaves out rows it did not compute) is aligned at its end."""
    if logprobs is None:
        return None
    at = index - (length - len(logprobs))
    if at < 0 or at >= len(logprobs):
        return None
    return logprobs[at]


def top_entries(entries: dict[int, Any], k: int) -> list[tuple[int, Any]]:
    """The k most likely entries of a position, most likely first. vLLM's dict holds the position's
    own token (with its rank in the vocabulary) and the top k (ranks 1..k)."""
    def key(item: tuple[int, Any]) -> tuple[bool, int, float]:
        rank = getattr(item[1], "rank", None)
        return (rank is None, rank or 0, -item[1].logprob)
    return sorted(entries.items(), key=key)[:k]


def is_top(entries: dict[int, Any], token: int) -> bool:
    """Whether `token` is the most likely at this position (greedy decoding would choose it)."""
    best = top_entries(entries, 1)
    return bool(best) and best[0][0] == token


def logprobs_object(token_ids: Sequence[int], positions: Sequence[dict[int, Any] | None], k: int,
                    decode: Decode, first_is_none: bool) -> dict[str, Any]:
    """The protocol's logprobs object (docs/protocol.md, Payloads) for these tokens."""
    values: list[float | None] = []
    tops: list[list[dict[str, Any]] | None] = []
    for i, (token, entries) in enumerate(zip(token_ids, positions, strict=True)):
        if (i == 0 and first_is_none) or entries is None:
            values.append(None)
            tops.append(None)
            continue
        own = entries.get(token)
        values.append(None if own is None else float(own.logprob))
        tops.append([{"token_id": int(t), "token": decode(int(t)), "logprob": float(lp.logprob)}
                     for t, lp in top_entries(entries, k)])
    return {"token_ids": [int(t) for t in token_ids], "tokens": [decode(int(t)) for t in token_ids],
            "token_logprobs": values, "top_logprobs": tops}


# MARK: Prompts in the engine, and what becomes of their outputs


@dataclass(eq=False)
class Part:
    """One prompt handed to vLLM: a generation request, or one continuation of a scoring request."""

    pos: int  # the request's place in the batch
    ids: list[int]
    params: Any
    index: int = 0  # which continuation
    start: int = 0  # where the continuation begins in `ids`
    fallback: Any = None  # params to run it again with when the prefix cache reached into the continuation


class Generation:
    """A generation request's outputs, gathered as they come (one DELTA output per step, or one final
    output from LLM.generate)."""

    def __init__(self, request: Request, prompt_ids: list[int], drop_completion: bool) -> None:
        self.request, self.prompt_ids, self.drop_completion = request, prompt_ids, drop_completion
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.sample_logprobs: list[Any] = []
        self.prompt_logprobs: Any = None
        self.finish_reason = "stop"
        self.parts_left = 1

    def take(self, part: Part, output: Any) -> int:
        completion = output.outputs[0]
        self.text.append(completion.text or "")
        self.token_ids.extend(completion.token_ids)
        if completion.logprobs:
            self.sample_logprobs.extend(completion.logprobs)
        if self.prompt_logprobs is None and output.prompt_logprobs:
            self.prompt_logprobs = output.prompt_logprobs  # the first output has them all
        return len(completion.token_ids)

    def close(self, part: Part, output: Any) -> Part | None:
        reason = output.outputs[0].finish_reason
        self.finish_reason = reason if reason in ("stop", "length") else "stop"
        self.parts_left = 0
        return None

    def result(self, decode: Decode) -> Result:
        request, ids = self.request, self.prompt_ids
        prompt_k = request.prompt_logprobs
        sample_k = request.logprobs
        prompt_object = None
        if prompt_k is not None:
            positions = [position(self.prompt_logprobs, i, len(ids)) for i in range(len(ids))]
            prompt_object = logprobs_object(ids, positions, prompt_k, decode, first_is_none=True)
        if self.drop_completion:  # max_tokens 0: run for the prompt's logprobs only
            empty = logprobs_object([], [], 0, decode, False) if sample_k is not None else None
            return Result(request.custom_id, "", len(ids), 0, "length",
                          logprobs=empty, prompt_logprobs=prompt_object)
        sample_object = None
        if sample_k is not None:
            entries = list(self.sample_logprobs)[: len(self.token_ids)]
            entries += [None] * (len(self.token_ids) - len(entries))
            sample_object = logprobs_object(self.token_ids, entries, sample_k, decode, first_is_none=False)
        return Result(request.custom_id, "".join(self.text), len(ids), len(self.token_ids), self.finish_reason,
                      logprobs=sample_object, prompt_logprobs=prompt_object)


class Scoring:
    """A scoring request: one Part per continuation, each answered by its prompt logprobs."""

    def __init__(self, request: Request, context: list[int], continuations: list[list[int]]) -> None:
        self.request, self.context, self.continuations = request, context, continuations
        self.outputs: list[Any] = [None] * len(continuations)
        self.parts_left = len(continuations)
        self.retried = 0  # continuations run again because the prefix cache reached into them

    def parts(self, pos: int, params: Any, fallback: Any) -> list[Part]:
        return [Part(pos, self.context + c, params, i, len(self.context), fallback)
                for i, c in enumerate(self.continuations)]

    def take(self, part: Part, output: Any) -> int:
        return 0  # nothing is generated that anyone reads

    def close(self, part: Part, output: Any) -> Part | None:
        if part.fallback is not None:
            # The prompt logprob rows from the context's last token on must have been computed:
            # rows of positions read from the prefix cache are left unwritten.
            cached = getattr(output, "num_cached_tokens", None)
            if cached is None or cached > part.start - 1:
                self.retried += 1
                return Part(part.pos, part.ids, part.fallback, part.index, part.start)
        self.outputs[part.index] = output.prompt_logprobs
        self.parts_left -= 1
        return None

    def result(self, decode: Decode) -> Result:
        scores = []
        for cont, logprobs in zip(self.continuations, self.outputs, strict=True):
            ids = self.context + cont
            total, greedy = 0.0, True
            for i in range(len(self.context), len(ids)):
                entries = position(logprobs, i, len(ids))
                own = None if entries is None else entries.get(ids[i])
                if own is None:
                    return Result.failure(self.request.custom_id,
                                          f"request {self.request.custom_id}: vLLM returned no prompt logprob for "
                                          f"position {i} of a continuation", code="engine_error")
                total += float(own.logprob)
                greedy = greedy and is_top(entries, ids[i])
            scores.append({"logprob": total, "tokens": len(cont), "greedy": greedy})
        return Result(self.request.custom_id, "", len(self.context), 0, "score", scores=scores)


Answer = Generation | Scoring


@dataclass(eq=False)  # compared by identity: the stepper's lists hold each batch once
class BatchRun:
    """One batch's prompts on their way through the stepper.

    The batch's thread fills `parts`, `answers` and `results` (requests answered before the engine)
    and then only waits for `finished`; from then on the stepper alone writes here, and
    `finished.set()` hands everything back (an Event orders the writes before the batch thread's
    reads)."""

    parts: list[Part]
    answers: dict[int, Answer]  # position in the batch -> what its outputs become
    results: list[Result | None]
    progress: Progress
    cancelled: threading.Event
    running: dict[str, Part] = field(default_factory=dict)  # request id -> part, while in the engine
    failed: dict[int, str] = field(default_factory=dict)  # position -> why vLLM refused one of its parts
    finished: threading.Event = field(default_factory=threading.Event)
    aborted: bool = False  # stopped by its cancel event
    error: BaseException | None = None  # the engine failed under it
    on_finish: Callable[[], None] | None = None  # called by the stepper after `finished` is set (start())

    def refused(self, part: Part, message: str) -> None:
        """vLLM refused a part (its own validation): the request fails alone; its other parts run out."""
        self.failed.setdefault(part.pos, message)
        answer = self.answers[part.pos]
        answer.parts_left -= 1
        if answer.parts_left == 0:
            self.progress.add(done=1)


# How often the stepper looks at the cancel events of the batches inside: looking at a thousand
# one-request batches before every step of a few milliseconds took more of the GIL than it saves.
CANCEL_SCAN_SECONDS = 0.02
# eager_add: how long the stepper waits for new requests before it looks at vLLM's output queue again.
EAGER_POLL_SECONDS = 0.0005


class Stepper:
    """The thread that owns `llm_engine` (see the module's docstring)."""

    def __init__(self, engine: Any, engine_input: Any, capacity: int, trace: Any = None,
                 eager_add: bool | None = None) -> None:
        self.engine = engine
        # eager_add: whether the engine core's next outputs are in (vLLM's SyncMPClient queue), so
        # that requests arriving meanwhile go in before step() takes them; None: add between steps.
        core = getattr(engine, "engine_core", None)
        outputs = getattr(core, "outputs_queue", None)
        self.outputs_ready: Callable[[], bool] | None = None
        # The client's own flag for a core process that is gone (SIGKILL, OOM kill, segfault):
        # its output thread then ends without putting anything in the queue.
        self.core_dead: Callable[[], bool] = lambda: bool(getattr(getattr(core, "resources", None), "engine_dead", False))
        if eager_add is not False and callable(getattr(outputs, "empty", None)):
            self.outputs_ready = lambda: not outputs.empty()
        elif eager_add:
            log("eager_add: this vLLM's engine client has no output queue to watch; requests go in between steps")
        self.trace = trace  # a text file for one "start end inside" line per step, or None
        self.engine_input = engine_input
        self.cond = threading.Condition()  # guards `incoming` and `closing`; wakes the stepper
        self.incoming: list[BatchRun] = []
        self.closing = False
        # The stepper thread's own: the batches it holds and which batch each request id is of.
        self.active: dict[BatchRun, None] = {}  # an ordered set
        self.owners: dict[str, BatchRun] = {}
        self.counter = 0
        # Step counters for engine_stats(): written by the stepper, read by batch threads (ints:
        # a read sees one value or the next, never a torn one).
        self.capacity = capacity
        self.steps = 0
        self.sequence_steps = 0
        self.next_cancel_scan = 0.0
        self.thread = threading.Thread(target=self.loop, name="compass-vllm-stepper", daemon=True)
        self.thread.start()

    # Called from batch threads.

    def submit(self, batch: BatchRun) -> None:
        with self.cond:
            if self.closing:
                raise RuntimeError("the vLLM engine is closing")
            self.incoming.append(batch)
            self.cond.notify()

    def wait(self, batch: BatchRun) -> None:
        """Until the batch's prompts are all finished (or aborted, or failed)."""
        while not batch.finished.wait(1.0):
            if not self.thread.is_alive():  # it never ends while batches are in it but by a bug
                raise RuntimeError("the vLLM stepper thread ended")
        if batch.error is not None:
            raise batch.error
        if batch.aborted:
            raise Cancelled()

    def close(self, timeout: float = 10.0) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join(timeout)  # a step under way ends first

    # The stepper thread.

    def loop(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.incoming and not self.owners and not self.closing:
                        self.cond.wait()
                    if self.closing:
                        break
                    new, self.incoming = self.incoming, []
                self.add_all(new)
                try:
                    now = time.monotonic()
                    if now >= self.next_cancel_scan:  # cancel events are polled: each batch's, every few steps
                        self.next_cancel_scan = now + CANCEL_SCAN_SECONDS
                        self.abort_cancelled()
                    if self.owners:
                        if not self.engine.has_unfinished_requests():
                            raise RuntimeError(f"vLLM has no unfinished requests but {len(self.owners)} never finished")
                        began = time.time() if self.trace is not None else 0.0
                        inside = len(self.owners)  # those in the step whose outputs come next
                        if self.outputs_ready is not None:
                            self.add_until_outputs()
                            if self.closing:
                                continue
                        outputs = self.engine.step()
                        if self.trace is not None:
                            self.write_trace(began, inside)
                        self.route(outputs)
                        self.steps += 1
                        self.sequence_steps += min(inside, self.capacity)
                except Exception as error:  # noqa: BLE001 - the batches inside fail; the next ones may work
                    for batch in list(self.active):
                        self.fail(batch, error)
        except BaseException as error:  # no batch may wait for a stepper that is gone
            for batch in list(self.active):
                self.fail(batch, error)
            raise
        finally:
            with self.cond:
                self.closing = True
                left, self.incoming = self.incoming, []
            for batch in left + list(self.active):
                self.fail(batch, RuntimeError("the vLLM engine is closing"))

    def add_until_outputs(self) -> None:
        """eager_add: adds what arrives until the engine core's next outputs are in (or closing)."""
        assert self.outputs_ready is not None
        while not self.outputs_ready():
            if self.core_dead():  # no outputs will come: the worker restarts the engine
                raise FatalEngineError("vLLM engine died: its engine core process is gone")
            with self.cond:
                if not self.incoming and not self.closing:
                    self.cond.wait(EAGER_POLL_SECONDS)
                if self.closing:
                    return
                new, self.incoming = self.incoming, []
            self.add_all(new)

    def add_all(self, new: list[BatchRun]) -> None:
        """The batches handed over since the stepper last looked: held, and their prompts added."""
        self.active.update(dict.fromkeys(new))
        for batch in new:
            self.add(batch)

    def write_trace(self, began: float, inside: int) -> None:
        """One step's line; a trace that cannot be written (disk full) is dropped, not the batches."""
        try:
            self.trace.write(f"{began:.6f} {time.time():.6f} {inside}\n")
        except (OSError, ValueError) as error:
            log(f"step_trace: writing failed ({error}); no more step lines")
            self.trace = None

    def add(self, batch: BatchRun) -> None:
        if batch.cancelled.is_set():
            batch.aborted = True
            self.finish(batch)
            return
        try:
            for part in batch.parts:
                self.add_part(batch, part)
        except Exception as error:  # noqa: BLE001 - this batch fails; the others go on
            self.fail(batch, error)
            return
        if not batch.running:
            self.finish(batch)

    def add_part(self, batch: BatchRun, part: Part) -> None:
        self.counter += 1
        request_id = f"compass-{self.counter}"
        try:
            self.engine.add_request(request_id, self.engine_input(part.ids), part.params)
        except ValueError as error:  # vLLM's own validation of this one prompt
            batch.refused(part, str(error))
            return
        batch.running[request_id] = part
        self.owners[request_id] = batch
        trace_event("added")

    def abort_cancelled(self) -> None:
        for batch in list(self.active):
            if batch.cancelled.is_set():
                self.abort(batch)
                batch.aborted = True
                self.finish(batch)

    def route(self, outputs: list[Any]) -> None:
        for output in outputs:
            batch = self.owners.get(output.request_id)
            if batch is None:  # aborted a moment ago
                continue
            part = batch.running[output.request_id]
            answer = batch.answers[part.pos]
            tokens = answer.take(part, output)
            if not output.finished:
                batch.progress.add(tokens=tokens)
                continue
            del batch.running[output.request_id]
            del self.owners[output.request_id]
            trace_event("reaped")
            again = answer.close(part, output)
            if again is not None:
                self.add_part(batch, again)
            # One call: a request's last tokens and its end are one piece of news (the ticker
            # must not send the tokens alone just before a one-request batch's result).
            batch.progress.add(done=1 if again is None and answer.parts_left == 0 else 0, tokens=tokens)
            if not batch.running:
                self.finish(batch)

    def abort(self, batch: BatchRun) -> None:
        """Takes what still runs of `batch` out of the engine (and out of `owners`)."""
        if batch.running:
            ids = list(batch.running)
            for request_id in ids:
                self.owners.pop(request_id, None)
            batch.running.clear()
            self.engine.abort_request(ids)

    def fail(self, batch: BatchRun, error: BaseException) -> None:
        try:
            self.abort(batch)
        except Exception as abort_error:  # noqa: BLE001 - the engine is failing already
            log(f"aborting a failed batch's requests failed too: {abort_error}")
        batch.error = error
        self.finish(batch)

    def finish(self, batch: BatchRun) -> None:
        self.active.pop(batch, None)
        batch.finished.set()
        # Taken off the batch before it is called: the callback holds the batch (a reference
        # cycle), and garbage in cycles waits for a full collection, which holds the GIL for as
        # long as it takes (130-170 ms for a pass of 2,048 one-request batches).
        on_finish, batch.on_finish = batch.on_finish, None
        if on_finish is not None:
            on_finish()


def vllm_setting(engine: Any, group: str, name: str) -> int | None:
    """An int of the engine's VllmConfig (`vllm_config.<group>.<name>`), or None where it has none."""
    value = getattr(getattr(getattr(engine, "vllm_config", None), group, None), name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def struct_fields(cls: Any) -> set[str]:
    """The field names of SamplingParams (a msgspec.Struct in vLLM; a dataclass in the tests' fake)."""
    names = getattr(cls, "__struct_fields__", None)
    if names is not None:
        return set(names)
    return {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()


class VLLMBackend:
    name = "vllm"
    arguments = ARGUMENTS

    def __init__(self) -> None:
        self.start_method = "spawn"
        self.max_batches = 1
        self.capacity: int | None = None  # sequences at once, said in `ready` (the step API only)
        self.capacity_tokens: int | None = None
        self.stepper: Stepper | None = None
        self.tokenizer_lock = threading.Lock()  # batch threads use the tokenizer one at a time

    def load(self, settings: EngineSettings) -> str:
        args = settings.args
        kwargs: dict[str, Any] = {}
        for key, convert in (("gpu_memory_utilization", args.number), ("max_model_len", args.integer),
                             ("enforce_eager", args.boolean), ("max_num_seqs", args.integer), ("seed", args.integer)):
            value = convert(key)
            if value is not None:
                kwargs[key] = value
        dtype = args.choice("dtype", ["auto", "bfloat16", "float16", "float32", "half", "float"])
        if dtype is not None:
            kwargs["dtype"] = dtype
        self.default_max_tokens = args.integer("max_tokens", 16, minimum=0)
        self.batch_size = args.integer("batch_size", 256, minimum=1)
        by_batches = args.integer("max_batches", None, minimum=1)
        max_batches = by_batches or 1
        if max_batches > MAX_BATCHES_LIMIT:
            raise EngineConfigError(f"--engine-arg max_batches={max_batches}: expected 1 to {MAX_BATCHES_LIMIT}")
        score_prefix_cache = args.boolean("score_prefix_cache", False)
        trace_path = args.string("step_trace")
        stream_progress = args.boolean("stream_progress", False)
        eager_add = args.boolean("eager_add", None)  # None: where this vLLM allows it, without a word
        if not settings.model:
            raise EngineConfigError("no model: pass --model with a local model directory")
        if not os.path.isdir(settings.model):
            raise EngineConfigError(f"model directory not found: {settings.model}")

        # vLLM starts its workers (one per GPU) with this method; fork would copy CUDA state.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        self.start_method = os.environ["VLLM_WORKER_MULTIPROC_METHOD"]
        if self.start_method != "spawn":
            log(f"warning: VLLM_WORKER_MULTIPROC_METHOD={self.start_method} (spawn is the safe choice)")

        import vllm
        from vllm import LLM, SamplingParams

        self.SamplingParams = SamplingParams
        self.param_names = struct_fields(SamplingParams)
        try:
            from vllm.sampling_params import RequestOutputKind

            self.final_only: Any = RequestOutputKind.FINAL_ONLY
            self.generation_kind: Any = RequestOutputKind.DELTA if stream_progress else self.final_only
        except ImportError:
            self.generation_kind = self.final_only = None
        try:  # 0.24: an engine input of token ids (add_request warns about raw prompts)
            from vllm.inputs import tokens_input

            engine_input: Any = lambda ids: tokens_input(ids)
        except ImportError:
            engine_input = lambda ids: {"prompt_token_ids": ids}
        self.generate_input = lambda ids: {"prompt_token_ids": ids}  # TokensPrompt, for LLM.generate

        log(f"loading {settings.model} with vLLM {vllm.__version__}: tensor_parallel_size={settings.tp} {kwargs}")
        self.llm = LLM(model=settings.model, tensor_parallel_size=settings.tp, **kwargs)
        self.engine = getattr(self.llm, "llm_engine", None)
        self.stepwise = self.engine is not None and all(
            callable(getattr(self.engine, name, None))
            for name in ("add_request", "step", "has_unfinished_requests", "abort_request"))
        self.tokenizer = self.llm.get_tokenizer()
        if many_encoder(self.tokenizer) is None:
            log(f"scoring encodes its texts one at a time: the tokenizer ({type(self.tokenizer).__name__}) is not a "
                "fast Hugging Face tokenizer with a batch call")
        model_config = getattr(self.engine, "model_config", None) or self.llm.model_config
        self.max_model_len = int(model_config.max_model_len)
        self.score_prefix_cache = score_prefix_cache and "skip_reading_prefix_cache" in self.param_names
        if score_prefix_cache and not self.score_prefix_cache:
            log("score_prefix_cache=true needs SamplingParams.skip_reading_prefix_cache, which this vLLM lacks: "
                "scoring computes every prompt in full")
        if self.stepwise:
            seqs = vllm_setting(self.engine, "scheduler_config", "max_num_seqs") or kwargs.get("max_num_seqs") or 256
            blocks = vllm_setting(self.engine, "cache_config", "num_gpu_blocks")
            block_size = vllm_setting(self.engine, "cache_config", "block_size")
            trace = open(trace_path, "a", buffering=1) if trace_path else None  # line by line: read while it runs
            self.stepper = Stepper(self.engine, engine_input, seqs, trace, eager_add)
            self.finisher: queue.Queue[Any] = queue.Queue()
            threading.Thread(target=self.finish_loop, name="compass-vllm-finisher", daemon=True).start()
            if by_batches is None:
                self.capacity = seqs
                self.capacity_tokens = blocks * block_size if blocks and block_size else None
                loop = f"add_request/step loop, capacity {seqs} sequences"
                if self.capacity_tokens:
                    loop += f" and {self.capacity_tokens} KV-cache tokens"
            else:
                self.max_batches = max_batches
                loop = f"add_request/step loop, {max_batches} batches at once"
        else:
            if by_batches is not None and by_batches > 1:
                log(f"max_batches={max_batches} needs vLLM's step API, which this vLLM lacks: 1 batch at a time")
            self.max_batches = 1
            loop = f"LLM.generate in chunks of {self.batch_size}"
        scoring = "scoring reads the prefix cache" if self.score_prefix_cache else "scoring computes prompts in full"
        return f"vllm {vllm.__version__}, tp={settings.tp}, max_model_len {self.max_model_len}, {loop}, {scoring}"

    # Requests into prompts

    def encode(self, request: Request) -> list[int]:
        ids = request.prompt_token_ids
        if ids is not None:
            return list(ids)
        tok = self.tokenizer
        if request.messages is not None and getattr(tok, "chat_template", None) is not None:
            text = tok.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
            return list(tok.encode(text, add_special_tokens=False))  # the template wrote BOS
        return list(tok.encode(request.flattened_prompt))

    def engine_stats(self) -> dict[str, int] | None:
        """Steps run and requests inside the engine summed over them (at most capacity per step)."""
        stepper = self.stepper
        if stepper is None or self.capacity is None:
            return None
        return {"capacity": stepper.capacity, "steps": stepper.steps, "sequence_steps": stepper.sequence_steps}

    def params(self, values: dict[str, Any], kind: Any) -> Any:
        if kind is not None and self.stepwise:
            values["output_kind"] = kind
        return self.SamplingParams(**values)

    def sampling(self, request: Request, limit: int) -> Any:
        values: dict[str, Any] = {
            "max_tokens": limit,
            "temperature": 0.0 if request.greedy else request.temperature,  # absent: greedy, as in hf
            "top_p": request.top_p if request.top_p is not None else 1.0,
            "stop": list(request.stop) or None,
            "seed": request.seed,
            "ignore_eos": request.ignore_eos,
        }
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(request, name) is not None:
                values[name] = getattr(request, name)
        return self.params(values, self.generation_kind)

    def scoring_params(self, read_cache: bool) -> Any:
        values: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 1, "detokenize": False}
        if "flat_logprobs" in self.param_names:
            values["flat_logprobs"] = True
        if read_cache:
            values["skip_reading_prefix_cache"] = False
        return self.params(values, self.final_only)

    def check_length(self, length: int) -> None:
        if length >= self.max_model_len:
            raise ValueError(f"prompt too long: {length} tokens; max_model_len is {self.max_model_len}, "
                             f"so at most {self.max_model_len - 1} prompt tokens")

    def prepare(self, pos: int, request: Request, encode: Callable[[str], list[int]] | None = None,
                ) -> tuple[Answer, list[Part]] | Result:
        """What one request becomes: its answer and the prompts to run, or its result at once."""
        if request.is_scoring:
            context, continuations = score_tokens(self.tokenizer, request, encode)
            for cont in continuations:
                if not cont:
                    raise ValueError("a continuation has no tokens of its own (it encodes into the context)")
                self.check_length(len(context) + len(cont))
            scoring = Scoring(request, context, continuations)
            plain = self.scoring_params(False)
            if self.score_prefix_cache:
                return scoring, scoring.parts(pos, self.scoring_params(True), plain)
            return scoring, scoring.parts(pos, plain, None)
        ids = self.encode(request)
        self.check_length(len(ids))
        limit = request.max_tokens if request.max_tokens is not None else self.default_max_tokens
        if limit == 0 and request.prompt_logprobs is None:  # vLLM wants max_tokens >= 1; nothing to run
            empty = logprobs_object([], [], 0, self.decode, False) if request.logprobs is not None else None
            return Result(request.custom_id, "", len(ids), 0, "length", logprobs=empty)
        generation = Generation(request, ids, drop_completion=limit == 0)
        return generation, [Part(pos, ids, self.sampling(request, max(limit, 1)))]

    def decode(self, token: int) -> str:
        return self.tokenizer.decode([token])

    # Batches

    def generate(self, requests: list[Request], progress: Progress, cancelled: threading.Event) -> list[Result]:
        batch = self.prepare_batch(requests, progress, cancelled)
        try:
            if self.stepper is not None:
                self.stepper.submit(batch)
                self.stepper.wait(batch)
            else:
                self.run_chunks(batch)
        except Exception as error:
            raise self.engine_error(error) from error
        return self.collect(requests, batch)

    def start(self, requests: list[Request], progress: Progress, cancelled: threading.Event,
              done: Callable[[list[Result] | None, BaseException | None], None]) -> None:
        """The engine host's hand-over (compass_engine.Backend): the batch goes into the stepper
        and this returns; the finisher thread answers `done` when the stepper is through with it.
        Without the step API, a thread runs `generate`."""
        if self.stepper is None:
            def run() -> None:
                try:
                    results = self.generate(requests, progress, cancelled)
                except Exception as error:  # noqa: BLE001 - the batch's answer
                    done(None, error)
                else:
                    done(results, None)
            threading.Thread(target=run, name="compass-vllm-batch", daemon=True).start()
            return
        batch = self.prepare_batch(requests, progress, cancelled)
        batch.on_finish = lambda: self.finisher.put((requests, batch, done))
        self.stepper.submit(batch)

    def finish_loop(self) -> None:
        """The finisher thread: turns each batch the stepper is through with into its results
        (decoding, logprobs objects, scores) off the stepper's thread, and answers it."""
        while True:
            requests, batch, done = self.finisher.get()
            try:
                if batch.error is not None:
                    raise self.engine_error(batch.error)
                if batch.aborted:
                    raise Cancelled()
                results = self.collect(requests, batch)
            except Exception as error:  # noqa: BLE001 - the batch's answer
                done(None, error)
            else:
                done(results, None)

    @staticmethod
    def engine_error(error: BaseException) -> BaseException:
        if type(error).__name__ == "EngineDeadError":  # vLLM's engine core died: restart us
            return FatalEngineError(f"vLLM engine died: {error}")
        return error

    def prepare_batch(self, requests: list[Request], progress: Progress, cancelled: threading.Event) -> BatchRun:
        """The batch's prompts for the engine; requests that cannot run are answered at once."""
        results: list[Result | None] = [None] * len(requests)
        answers: dict[int, Answer] = {}
        parts: list[Part] = []
        with self.tokenizer_lock:
            encode = prefetch_encoder(requests, plain_encoder(self.tokenizer), many_encoder(self.tokenizer))
            for pos, request in enumerate(requests):
                try:
                    prepared = self.prepare(pos, request, encode)
                except Exception as error:  # noqa: BLE001 - bad sampling values, a template error: this request only
                    prepared = Result.failure(request.custom_id, str(error))
                if isinstance(prepared, Result):
                    results[pos] = prepared
                    progress.add(done=1)
                    continue
                answers[pos], new = prepared
                parts.extend(new)
        return BatchRun(parts, answers, results, progress, cancelled)

    def collect(self, requests: list[Request], batch: BatchRun) -> list[Result]:
        """Each request's result once the batch is through the engine."""
        results, retried = batch.results, 0
        with self.tokenizer_lock:
            for pos, answer in batch.answers.items():
                if pos in batch.failed:
                    results[pos] = Result.failure(requests[pos].custom_id, batch.failed[pos])
                else:
                    results[pos] = answer.result(self.decode)
                retried += answer.retried if isinstance(answer, Scoring) else 0
        if retried:
            log(f"scoring: {retried} continuations ran again in full: the prefix cache reached past their context")
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    def run_chunks(self, batch: BatchRun) -> None:
        """The fallback without the step API: LLM.generate on chunks of `batch_size` prompts, and
        again on those the prefix cache spoilt."""
        pending = list(batch.parts)
        while pending:
            chunk, pending = pending[: self.batch_size], pending[self.batch_size:]
            if batch.cancelled.is_set():
                raise Cancelled()
            outputs = self.llm.generate([self.generate_input(p.ids) for p in chunk], [p.params for p in chunk],
                                        use_tqdm=False)
            tokens = 0
            for part, output in zip(chunk, outputs, strict=True):
                answer = batch.answers[part.pos]
                tokens += answer.take(part, output)
                again = answer.close(part, output)
                if again is not None:
                    pending.append(again)
                elif answer.parts_left == 0:
                    batch.progress.add(done=1)
            batch.progress.add(tokens=tokens)

    def close(self) -> None:
        if self.stepper is not None:
            self.stepper.close()  # no step may run while the engine core shuts down
            if self.stepper.trace is not None and not self.stepper.thread.is_alive():
                self.stepper.trace.close()
        core = getattr(self.engine, "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            shutdown()


if __name__ == "__main__":
    run(VLLMBackend())
