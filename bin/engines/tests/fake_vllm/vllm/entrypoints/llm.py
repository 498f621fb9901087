"""vllm/entrypoints/llm.py (0.24): the LLM class, with the keyword arguments of the real one that
the adapter may pass; the rest go to EngineArgs as **kwargs (unknown names are a TypeError there)."""

from __future__ import annotations

import os
from typing import Any
from collections.abc import Callable, Sequence

from vllm._fake import record
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.v1.engine.llm_engine import LLMEngine

# A few of EngineArgs' fields (vllm/engine/arg_utils.py).
ENGINE_ARGS = {"max_model_len", "max_num_seqs", "disable_log_stats", "swap_space", "max_num_batched_tokens",
               "enable_prefix_caching", "kv_cache_dtype", "distributed_executor_backend", "pipeline_parallel_size"}


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError."""


class LLM:
    def __init__(self, model: str, *, runner: str = "auto", tokenizer: str | None = None,
                 trust_remote_code: bool = False, tensor_parallel_size: int = 1, dtype: str = "auto",
                 quantization: str | None = None, seed: int = 0, gpu_memory_utilization: float = 0.92,
                 enforce_eager: bool = False, **kwargs: Any) -> None:
        unknown = set(kwargs) - ENGINE_ARGS
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        record("init", model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype, seed=seed,
               gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, kwargs=kwargs,
               types={k: type(v).__name__ for k, v in dict(kwargs, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                                                            enforce_eager=enforce_eager).items()},
               VLLM_WORKER_MULTIPROC_METHOD=os.environ.get("VLLM_WORKER_MULTIPROC_METHOD"))
        if os.path.exists(os.path.join(model, "FAKE_OOM")):
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.10 GiB total capacity)")
        engine = LLMEngine(int(kwargs.get("max_model_len") or 64), int(kwargs.get("max_num_seqs") or 256),
                           bool(kwargs.get("enable_prefix_caching", True)))
        self.model_config = engine.model_config
        self._engine = engine
        # $FAKE_VLLM_NO_STEP=1 plays a vLLM whose engine lacks the step API (the adapter's fallback).
        self.llm_engine = None if os.environ.get("FAKE_VLLM_NO_STEP") == "1" else engine
        self.request_counter = 0

    def get_tokenizer(self) -> Any:
        return self._engine.get_tokenizer()

    def reset_prefix_cache(self, reset_running_requests: bool = False) -> bool:
        record("reset_prefix_cache")
        self._engine.cache.clear()
        return True

    def generate(self, prompts: Any, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 use_tqdm: bool | Callable[..., Any] = True, lora_request: Any = None, priority: list[int] | None = None,
                 tokenization_kwargs: dict[str, Any] | None = None,
                 mm_processor_kwargs: dict[str, Any] | None = None) -> list[RequestOutput]:
        prompts = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        if isinstance(sampling_params, (list, tuple)):
            params = list(sampling_params)
        else:
            params = [sampling_params or SamplingParams()] * len(prompts)
        record("generate", count=len(prompts))
        ids = []
        for prompt, sp in zip(prompts, params, strict=True):
            sp = sp.clone()
            sp.output_kind = RequestOutputKind.FINAL_ONLY  # "We only care about the final output"
            self.request_counter += 1
            self._engine.add_request(str(self.request_counter), prompt, sp)  # returns the internal id
            ids.append(str(self.request_counter))  # outputs carry this one (offline_utils.py sorts by it)
        finished: dict[str, RequestOutput] = {}
        while self._engine.has_unfinished_requests():
            for output in self._engine.step():
                finished[output.request_id] = output
        return [finished[i] for i in ids]
