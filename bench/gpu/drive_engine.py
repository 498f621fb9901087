"""Drives an engine adapter directly over the engine protocol, the way compass-worker does but with
no broker and no worker: the baseline that compass's own throughput is compared with.

    python3 drive_engine.py ENGINE_SCRIPT PROMPTS.jsonl --model M --batch-size B [--tp N --gpus 0,1]
        [--max-batches N] [--repeat K] [--engine-arg k=v ...] --out results.jsonl --report report.json

Batches are cut from PROMPTS exactly as `compass submit --batch-size B` cuts them. Up to
`--max-batches` of them are inside the engine at once (default 1: one at a time), as the worker
keeps them: capped at the engine's own `max_batches` from `ready` (default 1) unless its `ready`
says `capacity` (it takes any number of batches: the worker bounds them by requests, and here
`--max-batches` does), the next one sent as soon as one is answered. `--repeat K` runs the same batches K times in one engine process
(one model load). Tokens/s counts completion tokens over the time from a pass's first batch to
its last result (model loading excluded, as in the compass run where the worker is already
registered).

The report's top-level `seconds`, token counts and `completion_tokens_per_second` are those of the
first pass, whose results --out holds (in prompt order); `passes` has every pass and
`median_completion_tokens_per_second` their median.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine")
    ap.add_argument("prompts")
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--gpus", default="0")
    ap.add_argument("--engine-arg", action="append", default=[])
    ap.add_argument("--max-batches", type=int, default=1,
                    help="batches inside the engine at once (capped at the engine's max_batches), default 1")
    ap.add_argument("--repeat", type=int, default=1, help="passes over the same batches in one engine process")
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", required=True)
    a = ap.parse_args()
    if a.max_batches < 1 or a.repeat < 1 or a.batch_size < 1:
        ap.error("--max-batches, --repeat and --batch-size must be 1 or more")
    requests = [json.loads(line) for line in open(a.prompts) if line.strip()]
    batches = [requests[i:i + a.batch_size] for i in range(0, len(requests), a.batch_size)]
    args = dict(kv.split("=", 1) for kv in a.engine_arg)
    to_engine_r, to_engine_w = os.pipe()
    from_engine_r, from_engine_w = os.pipe()
    # The adapters read the fd numbers from COMPASS_ENGINE_IN/OUT; the worker uses 3 and 4, here the
    # pipes keep their own numbers (subprocess closes dup2'd fds after preexec_fn).
    env = dict(os.environ, COMPASS_ENGINE_IN=str(to_engine_r), COMPASS_ENGINE_OUT=str(from_engine_w), COMPASS_MODEL=a.model, COMPASS_TP=str(a.tp),
               COMPASS_GPUS=a.gpus, CUDA_VISIBLE_DEVICES=a.gpus, CUDA_DEVICE_ORDER="PCI_BUS_ID",
               COMPASS_ENGINE_ARGS=json.dumps(args), VLLM_WORKER_MULTIPROC_METHOD="spawn", PYTHONUNBUFFERED="1",
               NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1", HF_HUB_OFFLINE="1")
    started = time.time()
    proc = subprocess.Popen([sys.executable, a.engine], env=env, pass_fds=(to_engine_r, from_engine_w), start_new_session=True)
    os.close(to_engine_r)
    os.close(from_engine_w)
    out = os.fdopen(to_engine_w, "w")
    events = os.fdopen(from_engine_r)

    def next_event() -> dict:
        line = events.readline()
        if not line:
            raise SystemExit(f"engine exited (status {proc.wait()})")
        return json.loads(line)

    ready = next_event()
    while ready.get("type") != "ready":
        if ready.get("type") == "fatal":
            raise SystemExit(f"engine failed to start: {ready}")
        ready = next_event()
    loaded = time.time()
    # An engine that says its capacity takes as many batches as it is sent.
    engine_max_batches = a.max_batches if "capacity" in ready else int(ready.get("max_batches", 1))
    window = min(a.max_batches, engine_max_batches)
    if window < a.max_batches:
        print(f"drive_engine: the engine takes {engine_max_batches} batch(es) at once; --max-batches {a.max_batches} "
              f"runs {window}, as the worker would", file=sys.stderr)

    def run_pass(number: int) -> tuple[list[dict], float]:
        """Sends every batch, at most `window` unanswered at once; the results in prompt order."""
        answers: dict[int, list[dict]] = {}
        inflight: dict[str, int] = {}
        following = iter(enumerate(batches))
        first = time.time()
        while len(answers) < len(batches):
            while len(inflight) < window and (item := next(following, None)) is not None:
                k, batch = item
                batch_id = f"direct-{number}-{k}"
                out.write(json.dumps({"type": "batch", "batch_id": batch_id, "attempt": 1, "deadline_ms": 0,
                                      "requests": batch}) + "\n")
                out.flush()
                inflight[batch_id] = k
            e = next_event()
            if e["type"] == "result" and e["batch_id"] in inflight:
                answers[inflight.pop(e["batch_id"])] = e["results"]
            elif e["type"] == "failed":
                raise SystemExit(f"batch failed: {e}")
            elif e["type"] == "fatal":
                raise SystemExit(f"engine failed: {e}")
        elapsed = time.time() - first
        return [r for k in range(len(batches)) for r in answers[k]], elapsed

    passes, first_results = [], None
    for number in range(a.repeat):
        results, elapsed = run_pass(number)
        completion = sum(r.get("completion_tokens", 0) for r in results)
        summary = {"pass": number + 1, "seconds": round(elapsed, 2), "completion_tokens": completion,
                   "prompt_tokens": sum(r.get("prompt_tokens", 0) for r in results),
                   "completion_tokens_per_second": round(completion / elapsed, 1)}
        if first_results is None:
            first_results = results
        else:  # greedy decoding: a pass should say what the first said (batching may change a few)
            summary["texts_differing_from_first_pass"] = sum(
                1 for r, f in zip(results, first_results, strict=True) if r.get("text") != f.get("text"))
        passes.append(summary)
        print(json.dumps(summary), file=sys.stderr)
    assert first_results is not None
    out.write(json.dumps({"type": "shutdown"}) + "\n")
    out.flush()
    proc.wait(timeout=120)
    with open(a.out, "w") as f:
        for r in first_results:
            f.write(json.dumps(r) + "\n")
    first = passes[0]
    report = {"engine": os.path.basename(a.engine), "requests": len(first_results), "batches": len(batches),
              "batch_size": a.batch_size, "load_seconds": round(loaded - started, 1), "seconds": first["seconds"],
              "completion_tokens": first["completion_tokens"], "prompt_tokens": first["prompt_tokens"],
              "completion_tokens_per_second": first["completion_tokens_per_second"], "ready": ready,
              "max_batches": window, "engine_max_batches": engine_max_batches, "repeat": a.repeat,
              "passes": passes,
              "median_completion_tokens_per_second": statistics.median(p["completion_tokens_per_second"] for p in passes)}
    json.dump(report, open(a.report, "w"), indent=1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
