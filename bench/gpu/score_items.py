"""Writes the scoring benchmark's items: N five-shot, four-choice questions about a made-up land,
with multi-token answers, as compass scoring requests (docs/protocol.md, Payloads):

    {"custom_id": "item000000", "prompt": "<preamble><passage>\\nQuestion: ...\\nA. ...\\nAnswer:",
     "continuations": [" answer one", " answer two", " answer three", " answer four"]}

Every context starts with the same preamble (an instruction and five worked examples), as a
five-shot task does, so a prefix cache can share it. The text is synthetic: pseudo-words made of
the syllables make_tiny_model.py trains its tokenizer on, in a few sentence patterns. Deterministic
for a seed (and, with --model, for the tokenizer: the sentence counts are chosen so that the mean
context is about --target-tokens tokens of it).

    python3 score_items.py OUT.jsonl N [--seed 1] [--model DIR] [--target-tokens 600]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Callable
from typing import Any

SYLLABLES = [a + b for a in "bcdfghklmnprstvwz" for b in "aeiou"] + list("aeiou")
PATTERNS = [
    "{name} of {place} keeps {count} {thing}s beside the {thing2}.",
    "In {place} the {thing}s are {colour} when {name} {verb}s.",
    "{name} {verb}s the {colour} {thing} every {count} days.",
    "The {thing} of {place} was made by {name} from {thing2}s.",
    "Nobody in {place} {verb}s a {thing} before {name} does.",
    "{name} says that {count} {colour} {thing}s fill the {thing2} of {place}.",
]
QUESTIONS = [
    "What does {name} keep beside the {thing2}?",
    "Who {verb}s the {colour} {thing}?",
    "Where are the {thing}s {colour}?",
    "What fills the {thing2} of {place}?",
]


class Lexicon:
    """Seeded pseudo-words by role, so that names and things recur across the text."""

    def __init__(self, rng: random.Random) -> None:
        def word(low: int, high: int) -> str:
            return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(low, high)))

        self.rng = rng
        self.names = [word(2, 3).capitalize() for _ in range(60)]
        self.places = [word(2, 4).capitalize() for _ in range(30)]
        self.things = [word(1, 3) for _ in range(120)]
        self.verbs = [word(1, 2) for _ in range(40)]
        self.colours = [word(1, 2) for _ in range(20)]

    def fill(self, pattern: str) -> str:
        r = self.rng
        return pattern.format(name=r.choice(self.names), place=r.choice(self.places), thing=r.choice(self.things),
                              thing2=r.choice(self.things), verb=r.choice(self.verbs), colour=r.choice(self.colours),
                              count=r.randint(2, 99))

    def answer(self) -> str:
        """A multi-token answer: two to five pseudo-words."""
        r = self.rng
        return " ".join([r.choice(self.colours)] + [r.choice(self.things) for _ in range(r.randint(1, 4))])


def question(lex: Lexicon, sentences: int) -> tuple[str, list[str], int]:
    """A passage, question and four lettered choices (ending in "Answer:"), the choices, the gold one."""
    r = lex.rng
    passage = " ".join(lex.fill(r.choice(PATTERNS)) for _ in range(sentences))
    choices: list[str] = []
    while len(choices) < 4:
        choice = lex.answer()
        if choice not in choices:
            choices.append(choice)
    lines = [f"Passage: {passage}", f"Question: {lex.fill(r.choice(QUESTIONS))}"]
    lines += [f"{letter}. {choice}" for letter, choice in zip("ABCD", choices, strict=True)]
    return "\n".join(lines) + "\nAnswer:", choices, r.randrange(4)


def build(seed: int, n: int, sentences: int) -> list[dict[str, Any]]:
    """N items; each of the preamble's five examples has `sentences` sentences, each item's passage
    `sentences` +- 3 (at least 1)."""
    lex = Lexicon(random.Random(seed))
    shots = []
    for _ in range(5):
        text, choices, gold = question(lex, sentences)
        shots.append(f"{text} {choices[gold]}\n\n")
    preamble = "The following are questions (with answers) about the land of Zorbavi.\n\n" + "".join(shots)
    items = []
    for i in range(n):
        text, choices, _ = question(lex, max(1, sentences + lex.rng.randint(-3, 3)))
        items.append({"custom_id": f"item{i:06d}", "prompt": preamble + text,
                      "continuations": [" " + c for c in choices]})
    return items


def calibrate(seed: int, encode: Callable[[str], list[int]], target: int) -> int:
    """The sentence count whose items' mean context length (over a sample) is closest to `target`."""
    best, best_gap = 1, float("inf")
    for sentences in range(1, 60):
        sample = build(seed, 48, sentences)
        mean = sum(len(encode(item["prompt"])) for item in sample) / len(sample)
        if abs(mean - target) < best_gap:
            best, best_gap = sentences, abs(mean - target)
        if mean > target:
            break
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("n", type=int)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--model", help="a model directory whose tokenizer sets the context length")
    ap.add_argument("--target-tokens", type=int, default=600, help="mean context length in tokens (with --model)")
    ap.add_argument("--sentences", type=int, default=8, help="sentences per passage (without --model)")
    a = ap.parse_args()
    sentences = a.sentences
    stats: dict[str, Any] = {}
    encode: Callable[[str], list[int]] | None = None
    if a.model:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(a.model)

        def encode(text: str) -> list[int]:
            return list(tok.encode(text, add_special_tokens=False))

        sentences = calibrate(a.seed, encode, a.target_tokens)
    items = build(a.seed, a.n, sentences)
    with open(a.out, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
    stats.update(items=len(items), sentences=sentences, seed=a.seed)
    if encode is not None:
        sample = items[: min(len(items), 256)]
        stats["mean_context_tokens"] = round(sum(len(encode(i["prompt"])) for i in sample) / len(sample), 1)
        shared = os.path.commonprefix([items[0]["prompt"], items[-1]["prompt"]]) if len(items) > 1 else ""
        stats["shared_prefix_tokens"] = len(encode(shared))
    print(json.dumps(stats), file=sys.stderr)


if __name__ == "__main__":
    main()
