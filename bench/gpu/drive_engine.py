"""Drives an engine adapter directly over the engine protocol, the way compass-worker does but with
no broker and no worker: the baseline that compass's own throughput is compared with.

    python3 drive_engine.py ENGINE_SCRIPT PROMPTS.jsonl --model M --batch-size B [--tp N --gpus 0,1]
        [--engine-arg k=v ...] --out results.jsonl --report report.json

Batches are cut from PROMPTS exactly as `compass submit --batch-size B` cuts them and sent one at
a time; tokens/s counts completion tokens over the time from the first batch to the last result
(model loading excluded, as in the compass run where the worker is already registered).
"""
import argparse
import json
import os
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
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", required=True)
    a = ap.parse_args()
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
    results, completion, prompt_tokens = [], 0, 0
    first = time.time()
    for k, batch in enumerate(batches):
        out.write(json.dumps({"type": "batch", "batch_id": f"direct-{k}", "attempt": 1, "deadline_ms": 0, "requests": batch}) + "\n")
        out.flush()
        while True:
            e = next_event()
            if e["type"] == "result":
                results += e["results"]
                completion += sum(r.get("completion_tokens", 0) for r in e["results"])
                prompt_tokens += sum(r.get("prompt_tokens", 0) for r in e["results"])
                break
            if e["type"] == "failed":
                raise SystemExit(f"batch failed: {e}")
    elapsed = time.time() - first
    out.write(json.dumps({"type": "shutdown"}) + "\n")
    out.flush()
    proc.wait(timeout=120)
    with open(a.out, "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    report = {"engine": os.path.basename(a.engine), "requests": len(results), "batches": len(batches),
              "batch_size": a.batch_size, "load_seconds": round(loaded - started, 1), "seconds": round(elapsed, 2),
              "completion_tokens": completion, "prompt_tokens": prompt_tokens,
              "completion_tokens_per_second": round(completion / elapsed, 1), "ready": ready}
    json.dump(report, open(a.report, "w"), indent=1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
