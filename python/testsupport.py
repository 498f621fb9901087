"""What both Python suites (python/tests, python/gateway_tests) need to run the real binaries.

Binaries come from $COMPASS_BIN_DIR or the repository's .build/debug. Every process started here
is remembered until reaped and (on Linux) dies with the test process, so a hung or killed run
leaves nothing. Not part of the compass_client package.
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
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN_DIR = Path(os.environ.get("COMPASS_BIN_DIR", REPO / ".build" / "debug"))
#: Longest any one test may take before the watchdog dumps every thread's stack and exits.
TEST_WATCHDOG_S = 120

# Bound before any fork: the child must not load libraries while other threads may hold locks.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
#: Every process started and not yet reaped, for the watchdog.
CHILDREN: set[subprocess.Popen[bytes]] = set()


#: The long framework scenarios (OpenCompass runs with a worker SIGKILLed, `-r` reuse and failed
#: tasks; lm-eval against hf workers and against a pool that cannot score) run only with
#: COMPASS_FULL_FRAMEWORK_TESTS=1: bin/test keeps one run of each framework to stay short.
FULL_FRAMEWORK_TESTS = os.environ.get("COMPASS_FULL_FRAMEWORK_TESTS", "") not in ("", "0")
full_framework_test = pytest.mark.skipif(
    not FULL_FRAMEWORK_TESTS, reason="a long framework scenario: COMPASS_FULL_FRAMEWORK_TESTS=1 runs it")


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `swift build` in {REPO} (or set COMPASS_BIN_DIR)", pytrace=False)
    return path


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel SIGKILLs the child when pytest dies, however it dies.
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)


def expected_text(prompt: str, max_tokens: int = 16) -> str:
    """What the synthetic engine answers: the prompt's words reversed, cut at max_tokens words."""
    return " ".join(prompt.split()[::-1][:max_tokens])


def spawn(command: list[str], log: Any, stdout: Optional[int] = None) -> subprocess.Popen[bytes]:
    """Starts `command` with its output in `log` (an open file); with `stdout=subprocess.PIPE`
    only stderr goes there, and `first_line` reads stdout. The log stays on `proc.log_file`."""
    proc = subprocess.Popen(command, stdout=stdout or log, stderr=log if stdout else subprocess.STDOUT,
                            preexec_fn=_die_with_parent)
    CHILDREN.add(proc)
    proc.log_file = log  # type: ignore[attr-defined]
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    return proc


def first_line(proc: subprocess.Popen[bytes], timeout: float, what: str) -> str:
    """The first line `proc` (started by `spawn` with a piped stdout) prints, within `timeout`
    seconds; the rest of its stdout is copied into its log from then on, so it never blocks on a
    full pipe."""
    assert proc.stdout is not None
    log_path = proc.log_path  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            raise RuntimeError(f"{what} did not start (see {log_path}): {line!r}")
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"{what} closed stdout before listening (see {log_path})")
            line += chunk
    threading.Thread(target=shutil.copyfileobj, args=(proc.stdout, proc.log_file), daemon=True).start()  # type: ignore[attr-defined]
    return line.decode()


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Kills and reaps `processes`, in order."""
    for proc in processes:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        CHILDREN.discard(proc)


def watchdog(limit: float) -> Iterator[None]:
    """Bounds what runs while it is suspended: after `limit` seconds, print every thread's stack,
    kill the children, exit. (A generator: fixtures yield from it with their own bound.)"""

    def expire() -> None:
        sys.stderr.write(f"\nTEST WATCHDOG: the test ran over {limit} s\n")
        faulthandler.dump_traceback(all_threads=True)
        for proc in list(CHILDREN):
            proc.kill()
        os._exit(3)

    timer = threading.Timer(limit, expire)
    timer.daemon = True
    timer.start()
    # Backstop that needs no GIL (a call blocked in C may hold it); children die by PDEATHSIG.
    faulthandler.dump_traceback_later(limit + 15, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
    timer.cancel()


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    """Bounds each test by TEST_WATCHDOG_S (`watchdog`). (Imported into each suite's conftest,
    which is what makes it apply there.)"""
    yield from watchdog(TEST_WATCHDOG_S)
