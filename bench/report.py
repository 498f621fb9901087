"""Merges compass-bench's and peers.py's figures into one JSON document and prints the tables:
every compass figure next to the ceiling it is divided by, and next to the peers.

Usage: python report.py --compass C.json --peers P.json --out RESULTS.json --command "..." [--info k=v ...]
       python report.py --print RESULTS.json      (the tables of a results file again)
"""

import argparse
import json
import sys


def fmt(x, digits=0):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def size_name(n):
    return {100: "100 B", 1024: "1 KiB", 65536: "64 KiB", 1 << 20: "1 MiB"}.get(n, f"{n} B")


def ratio(a, b, digits=3):
    if a is None or not b:
        return None
    return round(a / b, digits)


def table(title, header, rows, out):
    out.append("")
    out.append(title)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(header, widths))
    out.append(line)
    out.append("  ".join("-" * w for w in widths))
    for r in rows:
        out.append("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


def build(doc):
    c, p = doc["compass"], doc.get("peers", {})
    out = []
    m = c.get("machine", {})
    out.append(f"compass benchmarks  ({'quick' if c.get('quick') else 'full'} run)")
    out.append(f"machine: {m.get('nproc')} cores, {m.get('cpu_model')}, {m.get('memory_gib')} GiB, kernel {m.get('kernel')}; "
               f"load average before {c.get('load_average_before')}, after {c.get('load_average_after')}")
    info = doc.get("info", {})
    out.append("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(info.items()) if k not in ("command", "git")) +
               f", libzmq {m.get('libzmq')}, celery {p.get('celery', {}).get('version', '-')}, "
               f"redis-server {p.get('celery', {}).get('redis_server', '-')}, ray {p.get('ray', {}).get('version', '-')}, "
               f"python {p.get('python', '-')}")
    out.append(f"command: {info.get('command', '-')}   commit: {info.get('git', '-')}")
    derived = {}

    # 1. raw
    raw = {(r["transport"], r["size"], r["window"]): r for r in c.get("raw", [])}
    rows = []
    for (t, s, w), r in sorted(raw.items(), key=lambda kv: (kv[0][0], kv[0][2] == 1, kv[0][1])):
        lat = r["latency"]
        rows.append([t, size_name(s), w, fmt(r["round_trips_per_s"]), fmt(r["mb_per_s"], 1), fmt(lat.get("p50_us")), fmt(lat.get("p99_us"))])
    table("1. Physical limit: raw libzmq DEALER<->ROUTER echo (round trips, window in flight)",
          ["transport", "message", "window", "round trips/s", "MB/s", "p50 us", "p99 us"], rows, out)

    # 2. dispatch
    rows = []
    disp = c.get("dispatch", [])
    by = {}

    def default_window(w):
        return max(64, 4 * w)

    def security(r):
        return r.get("security", "plaintext")

    # Baselines: plaintext cells with the default credit and window.
    for r in disp:
        if r.get("credit", 2) == 2 and r["window"] == default_window(r["workers"]) and security(r) == "plaintext":
            by[(r["transport"], r["size"], r["workers"], r["worker"], r["journal"])] = r
    curve_rows = []
    for r in disp:
        ceiling = raw.get((r["transport"], r["size"], 64), {}).get("round_trips_per_s")
        small = raw.get((r["transport"], 100, 64), {}).get("round_trips_per_s")
        r["ratio_of_raw"] = ratio(r["batches_per_s"], ceiling)
        r["ratio_of_raw_100B"] = ratio(r["batches_per_s"], small)
        base = by.get((r["transport"], r["size"], r["workers"], r["worker"], "none"))
        extra = ""
        if security(r) == "curve":
            r["ratio_of_plaintext"] = ratio(r["batches_per_s"], base and base["batches_per_s"])

            def cpu_us(x):  # the broker's CPU per batch, steadier than the rates on a shared machine
                return round(x["broker_cpu_percent"] * 1e4 / x["batches_per_s"], 1) if x and x["batches_per_s"] else None

            if r["ratio_of_plaintext"] is not None:
                extra = (f"{r['ratio_of_plaintext']:.3f} of plaintext ({fmt(base['batches_per_s'])}/s); "
                         f"broker CPU/batch {fmt(cpu_us(r))} vs {fmt(cpu_us(base))} us")
            curve_rows.append({"transport": r["transport"], "size": r["size"], "workers": r["workers"],
                               "curve_batches_per_s": r["batches_per_s"], "plaintext_batches_per_s": base and base["batches_per_s"],
                               "ratio_of_plaintext": r["ratio_of_plaintext"], "curve_broker_cpu_percent": r["broker_cpu_percent"],
                               "plaintext_broker_cpu_percent": base and base["broker_cpu_percent"],
                               "curve_broker_cpu_us_per_batch": cpu_us(r), "plaintext_broker_cpu_us_per_batch": cpu_us(base)})
        elif r["journal"] != "none" and base:
            r["ratio_of_in_memory"] = ratio(r["batches_per_s"], base["batches_per_s"])
            extra = f"{r['ratio_of_in_memory']:.3f} of none; file {r.get('journal_bytes', 0) / 1e6:.1f} MB + wal {r.get('journal_wal_bytes', 0) / 1e6:.1f} MB"
        elif base is not None and base is not r:
            r["ratio_of_default"] = ratio(r["batches_per_s"], base["batches_per_s"])
            extra = f"{r['ratio_of_default']:.2f} of credit 2, window {base['window']}"
        rows.append([r["transport"], "curve" if security(r) == "curve" else "-", size_name(r["size"]), f"{r['workers']} {r['worker']}",
                     r.get("credit", 2), r["window"], r["journal"],
                     fmt(r["batches_per_s"]), fmt(r["requests_per_s"]), fmt(r["mb_per_s"], 1), fmt(r["ratio_of_raw"], 3),
                     fmt(r["broker_cpu_percent"], 0) + "%", fmt(r["latency"].get("p50_us")), extra])
    derived["curve"] = curve_rows
    table("2. Dispatch: producer -> compass-broker -> workers -> producer "
          "(of raw = batches/s over raw round trips/s, same transport and message size, window 64, plaintext; "
          "curve: CURVE on both broker sockets with producer and worker allowlists)",
          ["transport", "curve", "payload", "workers", "credit", "window", "journal", "batches/s", "requests/s", "MB/s", "of raw", "broker CPU",
           "p50 us", ""], rows, out)
    # 2c. the ceiling for the broker: compass-broker against the minimal C broker, same run
    ceil = c.get("broker_ceiling", {})
    rows = []
    for r in ceil.get("rows", []):
        def per_batch(cpu, rate):  # broker CPU per batch in us: steadier than the rates on a shared machine
            return round(cpu * 1e4 / rate, 1) if rate else None
        for which in ("compass", "cbroker"):  # the median over the cells (the suite's), else from the medians
            if r.get(f"{which}_cpu_us_per_batch") is None:
                r[f"{which}_cpu_us_per_batch"] = per_batch(r[f"{which}_broker_cpu_percent"], r[f"{which}_batches_per_s"])
        # What the ratio would be if both brokers were the bottleneck: C's CPU per batch over compass's.
        r["cpu_ratio"] = ratio(r["cbroker_cpu_us_per_batch"], r["compass_cpu_us_per_batch"])
        each = lambda which: " / ".join(fmt(x["batches_per_s"]) for x in r["cells"] if x.get("broker") == which)
        rows.append([r["credit"], r["window"], fmt(r["compass_batches_per_s"]), fmt(r["cbroker_batches_per_s"]), fmt(r["ratio"], 3),
                     fmt(r["compass_broker_cpu_percent"], 0) + "%", fmt(r["cbroker_broker_cpu_percent"], 0) + "%",
                     f"{fmt(r['compass_cpu_us_per_batch'], 1)} / {fmt(r['cbroker_cpu_us_per_batch'], 1)}", fmt(r["cpu_ratio"], 3),
                     f"compass {each('compass')}; C {each('cbroker')}"])
    if rows or ceil.get("exactly_once"):
        table("2c. A ceiling for the broker: compass-broker against the minimal C broker (bench/cbroker/cbroker.c: the same wire "
              "protocol, FIFO + credit, nothing else), same null workers and producer, 1 KiB one-request batches, tcp, 4 workers "
              "(ratio = compass / C broker, medians of the rounds; broker CPU in % of one core and in us per batch; "
              "CPU ratio = C's CPU per batch / compass's, the throughput ratio if both brokers were CPU-bound)",
              ["credit", "window", "compass/s", "C broker/s", "ratio", "compass CPU", "C CPU", "CPU us/batch compass / C", "CPU ratio",
               "each cell (/s)"],
              rows, out)
        for x in ceil.get("exactly_once", []):
            out.append(f"  exactly once through {x['broker']}: {fmt(x['answered_once'])} of {fmt(x['batches'])} batches answered once, "
                       f"{x['duplicates']} twice, STATUS {fmt(x['status_dispatched'])} dispatched / {fmt(x['status_completed'])} completed"
                       + ("" if x.get("ok") else f"  PROBLEMS: {'; '.join(x.get('problems', []))}"))
    if "broker-ceiling_error" in c:
        out.append(f"\nbroker ceiling: FAILED {c['broker-ceiling_error']}")
    derived["broker_ceiling"] = [{k: r.get(k) for k in ("credit", "window", "compass_batches_per_s", "cbroker_batches_per_s", "ratio",
                                                        "compass_cpu_us_per_batch", "cbroker_cpu_us_per_batch", "cpu_ratio")}
                                 for r in ceil.get("rows", [])]

    for r in c.get("client", []):
        base = by.get(("tcp", r["size"], 4, "null", "none"))
        r["ratio_of_raw_producer"] = ratio(r["batches_per_s"], base and base["batches_per_s"])
    if c.get("client"):
        table("2b. The same through the CompassClient library (async Swift API), tcp, 4 null workers, window 64",
              ["payload", "batches/s", "of the raw producer's"],
              [[size_name(r["size"]), fmt(r["batches_per_s"]), fmt(r["ratio_of_raw_producer"], 3)] for r in c["client"]], out)

    # 3. latency
    lat = c.get("latency", {})
    raw_idle = lat.get("idle_raw_interleaved") or raw.get(("tcp", 1024, 1), {}).get("latency", {})
    rows = []
    if lat:
        idle = lat.get("idle", {})
        rows.append(["raw libzmq echo, 1 KiB, tcp (interleaved)", "-", "-", fmt(raw_idle.get("p50_us")), fmt(raw_idle.get("p99_us")), fmt(raw_idle.get("p999_us")), ""])
        rows.append(["compass idle, 4 null workers", "-", "-", fmt(idle.get("p50_us")), fmt(idle.get("p99_us")), fmt(idle.get("p999_us")),
                     f"added p50 {idle.get('p50_us', 0) - raw_idle.get('p50_us', 0)} us, p99 {idle.get('p99_us', 0) - raw_idle.get('p99_us', 0)} us"])
        derived["added_latency_p50_us"] = idle.get("p50_us", 0) - raw_idle.get("p50_us", 0)
        derived["added_latency_p99_us"] = idle.get("p99_us", 0) - raw_idle.get("p99_us", 0)
        s = lat.get("idle_synthetic_worker", {})
        rows.append(["compass idle, 1 compass-worker synthetic", "-", "-", fmt(s.get("p50_us")), fmt(s.get("p99_us")), fmt(s.get("p999_us")), ""])
        sat = lat.get("saturation_batches_per_s")
        for l in lat.get("loaded", []):
            L = l["latency"]
            note = "" if l["achieved_per_s"] >= 0.97 * l["offered_per_s"] else "did not keep up: results stalled while SUBMITs flowed"
            rows.append([f"compass at {int(l['fraction'] * 100)}% of {fmt(sat)}/s (open loop)", fmt(l["offered_per_s"]), fmt(l["achieved_per_s"]),
                         fmt(L.get("p50_us")), fmt(L.get("p99_us")), fmt(L.get("p999_us")), note])
        ov = lat.get("overload")
        if ov:
            smp = ov.get("status_samples", [])
            qmax = max((x.get("queued", 0) for x in smp), default=0)
            # Completions while the queue was growing: the broker's own counter between samples.
            growing = [x for a, x in zip(smp, smp[1:]) if x.get("queued", 0) > a.get("queued", 0)]
            rate = None
            if len(growing) >= 2:
                dt = (growing[-1]["t_ms"] - growing[0]["t_ms"]) / 1000.0
                rate = (growing[-1]["completed"] - growing[0]["completed"]) / dt if dt > 0 else None
            ov["completions_per_s_while_queue_grew"] = None if rate is None else round(rate)
            ov["max_queued"] = qmax
            L = ov["latency"]
            rows.append([f"compass at 150% (overload, open loop)", fmt(ov["offered_per_s"]), fmt(ov["results_per_s_while_offered"]),
                         fmt(L.get("p50_us")), fmt(L.get("p99_us")), fmt(L.get("p999_us")),
                         f"queue up to {fmt(qmax)}; broker completed {fmt(rate)}/s while it grew"])
        table("3. Latency, submit to result, 1 KiB batch, tcp (HdrHistogram)",
              ["", "offered/s", "done/s", "p50 us", "p99 us", "p99.9 us", ""], rows, out)

    # 4. scaling
    rows = []
    nproc = m.get("nproc", 2)

    def others(r):
        if "workers_cpu_percent" not in r:
            return "-"
        mine = r["broker_cpu_percent"] + r["workers_cpu_percent"] + r["producer_cpu_percent"]
        return fmt(max(0.0, r["machine_busy_percent"] * nproc - mine), 0) + "%"

    for r in c.get("scaling", []):
        rows.append([r["workers"], fmt(r["latency_ms"]), r.get("processes"), r["window"], fmt(r["ideal_batches_per_s"]),
                     fmt(r["batches_per_s"], 1), f"{r['efficiency'] * 100:.1f}%", fmt(r["broker_cpu_percent"], 0) + "%",
                     fmt(r.get("workers_cpu_percent"), 0) + "%", fmt(r.get("producer_cpu_percent"), 0) + "%", others(r)])
    if rows:
        table("4. Scaling: W null workers, fixed latency per batch (a GPU that takes exactly that long), credit 2, window 4W. "
              "CPU in % of one core; 'others' is what other processes on the machine used meanwhile",
              ["workers", "ms/batch", "processes", "window", "ideal/s", "achieved/s", "efficiency", "broker", "workers", "producer", "others"],
              rows, out)

    # 5. recovery
    rows = []
    for r in c.get("recovery", []):
        rd, cp = r["redispatch_ms"], r["complete_ms"]
        rows.append([r["heartbeat_ms"], len(r["samples"]), fmt(rd["min"], 1), fmt(rd["median"], 1), fmt(rd["max"], 1),
                     fmt(cp["median"], 1), fmt(cp["max"], 1)])
    if rows:
        table("5. Recovery: SIGKILL of a busy compass-worker until its batch reaches another worker, and until the producer has the result",
              ["heartbeat ms", "kills", "re-dispatch min ms", "median", "max", "result median ms", "max"], rows, out)

    # 5b. admission
    rows = []
    for r in c.get("admission", []):
        rows.append([r["capacity"], f"{r['step_us']} + {r['seq_us']}/seq", fmt(r["requests"]), r["window"], fmt(r["occupancy_steady"], 3),
                     fmt(r["occupancy_whole_run"], 3), fmt(r["steady_steps"]), fmt(r["requests_per_s"]), fmt(r["ideal_requests_per_s"]),
                     fmt(ratio(r["requests_per_s"], r["ideal_requests_per_s"]), 3),
                     f"{fmt(r.get('measured_step_ms'), 1)} / {fmt(r.get('nominal_step_ms'), 1)}", r.get("load_average", "-")])
    if rows:
        table("5b. Admission: synthetic continuous engine behind compass submit --batch-size 1, and behind the gateway with 256 HTTP clients (occupancy from the engine's own step counts)",
              ["capacity", "step us", "requests", "window", "occupancy steady", "whole run", "steps", "requests/s", "ideal/s", "ratio",
               "step ms measured / nominal", "load"],
              rows, out)
    if "admission_error" in c:
        out.append(f"\nadmission: FAILED {c['admission_error']}")

    # 6. peers
    rows = []
    peers = {}
    for name in ("celery", "ray"):
        d = p.get(name, {})
        if "error" in d:
            out.append(f"\n{name}: FAILED {d['error']}")
        peers[name] = d
    comparisons = []
    for size in (1024, 65536, 1 << 20):
        cv = by.get(("tcp", size, 4, "null", "none"), {}).get("batches_per_s")
        vals = {n: next((x["batches_per_s"] for x in peers[n].get("throughput", []) if x["size"] == size), None) for n in peers}
        comparisons.append((f"throughput, no-op, {size_name(size)}, 4 workers, window 64 (per s)", cv, vals, True))
    for w in (4, 16):
        cv = next((x["batches_per_s"] for x in c.get("scaling", []) if x["workers"] == w and x["latency_ms"] == 20), None)
        vals = {n: next((x["batches_per_s"] for x in peers[n].get("work20", []) if x["workers"] == w), None) for n in peers}
        if cv is not None or any(vals.values()):
            comparisons.append((f"throughput, 20 ms work, {w} workers, window {4 * w} (per s)", cv, vals, True))
    for key, label in (("p50_us", "p50"), ("p99_us", "p99")):
        cv = lat.get("idle", {}).get(key)
        vals = {n: peers[n].get("latency_idle", {}).get(key) for n in peers}
        comparisons.append((f"latency idle, 1 KiB, {label} (us)", cv, vals, False))
    ratios = []
    for label, cv, vals, higher_better in comparisons:
        row = [label, fmt(cv)]
        rr = {}
        for n in ("celery", "ray"):
            v = vals.get(n)
            row.append(fmt(v))
        for n in ("celery", "ray"):
            v = vals.get(n)
            if cv is None or not v:
                row.append("-")
                continue
            x = cv / v if higher_better else v / cv
            rr[n] = round(x, 2)
            row.append(f"{x:,.1f}x")
        ratios.append({"metric": label, "compass": cv, **{n: vals.get(n) for n in ("celery", "ray")},
                       **{f"compass_advantage_over_{n}": rr.get(n) for n in ("celery", "ray")}})
        rows.append(row)
    table("6. Peers, same workload, same machine, same run (advantage: compass/peer for throughput, peer/compass for latency)",
          ["", "compass", "celery", "ray", "vs celery", "vs ray"], rows, out)
    derived["peers"] = ratios

    # targets
    out.append("")
    out.append("Targets")
    small = by.get(("tcp", 1024, 4, "null", "none")) or {}
    best_small = max((r for r in disp if r["size"] == 1024 and r["journal"] == "none" and r["worker"] == "null" and r["transport"] == "tcp"
                      and security(r) == "plaintext"),
                     key=lambda r: r["batches_per_s"], default={})
    e64 = sorted(x["efficiency"] for x in c.get("scaling", []) if x["workers"] == 64 and x["latency_ms"] == 20)
    eff64 = e64[len(e64) // 2] if e64 else None
    celery_x = next((r["compass_advantage_over_celery"] for r in ratios if r["metric"].startswith("throughput, no-op, 1 KiB")), None)
    checks = [
        ("dispatch of small batches >= 25% of the raw round-trip ceiling (tcp, 1 KiB, best measured configuration)",
         best_small.get("ratio_of_raw"), lambda v: v >= 0.25, lambda v: f"{v * 100:.1f}% ({fmt(best_small.get('batches_per_s'))} of {fmt(raw.get(('tcp', 1024, 64), {}).get('round_trips_per_s'))}/s: {best_small.get('workers')} workers, credit {best_small.get('credit', 2)}, window {best_small.get('window')}); default credit 2: {(small.get('ratio_of_raw') or 0) * 100:.1f}%"),
        ("scaling efficiency >= 98% at 64 workers (median of the runs)", eff64, lambda v: v >= 0.98,
         lambda v: f"{v * 100:.1f}% (runs: {', '.join(f'{x * 100:.1f}%' for x in e64)})"),
        ("p99 added latency < 1 ms on an idle cluster", derived.get("added_latency_p99_us"), lambda v: v < 1000, lambda v: f"{v} us"),
        (">= 10x Celery's throughput (no-op, 1 KiB, 4 workers)", celery_x, lambda v: v >= 10, lambda v: f"{v:.1f}x"),
    ]
    adm = min((r["occupancy_steady"] for r in c.get("admission", [])), default=None)
    checks.append(("continuous engine (256 sequences) behind compass submit --batch-size 1 and behind the gateway with 256 HTTP clients keeps >= 90% of its capacity occupied",
                   adm, lambda v: v >= 0.9, lambda v: f"{v * 100:.1f}% (steady state, lowest row)"))
    ceil_rows = ceil.get("rows", [])
    worst = min(ceil_rows, key=lambda r: r["ratio"], default=None)
    checks.append(("one-request batches through compass-broker >= 50% of the minimal C broker (same credit and window, same run; lowest setting)",
                   worst and worst["ratio"], lambda v: v >= 0.5,
                   lambda v: f"{v * 100:.1f}% at credit {worst['credit']}, window {worst['window']} (credit/window: "
                             + ", ".join(f"{r['credit']}/{r['window']} {r['ratio'] * 100:.1f}%" for r in ceil_rows)
                             + "; by CPU per batch: " + ", ".join(f"{(r.get('cpu_ratio') or 0) * 100:.1f}%" for r in ceil_rows) + ")"))
    derived["targets"] = []
    for label, v, ok, show in checks:
        status = "-" if v is None else ("MET" if ok(v) else "MISSED")
        out.append(f"  [{status:6}] {label}: {'-' if v is None else show(v)}")
        derived["targets"].append({"target": label, "value": v, "met": None if v is None else ok(v)})
    out.append("")
    out.append(f"timing: compass suite {c.get('suite_seconds')} s, peers: celery {p.get('celery', {}).get('seconds', '-')} s, "
               f"ray {p.get('ray', {}).get('seconds', '-')} s; total {info.get('total_seconds', '-')} s")
    return out, derived


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compass")
    ap.add_argument("--peers")
    ap.add_argument("--out")
    ap.add_argument("--command", default="")
    ap.add_argument("--info", action="append", default=[])
    ap.add_argument("--print", dest="print_only")
    args = ap.parse_args()
    if args.print_only:
        doc = json.load(open(args.print_only))
    else:
        doc = {"compass": json.load(open(args.compass)), "peers": json.load(open(args.peers)) if args.peers else {}, "info": {}}
        doc["info"]["command"] = args.command
        for kv in args.info:
            k, _, v = kv.partition("=")
            doc["info"][k] = v
    lines, derived = build(doc)
    doc["derived"] = derived
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
