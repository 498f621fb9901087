"""Writes N prompts as compass JSONL: varied lengths, fixed max_tokens (and ignore_eos for vLLM runs).

    python3 prompts.py OUT.jsonl N [--max-tokens 64] [--ignore-eos]
"""
import argparse
import json
import random

WORDS = ("the model reads a long document about distributed systems and answers questions on "
         "queues brokers workers tensors gradients caches networks latency throughput memory "
         "kernels schedulers retries failures recovery benchmarks evaluation prompts tokens").split()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("n", type=int)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--ignore-eos", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    with open(a.out, "w") as f:
        for i in range(a.n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(16, 48))]
            line = {"custom_id": f"p{i:06d}", "prompt": f"Question {i}: " + " ".join(words), "max_tokens": a.max_tokens,
                    "temperature": 0.0}
            if a.ignore_eos:
                line["ignore_eos"] = True
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
