"""Where the GIL went during a profiled pass of stream.sh (PROFILE=...): reads py-spy's collapsed
stacks (`py-spy record --gil --format raw`, one line per stack: frames separated by ';' and the
sample count) and prints, per process, the samples by thread (the outermost function of the
thread's stack) and the functions that held the GIL most, inclusive of what they called.

    python3 prof_report.py prof-gateway.txt.gz [--seconds S] [--rate 250] [--top 40]

With --seconds (the pass's length) it says what share of the pass each process held its GIL:
samples / (seconds x rate); one process at 100 % has no time left for anything else.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import re


def frame_name(frame: str) -> str:
    """`func (path/file.py:123)` -> `func (file.py)`: one entry per function, not per line."""
    m = re.match(r"(.*?) \((.*?):\d+\)$", frame)
    if not m:
        return frame
    return f"{m.group(1)} ({m.group(2).rsplit('/', 1)[-1]})"


THREAD_ROOTS = ("Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run", "_bootstrap", "_bootstrap_inner", "run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile")
    ap.add_argument("--seconds", type=float, help="the pass's length: shares of it per process")
    ap.add_argument("--rate", type=float, default=250.0, help="py-spy's samples per second (stream.sh: 250)")
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    opener = gzip.open if a.profile.endswith(".gz") else open
    per_process: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    threads: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    with opener(a.profile, "rt") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            # The innermost "process ..." frame is the one sampled (--subprocesses nests children).
            last = max((i for i, fr in enumerate(frames) if fr.startswith("process ")), default=-1)
            process = frames[last] if last >= 0 else "?"
            process = re.sub(r'^process (\d+):"(.*)"$', lambda m: f"{m.group(1)} {m.group(2)[:90]}", process)
            body = [frame_name(fr) for fr in frames[last + 1:]]
            totals[process] += n
            root = next((fr for fr in body if fr.split(" (")[0] not in THREAD_ROOTS), "?")
            threads[process][root] += n
            for name in dict.fromkeys(body):  # inclusive: once per stack
                if name.split(" (")[0] not in THREAD_ROOTS:
                    per_process[process][name] += n
    for process, total in totals.most_common():
        share = f", {total / (a.seconds * a.rate):.0%} of the pass" if a.seconds else ""
        print(f"\n## {process}: {total} samples holding the GIL{share}\n")
        print("by thread (outermost function):")
        for root, n in threads[process].most_common(12):
            print(f"  {n:6d} {n / total:6.1%}  {root}")
        print(f"\ntop {a.top} functions, inclusive:")
        for name, n in per_process[process].most_common(a.top):
            print(f"  {n:6d} {n / total:6.1%}  {name}")


if __name__ == "__main__":
    main()
