"""vllm/logprobs.py (0.24): Logprob, and FlatLogprobs (SamplingParams.flat_logprobs): per position,
a dict token id -> Logprob holding the position's own token and the top k."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class FlatLogprobs(Sequence):  # type: ignore[type-arg]
    """The flat form: a few parallel lists instead of a dict per position; indexing builds the dict
    of one position (empty for the prompt's first, which has none)."""

    def __init__(self) -> None:
        self.starts: list[int] = [0]
        self.token_ids: list[int] = []
        self.entries: list[Logprob] = []

    def append(self, position: dict[int, Logprob] | None) -> None:
        for token, entry in (position or {}).items():
            self.token_ids.append(token)
            self.entries.append(entry)
        self.starts.append(len(self.token_ids))

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, index):  # type: ignore[no-untyped-def, override]
        if isinstance(index, slice):
            raise TypeError("the fake FlatLogprobs takes integer indexes only")
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        lo, hi = self.starts[index], self.starts[index + 1]
        return dict(zip(self.token_ids[lo:hi], self.entries[lo:hi], strict=True))
