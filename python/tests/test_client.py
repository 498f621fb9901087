"""End-to-end tests of compass_client against the real compass-broker and compass-worker."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Cluster, expected_text

from compass_client import CompassError, Request, Result

#: Deadline, in seconds, for any one blocking client call in these tests.
DEADLINE = 60.0


def prompts(n: int, words: int = 6, tag: str = "p") -> list[dict[str, Any]]:
    return [{"custom_id": f"{tag}{i}", "prompt": " ".join(f"{tag}{i}w{j}" for j in range(words))} for i in range(n)]


def check_texts(requests: list[dict[str, Any]], results: list[Result]) -> None:
    """Every request answered exactly once, with the synthetic engine's text."""
    assert len(results) == len(requests)
    by_id = {r.custom_id: r for r in results}
    assert len(by_id) == len(results), "a custom_id came back twice"
    for req in requests:
        result = by_id[req["custom_id"]]
        assert result.ok, result
        assert result.text == expected_text(req["prompt"], req.get("max_tokens", 16))


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Re-evaluates a predicate that itself waits on the broker (a STATUS round trip)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")


def running_batches(status: dict[str, Any]) -> set[str]:
    return {b for w in status["scheduler"]["workers"] for b in w["running"]}


def test_submit_500_requests_in_order_with_progress(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_worker()
    cluster.start_worker()
    requests = prompts(500, words=20)
    for i, r in enumerate(requests):
        if i % 3 == 0:
            r["max_tokens"] = 5
    calls: list[tuple[int, int]] = []
    client = cluster.client()
    results = client.submit(requests, batch_size=16, progress=lambda d, t: calls.append((d, t)), timeout=DEADLINE)
    check_texts(requests, results)
    assert [r.custom_id for r in results] == [r["custom_id"] for r in requests]  # input order
    assert len({r.batch_id for r in results}) == 32  # ceil(500 / 16)
    assert all(r.batch_id and r.batch_id.startswith(client.session + "-") for r in results)
    assert calls and calls[-1] == (500, 500)
    assert all(t == 500 for _, t in calls)
    assert [d for d, _ in calls] == sorted(set(d for d, _ in calls))  # strictly increasing
    assert client.counters["submits"] == 32


def test_progress_counts_requests_inside_running_batches(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_worker("batch_ms=200")  # the synthetic engine reports PROGRESS in 4 steps
    requests = prompts(16)
    calls: list[tuple[int, int]] = []
    results = cluster.client().submit(requests, batch_size=16, progress=lambda d, t: calls.append((d, t)),
                                      timeout=DEADLINE)
    check_texts(requests, results)
    assert calls[-1] == (16, 16)
    assert any(0 < d < 16 for d, _ in calls), calls


def test_submit_iter_yields_every_result(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_worker()
    requests = prompts(100)
    results = list(cluster.client().submit_iter(requests, batch_size=7, window=4, timeout=DEADLINE))
    check_texts(requests, results)


def test_unordered_submit_and_request_objects(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_worker()
    requests = [
        Request(custom_id="chat", messages=[{"role": "user", "content": "one two three"}], max_tokens=2),
        Request(custom_id="stop", prompt="a b c d e", stop=["c"]),
        {"prompt": "no id here"},  # custom_id defaults to the index
    ]
    results = cluster.client().submit(requests, ordered=False, timeout=DEADLINE)
    by_id = {r.custom_id: r for r in results}
    assert by_id["chat"].text == "three two" and by_id["chat"].finish_reason == "length"
    assert by_id["stop"].text == "e d "  # the text before the stop string "c"
    assert by_id["2"].text == "here id no"


def test_unknown_pool_raises(cluster: Cluster) -> None:
    cluster.start_broker()
    client = cluster.client()
    with pytest.raises(CompassError) as raised:
        client.submit(prompts(40), pool="nosuchpool", batch_size=4, timeout=DEADLINE)
    assert raised.value.code == "unknown_pool"
    assert "nosuchpool" in raised.value.message
    # The client is still usable after a failed run.
    assert client.status(timeout=DEADLINE)["accepting"] is True


def test_invalid_request_is_a_per_request_error(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_worker()
    requests = prompts(10)
    del requests[4]["prompt"]  # neither prompt nor messages
    results = cluster.client().submit(requests, batch_size=4, timeout=DEADLINE)
    assert results[4].error is not None and results[4].error.code == "bad_request"
    assert results[4].custom_id == "p4" and results[4].text is None
    good = requests[:4] + requests[5:]
    check_texts(good, results[:4] + results[5:])


def test_busy_back_off_completes_everything(cluster: Cluster) -> None:
    cluster.start_broker("--max-pool-bytes", "200000")
    cluster.start_worker("batch_ms=20")
    requests = prompts(320, words=300)  # ~3.5 KB each: 20 batches of ~56 KB for a 200 KB pool
    client = cluster.client()
    results = client.submit(requests, batch_size=16, window=32, timeout=DEADLINE)
    check_texts(requests, results)
    assert client.counters["busy"] > 0
    pool = client.status(timeout=DEADLINE)["scheduler"]["pools"][0]
    assert pool["counters"]["rejected_busy"] > 0


def test_cancel_a_running_batch(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_worker()
    client = cluster.client()
    requests = prompts(4) + [{"custom_id": "hang", "prompt": "wait @@hang forever"}]
    outcome: list[list[Result]] = []
    runner = threading.Thread(target=lambda: outcome.append(client.submit(requests, batch_size=1, timeout=DEADLINE)))
    runner.start()
    hang_batch = f"{client.session}-5"  # batch_size 1: the fifth request is the fifth batch
    wait_until(lambda: hang_batch in running_batches(client.status(timeout=DEADLINE)), DEADLINE, "the batch to run")
    client.cancel(hang_batch)
    runner.join(DEADLINE)
    assert not runner.is_alive()
    results = outcome[0]
    check_texts(requests[:4], results[:4])
    assert results[4].error is not None and results[4].error.code == "cancelled"


def test_submit_batch_and_cancel_by_handle(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_worker()
    client = cluster.client()
    outcome = client.submit_batch(f"{client.session}-one", prompts(3), timeout=DEADLINE)
    assert outcome.ok and outcome.attempts == 1 and outcome.stats["requests"] == 3
    assert [r.text for r in outcome.results] == [expected_text(r["prompt"]) for r in prompts(3)]
    handle = client.start_batch(f"{client.session}-hang", [{"custom_id": "h", "prompt": "@@hang"}])
    assert handle.accepted.wait(DEADLINE)
    handle.cancel()
    cancelled = handle.result(DEADLINE)
    assert not cancelled.ok and cancelled.code == "cancelled"


def test_asubmit(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_worker()
    requests = prompts(20)
    results = asyncio.run(cluster.client().asubmit(requests, batch_size=8, timeout=DEADLINE))
    check_texts(requests, results)


def test_resume_after_client_restart(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_worker("batch_ms=500")
    session = f"resume-{time.monotonic_ns()}"
    first = cluster.client(session)
    chunks = [prompts(4, tag=f"b{k}-") for k in range(3)]
    ids = [f"{session}-{k + 1}" for k in range(3)]
    handles = [first.start_batch(i, chunk) for i, chunk in zip(ids, chunks)]
    for h in handles:
        assert h.accepted.wait(DEADLINE)
    first.close()  # without waiting: the batches are still queued or running
    for h in handles:
        with pytest.raises(CompassError) as raised:
            h.result(DEADLINE)
        assert raised.value.code == "closed"

    second = cluster.client(session)
    outcomes = second.collect(ids, timeout=DEADLINE)
    assert sorted(outcomes) == sorted(ids)
    for batch_id, chunk in zip(ids, chunks):
        assert outcomes[batch_id].ok
        check_texts(chunk, outcomes[batch_id].results)
    # Collected outcomes were ACKed: the broker forgets the session's batches.
    wait_until(lambda: all(s["outstanding"] == 0 for s in second.status(timeout=DEADLINE)["scheduler"]["sessions"]
                           if s["session"] == session), DEADLINE, "the ACKs")


def test_resume_collects_everything_held(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_worker("batch_ms=100")
    session = f"held-{time.monotonic_ns()}"
    first = cluster.client(session)
    handles = [first.start_batch(f"{session}-{k}", prompts(2, tag=f"h{k}-")) for k in range(3)]
    for h in handles:
        assert h.accepted.wait(DEADLINE)
    first.close()
    observer = cluster.client()
    wait_until(lambda: observer.status(timeout=DEADLINE)["scheduler"]["pools"][0]["counters"]["completed"] == 3,
               DEADLINE, "the batches to finish with nobody connected")

    second = cluster.client(session)
    outcomes = second.collect(timeout=DEADLINE)  # what the broker held at HELLO
    assert second.welcome is not None and second.welcome["pending_results"] == 3
    assert sorted(outcomes) == [f"{session}-{k}" for k in range(3)]
    assert all(o.ok for o in outcomes.values())
    # A same-session re-submit of a held batch... was collected, so the broker reports it done.
    with pytest.raises(CompassError) as raised:
        second.submit_batch(f"{session}-0", prompts(2, tag="h0-"), timeout=DEADLINE)
    assert raised.value.code == "duplicate"


def test_broker_restart_without_journal(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_worker("batch_ms=50")
    cluster.start_worker("batch_ms=50")
    client = cluster.client()
    requests = prompts(240)
    some_done = threading.Event()
    outcome: list[list[Result]] = []
    errors: list[BaseException] = []

    def progress(done: int, total: int) -> None:
        if done >= 40:
            some_done.set()

    def run() -> None:
        try:
            outcome.append(client.submit(requests, batch_size=4, window=8, progress=progress, timeout=DEADLINE))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    runner = threading.Thread(target=run)
    runner.start()
    assert some_done.wait(DEADLINE)
    first_id = client.welcome["broker_id"] if client.welcome else None
    cluster.kill_broker()
    cluster.start_broker()  # same ipc endpoints, new broker id, empty queues
    runner.join(DEADLINE)
    assert not runner.is_alive() and not errors, errors
    check_texts(requests, outcome[0])
    assert client.counters["broker_restarts"] >= 1
    assert client.counters["resubmits"] >= 1
    assert client.status(timeout=DEADLINE)["broker_id"] != first_id


def test_submit_while_the_broker_restarts(cluster: Cluster) -> None:
    """A SUBMIT sent while the broker is down must reach the next broker after our HELLO.

    Otherwise the new broker files it under an anonymous session, and the batch is lost to us.
    The liveness is long so that only the dropped connection can tell the client anything.
    """
    cluster.start_broker()
    cluster.start_worker()
    client = cluster.client(liveness=100)
    assert client.status(timeout=DEADLINE)["accepting"]
    cluster.kill_broker()
    handle = client.start_batch(f"{client.session}-during", prompts(2))
    cluster.start_broker()
    outcome = handle.result(DEADLINE)
    assert outcome.ok
    check_texts(prompts(2), outcome.results)


def test_status(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_worker()
    client = cluster.client()
    check_texts(prompts(3), client.submit(prompts(3), timeout=DEADLINE))
    status = client.status(timeout=DEADLINE)
    assert status["protocol_version"] == 1
    assert status["frontend"] == cluster.frontend
    assert client.welcome is not None and status["broker_id"] == client.welcome["broker_id"]
    pools = {p["name"]: p for p in status["scheduler"]["pools"]}
    assert pools["default"]["counters"]["completed"] >= 1
    assert any(s["session"] == client.session for s in status["scheduler"]["sessions"])
