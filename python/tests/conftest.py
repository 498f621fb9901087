"""Fixtures that run the real compass-broker and compass-worker binaries.

Binaries come from $COMPASS_BIN_DIR or the repository's .build/debug. Every process is killed in
teardown, and (on Linux) also dies with the test process, so a hung or killed run leaves nothing.
Each test is bounded by a watchdog (pytest-timeout is not installed) on top of the deadlines
every blocking call in the tests carries.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from compass_client import Client

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("COMPASS_BIN_DIR", REPO / ".build" / "debug"))
#: Longest any one test may take before the watchdog dumps every thread's stack and exits.
TEST_WATCHDOG_S = 120


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `swift build` in {REPO} (or set COMPASS_BIN_DIR)", pytrace=False)
    return path


# Bound before any fork: the child must not load libraries while other threads may hold locks.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
#: Every process the fixtures started and have not reaped, for the watchdog.
_CHILDREN: set[subprocess.Popen[bytes]] = set()


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel SIGKILLs the child when pytest dies, however it dies.
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)


def expected_text(prompt: str, max_tokens: int = 16) -> str:
    """What the synthetic engine answers: the prompt's words reversed, cut at max_tokens words."""
    return " ".join(prompt.split()[::-1][:max_tokens])


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
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, preexec_fn=_die_with_parent)
        _CHILDREN.add(proc)
        self.broker = proc
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                raise RuntimeError(f"compass-broker did not start (see {log.name}): {line!r}")
            ready, _, _ = select.select([proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"compass-broker closed stdout before listening (see {log.name})")
                line += chunk
        assert line.startswith(b"compass-broker listening"), line
        # Keep draining stdout so that the broker can never block on a full pipe.
        threading.Thread(target=shutil.copyfileobj, args=(proc.stdout, log), daemon=True).start()

    def kill_broker(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed or handed over."""
        assert self.broker is not None
        self.broker.kill()
        self.broker.wait(timeout=10)
        _CHILDREN.discard(self.broker)

    def start_worker(self, *engine_args: str, flags: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        index = len(self.workers)
        log = open(self.dir / f"worker-{index}.log", "wb")
        command = [str(binary("compass-worker")), "--broker", self.backend, "--pool", "default", *flags]
        for arg in engine_args:
            command += ["--engine-arg", arg]
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        _CHILDREN.add(proc)
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
        for proc in [*self.workers, *([self.broker] if self.broker else [])]:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            _CHILDREN.discard(proc)


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    """Bounds each test: on expiry, print every thread's stack, kill the children, exit."""

    def expire() -> None:
        sys.stderr.write(f"\nTEST WATCHDOG: the test ran over {TEST_WATCHDOG_S} s\n")
        faulthandler.dump_traceback(all_threads=True)
        for proc in list(_CHILDREN):
            proc.kill()
        os._exit(3)

    timer = threading.Timer(TEST_WATCHDOG_S, expire)
    timer.daemon = True
    timer.start()
    # Backstop that needs no GIL (a call blocked in C may hold it); children die by PDEATHSIG.
    faulthandler.dump_traceback_later(TEST_WATCHDOG_S + 15, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
    timer.cancel()


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
