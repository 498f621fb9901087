"""vLLM driven directly, with no compass at all: LLM.generate over every prompt in one call, the
most throughput vLLM itself gets from these prompts. compass's vLLM runs are compared with it.

    python3 vllm_direct.py MODEL PROMPTS.jsonl REPORT.json [--tp 1] [--gpu-memory-utilization 0.85] [--max-model-len 2048]
                           [--passes 1]

With --passes K the same call runs K times on the loaded engine: the first is cold (the first pass
after load), the others warm; the report has every pass and the top-level numbers are the last's.

With --on-demand the engine loads, prints {"ready": ...}, and then runs one pass per line read from
standard input (printing each pass's line; --out is rewritten after each), until standard input
ends: stream.sh interleaves these passes with the other paths' on the same GPU.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("prompts")
    ap.add_argument("report")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--on-demand", action="store_true", help="one pass per line of standard input")
    ap.add_argument("--out", help="the last pass's texts as compass results JSONL (custom_id, text, completion_tokens)")
    a = ap.parse_args()
    from vllm import LLM, SamplingParams  # imported late: the start method must be set first

    requests = [json.loads(line) for line in open(a.prompts) if line.strip()]
    started = time.time()
    llm = LLM(model=a.model, tensor_parallel_size=a.tp, gpu_memory_utilization=a.gpu_memory_utilization,
              max_model_len=a.max_model_len, seed=0)
    loaded = time.time()
    params = [SamplingParams(max_tokens=r.get("max_tokens", 64), temperature=r.get("temperature", 0.0),
                             ignore_eos=r.get("ignore_eos", False)) for r in requests]
    print(json.dumps({"ready": True, "load_seconds": round(loaded - started, 1)}), flush=True)

    def write_texts(outputs) -> None:
        if a.out:
            with open(a.out, "w") as f:
                for r, o in zip(requests, outputs):
                    f.write(json.dumps({"custom_id": r["custom_id"], "text": o.outputs[0].text,
                                        "completion_tokens": len(o.outputs[0].token_ids)}) + "\n")

    passes = []
    triggers = (line for line in sys.stdin) if a.on_demand else range(a.passes)
    for _ in triggers:
        t0 = time.time()
        outputs = llm.generate([r["prompt"] for r in requests], params, use_tqdm=False)
        seconds = time.time() - t0
        completion = sum(len(o.outputs[0].token_ids) for o in outputs)
        passes.append({"pass": len(passes) + 1, "cold": not passes, "seconds": round(seconds, 3),
                       "completion_tokens": completion, "completion_tokens_per_second": round(completion / seconds, 1)})
        write_texts(outputs)
        print(json.dumps(passes[-1]), flush=True)
    report = {"engine": "vllm LLM.generate (all prompts in one call)", "requests": len(requests),
              "load_seconds": round(loaded - started, 1), "start_method": os.environ.get("VLLM_WORKER_MULTIPROC_METHOD"),
              "passes": passes}
    if passes:
        report.update(seconds=passes[-1]["seconds"], completion_tokens=passes[-1]["completion_tokens"],
                      completion_tokens_per_second=passes[-1]["completion_tokens_per_second"])
    json.dump(report, open(a.report, "w"), indent=1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
