"""vllm/v1/engine/llm_engine.py (0.24): the LLMEngine methods that LLM.generate and the adapter use.

Like the real one, requests added while others run join them at the next step and each finishes
on its own; `add_request` returns vLLM's internal id (the given id plus a random suffix), while
outputs and `abort_request` use the given one. It is not thread-safe, and says so: a call made
while another thread is inside the engine raises RuntimeError (and is logged as `concurrent`).

Prefix caching as vLLM v1 does it, in blocks of BLOCK_SIZE tokens: a request's first step reads
the longest run of full blocks of its prompt that earlier steps computed (at most prompt length - 1
tokens; none with skip_reading_prefix_cache), reported as `num_cached_tokens`, and writes its own
blocks whatever it read. Requests starting in the same step do not see each other's blocks."""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid
from collections import OrderedDict
from types import SimpleNamespace
from typing import Any, TypeVar
from collections.abc import Callable, Mapping

from vllm._fake import FakeTokenizer, Sequence, container, record
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.v1.engine.exceptions import EngineDeadError

F = TypeVar("F", bound=Callable[..., Any])
BLOCK_SIZE = 4  # vLLM's default is 16; 4 keeps the tests' prompts short
MAX_LOGPROBS = 20  # ModelConfig.max_logprobs' default
MAX_NUM_BATCHED_TOKENS = 2048  # prompt tokens a step starts


def exclusive(method: F) -> F:
    """Fails a call that overlaps another thread's call into the engine."""

    @functools.wraps(method)
    def wrapper(self: LLMEngine, *args: Any, **kwargs: Any) -> Any:
        if not self.inside.acquire(blocking=False):
            record("concurrent", method=method.__name__)
            raise RuntimeError(f"fake vLLM: LLMEngine.{method.__name__} called while another thread is inside")
        try:
            if self.dead:
                raise EngineDeadError()
            return method(self, *args, **kwargs)
        finally:
            self.inside.release()

    return wrapper  # type: ignore[return-value]


class LLMEngine:
    """Legacy LLMEngine for backwards compatibility."""

    def __init__(self, max_model_len: int, max_num_seqs: int, prefix_caching: bool = True) -> None:
        self.model_config = SimpleNamespace(max_model_len=max_model_len)
        # VllmConfig's parts the adapter reads (num_gpu_blocks: the core's answer at startup).
        self.vllm_config = SimpleNamespace(
            model_config=self.model_config,
            scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs),
            cache_config=SimpleNamespace(block_size=BLOCK_SIZE, num_gpu_blocks=int(os.environ.get("FAKE_VLLM_GPU_BLOCKS", "1024"))))
        self.prefix_caching = prefix_caching
        self.cache: set[tuple[int, ...]] = set()  # the prompt prefixes, in full blocks, computed so far
        self.max_num_seqs = max_num_seqs
        self.tokenizer = FakeTokenizer()
        self.sequences: OrderedDict[str, Sequence] = OrderedDict()  # waiting and running, FIFO
        self.step_delay = float(os.environ.get("FAKE_VLLM_STEP_DELAY", "0"))
        # FAKE_VLLM_OUTPUT_QUEUE=1: an engine core that computes on its own, as vLLM's does in its
        # process: a step starts when work arrives at an idle core or when the last step's outputs
        # are taken, and `engine_core.outputs_queue.empty()` says whether its outputs are in.
        # FAKE_VLLM_STEP_GATE=FILE: no step's outputs are in until FILE exists. A prompt with the
        # word `@gone` kills such a core as SIGKILL would: the client's `resources.engine_dead`
        # is set and no output ever comes (vLLM's output thread ends without a word).
        self.ready_at: float | None = None
        self.gone = False
        self.async_core = os.environ.get("FAKE_VLLM_OUTPUT_QUEUE") == "1"
        self.step_gate = os.environ.get("FAKE_VLLM_STEP_GATE")
        if self.async_core:
            engine = self

            class OutputsQueue:
                def empty(self) -> bool:
                    if engine.gone:
                        return True
                    if engine.step_gate and not os.path.exists(engine.step_gate):
                        return True
                    return engine.ready_at is None or time.monotonic() < engine.ready_at

            self.engine_core = SimpleNamespace(outputs_queue=OutputsQueue(), resources=SimpleNamespace(engine_dead=False))
        self.inside = threading.Lock()
        self.dead = False

    def get_tokenizer(self) -> FakeTokenizer:
        return self.tokenizer

    @exclusive
    def get_num_unfinished_requests(self) -> int:
        return len(self.sequences)

    @exclusive
    def has_unfinished_requests(self) -> bool:
        return bool(self.sequences)

    @exclusive
    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        record("abort_request", request_ids=list(request_ids), internal=internal)
        for request_id in request_ids:
            self.sequences.pop(request_id, None)

    @exclusive
    def add_request(self, request_id: str, prompt: Any, params: SamplingParams, arrival_time: float | None = None,
                    lora_request: Any = None, tokenization_kwargs: dict[str, Any] | None = None,
                    trace_headers: Mapping[str, str] | None = None, priority: int = 0,
                    prompt_text: str | None = None) -> str:
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be a string, got {type(request_id)}")
        if isinstance(prompt, dict) and "type" in prompt:
            ids, kind = list(prompt["prompt_token_ids"]), "engine_input"
        elif isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            ids, kind = list(prompt["prompt_token_ids"]), "tokens_prompt"
        else:
            text = prompt if isinstance(prompt, str) else prompt["prompt"]
            ids, kind = self.tokenizer.encode(text), "text"
        record("add_request", request_id=request_id, prompt_kind=kind, prompt_token_ids=ids,
               prompt_text=self.tokenizer.decode(ids), params=params.as_json())
        # InputProcessor._validate_prompt_len
        max_len = self.model_config.max_model_len
        if not ids:
            raise ValueError("The decoder prompt cannot be empty")
        if len(ids) >= max_len:
            raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of {max_len}.")
        for name, what in (("logprobs", "sample"), ("prompt_logprobs", "prompt")):  # InputProcessor._validate_logprobs
            value = getattr(params, name)
            if value is not None and value > MAX_LOGPROBS:
                raise ValueError(f"Requested {what} logprobs of {value}, which is greater than max allowed: {MAX_LOGPROBS}")
        params = params.clone()
        if params.max_tokens is None:
            params.max_tokens = max_len - len(ids)
        if self.async_core and "@gone" in self.tokenizer.decode(ids).split():
            self.gone = self.engine_core.resources.engine_dead = True
        if self.async_core and not self.sequences:  # an idle core starts a step
            self.ready_at = time.monotonic() + self.step_delay
        self.sequences[request_id] = Sequence(request_id, ids, params, self.tokenizer)
        return f"{request_id}-{uuid.uuid4().hex[:8]}"  # InputProcessor.assign_request_id

    @exclusive
    def step(self) -> list[RequestOutput]:
        while self.step_gate and not os.path.exists(self.step_gate):
            time.sleep(0.002)
        if self.step_delay and self.ready_at is not None:
            time.sleep(max(0.0, self.ready_at - time.monotonic()))
        elif self.step_delay:
            time.sleep(self.step_delay)
        # A step starts prompts only while they fit its token budget (the first always does), as
        # vLLM's scheduler does with max_num_batched_tokens: later prompts see earlier ones' blocks.
        scheduled, budget = [], MAX_NUM_BATCHED_TOKENS
        for seq in list(self.sequences.values())[: self.max_num_seqs]:
            if seq.num_cached_tokens is None and not seq.held():
                if budget < len(seq.ids) and budget < MAX_NUM_BATCHED_TOKENS:
                    continue
                budget -= len(seq.ids)
            scheduled.append(seq)
        if all(seq.held() for seq in scheduled):
            time.sleep(0.002)  # a step's worth of time; nothing moves until the gate opens
            return []
        for seq in scheduled:
            if seq.fault is not None and not seq.held():
                del self.sequences[seq.request_id]
                record("step_failed", request_id=seq.request_id, fault=seq.fault)
                if seq.fault == "@dead":
                    self.dead = True
                    raise EngineDeadError()
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
        starting = [seq for seq in scheduled if not seq.held() and seq.num_cached_tokens is None]
        for seq in starting:
            read = self.prefix_caching and not seq.params.skip_reading_prefix_cache
            seq.num_cached_tokens = self.cached_prefix(seq.ids) if read else 0
            seq.compute_prompt_logprobs()
        for seq in starting:
            for end in range(BLOCK_SIZE, len(seq.ids) + 1, BLOCK_SIZE):
                self.cache.add(tuple(seq.ids[:end]))
        outputs = []
        for seq in scheduled:
            if seq.held():
                continue
            seq.step()
            kind = seq.params.output_kind
            if kind == RequestOutputKind.FINAL_ONLY and not seq.finish_reason:
                continue
            if kind == RequestOutputKind.DELTA:
                text, tokens = seq.delta_text(), seq.out[seq.sent_tokens:]
                seq.sent_tokens = len(seq.out)
                prompt_logprobs = None if seq.sent_prompt_logprobs else seq.prompt_logprobs
                seq.sent_prompt_logprobs = True
                sample_logprobs = self.tail(seq.sample_logprobs, seq.sent_logprobs, seq.params.flat_logprobs)
                seq.sent_logprobs = len(seq.out)
            else:
                text, tokens = seq.text, list(seq.out)
                prompt_logprobs, sample_logprobs = seq.prompt_logprobs, seq.sample_logprobs
            if not seq.params.detokenize:
                text = ""
            completion = CompletionOutput(0, text, tokens, None, sample_logprobs, finish_reason=seq.finish_reason)
            outputs.append(RequestOutput(seq.request_id, None, seq.ids, prompt_logprobs, [completion],
                                         seq.finish_reason is not None, num_cached_tokens=seq.num_cached_tokens))
            if seq.finish_reason:
                del self.sequences[seq.request_id]
        record("step", scheduled=[seq.request_id for seq in scheduled], outputs=[o.request_id for o in outputs],
               finished=[o.request_id for o in outputs if o.finished],
               cached={seq.request_id: seq.num_cached_tokens for seq in starting},
               threads=threading.active_count())
        if self.async_core:  # taking these outputs starts the next step
            self.ready_at = time.monotonic() + self.step_delay if self.sequences else None
        return outputs

    def cached_prefix(self, ids: list[int]) -> int:
        """How many of the prompt's tokens the cache holds: full blocks, at most all but the last token."""
        n = 0
        while n + BLOCK_SIZE <= len(ids) - 1 and tuple(ids[: n + BLOCK_SIZE]) in self.cache:
            n += BLOCK_SIZE
        return n

    @staticmethod
    def tail(logprobs: Any, start: int, flat: bool) -> Any:
        """The positions of a sample logprobs container from `start` on (a DELTA output's)."""
        if logprobs is None:
            return None
        out = container(flat)
        for i in range(start, len(logprobs)):
            out.append(logprobs[i])
        return out
