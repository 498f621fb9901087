"""Checks a compass results file against its prompts: each custom_id exactly once; counts tokens.

    python3 check_results.py PROMPTS.jsonl RESULTS.jsonl [--compare OTHER_RESULTS.jsonl]

Prints a JSON summary; exits 1 if a request is missing or answered more than once (failed requests
are counted, not an error of delivery). With --compare,
also counts how many texts are identical to another run's (greedy decoding: they should be).
"""
import argparse
import collections
import json
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("prompts")
    ap.add_argument("results")
    ap.add_argument("--compare")
    a = ap.parse_args()
    wanted = [json.loads(l)["custom_id"] for l in open(a.prompts) if l.strip()]
    got = [json.loads(l) for l in open(a.results) if l.strip()]
    counts = collections.Counter(r["custom_id"] for r in got)
    summary = {
        "requests": len(wanted),
        "answered": len(counts),
        "missing": sum(1 for w in wanted if w not in counts),
        "duplicated": sum(1 for c in counts.values() if c > 1),
        "failed": sum(1 for r in got if r.get("error")),
        "completion_tokens": sum(r.get("completion_tokens", 0) for r in got),
    }
    if a.compare:
        other = {json.loads(l)["custom_id"]: json.loads(l).get("text") for l in open(a.compare) if l.strip()}
        summary["identical_to_compare"] = sum(1 for r in got if other.get(r["custom_id"]) == r.get("text"))
    print(json.dumps(summary))
    ok = summary["missing"] == 0 and summary["duplicated"] == 0 and len(got) == len(wanted)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
