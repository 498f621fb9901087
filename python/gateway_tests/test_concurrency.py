"""200 concurrent HTTP requests: each answered correctly, and gathered into far fewer broker batches."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time

import pytest
from conftest import Cluster, expected_text
from openai import AsyncOpenAI

REQUESTS = 200


async def fire(base_url: str, prompts: list[str]) -> list[tuple[str, float]]:
    client = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=60)
    try:
        async def one(i: int, prompt: str) -> tuple[str, float]:
            started = time.monotonic()
            if i % 2:
                r = await client.chat.completions.create(model="default", messages=[{"role": "user", "content": prompt}])
                text = r.choices[0].message.content or ""
            else:
                c = await client.completions.create(model="default", prompt=prompt)
                text = c.choices[0].text
            return text, time.monotonic() - started

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    finally:
        await client.close()


@pytest.mark.parametrize("eager", ["0", "2"], ids=["fixed-window", "eager"])
def test_200_concurrent_requests_share_batches(cluster: Cluster, eager: str) -> None:
    """`--eager-batches 0`: every request waits for the window, so 200 become few batches.
    The default (2 per worker) sends at once while the pool has room and gathers only while it is
    busy: every answer is right, and the window still bounds every wait."""
    cluster.start_broker()
    cluster.start_worker()
    cluster.start_worker()
    # A 50 ms window: arrivals spread over a second on a loaded 2-core machine still share batches.
    gateway = cluster.start_gateway("--max-batch", "32", "--max-wait-ms", "50", "--eager-batches", eager)
    cluster.wait_for_workers(gateway, {"default": 2})
    before = cluster.pool_status("default")["counters"]["submitted"]
    prompts = [f"request {i} " + " ".join(f"w{i}x{k}" for k in range(i % 7 + 1)) for i in range(REQUESTS)]

    started = time.monotonic()
    answers = asyncio.run(asyncio.wait_for(fire(gateway.base_url, prompts), timeout=90))
    wall = time.monotonic() - started

    for prompt, (text, _) in zip(prompts, answers):
        assert text == expected_text(prompt), prompt
    batches = cluster.pool_status("default")["counters"]["submitted"] - before
    health = gateway.health()
    assert health is not None
    stats = health["batcher"]
    latencies = sorted(latency for _, latency in answers)
    report = {
        "eager_batches": int(eager),
        "requests": REQUESTS,
        "broker_batches": batches,
        "mean_batch_size": round(REQUESTS / batches, 1),
        "largest_batch": stats["largest_batch"],
        "batching_wait_ms_mean": stats["wait_ms_mean"],
        "batching_wait_ms_max": stats["wait_ms_max"],
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 1),
        "latency_ms_p95": round(latencies[int(0.95 * len(latencies)) - 1] * 1000, 1),
        "wall_s": round(wall, 2),
        "flushes": stats["flushes"],
    }
    print("\ngateway 200-request figures: " + json.dumps(report))
    if path := os.environ.get("COMPASS_GATEWAY_REPORT"):
        with open(path, "a") as f:
            f.write(json.dumps(report) + "\n")
    assert stats["requests"] == REQUESTS and stats["batches"] == batches
    assert sum(stats["flushes"].values()) == batches, report
    if eager == "0":
        # Far fewer batches than requests (the bound is loose: arrival spread depends on the machine).
        assert batches <= REQUESTS // 4, report
        assert stats["flushes"]["spare"] == 0 and stats["flushes"]["freed"] == 0, report
    else:
        assert stats["flushes"]["spare"] >= 1, report
    # The batching wait is bounded by --max-wait-ms (plus timer slack on a loaded machine).
    assert stats["wait_ms_max"] < 50 + 200, report
