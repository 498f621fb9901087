"""CPU seconds (user + system) of process trees, by tree and process name: stream.sh samples it
before and after each pass, so each pass says how busy each engine's front end (the Python process
that tokenizes, adds requests and processes outputs) and its engine core were while it ran.

    python3 proc_cpu.py LABEL=PID [LABEL=PID ...]   ->   {"LABEL/comm": seconds, ...}

A tree is the process and all its descendants (read from /proc); processes of the same name in a
tree are summed. Linux only.
"""
import json
import os
import sys


def main() -> None:
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, str, float]] = {}  # pid -> (ppid, comm, cpu seconds)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = open(f"/proc/{name}/stat").read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1: raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        stats[int(name)] = (int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / tick)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, float] = {}
    for arg in sys.argv[1:]:
        label, root = arg.split("=", 1)
        todo = [int(root)]
        while todo:
            pid = todo.pop()
            if pid in stats:
                key = f"{label}/{stats[pid][1]}"
                out[key] = round(out.get(key, 0.0) + stats[pid][2], 2)
            todo.extend(children.get(pid, []))
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
