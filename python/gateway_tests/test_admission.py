"""256 concurrent HTTP clients through the gateway keep a continuously batching engine full (issue #17).

The worker's engine is the synthetic one in its continuous mode (capacity 256 sequences; each step
advances every running sequence by one token), so how full it is comes from the engine's own step
counts (`engine statistics` in the worker's log: steps run, and running sequences summed over
them), not from the clock. Each client (bench/gpu/loadgen.py's, as in the GPU benchmark) sends one completion at a
time, as lm-evaluation-harness's local-completions and OpenCompass's OpenAISDK do: 256 clients can keep 256 sequences running only
if every layer (gateway, broker, worker) hands each request on at once and the worker admits
one-request batches up to the engine's capacity.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from conftest import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "gpu"))
import loadgen  # noqa: E402 - the GPU benchmark's HTTP clients: asyncio, one keep-alive connection each

CLIENTS = 256
CAPACITY = 256
REQUESTS = 1536
MAX_TOKENS = 32


def samples(log: str) -> list[dict[str, int]]:
    """The worker's `engine statistics` lines: steps, sequence_steps and completed (cumulative)."""
    out = []
    for line in log.splitlines():
        if "engine statistics" not in line:
            continue
        fields = dict(re.findall(r"(\w+)=(\d+)\b", line))
        if {"steps", "sequence_steps", "completed"} <= fields.keys():
            out.append({k: int(fields[k]) for k in ("steps", "sequence_steps", "completed")})
    return out


def prompt(i: int) -> str:
    return f"tok{i} " + " ".join(f"w{j}" for j in range(40))  # more words than MAX_TOKENS: each runs MAX_TOKENS steps


def test_256_http_clients_keep_a_continuous_engine_of_256_sequences_at_least_90_percent_full(cluster: Cluster) -> None:
    cluster.start_broker()
    # Steps of 100 ms and sequences of 32 steps: the engine takes 80 requests a second, well below
    # what the gateway, broker and worker (debug builds) and the clients carried on a 2-core machine
    # loaded with other builds (about 170 a second), so what is measured is admission, not whether
    # the pipeline keeps up with a fast engine (bench/gpu/stream.sh measures that on a GPU). A slot
    # stays empty from its sequence's last step until the client's next request joins a step (half
    # a step, and the round trip through gateway, broker and worker): about 0.2 s of a 3.2 s life.
    worker = cluster.start_worker("default", f"capacity={CAPACITY}", "step_us=100000", "seq_us=0",
                                  extra=("--stats-interval-ms", "500"))
    gateway = cluster.start_gateway()
    cluster.wait_for_workers(gateway, {"default": 1})
    prompts = [{"custom_id": str(i), "prompt": prompt(i), "max_tokens": MAX_TOKENS} for i in range(REQUESTS)]
    report, results = asyncio.run(loadgen.run(gateway.base_url, prompts, CLIENTS, "default"))
    assert report["errors"] == 0, report
    # Every request answered with its own completion: the synthetic model reverses the prompt's words.
    for i, result in enumerate(results):
        assert result is not None and result["text"] == " ".join(list(reversed(prompt(i).split()))[:MAX_TOKENS]), (i, result)
    batcher = gateway.health()["batcher"]  # type: ignore[index]
    log = worker.log_path.read_text()  # type: ignore[attr-defined]
    every = samples(log)
    # Steady state: from the report after 15 % of the requests were answered to the last before 85 %.
    steady = [s for s in every if REQUESTS * 15 // 100 <= s["completed"] <= REQUESTS * 85 // 100]
    assert len(steady) >= 2, every
    first, last = steady[0], steady[-1]
    steps = last["steps"] - first["steps"]
    assert steps > 20, (first, last)
    occupancy = (last["sequence_steps"] - first["sequence_steps"]) / (steps * CAPACITY)
    print(f"gateway: {REQUESTS} requests from {CLIENTS} clients in {report['seconds']:.1f} s; engine occupancy {occupancy:.3f} "
          f"of {CAPACITY} sequences over {steps} steps; the gateway's batches: {batcher['flushes']}")
    assert occupancy >= 0.9, (occupancy, steady)
