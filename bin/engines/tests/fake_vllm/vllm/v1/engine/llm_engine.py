"""vllm/v1/engine/llm_engine.py (0.24): the LLMEngine methods that LLM.generate and the adapter use.

Like the real one, requests added while others run join them at the next step and each finishes
on its own; `add_request` returns vLLM's internal id (the given id plus a random suffix), while
outputs and `abort_request` use the given one. It is not thread-safe, and says so: a call made
while another thread is inside the engine raises RuntimeError (and is logged as `concurrent`)."""

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

from vllm._fake import FakeTokenizer, Sequence, record
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.v1.engine.exceptions import EngineDeadError

F = TypeVar("F", bound=Callable[..., Any])


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

    def __init__(self, max_model_len: int, max_num_seqs: int) -> None:
        self.model_config = SimpleNamespace(max_model_len=max_model_len)
        self.max_num_seqs = max_num_seqs
        self.tokenizer = FakeTokenizer()
        self.sequences: OrderedDict[str, Sequence] = OrderedDict()  # waiting and running, FIFO
        self.step_delay = float(os.environ.get("FAKE_VLLM_STEP_DELAY", "0"))
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
        params = params.clone()
        if params.max_tokens is None:
            params.max_tokens = max_len - len(ids)
        self.sequences[request_id] = Sequence(request_id, ids, params, self.tokenizer)
        return f"{request_id}-{uuid.uuid4().hex[:8]}"  # InputProcessor.assign_request_id

    @exclusive
    def step(self) -> list[RequestOutput]:
        if self.step_delay:
            time.sleep(self.step_delay)
        scheduled = list(self.sequences.values())[: self.max_num_seqs]
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
            else:
                text, tokens = seq.text, list(seq.out)
            completion = CompletionOutput(0, text, tokens, None, None, finish_reason=seq.finish_reason)
            outputs.append(RequestOutput(seq.request_id, None, seq.ids, None, [completion], seq.finish_reason is not None))
            if seq.finish_reason:
                del self.sequences[seq.request_id]
        record("step", scheduled=[seq.request_id for seq in scheduled], outputs=[o.request_id for o in outputs],
               finished=[o.request_id for o in outputs if o.finished])
        return outputs
