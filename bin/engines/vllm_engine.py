#!/usr/bin/env python3
"""The `vllm` engine: vLLM's offline engine with `tensor_parallel_size = COMPASS_TP` (docs/engines.md).

Written against vLLM 0.24 (vllm/entrypoints/llm.py, vllm/entrypoints/offline_utils.py,
vllm/v1/engine/llm_engine.py, vllm/v1/engine/input_processor.py, vllm/v1/engine/output_processor.py,
vllm/v1/engine/core_client.py, vllm/inputs/engine.py, vllm/sampling_params.py, vllm/outputs.py of
the 0.24.0 wheel).

How it drives vLLM, and why: `LLM.generate` runs a whole list to the end with no way to report
progress or to stop, so this adapter does what `LLM.generate` does inside (offline_utils.py:
`_add_request` then `_run_engine`) itself, on `LLM(...).llm_engine`: `add_request` for every
request, then `step()` while any is unfinished. Each step reports generated tokens and finished
requests, and cancel calls `abort_request` on what is still running, so nothing is left behind.
Outputs are requested as DELTA (each step returns only the new tokens), so a long completion is
not copied at every step. Prompts are tokenized here (chat messages through the tokenizer's chat
template, as `LLM.chat` does) and passed as token ids (`vllm.inputs.tokens_input`), so the length
check against max_model_len is exact and a prompt that is too long fails alone before it reaches
the engine.

Continuous batching across batches: the adapter says `max_batches` (engine arg, 1..8, default 2),
so the worker keeps that many batches inside at once and the next batch's requests join the
running ones instead of waiting for the slowest request of the current batch. One thread, the
stepper (`Stepper`), owns `llm_engine`: it alone calls `add_request`, `step`, `abort_request` and
`has_unfinished_requests` (the engine is not thread-safe, and a single owner needs no lock around
a step that blocks on the GPU). Each batch's `generate` (on the host's thread for that batch)
tokenizes its requests, hands them to the stepper and waits for its own requests to finish. The
stepper adds handed-over requests between steps, routes each step's outputs to the batch that
owns their request id (ids are unique, `compass-N`; vLLM's RequestOutput carries the id passed to
`add_request`), reports progress on that batch's Progress, aborts the running requests of a batch
whose cancel event is set (that batch's only), and wakes a batch when its last request finished.

If an older or newer vLLM lacks that engine API, the adapter falls back to `LLM.generate` on
micro-batches of `batch_size` requests, with progress and cancel checks between them, one batch
at a time (max_batches 1).
"""

from __future__ import annotations

import os
import sys
import threading
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
    run,
)

ARGUMENTS = {
    "gpu_memory_utilization": "fraction of each GPU's memory vLLM may use (float)",
    "max_model_len": "context length, prompt plus completion (int)",
    "enforce_eager": "true disables CUDA graphs (bool)",
    "dtype": "auto, bfloat16, float16 or float32",
    "max_num_seqs": "most sequences in one engine step (int)",
    "seed": "the engine's random seed (int)",
    "max_tokens": "completion limit of requests without max_tokens, default 16",
    "batch_size": "requests per LLM.generate call when the step API is missing, default 256",
    "max_batches": "batches inside the engine at once, 1 to 8, default 2 (1 without the step API)",
}
MAX_BATCHES_DEFAULT, MAX_BATCHES_LIMIT = 2, 8

# (position in the batch, the request, its prompt token ids, its SamplingParams)
Job = tuple[int, Request, list[int], Any]


@dataclass
class Running:
    """A request inside the engine: its place in the batch and what came back so far."""

    pos: int
    request: Request
    prompt_tokens: int
    text: list[str] = field(default_factory=list)
    tokens: int = 0


@dataclass(eq=False)  # compared by identity: the stepper's lists hold each batch once
class BatchRun:
    """One batch's requests on their way through the stepper.

    The batch's thread fills `jobs` and `results` (requests answered before the engine) and then
    only waits for `finished`; from then on the stepper alone writes here, and `finished.set()`
    hands everything back (an Event orders the writes before the batch thread's reads)."""

    jobs: list[Job]
    results: list[Result | None]
    progress: Progress
    cancelled: threading.Event
    running: dict[str, Running] = field(default_factory=dict)  # request id -> state, while in the engine
    finished: threading.Event = field(default_factory=threading.Event)
    aborted: bool = False  # stopped by its cancel event
    error: BaseException | None = None  # the engine failed under it


class Stepper:
    """The thread that owns `llm_engine` (see the module's docstring)."""

    def __init__(self, engine: Any, engine_input: Any) -> None:
        self.engine = engine
        self.engine_input = engine_input
        self.cond = threading.Condition()  # guards `incoming` and `closing`; wakes the stepper
        self.incoming: list[BatchRun] = []
        self.closing = False
        # The stepper thread's own: the batches it holds and which batch each request id is of.
        self.active: list[BatchRun] = []
        self.owners: dict[str, BatchRun] = {}
        self.counter = 0
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
        """Until the batch's requests are all finished (or aborted, or failed)."""
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
                self.active.extend(new)
                for batch in new:
                    self.add(batch)
                try:
                    self.abort_cancelled()
                    if self.owners:
                        if not self.engine.has_unfinished_requests():
                            raise RuntimeError(f"vLLM has no unfinished requests but {len(self.owners)} never finished")
                        self.route(self.engine.step())
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
            for batch in left + self.active:
                self.fail(batch, RuntimeError("the vLLM engine is closing"))

    def add(self, batch: BatchRun) -> None:
        if batch.cancelled.is_set():
            batch.aborted = True
            self.finish(batch)
            return
        try:
            for pos, request, ids, params in batch.jobs:
                self.counter += 1
                request_id = f"compass-{self.counter}"
                try:
                    self.engine.add_request(request_id, self.engine_input(ids), params)
                except ValueError as error:  # vLLM's own validation of this one request
                    batch.results[pos] = Result.failure(request.custom_id, str(error))
                    batch.progress.add(done=1)
                    continue
                batch.running[request_id] = Running(pos, request, len(ids))
                self.owners[request_id] = batch
        except Exception as error:  # noqa: BLE001 - this batch fails; the others go on
            self.fail(batch, error)
            return
        if not batch.running:
            self.finish(batch)

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
            state = batch.running[output.request_id]
            completion = output.outputs[0]
            state.text.append(completion.text)
            state.tokens += len(completion.token_ids)
            batch.progress.add(tokens=len(completion.token_ids))
            if output.finished:
                del batch.running[output.request_id]
                del self.owners[output.request_id]
                reason = completion.finish_reason if completion.finish_reason in ("stop", "length") else "stop"
                batch.results[state.pos] = Result(state.request.custom_id, "".join(state.text),
                                                  state.prompt_tokens, state.tokens, reason)
                batch.progress.add(done=1)
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
        if batch in self.active:
            self.active.remove(batch)
        batch.finished.set()


class VLLMBackend:
    name = "vllm"
    arguments = ARGUMENTS

    def __init__(self) -> None:
        self.start_method = "spawn"
        self.max_batches = 1
        self.stepper: Stepper | None = None
        self.tokenizer_lock = threading.Lock()  # batch threads tokenize one at a time

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
        max_batches = args.integer("max_batches", MAX_BATCHES_DEFAULT, minimum=1)
        if max_batches > MAX_BATCHES_LIMIT:
            raise EngineConfigError(f"--engine-arg max_batches={max_batches}: expected 1 to {MAX_BATCHES_LIMIT}")
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
        try:
            from vllm.sampling_params import RequestOutputKind

            self.delta: Any = RequestOutputKind.DELTA
        except ImportError:
            self.delta = None
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
        model_config = getattr(self.engine, "model_config", None) or self.llm.model_config
        self.max_model_len = int(model_config.max_model_len)
        if self.stepwise:
            self.max_batches = max_batches
            self.stepper = Stepper(self.engine, engine_input)
            loop = f"add_request/step loop, {max_batches} batches at once"
        else:
            if max_batches > 1 and "max_batches" in args.values:
                log(f"max_batches={max_batches} needs vLLM's step API, which this vLLM lacks: 1 batch at a time")
            self.max_batches = 1
            loop = f"LLM.generate in chunks of {self.batch_size}"
        return f"vllm {vllm.__version__}, tp={settings.tp}, max_model_len {self.max_model_len}, {loop}"

    def encode(self, request: Request) -> list[int]:
        tok = self.tokenizer
        if request.messages is not None and getattr(tok, "chat_template", None) is not None:
            text = tok.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
            return list(tok.encode(text, add_special_tokens=False))  # the template wrote BOS
        return list(tok.encode(request.flattened_prompt))

    def sampling(self, request: Request, limit: int, kind: Any) -> Any:
        params: dict[str, Any] = {
            "max_tokens": limit,
            "temperature": 0.0 if request.greedy else request.temperature,  # absent: greedy, as in hf
            "top_p": request.top_p if request.top_p is not None else 1.0,
            "stop": list(request.stop) or None,
            "seed": request.seed,
            "ignore_eos": request.ignore_eos,
        }
        if kind is not None:
            params["output_kind"] = kind
        return self.SamplingParams(**params)

    def generate(self, requests: list[Request], progress: Progress, cancelled: threading.Event) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        jobs: list[Job] = []
        with self.tokenizer_lock:
            for pos, request in enumerate(requests):
                try:
                    ids = self.encode(request)
                    if len(ids) >= self.max_model_len:
                        raise ValueError(f"prompt too long: {len(ids)} tokens; max_model_len is {self.max_model_len}, "
                                         f"so at most {self.max_model_len - 1} prompt tokens")
                    limit = request.max_tokens if request.max_tokens is not None else self.default_max_tokens
                    if limit == 0:  # vLLM wants max_tokens >= 1; there is nothing to generate
                        results[pos] = Result(request.custom_id, "", len(ids), 0, "length")
                        progress.add(done=1)
                        continue
                    params = self.sampling(request, limit, self.delta if self.stepwise else None)
                except Exception as error:  # noqa: BLE001 - bad sampling values, a template error: this request only
                    results[pos] = Result.failure(request.custom_id, str(error))
                    progress.add(done=1)
                    continue
                jobs.append((pos, request, ids, params))
        try:
            if self.stepper is not None:
                batch = BatchRun(jobs, results, progress, cancelled)
                self.stepper.submit(batch)
                self.stepper.wait(batch)
            else:
                self.run_chunks(jobs, results, progress, cancelled)
        except Exception as error:
            if type(error).__name__ == "EngineDeadError":  # vLLM's engine core died: restart us
                raise FatalEngineError(f"vLLM engine died: {error}") from error
            raise
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    def run_chunks(self, jobs: list[Job], results: list[Result | None],
                   progress: Progress, cancelled: threading.Event) -> None:
        for start in range(0, len(jobs), self.batch_size):
            if cancelled.is_set():
                raise Cancelled()
            chunk = jobs[start:start + self.batch_size]
            outputs = self.llm.generate([self.generate_input(ids) for _, _, ids, _ in chunk],
                                        [params for *_, params in chunk], use_tqdm=False)
            for (pos, request, ids, _), output in zip(chunk, outputs, strict=True):
                completion = output.outputs[0]
                reason = completion.finish_reason if completion.finish_reason in ("stop", "length") else "stop"
                results[pos] = Result(request.custom_id, completion.text, len(ids), len(completion.token_ids), reason)
            progress.add(done=len(chunk), tokens=sum(len(o.outputs[0].token_ids) for o in outputs))

    def close(self) -> None:
        if self.stepper is not None:
            self.stepper.close()  # no step may run while the engine core shuts down
        core = getattr(self.engine, "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            shutdown()


if __name__ == "__main__":
    run(VLLMBackend())
