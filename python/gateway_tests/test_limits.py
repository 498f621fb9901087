"""Errors that need a cluster of their own: 401 (API key), 429 (busy pool), 504 (deadline)."""

from __future__ import annotations

import concurrent.futures
import time

import openai
import pytest
from conftest import Cluster, expected_text, http, wait_for
from openai import OpenAI


def test_api_key(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_worker()
    gateway = cluster.start_gateway("--api-key", "s3cret")
    cluster.wait_for_workers(gateway, {"default": 1}, api_key="s3cret")
    for key in ("wrong", "s3cret-and-more", ""):
        bad = OpenAI(base_url=gateway.base_url, api_key=key or "x", max_retries=0, timeout=10)
        with pytest.raises(openai.AuthenticationError) as info:
            bad.completions.create(model="default", prompt="hello")
        assert info.value.status_code == 401
        assert info.value.code == "invalid_api_key"
    status, _, _ = http("GET", gateway.base_url + "/models")
    assert status == 401, "no Authorization header"
    good = OpenAI(base_url=gateway.base_url, api_key="s3cret", max_retries=0, timeout=10)
    assert good.completions.create(model="default", prompt="hello there").choices[0].text == "there hello"
    assert gateway.health() is not None, "/health needs no key"


def test_busy_pool_is_429_with_retry_after(cluster: Cluster) -> None:
    # The pool may hold 1000 bytes; one request of ~700 bytes fits, two do not.
    cluster.start_broker("--max-pool-bytes", "1000")
    cluster.start_worker("default", "batch_ms=1500")
    gateway = cluster.start_gateway()
    cluster.wait_for_workers(gateway, {"default": 1})
    c = OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0, timeout=30)
    first_prompt = " ".join(f"first{i:02d}" for i in range(70))
    second_prompt = " ".join(f"other{i:02d}" for i in range(70))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(c.completions.create, model="default", prompt=first_prompt)
        wait_for(lambda: cluster.pool_status("default")["held_bytes"] > 0, 10, "the first request to be held by the pool")
        with pytest.raises(openai.RateLimitError) as info:
            c.completions.create(model="default", prompt=second_prompt)
        assert info.value.status_code == 429
        assert info.value.code == "pool_busy"
        assert int(info.value.response.headers["retry-after-ms"]) > 0
        assert first.result(timeout=20).choices[0].text == expected_text(first_prompt)
    assert cluster.pool_status("default")["counters"]["rejected_busy"] >= 1
    # Once the pool has room again the same request passes, and nothing stray is left behind.
    wait_for(lambda: cluster.pool_status("default")["held_bytes"] == 0, 10, "the pool to be empty")
    assert c.completions.create(model="default", prompt=second_prompt).choices[0].text == expected_text(second_prompt)
    wait_for(lambda: cluster.pool_status("default")["held_bytes"] == 0, 10, "the pool to be empty again")
    status = cluster.pool_status("default")
    assert (status["queued_batches"], status["running_batches"]) == (0, 0)


def test_deadline_is_504(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_worker("default", "batch_ms=3000")
    gateway = cluster.start_gateway("--deadline-ms", "300")
    cluster.wait_for_workers(gateway, {"default": 1})
    c = OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0, timeout=30)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        c.chat.completions.create(model="default", messages=[{"role": "user", "content": "too slow"}])
    elapsed = time.monotonic() - started
    assert info.value.status_code == 504
    assert info.value.code == "timeout"
    assert elapsed < 2.5, f"answered after {elapsed:.2f} s"
