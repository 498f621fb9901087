#!/usr/bin/env python3
"""The `vllm` engine: vLLM's offline engine with `tensor_parallel_size = COMPASS_TP` (docs/engines.md).

Written against vLLM 0.24 (vllm/entrypoints/llm.py, vllm/entrypoints/offline_utils.py,
vllm/v1/engine/llm_engine.py, vllm/v1/engine/input_processor.py, vllm/inputs/engine.py,
vllm/sampling_params.py, vllm/outputs.py of the 0.24.0 wheel).

How it drives vLLM, and why: `LLM.generate` runs a whole list to the end with no way to report
progress or to stop, so this adapter does what `LLM.generate` does inside (offline_utils.py:
`_add_request` then `_run_engine`) itself, on `LLM(...).llm_engine`: `add_request` for every
request of the batch, then `step()` until they are all finished. Each step reports generated
tokens and finished requests, and checks the cancel flag; on cancel it calls `abort_request` on
what is still running, so the engine is clean for the next batch. Outputs are requested as
DELTA (each step returns only the new tokens), so a long completion is not copied at every step.
Prompts are tokenized here (chat messages through the tokenizer's chat template, as `LLM.chat`
does) and passed as token ids (`vllm.inputs.tokens_input`), so the length check against
max_model_len is exact and a prompt that is too long fails alone before it reaches the engine.
If an older or newer vLLM lacks that engine API, the adapter falls back to `LLM.generate` on
micro-batches of `batch_size` requests, with progress and cancel checks between them.
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
}


@dataclass
class Running:
    """A request inside the engine: its place in the batch and what came back so far."""

    pos: int
    request: Request
    prompt_tokens: int
    text: list[str] = field(default_factory=list)
    tokens: int = 0


class VLLMBackend:
    name = "vllm"
    arguments = ARGUMENTS

    def __init__(self) -> None:
        self.start_method = "spawn"
        self.counter = 0

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

            self.engine_input: Any = lambda ids: tokens_input(ids)
        except ImportError:
            self.engine_input = lambda ids: {"prompt_token_ids": ids}
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
        loop = "add_request/step loop" if self.stepwise else f"LLM.generate in chunks of {self.batch_size}"
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
        jobs: list[tuple[int, Request, list[int], Any]] = []
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
            if self.stepwise:
                self.run_steps(jobs, results, progress, cancelled)
            else:
                self.run_chunks(jobs, results, progress, cancelled)
        except Exception as error:
            if type(error).__name__ == "EngineDeadError":  # vLLM's engine core died: restart us
                raise FatalEngineError(f"vLLM engine died: {error}") from error
            raise
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    def run_steps(self, jobs: list[tuple[int, Request, list[int], Any]], results: list[Result | None],
                  progress: Progress, cancelled: threading.Event) -> None:
        engine = self.engine
        assert engine is not None
        running: dict[str, Running] = {}
        try:
            for pos, request, ids, params in jobs:
                self.counter += 1
                request_id = f"compass-{self.counter}"
                try:
                    engine.add_request(request_id, self.engine_input(ids), params)
                except ValueError as error:  # vLLM's own validation of this one request
                    results[pos] = Result.failure(request.custom_id, str(error))
                    progress.add(done=1)
                    continue
                running[request_id] = Running(pos, request, len(ids))
            while running:
                if cancelled.is_set():
                    raise Cancelled()
                if not engine.has_unfinished_requests():
                    raise RuntimeError(f"vLLM has no unfinished requests but {len(running)} never finished")
                for output in engine.step():
                    state = running.get(output.request_id)
                    if state is None:
                        continue
                    completion = output.outputs[0]
                    state.text.append(completion.text)
                    state.tokens += len(completion.token_ids)
                    progress.add(tokens=len(completion.token_ids))
                    if output.finished:
                        del running[output.request_id]
                        reason = completion.finish_reason if completion.finish_reason in ("stop", "length") else "stop"
                        results[state.pos] = Result(state.request.custom_id, "".join(state.text),
                                                    state.prompt_tokens, state.tokens, reason)
                        progress.add(done=1)
        finally:
            if running:  # cancelled or failed: leave nothing of this batch in the engine
                engine.abort_request(list(running))

    def run_chunks(self, jobs: list[tuple[int, Request, list[int], Any]], results: list[Result | None],
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
        core = getattr(self.engine, "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            shutdown()


if __name__ == "__main__":
    run(VLLMBackend())
