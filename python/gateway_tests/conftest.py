"""Fixtures that run the real compass-broker, compass-worker and `compass gateway` binaries.

Binaries come from $COMPASS_BIN_DIR or the repository's .build/debug. Every process is killed in
teardown and (on Linux) also dies with the test process. Each test is bounded by a watchdog on top
of the deadline every wait in the tests carries; nothing synchronises by sleeping: waits poll a
condition until a deadline.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python/: compass_client, testsupport

from compass_client import Client  # noqa: E402
from testsupport import _watchdog, binary, expected_text, first_line, spawn, stop  # noqa: E402, F401 (_watchdog: autouse)

EXAMPLE_ENGINE = Path(__file__).resolve().parents[2] / "bin" / "engines" / "example_engine.py"


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Polls `condition` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def http(method: str, url: str, body: Optional[bytes] = None, headers: Optional[dict[str, str]] = None,
         timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP call (for what the openai package would not send): status, headers, body."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class Gateway:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def health(self) -> Optional[dict[str, Any]]:
        try:
            status, _, body = http("GET", self.url + "/health", timeout=2)
        except OSError:
            return None
        return json.loads(body) if status == 200 else None

    def models(self, api_key: Optional[str] = None) -> dict[str, int]:
        """Pool name -> workers, as GET /v1/models reports them."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        status, _, body = http("GET", self.base_url + "/models", headers=headers, timeout=5)
        if status != 200:
            return {}
        return {m["id"]: m["workers"] for m in json.loads(body)["data"]}


class Cluster:
    """A broker on ipc:// endpoints in a private directory, its workers and gateways."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.frontend = f"ipc://{directory}/frontend"
        self.backend = f"ipc://{directory}/backend"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.clients: list[Client] = []
        self._logs = 0

    def _log(self, name: str) -> Any:
        self._logs += 1
        return open(self.dir / f"{self._logs:02d}-{name}.log", "wb")

    def _spawn(self, command: list[str], name: str, stdout: Optional[int] = None) -> subprocess.Popen[bytes]:
        proc = spawn(command, self._log(name), stdout)
        self.procs.append(proc)
        return proc

    def start_broker(self, *extra: str, pools: tuple[str, ...] = ("default",)) -> None:
        command = [str(binary("compass-broker")), "--frontend", self.frontend, "--backend", self.backend,
                   "--heartbeat-ms", "100", "--liveness", "3", *sum((["--pool", p] for p in pools), []), *extra]
        proc = self._spawn(command, "broker", stdout=subprocess.PIPE)
        line = first_line(proc, 20, "compass-broker")
        assert line.startswith("compass-broker listening"), line

    def start_worker(self, pool: str = "default", *engine_args: str, engine: str = "synthetic",
                     extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        command = [str(binary("compass-worker")), "--broker", self.backend, "--pool", pool, "--engine", engine, *extra]
        for arg in engine_args:
            command += ["--engine-arg", arg]
        return self._spawn(command, f"worker-{pool}")

    def start_plain_worker(self, pool: str, refuses: bool) -> subprocess.Popen[bytes]:
        """A worker whose engine cannot score, the exec example engine: as it is (`refuses`: it
        answers scoring, logprobs and token-id requests `unsupported`), or with that check taken
        out, as every engine was before scoring (and an exec engine written then still is): it then
        ignores those fields and answers text alone."""
        script = EXAMPLE_ENGINE
        if not refuses:
            script = self.dir / "unaware_engine.py"
            script.write_text(f"import sys\nsys.path.insert(0, {str(EXAMPLE_ENGINE.parent)!r})\n"
                              "import example_engine\nexample_engine.UNSUPPORTED = ()\nexample_engine.main()\n")
        return self.start_worker(pool, f"command={sys.executable} {script}", engine="exec")

    def start_gateway(self, *extra: str, data_dir: Optional[Path] = None) -> Gateway:
        data = data_dir or Path(tempfile.mkdtemp(prefix="data-", dir=self.dir))
        command = [str(binary("compass")), "gateway", "--broker", self.frontend, "--listen", "127.0.0.1:0",
                   "--data-dir", str(data), *extra]
        proc = self._spawn(command, "gateway", stdout=subprocess.PIPE)
        line = first_line(proc, 20, "compass gateway")
        match = re.search(r"listening on (http://[0-9.]+:\d+)", line)
        assert match, line
        gateway = Gateway(proc, match.group(1), proc.log_path)  # type: ignore[attr-defined]
        wait_for(gateway.health, 10, "the gateway to reach the broker")
        return gateway

    def wait_for_workers(self, gateway: Gateway, pools: dict[str, int], api_key: Optional[str] = None,
                         timeout: float = 20) -> None:
        """Waits until the broker's STATUS (through the gateway) shows at least these workers per
        pool (a worker registers once its engine is ready: give a model's load time in `timeout`)."""
        wait_for(lambda: all(gateway.models(api_key).get(p, -1) >= n for p, n in pools.items()), timeout,
                 f"workers {pools} in GET /v1/models")

    def client(self) -> Client:
        c = Client(self.frontend, heartbeat_ms=100)
        self.clients.append(c)
        return c

    def pool_status(self, pool: str) -> dict[str, Any]:
        """The broker's STATUS entry of `pool` (asked directly, not through the gateway)."""
        if not self.clients:
            self.client()
        status = self.clients[0].status(timeout=5)
        return next(p for p in status["scheduler"]["pools"] if p["name"] == pool)

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        stop(list(reversed(self.procs)))


def _new_cluster() -> tuple[Cluster, Path]:
    # ipc paths are limited to ~100 bytes: a short directory under /tmp.
    directory = Path(tempfile.mkdtemp(prefix="cgw-", dir="/tmp"))
    return Cluster(directory), directory


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """An empty cluster (start what the test needs); everything is killed afterwards."""
    c, directory = _new_cluster()
    try:
        yield c
    finally:
        c.stop()
        shutil.rmtree(directory, ignore_errors=True)


class Shared:
    """One cluster for the tests that only read: pools `default` (2 fast workers), `slow` (a worker
    taking 300 ms per batch) and `empty` (declared, no worker), and a gateway in front."""

    def __init__(self, cluster: Cluster, gateway: Gateway) -> None:
        self.cluster = cluster
        self.gateway = gateway


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    c, directory = _new_cluster()
    try:
        c.start_broker(pools=("default", "slow", "empty"))
        c.start_worker("default")
        c.start_worker("default")
        c.start_worker("slow", "batch_ms=300")
        gateway = c.start_gateway("--job-batch-size", "8", "--job-window", "2")
        c.wait_for_workers(gateway, {"default": 2, "slow": 1})
        yield Shared(c, gateway)
    finally:
        c.stop()
        shutil.rmtree(directory, ignore_errors=True)
