#!/usr/bin/env python3
"""Writes a random Llama-architecture model and a locally trained tokenizer to OUTDIR.

No network and no hub: the weights are random (seeded) and the tokenizer is a byte-level BPE
trained on a small built-in corpus with the `tokenizers` library, saved as a transformers
tokenizer with a simple chat template. The defaults make a model of a few hundred thousand
parameters that loads in well under a second on CPU (the engine tests use it); bigger arguments
make a benchmark model, e.g. ~1B parameters in bf16:

    make_tiny_model.py /models/llama-1b --layers 16 --hidden 2048 --heads 32 --kv-heads 8 \
        --intermediate 8192 --vocab 32000 --max-positions 4096 --dtype bfloat16

The weights are allocated once, directly in the target dtype, and initialised in place (no
float32 copy), so a 1B bf16 model needs about 2 GiB of RAM plus what saving takes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]

# A Llama-2-style chat template in its simplest form. The engines append the generation prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = """
The quick brown fox jumps over the lazy dog. A batch of prompts goes to a pool of workers.
Each worker hosts one engine, and each engine runs one model on its GPUs. The broker hands out
batches, counts credits, retries failures and keeps results until the producer acknowledges them.
Translate the following sentence into French: hello, how are you today? Bonjour, comment allez-vous?
Summarise this paragraph in one line. Write a short poem about the sea, the wind and the stars.
What is the capital of France? Paris is the capital of France. Two plus two equals four.
Once upon a time there was a small model that answered every question with random words.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 32 64 128 256 512 1024 2048 4096.
Punctuation and symbols: ( ) [ ] { } < > = + - * / \\ | ; : , . ! ? ' " ` ~ @ # $ % ^ & _
User: please explain tensor parallelism. Assistant: the weights are split across devices.
"""


def corpus(seed: int) -> list[str]:
    """The built-in text plus seeded pseudo-words, so that larger vocabularies have merges to learn."""
    rng = random.Random(seed)
    lines = [line for line in _CORPUS.strip().splitlines() if line]
    syllables = [a + b for a in "bcdfghklmnprstvwz" for b in "aeiou"] + list("aeiou")
    for _ in range(4000):
        words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(12)]
        lines.append(" ".join(words))
    return lines


def train_tokenizer(vocab_size: int, seed: int) -> Any:
    """A byte-level BPE with exactly `vocab_size` entries (topped up with synthetic merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(seed), trainer=trainer)
    tokenizer = _top_up(tokenizer, vocab_size)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return tokenizer


def _top_up(tokenizer: Any, vocab_size: int) -> Any:
    """Adds merges of existing tokens until the vocabulary has exactly `vocab_size` entries.

    A small corpus runs out of pairs to merge long before 32000 entries; the model's embedding has
    `vocab_size` rows, and every id a model can generate must decode, so the tokenizer must be as
    large. A merge of two known tokens is always a valid BPE rule, even if it never fires.
    """
    from tokenizers import Tokenizer

    if tokenizer.get_vocab_size() >= vocab_size:
        return tokenizer
    data = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    merges: list[Any] = data["model"]["merges"]
    as_strings = bool(merges) and isinstance(merges[0], str)
    specials = set(SPECIAL_TOKENS)
    base = sorted((t for t in vocab if t not in specials), key=lambda t: vocab[t])
    # The special tokens are in the model's vocabulary too (the trainer put them there), so the
    # model's vocabulary is the whole of it.
    next_id = max(vocab.values()) + 1
    i = 0
    while len(vocab) < vocab_size:
        left, right = base[i % len(base)], base[(i * 7919 + 13) % len(base)]
        i += 1
        if left + right in vocab:
            continue
        vocab[left + right] = next_id
        next_id += 1
        merges.append(f"{left} {right}" if as_strings else [left, right])
    return Tokenizer.from_str(json.dumps(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--max-positions", type=int, default=256)
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.hidden % args.heads or args.heads % args.kv_heads:
        parser.error("--hidden must be a multiple of --heads, and --heads a multiple of --kv-heads")

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    started = time.monotonic()
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)

    raw = train_tokenizer(args.vocab, args.seed)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=args.max_positions,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # Random weights give near-uniform logits; a wider init makes greedy output vary with
        # the prompt instead of repeating one token, which the tests rely on.
        initializer_range=0.2 if args.hidden <= 256 else 0.02,
    )
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    # from_config with dtype allocates every tensor directly in that dtype and initialises it in
    # place, so the model exists once in memory.
    model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    model.save_pretrained(out, max_shard_size="2GB")
    count = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {out}: llama, {count:,} parameters ({count / 1e6:.2f}M), {args.dtype}, "
        f"vocab {len(tokenizer)}, {args.layers} layers, in {time.monotonic() - started:.1f}s",
        file=sys.stderr,
    )
    print(json.dumps({"path": str(out), "parameters": count, "vocab": len(tokenizer)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
