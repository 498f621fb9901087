"""vllm/sampling_params.py (0.24): SamplingParams and RequestOutputKind, with the real validation
of the fields the adapter sets (the real class is a msgspec.Struct; keyword construction is the same)
and the real derivation of skip_reading_prefix_cache from prompt_logprobs (vllm-project/vllm#28194)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum


class RequestOutputKind(Enum):
    CUMULATIVE = 0  # the entire output so far in every RequestOutput
    DELTA = 1  # only what is new in each RequestOutput
    FINAL_ONLY = 2  # no intermediate RequestOutput


class VLLMValidationError(ValueError):
    pass


@dataclass(kw_only=True)
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    flat_logprobs: bool = False
    detokenize: bool = True
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    skip_reading_prefix_cache: bool | None = None

    def __post_init__(self) -> None:
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        if not 0.0 <= self.temperature <= 2.0:
            raise VLLMValidationError(f"temperature must be in [0, 2], got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise VLLMValidationError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise VLLMValidationError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if any(not s for s in self.stop):
            raise ValueError("stop cannot contain an empty string.")
        if self.skip_reading_prefix_cache is None:
            # If prefix caching is enabled, the output of prompt logprobs may be less than
            # n_prompt_tokens: skip reading the cache for this request (it still writes it).
            self.skip_reading_prefix_cache = self.prompt_logprobs is not None

    def clone(self) -> SamplingParams:
        return SamplingParams(**{k: v for k, v in asdict(self).items()})

    def as_json(self) -> dict[str, object]:
        out = asdict(self)
        out["output_kind"] = self.output_kind.name
        return out
