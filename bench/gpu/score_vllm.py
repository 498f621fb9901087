"""Path (b) of the scoring benchmark: vLLM with no compass. Every context+choice is one prompt (the
token ids of the lm-eval rule, score_common.split, so that every path scores the same tokens), all
in one LLM.generate call with SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1,
detokenize=False, flat_logprobs where this vLLM has it); a choice's log-likelihood is the sum of
the prompt logprobs at its positions, greedy when its token is the top-1 at each.

Variants, in one process (one model load), each with cold and warm passes:
- `plain`: as above. vLLM does not read the prefix cache for prompt_logprobs requests (it derives
  skip_reading_prefix_cache=True), so every prompt is computed in full.
- `cacheread`: the same with skip_reading_prefix_cache=False, so the shared preamble's cached
  blocks are reused. Rows of positions served from the cache are not computed, so each output's
  num_cached_tokens is checked: a choice whose context's last token was served from the cache is
  run again without reading it (counted as `reruns`). The prefix cache is reset before each pass,
  so that a pass sees each prompt once, as an evaluation does.

    python3 score_vllm.py MODEL ITEMS.jsonl OUTDIR [--variants plain,cacheread] [--passes 2]
        [--budget-s 300] [--gpu-memory-utilization 0.85] [--max-model-len 2048] [--limit N]
        [--enforce-eager]

Writes OUTDIR/score-vllm.json(l) for `plain` and OUTDIR/score-vllm-cacheread.json(l).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from score_common import Budget, item_pairs, load_items, pass_record, write_items, write_summary  # noqa: E402


def top_token(entries: dict[int, Any]) -> int:
    """The most likely token of a position: rank 1 (prompt_logprobs=1 returns the top-1 beside the
    position's own token, which carries its rank in the vocabulary)."""
    return min(entries.items(), key=lambda kv: (kv[1].rank is None, kv[1].rank or 0, -kv[1].logprob))[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("items")
    ap.add_argument("outdir")
    ap.add_argument("--variants", default="plain,cacheread")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args()
    budget = Budget(a.budget_s)
    variants = [v for v in a.variants.split(",") if v]

    import vllm
    from vllm import LLM, SamplingParams

    started = time.monotonic()
    llm = LLM(model=a.model, gpu_memory_utilization=a.gpu_memory_utilization, max_model_len=a.max_model_len,
              enforce_eager=a.enforce_eager, seed=0)
    load_seconds = time.monotonic() - started
    tok = llm.get_tokenizer()
    # SamplingParams is a msgspec.Struct (a dataclass in bin/engines/tests/fake_vllm, which this runs against on CPU).
    fields = set(getattr(SamplingParams, "__struct_fields__", ())) or (
        {f.name for f in dataclasses.fields(SamplingParams)} if dataclasses.is_dataclass(SamplingParams) else set())
    if "cacheread" in variants and "skip_reading_prefix_cache" not in fields:
        print("score_vllm: this vLLM has no skip_reading_prefix_cache: no cacheread variant", file=sys.stderr)
        variants.remove("cacheread")

    items = load_items(a.items, a.limit)
    pairs = item_pairs(lambda text: list(tok.encode(text, add_special_tokens=False)), items)
    rows = [(i, j, ctx, cont) for i, choices in enumerate(pairs) for j, (ctx, cont) in enumerate(choices)]
    prompts = [{"prompt_token_ids": ctx + cont} for _, _, ctx, cont in rows]

    def params(read_cache: bool) -> Any:
        values: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 1, "detokenize": False}
        if "flat_logprobs" in fields:
            values["flat_logprobs"] = True
        if read_cache:
            values["skip_reading_prefix_cache"] = False
        return SamplingParams(**values)

    def read(output: Any, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
        ids, logprobs = ctx + cont, output.prompt_logprobs
        shift = len(ids) - len(logprobs)  # a list shorter than the prompt is aligned at its end
        total, greedy = 0.0, True
        for t in range(len(ctx), len(ids)):
            entries = logprobs[t - shift]
            total += float(entries[ids[t]].logprob)
            greedy = greedy and top_token(entries) == ids[t]
        return total, greedy

    def run_pass(variant: str) -> tuple[list[list[float]], list[list[bool]], dict[str, Any]]:
        read_cache = variant == "cacheread"
        if read_cache:
            llm.reset_prefix_cache()
        outputs = llm.generate(prompts, params(read_cache), use_tqdm=False)
        logprobs = [[0.0] * len(p) for p in pairs]
        greedy = [[False] * len(p) for p in pairs]
        again: list[int] = []
        cached_tokens = 0
        for k, ((i, j, ctx, cont), output) in enumerate(zip(rows, outputs, strict=True)):
            cached = getattr(output, "num_cached_tokens", None)
            cached_tokens += cached or 0
            if read_cache and (cached is None or cached > len(ctx) - 1):
                again.append(k)  # the row of the context's last token was not computed
                continue
            logprobs[i][j], greedy[i][j] = read(output, ctx, cont)
        if again:
            rerun = llm.generate([prompts[k] for k in again], params(False), use_tqdm=False)
            for k, output in zip(again, rerun, strict=True):
                i, j, ctx, cont = rows[k]
                logprobs[i][j], greedy[i][j] = read(output, ctx, cont)
        stats = {"reruns": len(again), "mean_cached_tokens": round(cached_tokens / len(rows), 1)}
        return logprobs, greedy, stats

    for number_of, variant in enumerate(variants):
        name = "vllm" if variant == "plain" else f"vllm-{variant}"
        passes: list[dict[str, Any]] = []
        notes: list[str] = []
        first = None
        share = budget.left() / (len(variants) - number_of)  # what is left, split among the variants left
        variant_budget = Budget(share)
        for number in range(1, a.passes + 1):
            if passes and not variant_budget.fits(passes[-1]["seconds"] * 1.2):
                notes.append(f"stopped after {len(passes)} passes: the next would not fit the budget")
                break
            t0 = time.monotonic()
            logprobs, greedy, stats = run_pass(variant)
            seconds = time.monotonic() - t0
            passes.append(pass_record(number, seconds, len(items)) | stats)
            print(f"{name}: pass {number}: {seconds:.2f}s, {len(items) / seconds:.1f} items/s, {stats}", file=sys.stderr)
            if first is None:
                first = (logprobs, greedy)
            else:
                drift = max(abs(x - y) for fa, fb in zip(first[0], logprobs) for x, y in zip(fa, fb))
                passes[-1]["max_abs_diff_from_pass_1"] = round(drift, 6)
        assert first is not None
        write_items(os.path.join(a.outdir, f"score-{name}.jsonl"),
                    ({"custom_id": item["custom_id"], "logprobs": lp, "greedy": g, "tokens": [len(c) for _, c in p]}
                     for item, lp, g, p in zip(items, first[0], first[1], pairs, strict=True)))
        what = "LLM.generate, prompt_logprobs=1, max_tokens=1" + (
            ", skip_reading_prefix_cache=False (reruns where the cache reached the context's end)" if variant == "cacheread" else "")
        write_summary(os.path.join(a.outdir, f"score-{name}.json"), {
            "path": name, "kind": "direct", "what": what, "items": len(items), "choices": len(rows),
            "load_seconds": round(load_seconds, 1) if number_of == 0 else 0.0, "passes": passes, "notes": notes,
            "vllm": vllm.__version__, "flat_logprobs": "flat_logprobs" in fields})


if __name__ == "__main__":
    main()
