"""The table of bench/gpu/stream.sh: completion tokens per second of every path, cold (the first pass
after its engine loaded) and warm (the others), as ratios against vLLM's own LLM.generate and
`vllm serve` measured in the same run, and the goals of issue #17.

Ratios are paired: a path's pass in round k over the reference's pass in round k (stream.sh runs
every path once per round, interleaved), and the table gives the median of the warm rounds' ratios
with their range; the goals are judged on those medians.

    python3 stream_report.py stream-results.jsonl [--trace generate=trace-generate.txt
        --trace compass=trace-compass.txt] [--capacity 1024] > stream-report.md

Inside the engines (from the step traces and the CPU samples stream.sh records): per pass, the
engine steps that began while the pass ran, completion tokens per step, how full the steps were
(requests inside, at most --capacity, over capacity), the mean step time, the share of the pass
the engine spent in steps, and the CPU of each front end and engine core (one core = 100 %).
"""
from __future__ import annotations

import argparse
import bisect
import gzip
import json
import statistics
from typing import Any

LABELS = {
    "generate": "vLLM `LLM.generate`, all prompts in one call",
    "serve": "`vllm serve`, {clients} HTTP clients",
    "batch": "compass submit, batches of 512",
    "one": "compass submit --batch-size 1 (one-request batches)",
    "gateway": "compass gateway, {clients} HTTP clients",
    "window": "vLLM's engine fed {clients} at a time (add_request/step, no server)",
}
ENGINE_OF = {"generate": "generate", "window": "generate", "one": "compass", "batch": "compass", "gateway": "compass",
             "one-alt": "alt", "batch-alt": "alt", "gateway-alt": "alt"}
FRONT_OF = {"generate": "generate", "window": "generate", "serve": "serve", "one": "worker", "batch": "worker",
            "gateway": "worker", "one-alt": "alt", "batch-alt": "alt", "gateway-alt": "alt"}
PATHS = ("generate", "window", "serve", "batch", "one", "gateway", "batch-alt", "one-alt", "gateway-alt")


def read_trace(path: str) -> list[tuple[float, float, int]]:
    steps = []
    for line in (gzip.open(path, "rt") if path.endswith(".gz") else open(path)):
        parts = line.split()
        if len(parts) == 3:
            steps.append((float(parts[0]), float(parts[1]), int(parts[2])))
    steps.sort()
    return steps


def inside(p: dict, trace: list[tuple[float, float, int]], capacity: int) -> dict | None:
    """What the engine did while pass `p` ran: its steps that began between the pass's start and end."""
    if "started" not in p or not trace:
        return None
    lo = bisect.bisect_left(trace, (p["started"],))
    hi = bisect.bisect_right(trace, (p["ended"], float("inf"), 0))
    steps = trace[lo:hi]
    span = p["ended"] - p["started"]
    if not steps or span <= 0:
        return None
    busy = sum(end - start for start, end, _ in steps)
    return {"steps": len(steps), "tokens_per_step": p.get("completion_tokens", 0) / len(steps),
            "fill": statistics.mean(min(n, capacity) for _, _, n in steps) / capacity,
            "step_ms": 1000 * busy / len(steps), "busy": busy / span}


def read_host_trace(path: str) -> list[tuple[float, str, int]]:
    """COMPASS_HOST_TRACE lines (`time kind count`): where requests pass through the engine host."""
    events = []
    for line in (gzip.open(path, "rt") if path.endswith(".gz") else open(path)):
        parts = line.split()
        if len(parts) == 3:
            events.append((float(parts[0]), parts[1], int(parts[2])))
    events.sort()
    return events


HOST_POINTS = ("read", "added", "reaped", "sent")


def host_way(p: dict, events: list[tuple[float, str, int]]) -> dict | None:
    """Mean seconds between the host's points for the requests of pass `p`. Every request passes
    each point once, so a mean interval is the difference of the mean times (no ids to match);
    a point some requests never reached in the pass (a batch failed) makes the pass unusable."""
    if "started" not in p or not events:
        return None
    lo = bisect.bisect_left(events, (p["started"],))
    hi = bisect.bisect_right(events, (p["ended"], "~", 0))
    sums = {k: 0.0 for k in HOST_POINTS}
    counts = {k: 0 for k in HOST_POINTS}
    for t, kind, n in events[lo:hi]:
        if kind in sums:
            sums[kind] += t * n
            counts[kind] += n
    total = p.get("requests", 0)
    if not total or any(counts[k] != total for k in HOST_POINTS):
        return None
    mean = {k: sums[k] / total for k in HOST_POINTS}
    way = {"in": mean["added"] - mean["read"], "engine": mean["reaped"] - mean["added"],
           "out": mean["sent"] - mean["reaped"], "host": mean["sent"] - mean["read"]}
    latency = (p.get("latency_ms") or {}).get("mean")
    if latency is not None:
        way["client"] = latency / 1000
        way["outside"] = latency / 1000 - way["host"]
    return way


def cpu_shares(p: dict) -> dict[str, float]:
    """Each process tree member's CPU over the pass, in cores (1.0 = one core all the time)."""
    before, after, span = p.get("cpu0") or {}, p.get("cpu1") or {}, p.get("ended", 0) - p.get("started", 0)
    if span <= 0:
        return {}
    return {key: (after[key] - before.get(key, 0.0)) / span for key in after}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--trace", action="append", default=[], help="ENGINE=FILE (generate, compass)")
    ap.add_argument("--host-trace", action="append", default=[], help="ENGINE=FILE (compass, alt): COMPASS_HOST_TRACE")
    ap.add_argument("--alt", default="", help="the second worker's options (stream.sh ALT_WORKER_ARGS), for the labels")
    ap.add_argument("--capacity", type=int, default=1024, help="the engines' max_num_seqs (1,024: vLLM's default here)")
    a = ap.parse_args()
    def read_all(items: list[str], reader: Any) -> dict[str, Any]:
        """ENGINE=FILE arguments, read; a file that is not there (a path that did not run) is left out."""
        out = {}
        for item in items:
            engine, path = item.split("=", 1)
            try:
                out[engine] = reader(path)
            except OSError:
                pass
        return out
    traces = read_all(a.trace, read_trace)
    host_traces = read_all(a.host_trace, read_host_trace)
    lines = [json.loads(line) for line in open(a.results) if line.strip()]
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
    labels = dict(LABELS, **{"batch-alt": LABELS["batch"] + f", worker {a.alt}", "one-alt": LABELS["one"] + f", worker {a.alt}",
                                 "gateway-alt": LABELS["gateway"] + f", worker {a.alt}"})
    for path in PATHS:
        passes = by_path.get(path)
        if not passes:
            continue
        w, c = warm(path), cold(path)
        all_warm = ", ".join(f"{p['completion_tokens_per_second']:,.0f}" for p in passes if p["pass"] > 1)
        once = all(p.get("missing", 1) == 0 and p.get("duplicated", 1) == 0 for p in passes)
        errors = sum(p.get("errors", 0) for p in passes)
        equal = [p.get("identical_to_compare") for p in passes if p.get("identical_to_compare") is not None]
        total = passes[0].get("requests", 0)
        out.append(f"| {labels[path].format(clients=clients)} | {c or 0:,.0f} | {w or 0:,.0f} ({all_warm}) | "
                   f"{ratio(path, 'generate')} | {ratio(path, 'serve')} | "
                   f"{'yes' if once and not errors else f'NO ({errors} errors)'} | "
                   f"{f'{min(equal)}–{max(equal)} of {total}' if equal else '-'} |")
    cold_ratios = []
    ref_cold = cold("generate")
    for path in PATHS[1:]:
        c = cold(path)
        if c and ref_cold:
            cold_ratios.append(f"{path} {c / ref_cold:.2f}")
    if cold_ratios:
        out += ["", "Cold (round 1, each engine's first pass) over LLM.generate's cold pass: " + ", ".join(cold_ratios)
                + " (`window` runs on LLM.generate's engine after its first pass: not cold)."]
    null = by_path.get("loadgen-null")
    if null:
        rps = null[0]["requests_per_second"]
        used = [p["requests"] / p["seconds"] for path in ("serve", "gateway") for p in by_path.get(path, []) if p.get("seconds")]
        out.append("")
        out.append(f"The HTTP clients alone, against a server that does no work: {rps:,.0f} requests/s; "
                   f"the busiest HTTP pass above made {max(used) if used else 0:,.0f} requests/s "
                   f"({(max(used) / rps) if used else 0:.2f} of what the clients can do).")
    out.append("")
    rows = []
    for path in PATHS:
        warm_passes = [p for p in by_path.get(path, []) if p["pass"] > 1]
        if not warm_passes:
            continue
        stats = [inside(p, traces.get(ENGINE_OF.get(path, ""), []), a.capacity) for p in warm_passes]
        stats = [x for x in stats if x]
        shares = [cpu_shares(p) for p in warm_passes]
        front = [sum(v for k, v in sh.items() if k.startswith(f"{FRONT_OF[path]}/python")) for sh in shares]
        core = [sum(v for k, v in sh.items() if k.startswith(FRONT_OF[path] + "/") and "EngineCor" in k) for sh in shares]
        others = [sum(v for k, v in sh.items() if k.split("/")[0] in ("broker", "gateway")
                      or k == f"{FRONT_OF[path]}/compass-worker") for sh in shares] \
            if ENGINE_OF.get(path) in ("compass", "alt") else []

        def med(key: str, scale: float = 1.0, fmt: str = ".0f") -> str:
            values = [x[key] * scale for x in stats]
            return f"{statistics.median(values):{fmt}}" if values else "-"
        percent = lambda key: f"{med(key, 100)} %" if stats else "-"  # noqa: E731
        rows.append(f"| {path} | {med('steps')} | {med('tokens_per_step')} | {percent('fill')} | "
                    f"{med('step_ms', 1, '.1f')} | {percent('busy')} | {100 * statistics.median(front):.0f} % | "
                    f"{100 * statistics.median(core):.0f} % | "
                    f"{f'{100 * statistics.median(others):.0f} %' if others else '-'} |")
    if rows:
        out += ["Inside the engines, warm passes (medians): engine steps that began during the pass, completion tokens "
                f"per step, requests inside per step (at most {a.capacity}) over {a.capacity}, mean step time, the share "
                "of the pass spent in steps; CPU of the front-end Python process, of the engine core process, and of "
                "compass's Swift processes (worker, broker, gateway), one core = 100 %.", "",
                "| path | steps | tokens/step | fill | step ms | engine busy | front-end CPU | engine-core CPU | compass Swift CPU |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"] + rows + [""]
    host_rows = []
    for path in PATHS:
        events = host_traces.get(ENGINE_OF.get(path, ""), [])
        ways = [w for w in (host_way(p, events) for p in by_path.get(path, []) if p["pass"] > 1) if w]
        if not ways:
            continue

        def ms(key: str) -> str:
            values = [w[key] * 1000 for w in ways if key in w]
            return f"{statistics.median(values):.1f}" if values else "-"
        host_rows.append(f"| {path} | {len(ways)} | {ms('in')} | {ms('engine')} | {ms('out')} | {ms('host')} | "
                         f"{ms('client')} | {ms('outside')} |")
    if host_rows:
        out += ["A request's way, warm passes (medians over passes of each pass's mean, ms; COMPASS_HOST_TRACE): "
                "in = read by the engine host until added to vLLM, engine = added until its last output was taken "
                "(reaped), out = reaped until its batch's answer was written; client = the HTTP client's mean latency, "
                "outside = client - (in + engine + out): HTTP, gateway, broker, worker and the pipes, both ways.", "",
                "| path | passes | in | engine | out | host | client | outside |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"] + host_rows + [""]
    goals = []
    for path, against, name, goal in (("one", "generate", "LLM.generate", 0.9), ("gateway", "generate", "LLM.generate", 0.9),
                                      ("gateway", "serve", "vllm serve", 1.0), ("batch", "generate", "LLM.generate", 0.98),
                                      ("one-alt", "generate", "LLM.generate", 0.9), ("batch-alt", "generate", "LLM.generate", 0.98),
                                      ("gateway-alt", "generate", "LLM.generate", 0.9), ("gateway-alt", "window", f"the engine fed {clients} at a time", None),
                                      ("gateway", "window", f"the engine fed {clients} at a time", None),
                                      ("serve", "window", f"the engine fed {clients} at a time", None)):
        r = paired(path, against)
        if r:
            m = statistics.median(r)
            verdict = f" (goal {goal}): {'met' if m >= goal else 'NOT met'}" if goal else " (no goal: the fair ceiling)"
            goals.append(f"- {path} / {name} (warm, paired median of {len(r)} rounds): {m:.3f}{verdict}")
    out += ["Goals of issue #17, and the HTTP paths against their fair ceiling:"] + goals
    print("\n".join(out))


if __name__ == "__main__":
    main()
