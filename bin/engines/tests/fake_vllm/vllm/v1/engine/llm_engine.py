"""vllm/v1/engine/llm_engine.py (0.24): the LLMEngine methods that LLM.generate and the adapter use."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from types import SimpleNamespace
from typing import Any
from collections.abc import Mapping

from vllm._fake import FakeTokenizer, Sequence, record
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams


class LLMEngine:
    """Legacy LLMEngine for backwards compatibility."""

    def __init__(self, max_model_len: int, max_num_seqs: int) -> None:
        self.model_config = SimpleNamespace(max_model_len=max_model_len)
        self.max_num_seqs = max_num_seqs
        self.tokenizer = FakeTokenizer()
        self.sequences: OrderedDict[str, Sequence] = OrderedDict()  # waiting and running, FIFO
        self.step_delay = float(os.environ.get("FAKE_VLLM_STEP_DELAY", "0"))

    def get_tokenizer(self) -> FakeTokenizer:
        return self.tokenizer

    def get_num_unfinished_requests(self) -> int:
        return len(self.sequences)

    def has_unfinished_requests(self) -> bool:
        return bool(self.sequences)

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        record("abort_request", request_ids=list(request_ids), internal=internal)
        for request_id in request_ids:
            self.sequences.pop(request_id, None)

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
        return request_id

    def step(self) -> list[RequestOutput]:
        if self.step_delay:
            time.sleep(self.step_delay)
        outputs = []
        for seq in list(self.sequences.values())[: self.max_num_seqs]:
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
        return outputs
