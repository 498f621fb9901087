"""Fixtures that run the real OpenCompass CLI against a real compass broker and workers.

OpenCompass (pinned) lives in its own virtualenv, made by ``bin/lib/opencompass-env.sh``
(``$COMPASS_OPENCOMPASS_PYTHON`` or the repository's ``.venv-opencompass``): it needs NumPy 1,
which the project's ``.venv`` does not have. The tests themselves run in the project's venv and
start ``opencompass`` as a process of that other interpreter, offline (no hub, no downloads).
Binaries come from $COMPASS_BIN_DIR or .build/debug, as for python/tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

import testsupport
from compass_client import Client
from testsupport import REPO, _watchdog, binary, first_line, spawn, stop  # noqa: F401 (_watchdog: autouse)

# One OpenCompass run (several task processes, each importing torch and OpenCompass) takes tens of
# seconds on a loaded 2-core machine; every test below makes one or two.
testsupport.TEST_WATCHDOG_S = 900
#: Longest one `opencompass` command may take.
RUN_TIMEOUT_S = 420

OPENCOMPASS_PYTHON = Path(os.environ.get("COMPASS_OPENCOMPASS_PYTHON", REPO / ".venv-opencompass" / "bin" / "python"))
ENGINES = REPO / "bin" / "engines"


@pytest.fixture(scope="session")
def opencompass_python() -> Path:
    """The interpreter that has the pinned OpenCompass."""
    if not os.access(OPENCOMPASS_PYTHON, os.X_OK):
        pytest.fail(f"{OPENCOMPASS_PYTHON} is missing: run bin/lib/opencompass-env.sh (or set "
                    "COMPASS_OPENCOMPASS_PYTHON)", pytrace=False)
    return OPENCOMPASS_PYTHON


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama and its BPE tokenizer (bin/engines/tools/make_tiny_model.py)."""
    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    subprocess.run([sys.executable, str(ENGINES / "tools" / "make_tiny_model.py"), str(out)],
                   check=True, timeout=300, stdout=subprocess.DEVNULL)
    return out


class Cluster:
    """A broker with one pool and its workers, on ipc:// endpoints in a private directory."""

    def __init__(self, directory: Path, pool: str = "oc") -> None:
        self.dir = directory
        self.pool = pool
        self.frontend = f"ipc://{directory}/frontend"
        self.backend = f"ipc://{directory}/backend"
        self.broker: Optional[Any] = None
        self.workers: list[Any] = []
        self.clients: list[Client] = []

    def start_broker(self, *extra: str, timeout: float = 20.0) -> None:
        log = open(self.dir / "broker.log", "wb")
        command = [str(binary("compass-broker")), "--frontend", self.frontend, "--backend", self.backend,
                   "--heartbeat-ms", "100", "--liveness", "3", "--pool", self.pool, *extra]
        self.broker = spawn(command, log, stdout=subprocess.PIPE)
        line = first_line(self.broker, timeout, "compass-broker")
        assert line.startswith("compass-broker listening"), line

    def start_worker(self, *flags: str, engine_args: tuple[str, ...] = (),
                     env: Optional[dict[str, str]] = None) -> Any:
        log = open(self.dir / f"worker-{len(self.workers)}.log", "wb")
        settings = [f"{key}={value}" for key, value in (env or {}).items()]
        command = ["env", *settings, str(binary("compass-worker")), "--broker", self.backend, "--pool", self.pool,
                   *flags]
        for arg in engine_args:
            command += ["--engine-arg", arg]
        proc = spawn(command, log)  # env execs the worker: same process
        self.workers.append(proc)
        return proc

    def client(self) -> Client:
        c = Client(self.frontend, heartbeat_ms=100)
        self.clients.append(c)
        return c

    def pool_status(self, client: Client) -> dict[str, Any]:
        status = client.status(timeout=10)
        return next(p for p in status["scheduler"]["pools"] if p["name"] == self.pool)

    def wait_for_workers(self, count: int, timeout: float) -> None:
        """Until `count` workers of the pool have registered (each check is a STATUS round trip)."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while self.pool_status(client)["workers"] < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} workers did not register within {timeout} s (see {self.dir})")
            if any(w.poll() is not None for w in self.workers):
                raise AssertionError(f"a worker exited while starting (see {self.dir})")

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        stop([*self.workers, *([self.broker] if self.broker else [])])


@contextlib.contextmanager
def cluster_in_temp_dir() -> Iterator[Cluster]:
    """A Cluster in a fresh short directory (ipc paths are limited to ~100 bytes), stopped and
    removed on the way out."""
    directory = Path(tempfile.mkdtemp(prefix="cpoc-", dir="/tmp"))
    c = Cluster(directory)
    try:
        yield c
    finally:
        c.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A broker (--pool oc) with nothing else started."""
    with cluster_in_temp_dir() as c:
        yield c


def opencompass_env() -> dict[str, str]:
    """Offline, with compass_client from this tree and no GPU."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO / "python"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", COMPASS_DATA_CACHE=str(REPO / ".nonexistent"))
    return env


def run_opencompass(python: Path, config: Path, work_dir: Path, *args: str,
                    timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """`opencompass CONFIG -w WORK_DIR ARGS` with its output in WORK_DIR/../opencompass-N.log."""
    work_dir.parent.mkdir(parents=True, exist_ok=True)
    n = len(list(work_dir.parent.glob("opencompass-*.log"))) + 1
    log_path = work_dir.parent / f"opencompass-{n}.log"
    command = [str(python), "-m", "opencompass.cli.main", str(config), "-w", str(work_dir), *args]
    with open(log_path, "w") as log:
        # Its own process group: OpenCompass starts a process per task, and a timeout kills them all.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=opencompass_env(),
                                cwd=work_dir.parent, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            raise AssertionError(f"opencompass ran over {timeout} s: see {log_path}") from None
    return subprocess.CompletedProcess(command, code, log_path.read_text())
