#!/usr/bin/env python3
"""Helpers of bench/gpu/opencompass.sh: the datasets and configs, a fork watcher, the report.

    opencompass_bench.py prepare WORK --model DIR --tp N --frontend EP [--n-gen N --n-ppl N --max-out K]
    opencompass_bench.py watch FILE PID...      # samples the process trees under PIDs until the first ends
    opencompass_bench.py report OUT WORK        # OUT/opencompass.json and OUT/opencompass.md

Both evaluations run the same two local datasets: ``choice`` (perplexity: 4 labels per question)
then ``story`` (generation, ``ignore_eos`` so that every completion has ``max_out`` tokens in both).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

WORDS = ("river stone cloud signal engine garden theory window market planet silver orbit lantern forest "
         "harbor letter machine violet summer thunder").split()
LABELS = {"A": "{question} The answer is yes.", "B": "{question} The answer is no.",
          "C": "{question} Nobody can tell.", "D": "{question} It depends on the weather."}

CONFIG = '''
from opencompass.datasets import CustomDataset
from opencompass.openicl.icl_evaluator import AccEvaluator
from opencompass.openicl.icl_inferencer import GenInferencer, PPLInferencer
from opencompass.openicl.icl_prompt_template import PromptTemplate
from opencompass.openicl.icl_retriever import ZeroRetriever
{imports}

choice = dict(abbr='choice', type=CustomDataset, path={ppl!r}, local_mode=True,
    reader_cfg=dict(input_columns=['question'], output_column='label'),
    infer_cfg=dict(prompt_template=dict(type=PromptTemplate, template={labels!r}),
                   retriever=dict(type=ZeroRetriever), inferencer=dict(type=PPLInferencer)),
    eval_cfg=dict(evaluator=dict(type=AccEvaluator)))
story = dict(abbr='story', type=CustomDataset, path={gen!r}, local_mode=True,
    reader_cfg=dict(input_columns=['question'], output_column='answer'),
    infer_cfg=dict(prompt_template=dict(type=PromptTemplate, template='{{question}}'),
                   retriever=dict(type=ZeroRetriever),
                   inferencer=dict(type=GenInferencer, max_out_len={max_out}, dump_timer=True)),
    eval_cfg=dict(evaluator=dict(type=AccEvaluator)))
datasets = [choice, story]
models = [{model}]
'''


def prepare(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    with open(work / "story.jsonl", "w") as f:
        for i in range(args.n_gen):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 80)))
            f.write(json.dumps({"question": f"Story {i}: {words}. Continue the story:", "answer": "x"}) + "\n")
    with open(work / "choice.jsonl", "w") as f:
        for i in range(args.n_ppl):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 120)))
            f.write(json.dumps({"question": f"Question {i}: {words}?", "label": rng.choice(sorted(LABELS))}) + "\n")
    batch = max(args.n_gen, args.n_ppl)  # one OpenCompass batch per dataset and label: all prompts at once
    common = dict(max_out_len=args.max_out, max_seq_len=2048, batch_size=batch, run_cfg=dict(num_gpus=0))
    compass = dict(abbr="compass-vllm", pool="gpu", broker=args.frontend, tokenizer_path=args.model,
                   generation_kwargs=dict(ignore_eos=True), compass_batch_size=256, **common)
    common["run_cfg"] = dict(num_gpus=args.tp)
    vllm = dict(abbr="opencompass-vllm", path=args.model, generation_kwargs=dict(ignore_eos=True, temperature=0),
                model_kwargs=dict(tensor_parallel_size=args.tp, gpu_memory_utilization=0.85, max_model_len=2048),
                **common)
    for name, type_name, imports, model in (
            ("eval_compass.py", "CompassModel", "from compass_client.opencompass import CompassModel", compass),
            ("eval_vllm.py", "VLLM", "from opencompass.models import VLLM", vllm)):
        source = f"dict(type={type_name}, " + ", ".join(f"{k}={v!r}" for k, v in model.items()) + ")"
        (work / name).write_text(CONFIG.format(imports=imports, ppl=str(work / "choice.jsonl"),
                                               gen=str(work / "story.jsonl"), labels=LABELS, max_out=args.max_out,
                                               model=source))


# MARK: Forks

def _tree(roots: set[int]) -> dict[int, dict[str, Any]]:
    """Every live process under `roots`: ppid, cmdline, start tick, whether it holds /dev/nvidia*."""
    procs: dict[int, dict[str, Any]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            stat = open(f"/proc/{pid}/stat").read()
            fields = stat[stat.rindex(")") + 2:].split()
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        procs[pid] = {"ppid": int(fields[1]), "start": int(fields[19]), "cmdline": cmdline}
    keep: dict[int, dict[str, Any]] = {}
    for pid, info in procs.items():
        p, depth = pid, 0
        while p in procs and depth < 64:
            if p in roots:
                keep[pid] = info
                break
            p, depth = procs[p]["ppid"], depth + 1
    for pid, info in keep.items():
        try:
            info["cuda"] = any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/dev/nvidia")
                               for fd in os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            info["cuda"] = False
    return keep


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def watch(args: argparse.Namespace) -> None:
    """Samples every 0.2 s until the first PID ends; a process is *forked after CUDA* when it runs its parent's command line
    (no exec) and the parent held a GPU device before the child started."""
    roots = {int(p) for p in args.pids}
    seen: dict[int, dict[str, Any]] = {}
    cuda_since: dict[int, int] = {}  # pid -> earliest sample tick at which it held /dev/nvidia*
    tick = os.sysconf("SC_CLK_TCK")
    boot = time.time() - float(open("/proc/uptime").read().split()[0])
    first = int(args.pids[0])
    while _alive(first):
        now_ticks = int((time.time() - boot) * tick)
        for pid, info in _tree(roots).items():
            key = pid * 10**12 + info["start"]
            seen.setdefault(key, {"pid": pid, **info})
            if info["cuda"]:
                seen[key]["cuda"] = True
                cuda_since.setdefault(key, now_ticks)
        time.sleep(0.2)
    by_pid = {v["pid"]: (k, v) for k, v in seen.items()}
    forked = []
    for key, info in seen.items():
        parent = by_pid.get(info["ppid"])
        if parent is None:
            continue
        pkey, pinfo = parent
        if pinfo["cmdline"] == info["cmdline"] and pkey in cuda_since and cuda_since[pkey] <= info["start"]:
            forked.append({"pid": info["pid"], "parent": info["ppid"], "cmdline": info["cmdline"][:200]})
    json.dump({"processes": len(seen), "with_gpu": sum(1 for v in seen.values() if v.get("cuda")),
               "forked_after_cuda": forked,
               "tree": [{k: v[k] for k in ("pid", "ppid", "cmdline")} | {"cuda": bool(v.get("cuda"))}
                        for v in seen.values()]}, open(args.file, "w"), indent=1)


# MARK: Report

STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _stamp(line: str) -> float:
    m = STAMP.match(line)
    assert m, line
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _run(work: Path, name: str) -> dict[str, Any]:
    """One evaluation's figures from its work dir and the bench's own timings."""
    runs = sorted(p for p in (work / name).iterdir() if p.is_dir())
    run = runs[-1]
    abbr = next((run / "predictions").iterdir()).name
    log = next((run / "logs" / "infer" / abbr).glob("*.out")).read_text().splitlines()
    ppl_start = next(_stamp(l) for l in log if "Calculating PPL" in l)
    gen_start = next(_stamp(l) for l in log if "Starting build dataloader" in l)
    timer = [json.loads(l) for l in (run / "predictions" / abbr / "timer" / "time.jsonl").read_text().splitlines()]
    results = {p.stem: json.loads(p.read_text()) for p in (run / "results" / abbr).glob("*.json")}
    timings = json.loads((work / f"{name}.timing.json").read_text())
    return {"abbr": abbr, "ppl_seconds": round(gen_start - ppl_start, 2), "gen_seconds": round(timer[0]["time"], 2),
            "gen_samples": timer[0]["num_sample"], "accuracy_choice": results.get("choice", {}).get("accuracy"),
            "predictions_story": [p["prediction"] for p in
                                  json.loads((run / "predictions" / abbr / "story.json").read_text()).values()][:3],
            **timings}


def report(args: argparse.Namespace) -> None:
    out, work = Path(args.out), Path(args.work)
    setup = json.loads((work / "setup.json").read_text())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(setup["model"], local_files_only=True)
    questions = [json.loads(l)["question"] for l in open(work / "choice.jsonl")]
    ppl_tokens = sum(len(tok(t.format(question=q))["input_ids"]) for q in questions for t in LABELS.values())
    gen_tokens = setup["n_gen"] * setup["max_out"]
    doc: dict[str, Any] = {"setup": setup, "ppl_prompt_tokens": ppl_tokens, "gen_completion_tokens": gen_tokens}
    for name in ("compass", "vllm"):
        try:
            r = _run(work, name)
        except (OSError, StopIteration, AssertionError, ValueError) as error:
            doc[name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        r["ppl_prompt_tokens_per_second"] = round(ppl_tokens / r["ppl_seconds"], 1) if r["ppl_seconds"] else None
        r["gen_tokens_per_second"] = round(gen_tokens / r["gen_seconds"], 1) if r["gen_seconds"] else None
        forks = work / f"{name}.forks.json"
        if forks.exists():
            f = json.loads(forks.read_text())
            r["processes"], r["processes_with_gpu"], r["forked_after_cuda"] = \
                f["processes"], f["with_gpu"], f["forked_after_cuda"]
        doc[name] = r
    json.dump(doc, open(out / "opencompass.json", "w"), indent=1)
    rows = [f"| | compass (CompassModel → broker → {setup['engine']} worker) | OpenCompass VLLM |", "| --- | --- | --- |"]
    for key in ("wall_seconds", "ppl_seconds", "ppl_prompt_tokens_per_second", "gen_seconds", "gen_tokens_per_second",
                "accuracy_choice", "processes", "processes_with_gpu", "forked_after_cuda", "exit_status", "error"):
        rows.append(f"| {key} | {doc['compass'].get(key, '')} | {doc['vllm'].get(key, '')} |")
    text = (f"# OpenCompass on one GPU group: compass vs OpenCompass's VLLM\n\n{json.dumps(setup)}\n\n"
            f"PPL: {setup['n_ppl']} questions × {len(LABELS)} labels = {ppl_tokens} prompt tokens; "
            f"generation: {setup['n_gen']} prompts × {setup['max_out']} tokens (ignore_eos).\n\n" + "\n".join(rows) + "\n")
    (out / "opencompass.md").write_text(text)
    print(text)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("work")
    p.add_argument("--model", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--frontend", required=True)
    p.add_argument("--n-gen", type=int, default=1024)
    p.add_argument("--n-ppl", type=int, default=512)
    p.add_argument("--max-out", type=int, default=128)
    w = sub.add_parser("watch")
    w.add_argument("file")
    w.add_argument("pids", nargs="+")
    r = sub.add_parser("report")
    r.add_argument("out")
    r.add_argument("work")
    args = parser.parse_args(argv)
    {"prepare": prepare, "watch": watch, "report": report}[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
