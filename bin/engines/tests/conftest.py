"""Fixtures for the engine adapter tests.

`start_engine` starts an adapter the way the worker does (docs/engines.md): posix_spawn in a
process group of its own, fd 3 = the read end of the request pipe, fd 4 = the write end of the
event pipe, stdout and stderr captured, the COMPASS_* environment. Every read has a deadline; no
test sleeps to synchronise. `tiny_model` is a random Llama made once per session.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn
from collections.abc import Callable, Iterator

import pytest

ENGINES = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
DEFAULT_TIMEOUT = 30.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test gets a time limit (pytest-timeout); a test may set its own with @pytest.mark.timeout.
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(120))


def _high(fd: int) -> int:
    """A close-on-exec copy of fd numbered 64 or more, so that dup2 onto 3 and 4 in the child
    cannot clobber a pipe end that happens to be 3 or 4 here (the worker does the same)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64)
    os.close(fd)
    return high


class Engine:
    """One engine process and the two protocol pipes."""

    def __init__(self, argv: list[str], env: dict[str, str], read_log: bool = True) -> None:
        req_r, req_w = (_high(fd) for fd in os.pipe())
        ev_r, ev_w = (_high(fd) for fd in os.pipe())
        log_r, log_w = (_high(fd) for fd in os.pipe())
        null = _high(os.open(os.devnull, os.O_RDONLY))
        actions = [
            (os.POSIX_SPAWN_DUP2, null, 0),
            (os.POSIX_SPAWN_DUP2, log_w, 1),
            (os.POSIX_SPAWN_DUP2, log_w, 2),
            (os.POSIX_SPAWN_DUP2, req_r, 3),
            (os.POSIX_SPAWN_DUP2, ev_w, 4),
        ]
        self.pid = os.posix_spawn(argv[0], argv, env, file_actions=actions, setpgroup=0)
        for fd in (req_r, ev_w, log_w, null):
            os.close(fd)
        self._requests = os.fdopen(req_w, "wb", buffering=0)
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []  # everything received, in order
        self._log: list[str] = []
        self.returncode: int | None = None
        threading.Thread(target=self._read_events, args=(ev_r,), daemon=True).start()
        self._log_r: int | None = None
        if read_log:
            threading.Thread(target=self._read_log, args=(log_r,), daemon=True).start()
        else:  # the test holds the log pipe unread (worker_gone closes it)
            self._log_r = log_r

    def _read_events(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as stream:
            for line in stream:
                event = json.loads(line)  # a malformed line fails the test that waits for it
                self.events.append(event)
                self._events.put(event)
        self._events.put(None)  # fd 4 closed

    def _read_log(self, fd: int) -> None:
        with os.fdopen(fd, "r", errors="replace") as stream:
            for line in stream:
                self._log.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        """Everything the engine printed on stdout and stderr so far."""
        return "\n".join(self._log)

    def _fail(self, why: str) -> NoReturn:
        pytest.fail(f"{why}\n--- events: {self.events[-5:]}\n--- engine output (last 60 lines):\n"
                    + "\n".join(self._log[-60:]), pytrace=False)

    # Talking to it

    def send(self, message: dict[str, Any]) -> None:
        self._requests.write((json.dumps(message) + "\n").encode())

    def batch(self, batch_id: str, requests: list[Any], attempt: int = 1) -> None:
        self.send({"type": "batch", "batch_id": batch_id, "attempt": attempt, "deadline_ms": 0, "requests": requests})

    def cancel(self, batch_id: str, attempt: int = 1) -> None:
        self.send({"type": "cancel", "batch_id": batch_id, "attempt": attempt})

    def close_requests(self) -> None:
        self._requests.close()

    def worker_gone(self) -> None:
        """What a SIGKILLed worker leaves: the request pipe at end of file and nobody reading the
        engine's stdout and stderr (needs read_log=False). The event pipe stays read, so tests see
        whether the engine still answers."""
        assert self._log_r is not None, "start the engine with read_log=False"
        os.close(self._log_r)
        self._log_r = None
        self._requests.close()

    def next_event(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any] | None:
        """The next event, or None when fd 4 closed; fails the test after `timeout` seconds."""
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            self._fail(f"no event from the engine within {timeout}s")

    def wait_for(self, *types: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The next event of one of `types`, skipping others (progress, say)."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.next_event(max(0.01, deadline - time.monotonic()))
            if event is None:
                self._fail(f"the engine closed fd 4 while we waited for {types}")
            if event["type"] in types:
                return event

    def ready(self, timeout: float = 60) -> dict[str, Any]:
        event = self.wait_for("ready", "fatal", timeout=timeout)
        if event["type"] != "ready":
            self._fail(f"the engine did not start: {event}")
        return event

    def answer(self, batch_id: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The `result` or `failed` of a batch (progress of it is in self.events)."""
        event = self.wait_for("result", "failed", "fatal", timeout=timeout)
        if event["type"] == "fatal":
            self._fail(f"the engine died: {event}")
        assert event["batch_id"] == batch_id, event
        return event

    def result(self, batch_id: str, requests: list[Any], timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
        """Sends a batch and returns its results, failing the test if the batch failed."""
        self.batch(batch_id, requests)
        event = self.answer(batch_id, timeout)
        if event["type"] != "result":
            self._fail(f"batch {batch_id} failed: {event}")
        assert [r["custom_id"] for r in event["results"]] == [r.get("custom_id") for r in requests]
        return event["results"]

    def answers(self, batch_ids: list[str], timeout: float = DEFAULT_TIMEOUT) -> dict[str, dict[str, Any]]:
        """The `result` or `failed` of each batch, in whatever order they come (by batch id)."""
        got: dict[str, dict[str, Any]] = {}
        while len(got) < len(batch_ids):
            event = self.wait_for("result", "failed", "fatal", timeout=timeout)
            if event["type"] == "fatal":
                self._fail(f"the engine died: {event}")
            assert event["batch_id"] in batch_ids and event["batch_id"] not in got, event
            got[event["batch_id"]] = event
        return got

    def progress(self, batch_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "progress" and e["batch_id"] == batch_id]

    def alive(self) -> bool:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode is None

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                self._fail(f"the engine did not exit within {timeout}s")
            time.sleep(0.02)
        return self.returncode

    def kill(self) -> None:
        """Kills the whole process group (as the worker does), then reaps the engine."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                pass
        try:
            self._requests.close()
        except OSError:
            pass


StartEngine = Callable[..., Engine]


def engine_env(model: str = "", tp: int = 1, args: dict[str, str] | None = None,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the worker gives an engine (docs/engines.md, "The process")."""
    env = dict(os.environ)
    env.update({
        "COMPASS_ENGINE_IN": "3", "COMPASS_ENGINE_OUT": "4", "COMPASS_MODEL": model, "COMPASS_TP": str(tp),
        "COMPASS_GPUS": "", "CUDA_VISIBLE_DEVICES": "", "COMPASS_ENGINE_ARGS": json.dumps(args or {}),
        "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    })
    env.update(extra or {})
    return env


@pytest.fixture
def start_engine() -> Iterator[StartEngine]:
    """start_engine("hf_engine.py", model=..., tp=..., args={...}, env={...}) -> Engine."""
    started: list[Engine] = []

    def start(script: str, model: str = "", tp: int = 1, args: dict[str, str] | None = None,
              env: dict[str, str] | None = None, read_log: bool = True) -> Engine:
        engine = Engine([sys.executable, str(ENGINES / script)], engine_env(model, tp, args, env), read_log)
        started.append(engine)
        return engine

    yield start
    for engine in started:
        engine.kill()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random tiny Llama with a chat template, made once per session with make_tiny_model.py."""
    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    subprocess.run([sys.executable, str(ENGINES / "tools" / "make_tiny_model.py"), str(out)],
                   check=True, timeout=300, stdout=subprocess.DEVNULL)
    return str(out)
