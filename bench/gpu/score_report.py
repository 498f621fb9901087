"""The scoring benchmark's bookkeeping: turns compass runs into the paths' files, and compares the
paths (score_common.py describes the files).

    python3 score_report.py compass NAME OUTDIR ITEMS.jsonl --engine E --load-seconds S [--kind engine] \\
        --pass RESULTS.jsonl SECONDS [--pass RESULTS2.jsonl SECONDS2 ...] [--note TEXT ...]
    python3 score_report.py table OUTDIR [--reference hf]

`compass`: one compass submit results file per pass (each request's `scores` -> the item's
log-likelihoods); the first pass's scores are the path's. `--kind engine`: the results of
drive_engine.py (the adapter with no broker), which are shaped the same. A pass whose results carry no scores is
kept with the reason (compass binaries or an engine that predate scoring drop them).

`table`: prints a Markdown table and writes OUTDIR/score-report.md and score-summary.json: per path,
items/s of the cold pass (the first after loading) and of the warm passes (their median), the
ratio of warm items/s to the fastest direct path's, and agreement with the reference path (a, the
HF forward): the largest absolute difference of a choice's log-likelihood, the fraction of items
whose argmax choice agrees, of choices whose greedy flag agrees, and of choices whose token count
agrees (a different count means a different tokenization).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from score_common import load_items, pass_record, write_items, write_summary  # noqa: E402

ORDER = ["hf", "vllm", "vllm-cacheread", "engine-hf", "engine-vllm", "compass-hf", "compass-vllm"]


def compass(a: argparse.Namespace) -> None:
    items = load_items(a.items)
    passes, notes, first = [], list(a.note or []), None
    for number, (results_path, seconds) in enumerate(a.passes, 1):
        seconds = float(seconds)
        results = {}
        if os.path.exists(results_path):
            for line in open(results_path, encoding="utf-8"):
                if line.strip():
                    row = json.loads(line)
                    results[row.get("custom_id")] = row
        record = pass_record(number, seconds, len(items))
        scored = sum(1 for r in results.values() if isinstance(r.get("scores"), list))
        failed = sum(1 for r in results.values() if r.get("error"))
        record.update(answered=len(results), scored=scored, failed=failed)
        passes.append(record)
        if first is None:
            first = results
    rows = []
    unscored = 0
    for item in items:
        row = (first or {}).get(item["custom_id"])
        scores = row.get("scores") if row else None
        if not isinstance(scores, list) or len(scores) != len(item["continuations"]):
            unscored += 1
            why = "missing" if row is None else (row.get("error") or "no scores in the result")
            rows.append({"custom_id": item["custom_id"], "error": why})
            continue
        rows.append({"custom_id": item["custom_id"], "logprobs": [s["logprob"] for s in scores],
                     "greedy": [s["greedy"] for s in scores], "tokens": [s["tokens"] for s in scores]})
    if unscored:
        example = next(r["error"] for r in rows if "error" in r)
        needs = "the engine must" if a.kind == "engine" else "compass submit and the engine must both"
        notes.append(f"{unscored} of {len(items)} items have no scores (e.g. {json.dumps(example)[:300]}); "
                     f"{needs} know scoring requests")
    write_items(os.path.join(a.outdir, f"score-{a.name}.jsonl"), rows)
    what = (f"compass submit -> broker -> compass-worker --engine {a.engine}" if a.kind == "compass" else
            f"{a.engine}_engine.py over the engine protocol, no broker (drive_engine.py)")
    write_summary(os.path.join(a.outdir, f"score-{a.name}.json"), {
        "path": a.name, "kind": a.kind, "what": what,
        "items": len(items), "load_seconds": a.load_seconds, "passes": passes, "notes": notes})


def load_path(outdir: str, name: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    summary = json.load(open(os.path.join(outdir, f"score-{name}.json"), encoding="utf-8"))
    rows: dict[str, dict[str, Any]] = {}
    items_path = os.path.join(outdir, f"score-{name}.jsonl")
    if os.path.exists(items_path):
        for line in open(items_path, encoding="utf-8"):
            if line.strip():
                row = json.loads(line)
                rows[row["custom_id"]] = row
    return summary, rows


def agreement(rows: dict[str, dict[str, Any]], ref: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How far a path's log-likelihoods are from the reference's, over the items both scored."""
    common = [k for k, r in rows.items() if "logprobs" in r and "logprobs" in ref.get(k, {})]
    if not common:
        return {"compared_items": 0}
    diffs, argmax, greedy, tokens, choices = [], 0, 0, 0, 0
    for key in common:
        mine, theirs = rows[key], ref[key]
        diffs.extend(abs(x - y) for x, y in zip(mine["logprobs"], theirs["logprobs"], strict=True))
        argmax += max(range(len(mine["logprobs"])), key=mine["logprobs"].__getitem__) == \
            max(range(len(theirs["logprobs"])), key=theirs["logprobs"].__getitem__)
        greedy += sum(x == y for x, y in zip(mine["greedy"], theirs["greedy"], strict=True))
        tokens += sum(x == y for x, y in zip(mine["tokens"], theirs["tokens"], strict=True))
        choices += len(mine["logprobs"])
    return {"compared_items": len(common), "max_abs_diff": max(diffs), "mean_abs_diff": statistics.fmean(diffs),
            "argmax_agree": argmax / len(common), "greedy_agree": greedy / choices, "tokens_agree": tokens / choices}


def table(a: argparse.Namespace) -> None:
    names = [os.path.basename(p)[len("score-"):-len(".json")] for p in glob.glob(os.path.join(a.outdir, "score-*.json"))]
    names = [n for n in names if n not in ("summary",)]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    paths = {n: load_path(a.outdir, n) for n in names}
    ref = paths.get(a.reference, ({}, {}))[1]

    def rates(summary: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
        passes = summary.get("passes") or []
        cold = passes[0]["items_per_second"] if passes else None
        cold_s = passes[0]["seconds"] if passes else None
        warm = statistics.median(p["items_per_second"] for p in passes[1:]) if len(passes) > 1 else None
        return cold_s, cold, warm

    def usable(summary: dict[str, Any], rows: dict[str, dict[str, Any]]) -> bool:
        return any("logprobs" in r for r in rows.values())

    direct = [rates(s)[2] or rates(s)[1] for s, rows in paths.values()
              if s.get("kind") == "direct" and usable(s, rows)]
    fastest = max((r for r in direct if r), default=None)
    lines = ["| path | what | items | load s | cold s | cold items/s | warm items/s | warm vs fastest direct "
             "| max abs diff vs " + a.reference + " | argmax agree | greedy agree | tokens agree |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    summary_out: dict[str, Any] = {"reference": a.reference, "fastest_direct_items_per_second": fastest, "paths": {}}
    for name, (summary, rows) in paths.items():
        cold_s, cold, warm = rates(summary)
        ok = usable(summary, rows)
        best = warm or cold
        ratio = round(best / fastest, 3) if ok and best and fastest else None
        agree = agreement(rows, ref) if name != a.reference else {}

        def fmt(value: Any, digits: int = 2) -> str:
            return "—" if value is None else (f"{value:,.{digits}f}" if isinstance(value, float) else str(value))

        lines.append(" | ".join([f"| {name}", summary.get("what", ""), fmt(summary.get("items")),
                                 fmt(summary.get("load_seconds"), 1), fmt(cold_s), fmt(cold) if ok else "no scores",
                                 fmt(warm) if ok else "—", fmt(ratio, 3), fmt(agree.get("max_abs_diff"), 4),
                                 fmt(agree.get("argmax_agree"), 4), fmt(agree.get("greedy_agree"), 4),
                                 fmt(agree.get("tokens_agree"), 4)]) + " |")
        summary_out["paths"][name] = {"summary": summary, "cold_items_per_second": cold,
                                      "warm_items_per_second": warm, "warm_vs_fastest_direct": ratio,
                                      "agreement": agree}
    notes = [f"- {name}: {note}" for name, (summary, _) in paths.items() for note in summary.get("notes", [])]
    text = "\n".join(lines) + ("\n\nNotes:\n" + "\n".join(notes) if notes else "") + "\n"
    print(text)
    with open(os.path.join(a.outdir, "score-report.md"), "w", encoding="utf-8") as f:
        f.write(text)
    write_summary(os.path.join(a.outdir, "score-summary.json"), summary_out)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compass")
    c.add_argument("name")
    c.add_argument("outdir")
    c.add_argument("items")
    c.add_argument("--engine", required=True)
    c.add_argument("--load-seconds", type=float, default=None)
    c.add_argument("--kind", choices=["compass", "engine"], default="compass")
    c.add_argument("--pass", dest="passes", nargs=2, action="append", default=[], metavar=("RESULTS", "SECONDS"))
    c.add_argument("--note", action="append")
    t = sub.add_parser("table")
    t.add_argument("outdir")
    t.add_argument("--reference", default="hf")
    a = ap.parse_args()
    compass(a) if a.command == "compass" else table(a)


if __name__ == "__main__":
    main()
