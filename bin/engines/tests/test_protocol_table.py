"""The engine protocol's names in the Python adapters against spec/protocol.json `engine_protocol`
(the Swift side, ProcessEngine, is tested against the same table): every message type each way,
every member of the messages an engine writes, and the statistics of a result. A name missing
from the table, or one the table has and the adapters do not, fails here."""

from __future__ import annotations

import ast
import json
import sys
import time
from pathlib import Path
from typing import Any

from conftest import ENGINES

sys.path.insert(0, str(ENGINES))
import compass_engine as ce  # noqa: E402

TABLE = json.loads((Path(__file__).resolve().parents[3] / "spec" / "protocol.json").read_text())["engine_protocol"]


def names(namespace: type) -> set[str]:
    return {value for key, value in vars(namespace).items() if key.isupper()}


def test_message_types_are_the_tables() -> None:
    assert names(ce.ToEngine) == set(TABLE["to_engine"])
    assert names(ce.FromEngine) == set(TABLE["from_engine"])


def built() -> dict[str, dict[str, Any]]:
    """One message of each type the engine writes, as compass_engine builds it (every optional
    member of `ready` given)."""
    return {m["type"]: m for m in (
        ce.ready_message("m", "d", "spawn", capacity=8, capacity_tokens=64, max_batches=2),
        ce.progress_message("b", 1, 1, 2, 3),
        ce.result_message("b", 1, [], {}),
        ce.failed_message("b", 1, "engine_error", True, "x"),
        ce.fatal_message("engine_dead", "x"),
    )}


def test_every_message_the_engine_writes_has_the_tables_members() -> None:
    messages = built()
    assert set(messages) == names(ce.FromEngine)
    for kind, message in messages.items():
        optional = set(TABLE["optional"].get(kind, []))
        assert set(message) - {"type"} == set(TABLE["from_engine"][kind]) | optional, kind
    bare = ce.ready_message("m", "d", "spawn")
    assert set(bare) - {"type"} == set(TABLE["from_engine"]["ready"])


class _Counting:
    """A backend whose engine_stats() moves between two calls."""

    name = "counting"

    def __init__(self) -> None:
        self.steps = 0

    def engine_stats(self) -> dict[str, int]:
        self.steps += 4
        return {"capacity": 8, "steps": self.steps, "sequence_steps": 6 * self.steps}


def test_result_stats_are_the_tables() -> None:
    host = ce.EngineHost(_Counting(), -1, -1)  # type: ignore[arg-type]
    before = host.engine_counters()
    results = [ce.Result("a", "x", 1, 1, "stop")]
    stats = host.batch_stats(time.monotonic(), results, before)
    assert set(stats) == set(TABLE["optional"]["result_stats"])
    assert set(stats["engine"]) == set(TABLE["engine_stats"])
    assert set(ce.ENGINE_COUNTERS) | {"occupancy"} == set(TABLE["engine_stats"])


def module_strings(path: Path) -> dict[str, str]:
    """The module-level `NAME = "value"` (and `A, B = "a", "b"`) constants of a script that cannot
    be imported (example_engine.py opens its protocol pipes when loaded)."""
    found: dict[str, str] = {}
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0], node.value
        pairs = (zip(target.elts, value.elts) if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
                 else [(target, value)])
        for name, constant in pairs:
            if isinstance(name, ast.Name) and isinstance(constant, ast.Constant) and isinstance(constant.value, str):
                found[name.id] = constant.value
    return found


def test_the_example_engines_names_are_the_tables() -> None:
    constants = module_strings(ENGINES / "example_engine.py")
    assert {constants[n] for n in ("BATCH", "CANCEL", "SHUTDOWN")} == set(TABLE["to_engine"])
    assert {constants[n] for n in ("READY", "PROGRESS", "RESULT", "FAILED", "FATAL")} == set(TABLE["from_engine"])
