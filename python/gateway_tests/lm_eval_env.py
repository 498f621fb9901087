"""lm-evaluation-harness for the gateway tests, installed on demand into the running venv.

lm-eval is large (datasets, pandas, pyarrow, scipy, scikit-learn, nltk, ...: 50 packages, about
625 MB in site-packages; from 2 minutes to well over 15 on a loaded 2-core machine to install) and only python/gateway_tests/test_lm_eval.py needs it, so it is not in
python/requirements-dev.txt: the first run of that test installs the pinned version with the
exact versions of lm-eval-constraints.txt beside this file, and later runs find it there and go
offline. Only packages are added; the project's own stay as they are. "There" means every package
of the constraints at its version and whole (bin/lib/pip_check.py): an install that a timeout or a
cancelled job cut short is finished, and packages it left half unpacked are reinstalled, by the
next run.

    python python/gateway_tests/lm_eval_env.py     # install now (prints where lm-eval is)

COMPASS_SKIP_LM_EVAL=1 makes the tests that need it skip instead (a machine without PyPI).
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

VERSION = "0.4.13"
CONSTRAINTS = Path(__file__).with_name("lm-eval-constraints.txt")
#: Longest one pip command may take: one on the 2-core test machine under a load of 14 passed 15
#: minutes (mostly waiting for the disk and the CPU); it was killed, and finished in 2 minutes when tried again.
INSTALL_TIMEOUT_S = 1800
#: pip's network timeout and retries (its defaults, 15 s and 5, give up on a slow mirror).
PIP_NETWORK = ["--timeout", os.environ.get("PIP_DEFAULT_TIMEOUT", "60"), "--retries", os.environ.get("PIP_RETRIES", "10")]

_spec = importlib.util.spec_from_file_location("pip_check", Path(__file__).resolve().parents[2] / "bin" / "lib" / "pip_check.py")
assert _spec is not None and _spec.loader is not None
pip_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pip_check)


def installed_version() -> str | None:
    try:
        return importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        return None


def lm_eval_command() -> list[str]:
    """The `lm-eval` command of this venv (run as a module: its console script may lack +x in copies)."""
    return [sys.executable, "-m", "lm_eval"]


def missing() -> list[str]:
    """``name==version`` of each package of the constraints (lm_eval included) that is not installed
    whole at its version."""
    importlib.invalidate_caches()
    return [f"{name}=={version}" for name, version, _ in pip_check.unsatisfied([CONSTRAINTS])]


def _pip(args: list[str], log: list[str]) -> bool:
    command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *PIP_NETWORK, *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"installing lm-eval {VERSION} took more than {INSTALL_TIMEOUT_S} s: {' '.join(command)} "
                           "(the next run finishes what it left)") from e
    log.append(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
    return done.returncode == 0


def ensure_lm_eval(log: Path | None = None) -> float:
    """Installs lm-eval `VERSION` and its pinned dependencies into this interpreter's venv unless
    they are all there, whole; returns the seconds the install took (0 when there was nothing to
    do). pip runs twice at most (a mirror's hiccup), then packages that an earlier, interrupted
    install left half unpacked are reinstalled. Two test processes never install at once: they
    take a lock file in the venv. Raises RuntimeError with pip's output on failure."""
    if not missing():
        return 0.0
    lock_path = Path(sys.prefix) / ".compass-lm-eval.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not missing():  # another process installed it while this one waited
            return 0.0
        started = time.monotonic()
        output: list[str] = []
        try:
            install = [f"lm_eval[api]=={VERSION}", "-c", str(CONSTRAINTS)]
            if not _pip(install, output) and not _pip(install, output):
                raise RuntimeError(f"installing lm-eval {VERSION} failed:\n{output[-1]}")
            broken = missing()
            if broken and not _pip(["--force-reinstall", "--no-deps", *broken], output):
                raise RuntimeError(f"reinstalling {broken} failed:\n{output[-1]}")
            still = missing()
            if still:
                raise RuntimeError(f"after installing lm-eval {VERSION}, still missing or incomplete: {still}")
        finally:
            if log is not None:
                log.write_text("\n".join(output))
        return time.monotonic() - started


def offline_environment() -> dict[str, str]:
    """The environment lm-eval runs in: nothing from a hub, no telemetry, a private HF cache."""
    env = dict(os.environ)
    env.update({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false", "OPENAI_API_KEY": "unused"})
    return env


if __name__ == "__main__":
    seconds = ensure_lm_eval()
    print(f"lm-eval {installed_version()} in {sys.prefix} ({'installed in %.0f s' % seconds if seconds else 'already there'})")
