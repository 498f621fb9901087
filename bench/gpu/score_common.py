"""What the scoring benchmark's helpers share: the items file, the tokenization rule of
docs/protocol.md ("How a text continuation is tokenized", the same as lm-evaluation-harness), and
the two files each path writes:

- `score-<path>.jsonl`: one line per item, {"custom_id", "logprobs": [per choice], "greedy": [...],
  "tokens": [...]} (or {"custom_id", "error"}), from the path's first (cold) pass;
- `score-<path>.json`: {"path", "kind": "direct"|"compass", "items", "load_seconds", "passes":
  [{"pass", "seconds", "items_per_second"}], "notes": [...], ...}.

Standard library only; the paths import torch or vllm themselves.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Encode = Callable[[str], list[int]]


def load_items(path: str, limit: int | None = None) -> list[dict[str, Any]]:
    items = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    return items[:limit] if limit else items


def split(encode: Encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The context's and the continuation's token ids, as lm-evaluation-harness makes them
    (HFLM._encode_pair): trailing whitespace of the context moves to the continuation, whose tokens
    are those of encode(context + continuation) after the first len(encode(context)). `encode` adds
    no special tokens. (The benchmark's contexts are never empty.)"""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(context + continuation)
    context_ids = encode(context)
    return context_ids, whole[len(context_ids):]


def item_pairs(encode: Encode, items: Sequence[dict[str, Any]]) -> list[list[tuple[list[int], list[int]]]]:
    """Per item, per choice: (context ids, continuation ids)."""
    return [[split(encode, item["prompt"], c) for c in item["continuations"]] for item in items]


def write_items(path: str, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_summary(path: str, summary: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, path)


class Budget:
    """A path's time budget: passes stop being started once the next would likely not fit."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def fits(self, estimate: float) -> bool:
        return self.left() > estimate


def pass_record(number: int, seconds: float, items: int) -> dict[str, Any]:
    return {"pass": number, "seconds": round(seconds, 3), "items_per_second": round(items / seconds, 2)}
