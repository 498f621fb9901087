"""bin/lib/pip_check.py, which the installers of bin/lib and lm_eval_env.py use to find packages
missing, at another version or half installed (a pip killed mid-install), on a fake site-packages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHECK = Path(__file__).resolve().parents[2] / "lib" / "pip_check.py"


def dist(site: Path, name: str, version: str, complete: bool = True) -> None:
    """A package's .dist-info as pip leaves it: complete, or killed before INSTALLER and RECORD."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if complete:
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text(f"{info.name}/METADATA,,\n")


def check(site: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-S", str(CHECK), *map(str, files)], capture_output=True, text=True,
                          env=env, timeout=60)


def test_lists_missing_other_versions_and_half_installed(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist(site, "alpha_pkg", "1.0")
    dist(site, "beta", "2.0")
    dist(site, "gamma", "3.0", complete=False)
    dist(site, "delta", "1.0+cpu")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# pinned\nalpha-pkg==1.0\nbeta==2.1\ngamma==3.0\ndelta==1.0+cpu\nepsilon[extra]==0.1  # comment\n"
                    "pytest>=7\n--find-links /nowhere\n")
    done = check(site, reqs)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == ["beta==2.1", "gamma==3.0", "epsilon==0.1"]
    assert "beta==2.1: at 2.0" in done.stderr and "gamma==3.0: half installed" in done.stderr
    assert "epsilon==0.1: missing" in done.stderr


def test_all_installed_is_silent(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist(site, "alpha_pkg", "1.0")
    reqs = tmp_path / "constraints.txt"
    reqs.write_text("alpha_pkg==1.0\n")
    done = check(site, reqs)
    assert (done.returncode, done.stdout) == (0, "")
