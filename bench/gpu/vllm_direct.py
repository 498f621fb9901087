"""vLLM driven directly, with no compass at all: LLM.generate over every prompt in one call, the
most throughput vLLM itself gets from these prompts. compass's vLLM runs are compared with it.

    python3 vllm_direct.py MODEL PROMPTS.jsonl REPORT.json [--tp 1] [--gpu-memory-utilization 0.85] [--max-model-len 2048]
                           [--passes 1]

With --passes K the same call runs K times on the loaded engine: the first is cold (the first pass
after load), the others warm; the report has every pass and the top-level numbers are the last's.

With --on-demand the engine loads, prints {"ready": ...}, and then runs one pass per line read from
standard input (printing each pass's line; --out is rewritten after each), until standard input
ends: stream.sh interleaves these passes with the other paths' on the same GPU. A line
`window=W` instead runs the pass on the same engine the way a server with W clients would at best:
the prompts go in through `llm_engine.add_request` (tokenized as compass's adapter does), at most W
unfinished at once, the next one added as soon as one finishes, with nothing between the clients
and the engine: the most a front end with W concurrent requests can get from this engine.

With --step-trace FILE every engine step appends "start end inside" (unix seconds, the requests
unfinished when it began), the format of the compass vLLM adapter's `step_trace` argument.
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
    ap.add_argument("--step-trace", help="append one line per engine step to this file")
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
    engine = llm.llm_engine
    if a.step_trace:
        trace = open(a.step_trace, "a", buffering=1)
        step = engine.step

        def traced_step():
            inside = engine.get_num_unfinished_requests()
            began = time.time()
            outputs = step()
            trace.write(f"{began:.6f} {time.time():.6f} {inside}\n")
            return outputs

        engine.step = traced_step  # LLM.generate's _run_engine calls self.llm_engine.step()
    print(json.dumps({"ready": True, "load_seconds": round(loaded - started, 1)}), flush=True)

    def write_texts(outputs) -> None:
        if a.out:
            with open(a.out, "w") as f:
                for r, o in zip(requests, outputs):
                    f.write(json.dumps({"custom_id": r["custom_id"], "text": o.outputs[0].text,
                                        "completion_tokens": len(o.outputs[0].token_ids)}) + "\n")

    def windowed(window: int) -> list:
        """At most `window` prompts unfinished in the engine at once, topped up after every step."""
        from vllm.sampling_params import RequestOutputKind
        try:
            from vllm.inputs import tokens_input
        except ImportError:
            tokens_input = lambda ids: {"prompt_token_ids": ids}
        tokenizer = llm.get_tokenizer()
        for p in params:
            p.output_kind = RequestOutputKind.FINAL_ONLY
        done: dict[str, object] = {}
        nxt = 0
        while len(done) < len(requests):
            while nxt < len(requests) and engine.get_num_unfinished_requests() < window:
                engine.add_request(f"w{nxt}", tokens_input(tokenizer.encode(requests[nxt]["prompt"])), params[nxt])
                nxt += 1
            for output in engine.step():
                if output.finished:
                    done[output.request_id] = output
        return [done[f"w{i}"] for i in range(len(requests))]

    passes = []
    triggers = (line for line in sys.stdin) if a.on_demand else range(a.passes)
    for line in triggers:
        window = int(line.split("window=")[1]) if isinstance(line, str) and "window=" in line else None
        t0 = time.time()
        if window:
            outputs = windowed(window)
        else:
            outputs = llm.generate([r["prompt"] for r in requests], params, use_tqdm=False)
        t1 = time.time()
        seconds = t1 - t0
        completion = sum(len(o.outputs[0].token_ids) for o in outputs)
        passes.append({"pass": len(passes) + 1, "cold": not passes, "window": window, "seconds": round(seconds, 3),
                       "started": round(t0, 3), "ended": round(t1, 3),
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
