"""Path (a) of the scoring benchmark: transformers forward passes as lm-evaluation-harness runs them
(HFLM._loglikelihood_tokens): every context+choice is one row, rows sorted longest first, cut into
batches of --batch-size, padded on the right, one forward per batch with no attention mask (causal
attention never looks right), and each choice's log-likelihood summed from its positions' log
softmax, greedy when each of its tokens is its position's argmax. (lm-eval takes log_softmax over
the whole batch's logits in the model's dtype; this takes it in float32 over the choice's positions
only, which is the more exact of the two and no slower.)

    python3 score_hf.py MODEL ITEMS.jsonl OUTDIR [--name hf] [--batch-size 64] [--passes 2]
        [--budget-s 240] [--device cuda|cpu] [--dtype bfloat16|float32] [--limit N]

Writes OUTDIR/score-NAME.json and .jsonl (score_common.py). Pass 1 is cold (the first after
loading: CUDA kernels and allocator warm up in it); later passes are warm.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from score_common import Budget, item_pairs, load_items, pass_record, write_items, write_summary  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("items")
    ap.add_argument("outdir")
    ap.add_argument("--name", default="hf")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=240.0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args()
    budget = Budget(a.budget_s)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, a.dtype or ("bfloat16" if device == "cuda" else "float32"))
    started = time.monotonic()
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).to(device).eval()
    if device == "cuda":
        torch.cuda.synchronize()
    load_seconds = time.monotonic() - started

    items = load_items(a.items, a.limit)
    pairs = item_pairs(lambda text: list(tok.encode(text, add_special_tokens=False)), items)
    rows = [(i, j, ctx, cont) for i, choices in enumerate(pairs) for j, (ctx, cont) in enumerate(choices)]
    # lm-eval's Collator: longest first, so the first batch is the largest (an OOM shows at once).
    rows.sort(key=lambda r: -(len(r[2]) + len(r[3])))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def run_pass() -> tuple[list[list[float]], list[list[bool]]]:
        logprobs = [[0.0] * len(p) for p in pairs]
        greedy = [[False] * len(p) for p in pairs]
        with torch.inference_mode():
            for start in range(0, len(rows), a.batch_size):
                batch = rows[start:start + a.batch_size]
                inputs = [(ctx + cont)[:-1] for _, _, ctx, cont in batch]
                width = max(len(x) for x in inputs)
                ids = torch.full((len(inputs), width), pad, dtype=torch.long)
                for k, x in enumerate(inputs):
                    ids[k, :len(x)] = torch.tensor(x)
                logits = model(ids.to(device)).logits
                for k, (i, j, ctx, cont) in enumerate(batch):
                    # The logits at position t predict token t + 1: the choice's tokens are predicted
                    # from the context's last position on.
                    scores = logits[k, len(ctx) - 1:len(ctx) - 1 + len(cont)].float().log_softmax(-1)
                    target = torch.tensor(cont, device=scores.device)
                    logprobs[i][j] = float(scores.gather(1, target[:, None]).sum())
                    greedy[i][j] = bool((scores.argmax(-1) == target).all())
        if device == "cuda":
            torch.cuda.synchronize()
        return logprobs, greedy

    passes: list[dict[str, Any]] = []
    first: tuple[list[list[float]], list[list[bool]]] | None = None
    notes: list[str] = []
    for number in range(1, a.passes + 1):
        if passes and not budget.fits(passes[-1]["seconds"] * 1.2):
            notes.append(f"stopped after {len(passes)} passes: the next would not fit the {a.budget_s:.0f}s budget")
            break
        t0 = time.monotonic()
        result = run_pass()
        seconds = time.monotonic() - t0
        passes.append(pass_record(number, seconds, len(items)))
        print(f"{a.name}: pass {number}: {seconds:.2f}s, {len(items) / seconds:.1f} items/s", file=sys.stderr)
        if first is None:
            first = result
        else:
            drift = max(abs(x - y) for fa, fb in zip(first[0], result[0]) for x, y in zip(fa, fb))
            passes[-1]["max_abs_diff_from_pass_1"] = round(drift, 6)
    assert first is not None
    write_items(os.path.join(a.outdir, f"score-{a.name}.jsonl"),
                ({"custom_id": item["custom_id"], "logprobs": lp, "greedy": g, "tokens": [len(c) for _, c in p]}
                 for item, lp, g, p in zip(items, first[0], first[1], pairs, strict=True)))
    contexts = [len(p[0][0]) for p in pairs]
    continuations = [len(c) for p in pairs for _, c in p]
    write_summary(os.path.join(a.outdir, f"score-{a.name}.json"), {
        "path": a.name, "kind": "direct", "what": f"transformers forward, batches of {a.batch_size} (lm-eval's way)",
        "items": len(items), "choices": len(rows), "load_seconds": round(load_seconds, 1), "passes": passes,
        "device": device, "dtype": str(dtype).replace("torch.", ""), "notes": notes,
        "mean_context_tokens": round(sum(contexts) / len(contexts), 1),
        "mean_continuation_tokens": round(sum(continuations) / len(continuations), 2),
        "tokens_per_pass": sum(len(ctx) + len(cont) for _, _, ctx, cont in rows)})


if __name__ == "__main__":
    main()
