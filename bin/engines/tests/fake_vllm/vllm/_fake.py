"""The fake model behind the stand-in vLLM: a word-level tokenizer and a deterministic "model".

Greedy decoding answers with the prompt's words in reverse order, then end-of-sequence (the
synthetic engine's rule, so tests can compute every expected text); sampling draws the prompt's
words with random.Random(seed). Every call the adapter makes is appended to $FAKE_VLLM_LOG, with
the name of the thread that made it.

Logprobs come from a deterministic toy distribution over token ids 0..VOCAB-1 (`logprobs_at`):
a hash of the previous token, plus a large bonus for one favoured token. After a prompt prefix the
favoured token is the prefix's last word (so a continuation that repeats the context's last word is
what greedy decoding would produce); while generating it is the token greedy generation produces
next. Tests compute expected values with the same functions.

Words in a prompt steer the engine (tests/test_vllm_engine.py): `gated` holds the request (it
stays in the engine, scheduled, generating nothing) until the file $FAKE_VLLM_GATE exists;
`@raise` makes the step that reaches it raise RuntimeError (once: the request is dropped);
`@dead` makes it raise EngineDeadError, and every call after it too (the engine core died)."""

from __future__ import annotations

import json
import math
import os
import random
import threading
from collections.abc import Sequence as Seq
from typing import Any

from vllm.logprobs import FlatLogprobs, Logprob

BOS, EOS = 1, 2
SPECIAL = {"<s>": BOS, "</s>": EOS}
VOCAB = 1024  # the toy distribution's token ids; words get ids from 12 up
GARBAGE = 123.0  # the logprob of prompt rows left unwritten (positions read from the prefix cache)


def favoured_after(prefix: Seq[int]) -> int:
    """The token the toy model favours after a prompt prefix: its last token other than BOS and EOS."""
    return next((t for t in reversed(prefix) if t not in (BOS, EOS)), EOS)


def logprobs_at(prefix: Seq[int], favoured: int) -> list[float]:
    """Natural-log probabilities of every token id after `prefix`, `favoured` the most likely."""
    last = prefix[-1] if prefix else 0
    logits = [((last * 131 + t * 71) % 97) / 97.0 for t in range(VOCAB)]
    logits[favoured] += 4.0
    top = max(logits)
    norm = top + math.log(sum(math.exp(x - top) for x in logits))
    return [x - norm for x in logits]


def entries(values: list[float], token: int, k: int) -> dict[int, Logprob]:
    """One position as vLLM gives it: the position's own token with its rank, and the top k (ranks 1..k)."""
    order = sorted(range(len(values)), key=lambda t: (-values[t], t))
    out = {token: Logprob(values[token], order.index(token) + 1)}
    for rank, t in enumerate(order[:k], 1):
        out[t] = Logprob(values[t], rank)
    return out


def container(flat: bool) -> Any:
    return FlatLogprobs() if flat else []


def record(event: str, **fields: Any) -> None:
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        line = json.dumps({"event": event, "thread": threading.current_thread().name, **fields}, default=str)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


class FakeTokenizer:
    """The parts of vLLM's TokenizerLike (tokenizers/protocol.py) the adapter uses: one token per word."""

    chat_template = "<|role|> content </s> ... <|assistant|>"
    bos_token_id, eos_token_id = BOS, EOS

    def __init__(self) -> None:
        self.vocab: dict[str, int] = dict(SPECIAL)
        self.words: dict[int, str] = {v: k for k, v in SPECIAL.items()}

    def token(self, word: str) -> int:
        if word not in self.vocab:
            self.vocab[word] = len(self.vocab) + 10
            self.words[self.vocab[word]] = word
            assert self.vocab[word] < VOCAB, "the fake tokenizer ran out of ids"
        return self.vocab[word]

    def encode(self, text: str, truncation: bool | None = None, max_length: int | None = None,
               add_special_tokens: bool = True) -> list[int]:
        return ([BOS] if add_special_tokens else []) + [self.token(w) for w in text.split()]

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return " ".join(self.words.get(i, f"<{i}>") for i in ids if not (skip_special_tokens and i in (BOS, EOS)))

    def apply_chat_template(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                            **kwargs: Any) -> str | list[int]:
        text = "<s> " + " ".join(f"<|{m['role']}|> {m['content']} </s>" for m in messages)
        if kwargs.get("add_generation_prompt"):
            text += " <|assistant|>"
        if kwargs.get("tokenize", True):
            return self.encode(text, add_special_tokens=False)
        return text


class Sequence:
    """One request being generated: one token per engine step."""

    def __init__(self, request_id: str, ids: list[int], params: Any, tokenizer: FakeTokenizer) -> None:
        self.request_id, self.ids, self.params = request_id, ids, params
        words = [w for w in tokenizer.decode(ids, skip_special_tokens=True).split() if not w.startswith("<|")]
        self.words = words or ["empty"]
        self.rng = random.Random(params.seed) if params.temperature > 0 else None
        self.tokenizer = tokenizer
        self.out: list[int] = []
        self.text = ""
        self.sent_text = 0
        self.sent_tokens = 0
        self.finish_reason: str | None = None
        prompt_words = set(tokenizer.decode(ids).split())
        self.gated = "gated" in prompt_words
        self.fault = next((w for w in ("@dead", "@raise") if w in prompt_words), None)
        self.num_cached_tokens: int | None = None  # set when first scheduled
        self.prompt_logprobs: Any = None
        self.sample_logprobs: Any = container(params.flat_logprobs) if params.logprobs is not None else None
        self.sent_logprobs = 0
        self.sent_prompt_logprobs = False

    def compute_prompt_logprobs(self) -> None:
        """Rows of positions read from the prefix cache are not computed. vLLM 0.24's V2 model runner
        (the default for Llama) leaves them out, so the list is shorter than the prompt; the V1
        runner (FAKE_VLLM_RUNNER=v1) returns them uninitialised: here they hold GARBAGE."""
        k = self.params.prompt_logprobs
        if k is None:
            return
        v1 = os.environ.get("FAKE_VLLM_RUNNER", "v2") == "v1"
        out = container(self.params.flat_logprobs)
        out.append(None)
        for i in range(1, len(self.ids)):
            if i <= (self.num_cached_tokens or 0):
                if v1:
                    out.append({self.ids[i]: Logprob(GARBAGE, 1)})
                continue
            prefix = self.ids[:i]
            out.append(entries(logprobs_at(prefix, favoured_after(prefix)), self.ids[i], k))
        self.prompt_logprobs = out

    def held(self) -> bool:
        """A `gated` request generates nothing until the file $FAKE_VLLM_GATE exists."""
        gate = os.environ.get("FAKE_VLLM_GATE")
        return self.gated and not (gate and os.path.exists(gate))

    def next_token(self) -> int:
        n = len(self.out)
        if not self.params.ignore_eos and n == len(self.words):
            return EOS
        word = self.rng.choice(self.words) if self.rng else self.words[::-1][n % len(self.words)]
        return self.tokenizer.token(word)

    def greedy_token(self) -> int:
        n = len(self.out)
        if not self.params.ignore_eos and n == len(self.words):
            return EOS
        return self.tokenizer.token(self.words[::-1][n % len(self.words)])

    def step(self) -> None:
        token = self.next_token()
        if self.sample_logprobs is not None:
            values = logprobs_at(self.ids + self.out, self.greedy_token())
            self.sample_logprobs.append(entries(values, token, self.params.logprobs))
        self.out.append(token)
        if token == EOS:
            self.finish_reason = "stop"
            return
        self.text = self.tokenizer.decode(self.out, skip_special_tokens=True)
        stops = [(self.text.find(s), s) for s in self.params.stop if s in self.text]
        if stops:
            self.text = self.text[:min(stops)[0]]
            self.finish_reason = "stop"
        elif len(self.out) >= self.params.max_tokens:
            self.finish_reason = "length"

    def delta_text(self) -> str:
        # Like vLLM's detokenizer: hold back what could still become a stop string.
        hold = 0 if self.finish_reason else max((len(s) - 1 for s in self.params.stop), default=0)
        end = max(self.sent_text, len(self.text) - hold)
        text, self.sent_text = self.text[self.sent_text:end], end
        return text
