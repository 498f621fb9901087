"""The table of bench/gpu/stream.sh: completion tokens per second of every path, cold (the first pass
after its engine loaded) and warm (the others), as ratios against vLLM's own LLM.generate and
`vllm serve` measured in the same run, and the goals of issue #17.

Ratios are paired: a path's pass in round k over the reference's pass in round k (stream.sh runs
every path once per round, interleaved), and the table gives the median of the warm rounds' ratios
with their range; the goals are judged on those medians.

    python3 stream_report.py stream-results.jsonl > stream-report.md
"""
from __future__ import annotations

import json
import statistics
import sys

LABELS = {
    "generate": "vLLM `LLM.generate`, all prompts in one call",
    "serve": "`vllm serve`, {clients} HTTP clients",
    "batch": "compass submit, batches of 512",
    "one": "compass submit --batch-size 1 (one-request batches)",
    "gateway": "compass gateway, {clients} HTTP clients",
}


def main() -> None:
    lines = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    clients = "256"
    by_path: dict[str, list[dict]] = {}
    for line in lines:
        by_path.setdefault(line["path"], []).append(line)

    def warm(path: str) -> float | None:
        rates = [p["completion_tokens_per_second"] for p in by_path.get(path, []) if p["pass"] > 1]
        return statistics.median(rates) if rates else None

    def cold(path: str) -> float | None:
        first = [p["completion_tokens_per_second"] for p in by_path.get(path, []) if p["pass"] == 1]
        return first[0] if first else None

    def paired(path: str, reference: str) -> list[float]:
        """The path's rate over the reference's, round by round (warm rounds only)."""
        ref = {p["pass"]: p["completion_tokens_per_second"] for p in by_path.get(reference, [])}
        return [p["completion_tokens_per_second"] / ref[p["pass"]] for p in by_path.get(path, [])
                if p["pass"] > 1 and ref.get(p["pass"])]

    def ratio(path: str, reference: str) -> str:
        r = paired(path, reference)
        if not r:
            return "-"
        return f"{statistics.median(r):.3f} ({min(r):.2f}–{max(r):.2f})"

    out = ["| path | cold tokens/s | warm tokens/s (median; all) | warm / LLM.generate, paired by round (median; range) | "
           "warm / vllm serve, paired | exactly once | texts equal to LLM.generate's first pass |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for path in ("generate", "serve", "batch", "one", "gateway"):
        passes = by_path.get(path)
        if not passes:
            continue
        w, c = warm(path), cold(path)
        all_warm = ", ".join(f"{p['completion_tokens_per_second']:,.0f}" for p in passes if p["pass"] > 1)
        once = all(p.get("missing", 1) == 0 and p.get("duplicated", 1) == 0 for p in passes)
        errors = sum(p.get("errors", 0) for p in passes)
        equal = [p.get("identical_to_compare") for p in passes if p.get("identical_to_compare") is not None]
        total = passes[0].get("requests", 0)
        out.append(f"| {LABELS[path].format(clients=clients)} | {c or 0:,.0f} | {w or 0:,.0f} ({all_warm}) | "
                   f"{ratio(path, 'generate')} | {ratio(path, 'serve')} | "
                   f"{'yes' if once and not errors else f'NO ({errors} errors)'} | "
                   f"{f'{min(equal)}–{max(equal)} of {total}' if equal else '-'} |")
    cold_ratios = []
    ref_cold = cold("generate")
    for path in ("serve", "batch", "one", "gateway"):
        c = cold(path)
        if c and ref_cold:
            cold_ratios.append(f"{path} {c / ref_cold:.2f}")
    if cold_ratios:
        out += ["", "Cold (round 1, each engine's first pass) over LLM.generate's cold pass: " + ", ".join(cold_ratios) + "."]
    null = by_path.get("loadgen-null")
    if null:
        rps = null[0]["requests_per_second"]
        used = [p["requests"] / p["seconds"] for path in ("serve", "gateway") for p in by_path.get(path, []) if p.get("seconds")]
        out.append("")
        out.append(f"The HTTP clients alone, against a server that does no work: {rps:,.0f} requests/s; "
                   f"the busiest HTTP pass above made {max(used) if used else 0:,.0f} requests/s "
                   f"({(max(used) / rps) if used else 0:.2f} of what the clients can do).")
    out.append("")
    goals = []
    for path, against, name, goal in (("one", "generate", "LLM.generate", 0.9), ("gateway", "generate", "LLM.generate", 0.9),
                                      ("gateway", "serve", "vllm serve", 1.0), ("batch", "generate", "LLM.generate", 0.98)):
        r = paired(path, against)
        if r:
            m = statistics.median(r)
            goals.append(f"- {path} / {name} (warm, paired median of {len(r)} rounds): {m:.3f} (goal {goal}): "
                         f"{'met' if m >= goal else 'NOT met'}")
    out += ["Goals of issue #17:"] + goals
    print("\n".join(out))


if __name__ == "__main__":
    main()
