#!/usr/bin/env python3
"""Which pinned requirements (``name==version`` lines) this interpreter's environment lacks.

    python bin/lib/pip_check.py REQUIREMENTS_OR_CONSTRAINTS_FILE...

Prints one ``name==version`` per line for each pinned package that is missing, at another
version, or only half installed, and exits 1 if it printed any (0 otherwise). Other lines
(``pytest>=7``, options, comments) are left to pip.

Half installed: pip writes a package's files, then its ``INSTALLER`` and ``RECORD`` last; a pip
killed in between (a timeout, a cancelled CI job) leaves a package whose metadata names the right
version, which pip itself then takes as installed and never repairs. Such a package is listed
too, so that the caller can reinstall it (``pip install --force-reinstall --no-deps``).

Used by bin/lib/pyenv.sh, bin/lib/opencompass-env.sh and python/gateway_tests/lm_eval_env.py.
Standard library only.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from collections.abc import Iterable
from pathlib import Path

PINNED = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*==\s*([^\s;#]+)\s*(?:#.*)?$")


def pinned(lines: Iterable[str]) -> list[tuple[str, str]]:
    """(name, version) of every ``name==version`` line (extras dropped; lines with markers skipped)."""
    out = []
    for line in lines:
        match = PINNED.match(line)
        if match:
            out.append((match.group(1), match.group(3)))
    return out


def problem(name: str, version: str) -> str | None:
    """Why `name==version` is not usable as installed, or None when it is."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"
    if dist.version != version:
        return f"at {dist.version}"
    if dist.read_text("RECORD") is None or dist.read_text("INSTALLER") is None:
        return "half installed"
    return None


def unsatisfied(files: Iterable[Path]) -> list[tuple[str, str, str]]:
    """(name, version, why) for each pinned requirement of `files` that is not usable."""
    out = []
    for path in files:
        for name, version in pinned(path.read_text().splitlines()):
            why = problem(name, version)
            if why is not None:
                out.append((name, version, why))
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    bad = unsatisfied(Path(a) for a in argv)
    for name, version, why in bad:
        print(f"{name}=={version}")
        print(f"{name}=={version}: {why}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
