"""An OpenCompass model type that runs the evaluation on a compass pool.

Name it in an OpenCompass config where ``VLLM`` or ``HuggingFaceCausalLM`` would be::

    from compass_client.opencompass import CompassModel

    models = [dict(abbr='llama-8b', type=CompassModel, pool='llama8b', broker='tcp://127.0.0.1:5555',
                   tokenizer_path='/models/Llama-3.1-8B', max_seq_len=8192, max_out_len=512,
                   batch_size=256, run_cfg=dict(num_gpus=0))]

Each OpenCompass batch (``batch_size`` prompts) goes to the pool at once, as compass batches of
``compass_batch_size`` requests: no pacing, no HTTP. Generation datasets send the prompts as text (or as
chat messages with ``chat=True``); perplexity (``get_ppl``) and log-likelihood (``get_loglikelihood``)
datasets send token ids made with the local tokenizer as scoring requests (a summed logprob back; prompt
logprobs for the perplexity of a prompt with pad tokens among its scored tokens), and compute what
OpenCompass's ``HuggingFaceCausalLM`` computes (``_opencompass_scoring``). A request that fails
raises ``CompassEvaluationError``: OpenCompass then marks the task failed instead of scoring a
partial or empty prediction, and ``opencompass -r`` resumes it later.

Requires OpenCompass (0.5.x), transformers (for the tokenizer) and numpy, which OpenCompass brings.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np
from opencompass.models.base import BaseModel, LMTemplateParser
from opencompass.models.base_api import APITemplateParser
from opencompass.registry import MODELS
from opencompass.utils.logging import get_logger

from . import _opencompass_scoring as scoring
from .client import Client
from .curve import Key
from .types import CompassError, Result

__all__ = ["CompassEvaluationError", "CompassModel"]

#: generation_kwargs that become request fields as they are (docs/protocol.md, Payloads).
GENERATION_FIELDS = ("temperature", "top_p", "seed", "stop", "ignore_eos")
#: Failed requests quoted in an error message.
QUOTED_FAILURES = 3

# Used when a meta_template is not given and chat=True: HuggingFacewithChatTemplate's default.
_DEFAULT_CHAT_TEMPLATE = dict(round=[
    dict(role="HUMAN", api_role="HUMAN"),
    dict(role="SYSTEM", api_role="HUMAN"),
    dict(role="BOT", api_role="BOT", generate=True),
])


class CompassEvaluationError(RuntimeError):
    """Requests of an OpenCompass batch failed on the pool (after the broker's retries), or the pool
    could not be reached: the OpenCompass task fails with this message in its log."""


@MODELS.register_module(force=True)
class CompassModel(BaseModel):
    """OpenCompass's model API on a compass pool.

    Args:
        path: the served model's name, for OpenCompass's tables (default: the pool).
        pool: the compass pool that serves the model.
        broker: the broker's frontend endpoint.
        tokenizer_path: the served model's tokenizer, a local directory (required: token counts and
            the token ids of perplexity and log-likelihood requests come from it).
        max_seq_len: the model's context; perplexity inputs are cut there, as OpenCompass's
            ``HuggingFaceCausalLM`` does.
        meta_template: OpenCompass's meta template.
        chat: send generation prompts as chat ``messages`` (the engine applies the model's chat
            template), as OpenCompass's ``HuggingFacewithChatTemplate`` and ``VLLMwithChatTemplate``.
        generation_kwargs: ``temperature`` (default 0, greedy), ``top_p``, ``seed``, ``stop``,
            ``ignore_eos``; ``do_sample=False`` is greedy.
        stop_words: stop strings added to every generation request.
        compass_batch_size: requests per compass batch.
        timeout: seconds one OpenCompass batch may take before the task fails (None: no limit).
        max_attempts: dispatches per compass batch (0: the broker's default).
        priority: compass batch priority (higher first).
        curve_server_key, curve_public_key, curve_secret_key: CURVE keys (Z85, raw or key files).
        session: the compass session prefix (default: random per process).
        tokenizer_kwargs: passed to ``AutoTokenizer.from_pretrained``.
        pad_token_id: the pad token excluded from perplexity (default: the tokenizer's, else its
            end-of-sequence token, as ``HuggingFaceCausalLM``).
        connect_timeout: seconds to wait for the broker's first answer when the model is built.
    """

    is_api = False

    def __init__(self, path: str = "", pool: str = "default", broker: str = "tcp://127.0.0.1:5555", *,
                 tokenizer_path: Optional[str] = None, max_seq_len: int = 2048,
                 meta_template: Optional[dict[str, Any]] = None, chat: bool = False,
                 generation_kwargs: Optional[dict[str, Any]] = None, stop_words: Sequence[str] = (),
                 compass_batch_size: int = 32, timeout: Optional[float] = 3600.0, max_attempts: int = 0,
                 priority: int = 0, curve_server_key: Optional[Key] = None, curve_public_key: Optional[Key] = None,
                 curve_secret_key: Optional[Key] = None, session: Optional[str] = None,
                 tokenizer_kwargs: Optional[dict[str, Any]] = None, pad_token_id: Optional[int] = None,
                 connect_timeout: float = 30.0, tokenizer_only: bool = False, **unused: Any) -> None:
        super().__init__(path=path or pool, max_seq_len=max_seq_len, tokenizer_only=tokenizer_only,
                         meta_template=meta_template)
        self.logger = get_logger()
        for key, value in unused.items():
            if value is not None:
                self.logger.warning(f"CompassModel: unused argument {key}={value!r}")
        if not tokenizer_path:
            raise ValueError("CompassModel needs tokenizer_path: the served model's tokenizer as a local "
                             "directory (token counts and perplexity requests are made with it)")
        if compass_batch_size < 1:
            raise ValueError("compass_batch_size must be at least 1")
        self.pool = pool
        self.broker = broker
        self.chat = chat
        if chat:
            self.template_parser = APITemplateParser(meta_template or _DEFAULT_CHAT_TEMPLATE)
        else:
            self.template_parser = LMTemplateParser(meta_template)
        self.generation_kwargs = dict(generation_kwargs or {})
        self.sampling = _sampling_fields(self.generation_kwargs)
        self.sampling.setdefault("temperature", 0.0)  # greedy, as OpenCompass's local model types
        self.stop_words = list(stop_words)
        self.compass_batch_size = compass_batch_size
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.priority = priority
        self.tokenizer = _load_tokenizer(tokenizer_path, tokenizer_kwargs or {})
        if pad_token_id is not None:
            self.pad_token_id: Optional[int] = pad_token_id
        else:
            self.pad_token_id = self.tokenizer.pad_token_id
            if self.pad_token_id is None:
                self.pad_token_id = self.tokenizer.eos_token_id
        self._curve = dict(curve_server_key=curve_server_key, curve_public_key=curve_public_key,
                           curve_secret_key=curve_secret_key)
        self._session = session
        self._client: Optional[Client] = None
        self._lock = threading.Lock()
        self._counter = 0
        if not tokenizer_only:
            self._connect(connect_timeout)

    # MARK: OpenCompass's model API

    def generate(self, inputs: list[Any], max_out_len: Optional[int] = None,
                 stopping_criteria: Sequence[str] = (), **kwargs: Any) -> list[str]:
        """Completions of a batch of prompts (strings, or PromptLists when ``chat``), in order."""
        if max_out_len is None:
            max_out_len = self.generation_kwargs.get("max_new_tokens", self.generation_kwargs.get("max_tokens"))
        if max_out_len is None:
            raise ValueError("max_out_len is required (set it on the model or the dataset's inferencer)")
        base = dict(self.sampling)
        base.update(_sampling_fields(kwargs))
        stops = list(dict.fromkeys([*_as_list(base.pop("stop", [])), *self.stop_words, *stopping_criteria]))
        requests = []
        for i, prompt in enumerate(inputs):
            request: dict[str, Any] = {"custom_id": str(i), "max_tokens": int(max_out_len), **base}
            if self.chat:
                request["messages"] = scoring.chat_messages(prompt)
            else:
                request["prompt"] = scoring.plain_text(prompt)
            if stops:
                request["stop"] = stops
            requests.append(request)
        return [result.text or "" for result in self._run(requests, "generation")]

    def get_ppl(self, inputs: list[Any], mask_length: Optional[list[int]] = None) -> np.ndarray:
        """Each input's mean token cross-entropy, the first ``mask_length[i]`` tokens masked out."""
        ids = [self._ids(text)[:self.max_seq_len] for text in inputs]
        masks = [mask_length[i] if mask_length else 0 for i in range(len(ids))]
        # A scoring request (one summed logprob back) where the scored tokens hold no pad token,
        # else every token's logprob: the same value either way (_opencompass_scoring).
        requests = [scoring.ppl_request_for(str(i), seq, mask, self.pad_token_id)
                    for i, (seq, mask) in enumerate(zip(ids, masks))]
        results = self._run(requests, "perplexity")
        values = []
        for seq, mask, result in zip(ids, masks, results):
            try:
                values.append(scoring.ppl_from_result(seq, result, mask, self.pad_token_id))
            except ValueError as error:
                raise CompassEvaluationError(str(error)) from None
        return np.array(values, dtype=np.float64)

    def get_loglikelihood(self, inputs: list[Any], conts: list[str],
                          mask_length: Optional[list[int]] = None) -> np.ndarray:
        """The summed logprob of each continuation (``conts[i]``, which ends ``inputs[i]``)."""
        if mask_length is not None:
            raise ValueError("get_loglikelihood: mask_length is not supported (nor by HuggingFaceCausalLM)")
        answer = np.zeros(len(inputs), dtype=np.float64)
        requests, positions = [], []
        for i, (prompt, cont) in enumerate(zip(inputs, conts)):
            text = scoring.plain_text(prompt)
            full = self._ids(text)[:self.max_seq_len]
            context = min(len(self._ids(text.replace(cont, ""))), self.max_seq_len)
            if context >= len(full):
                continue  # no continuation tokens: a sum of nothing
            if context == 0:
                raise ValueError(f"get_loglikelihood: input {i} has no context tokens to score {cont!r} after")
            requests.append(scoring.score_request(str(i), full[:context], full[context:]))
            positions.append(i)
        if requests:
            for i, result in zip(positions, self._run(requests, "log-likelihood")):
                answer[i] = scoring.continuation_logprob(result)
        return answer

    def get_token_len(self, prompt: Any) -> int:
        """Tokens of a prompt with the served model's tokenizer (special tokens, or the chat template
        with ``chat``), as OpenCompass's Hugging Face types count them."""
        if self.chat:
            text = self.tokenizer.apply_chat_template(scoring.chat_messages(prompt), add_generation_prompt=True,
                                                      tokenize=False)
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])  # the template writes BOS
        return len(self._ids(scoring.plain_text(prompt)))

    def encode(self, prompt: str) -> Any:
        return self._ids(prompt)

    def decode(self, tokens: Any) -> str:
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=True))

    # MARK: Running requests

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _connect(self, timeout: float) -> None:
        client = self._client_or_make()
        try:
            status = client.status(timeout=timeout)
        except TimeoutError:
            raise CompassEvaluationError(f"no answer from the compass broker at {self.broker} within {timeout:g} s: "
                                         "is compass-broker running there (and the CURVE keys right)?") from None
        pools = {p.get("name"): p for p in status.get("scheduler", {}).get("pools", [])}
        if self.pool not in pools:
            self.logger.warning(f"the compass broker at {self.broker} does not know pool {self.pool!r} yet: start a "
                                f"worker for it (or the broker with --pool {self.pool}), else requests are refused")
        elif not pools[self.pool].get("workers"):
            self.logger.warning(f"compass pool {self.pool!r} has no worker yet: requests wait until one joins")

    def _client_or_make(self) -> Client:
        with self._lock:
            if self._client is None:
                self._client = Client(self.broker, _session(self._session), **self._curve)
                atexit.register(self._client.close)
            return self._client

    def _run(self, requests: list[dict[str, Any]], what: str) -> list[Result]:
        """Submits every request at once and returns the results in order; raises when any failed."""
        client = self._client_or_make()
        with self._lock:
            self._counter += 1
            tag = f"b{self._counter}-"
        for request in requests:
            request["custom_id"] = tag + request["custom_id"]
        batches = max(1, math.ceil(len(requests) / self.compass_batch_size))
        try:
            results = client.submit(requests, self.pool, batch_size=self.compass_batch_size, window=batches,
                                    max_attempts=self.max_attempts, priority=self.priority, timeout=self.timeout)
        except CompassError as error:
            raise CompassEvaluationError(f"compass refused the {what} requests on pool {self.pool!r}: {error}") from error
        except TimeoutError:
            raise CompassEvaluationError(f"{len(requests)} {what} requests on pool {self.pool!r} did not finish "
                                         f"within {self.timeout:g} s (the model's timeout)") from None
        failed = [r for r in results if not r.ok]
        if failed:
            quoted = "; ".join(f"{r.custom_id}: {r.error.code} {r.error.message}".strip()
                               for r in failed[:QUOTED_FAILURES] if r.error is not None)
            raise CompassEvaluationError(f"{len(failed)} of {len(requests)} {what} requests failed on pool "
                                         f"{self.pool!r}: {quoted}")
        return results

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _sampling_fields(kwargs: dict[str, Any]) -> dict[str, Any]:
    """generation_kwargs as request fields (``do_sample=False``: temperature 0)."""
    unknown = set(kwargs) - {*GENERATION_FIELDS, "do_sample", "max_new_tokens", "max_tokens"}
    if unknown:
        raise ValueError(f"CompassModel: generation_kwargs {sorted(unknown)} are not compass request fields; "
                         f"use {', '.join(GENERATION_FIELDS)} or do_sample")
    fields = {k: kwargs[k] for k in GENERATION_FIELDS if kwargs.get(k) is not None}
    if kwargs.get("do_sample") is False:
        fields["temperature"] = 0.0
    elif kwargs.get("do_sample") and "temperature" not in fields:
        fields["temperature"] = 1.0
    return fields


def _as_list(value: Union[str, Sequence[str], None]) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _session(prefix: Optional[str]) -> Optional[str]:
    return None if prefix is None else f"{prefix}-{os.getpid()}"


def _load_tokenizer(path: str, kwargs: dict[str, Any]) -> Any:
    if not os.path.isdir(path):
        raise ValueError(f"tokenizer_path {path!r} is not a directory: give the served model's tokenizer as a "
                         "local directory (nothing is downloaded)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True, **kwargs)
