#!/usr/bin/env python3
"""A compass_engine backend for testing the protocol library itself, steered by markers.

Each request takes `max_tokens` (default 3) steps of `step_ms`; its text is the request as
compass_engine parsed it (JSON), so tests see the validation's output, plus `running`: how many
batches were inside the backend when this one began (itself included). Markers in a prompt:
@raise (the backend raises), @oom (MemoryError), @fatal (FatalEngineError). Engine args:
fail_load=oom|error|config, load_ms=N (a slow load), step_ms=N, max_batches=N (the backend's
`max_batches` attribute, set as given, unchecked: the host validates it), capacity=N and
capacity_tokens=N and merge_requests=N (likewise; with capacity the backend also counts steps for
`engine_stats()`: one step per generated token of any batch, counting the batches inside at that
moment). Each result's `calls`: how many generate calls the backend had begun when this one began.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from compass_engine import (  # noqa: E402
    Cancelled,
    EngineConfigError,
    EngineSettings,
    FatalEngineError,
    Progress,
    Request,
    Result,
    run,
)


class Scripted:
    name = "scripted"
    arguments = {"fail_load": "oom, error or config", "load_ms": "load time", "step_ms": "time per token",
                 "max_batches": "batches at once", "capacity": "sequences at once", "capacity_tokens": "KV tokens",
                 "merge_requests": "requests per merged call"}

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0  # generate calls under way
        self.calls = 0  # generate calls begun

    def load(self, settings: EngineSettings) -> str:
        failure = settings.args.choice("fail_load", ["oom", "error", "config"])
        time.sleep((settings.args.integer("load_ms", 0) or 0) / 1000)
        if failure == "oom":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if failure == "error":
            raise ValueError("the weights are corrupt")
        if failure == "config":
            raise EngineConfigError("model directory not found: /nowhere")
        self.step = (settings.args.integer("step_ms", 10) or 0) / 1000
        max_batches = settings.args.integer("max_batches")
        if max_batches is not None:
            self.max_batches = max_batches
        for name in ("capacity", "capacity_tokens", "merge_requests"):
            value = settings.args.integer(name)
            if value is not None:
                setattr(self, name, value)
        self.steps_run = self.sequence_steps = 0
        return f"scripted: model {settings.model}, tp {settings.tp}, gpus {settings.gpus}"

    def generate(self, requests: list[Request], progress: Progress, cancelled: threading.Event) -> list[Result]:
        with self.lock:
            self.running += 1
            self.calls += 1
            running, call = self.running, self.calls
        try:
            return self.steps(requests, progress, cancelled, running, call)
        finally:
            with self.lock:
                self.running -= 1

    def steps(self, requests: list[Request], progress: Progress, cancelled: threading.Event,
              running: int, call: int) -> list[Result]:
        results = []
        for request in requests:
            text = request.flattened_prompt
            if "@raise" in text:
                raise RuntimeError("the backend exploded")
            if "@oom" in text:
                raise MemoryError("CUDA out of memory")
            if "@fatal" in text:
                raise FatalEngineError("rank 1 died", "engine_dead")
            steps = 3 if request.max_tokens is None else request.max_tokens
            for _ in range(steps):
                if cancelled.wait(self.step):
                    raise Cancelled()
                with self.lock:
                    self.steps_run += 1
                    self.sequence_steps += self.running
                progress.add(tokens=1)
            progress.add(done=1)
            results.append(Result(request.custom_id, json.dumps({**dataclasses.asdict(request), "running": running, "call": call}), len(text.split()),
                                  steps, "length"))
        return results


    def engine_stats(self) -> dict[str, int] | None:
        if not hasattr(self, "capacity"):
            return None
        with self.lock:
            return {"capacity": self.capacity, "steps": self.steps_run, "sequence_steps": self.sequence_steps}


if __name__ == "__main__":
    run(Scripted())
