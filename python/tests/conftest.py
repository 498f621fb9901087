"""Fixtures that run the real compass-broker and compass-worker binaries.

Binaries come from $COMPASS_BIN_DIR or the repository's .build/debug. Every process is killed in
teardown, and (on Linux) also dies with the test process, so a hung or killed run leaves nothing.
Each test is bounded by a watchdog (pytest-timeout is not installed) on top of the deadlines
every blocking call in the tests carries.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from compass_client import Client
from testsupport import _watchdog, binary, expected_text, first_line, spawn, stop  # noqa: F401 (_watchdog: autouse)


class Cluster:
    """A broker and its workers on ipc:// endpoints in a private directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.frontend = f"ipc://{directory}/frontend"
        self.backend = f"ipc://{directory}/backend"
        self.broker: Optional[subprocess.Popen[bytes]] = None
        self.broker_args: list[str] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.clients: list[Client] = []
        self._starts = 0

    def start_broker(self, *extra: str, timeout: float = 20.0) -> None:
        """Starts the broker and waits for its 'listening' line."""
        self.broker_args = list(extra) or self.broker_args
        self._starts += 1
        log = open(self.dir / f"broker-{self._starts}.log", "wb")
        command = [str(binary("compass-broker")), "--frontend", self.frontend, "--backend", self.backend,
                   "--heartbeat-ms", "100", "--liveness", "3", "--pool", "default", *self.broker_args]
        self.broker = spawn(command, log, stdout=subprocess.PIPE)
        line = first_line(self.broker, timeout, "compass-broker")
        assert line.startswith("compass-broker listening"), line

    def kill_broker(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed or handed over."""
        assert self.broker is not None
        stop([self.broker])

    def start_worker(self, *engine_args: str, flags: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        index = len(self.workers)
        log = open(self.dir / f"worker-{index}.log", "wb")
        command = [str(binary("compass-worker")), "--broker", self.backend, "--pool", "default", *flags]
        for arg in engine_args:
            command += ["--engine-arg", arg]
        proc = spawn(command, log)
        self.workers.append(proc)
        return proc

    def client(self, session: Optional[str] = None, **options: object) -> Client:
        options.setdefault("heartbeat_ms", 100)
        c = Client(self.frontend, session, **options)  # type: ignore[arg-type]
        self.clients.append(c)
        return c

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        stop([*self.workers, *([self.broker] if self.broker else [])])


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A broker (--heartbeat-ms 100 --liveness 3 --pool default) with nothing else started yet.

    ipc paths are limited to ~100 bytes, hence a short directory under /tmp rather than tmp_path.
    """
    directory = Path(tempfile.mkdtemp(prefix="cps-", dir="/tmp"))
    c = Cluster(directory)
    try:
        yield c
    finally:
        c.stop()
        shutil.rmtree(directory, ignore_errors=True)
