"""bench/gpu/drive_engine.py (the GPU run's adapter-direct baseline) against the stand-in vLLM and
the scripted engine: batches in flight at once, repeated passes, the report's fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import ENGINES, TESTS

DRIVE = ENGINES.parents[1] / "bench" / "gpu" / "drive_engine.py"


def drive(tmp_path: Path, engine: str, *options: str, env: dict[str, str] | None = None,
          requests: int = 10) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"custom_id": f"q{i}", "prompt": f"w{i} v{i}", "max_tokens": 4}) + "\n"
                               for i in range(requests)))
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(DRIVE), str(ENGINES / engine), str(prompts), "--model", str(model),
                           "--gpus", "", "--out", str(out), "--report", str(report), *options],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(report.read_text()), [json.loads(line) for line in out.read_text().splitlines()], done.stderr


def test_batches_in_flight_and_repeated_passes(tmp_path: Path) -> None:
    log = tmp_path / "vllm-calls.jsonl"
    env = {"PYTHONPATH": str(TESTS / "fake_vllm"), "FAKE_VLLM_LOG": str(log)}
    report, results, _ = drive(tmp_path, "vllm_engine.py", "--batch-size", "3", "--max-batches", "2",
                               "--repeat", "3", env=env)
    assert [r["custom_id"] for r in results] == [f"q{i}" for i in range(10)]  # the first pass, in prompt order
    assert [r["text"] for r in results] == [f"v{i} w{i}" for i in range(10)]
    assert (report["requests"], report["batches"], report["batch_size"]) == (10, 4, 3)
    assert (report["max_batches"], report["engine_max_batches"], report["repeat"]) == (2, 2, 3)
    assert [p["pass"] for p in report["passes"]] == [1, 2, 3]
    assert all(p["completion_tokens"] == 30 for p in report["passes"])  # 2 words + EOS each
    assert [p.get("texts_differing_from_first_pass") for p in report["passes"]] == [None, 0, 0]
    first = report["passes"][0]
    assert (report["seconds"], report["completion_tokens"], report["completion_tokens_per_second"]) == (
        first["seconds"], first["completion_tokens"], first["completion_tokens_per_second"])
    rates = sorted(p["completion_tokens_per_second"] for p in report["passes"])
    assert report["median_completion_tokens_per_second"] == rates[1]
    added = [json.loads(line) for line in log.read_text().splitlines() if '"add_request"' in line]
    assert len(added) == 30  # every request once per pass


@pytest.mark.parametrize("engine_max, asked, window", [("1", "3", 1), ("2", "3", 2), ("2", "1", 1)])
def test_batches_in_flight_follow_the_window_capped_at_the_engines(tmp_path: Path, engine_max: str, asked: str,
                                                                    window: int) -> None:
    # The scripted engine's texts say how many batches were inside when each began. A batch takes
    # 4 requests x 4 tokens x 20 ms: the second, sent at once when the window allows, starts beside it.
    report, results, stderr = drive(tmp_path, "tests/scripted_engine.py", "--batch-size", "4", "--max-batches", asked,
                                    "--engine-arg", f"max_batches={engine_max}", "--engine-arg", "step_ms=20",
                                    requests=8)
    assert (report["max_batches"], report["engine_max_batches"]) == (window, int(engine_max))
    assert ("batch(es) at once" in stderr) == (int(asked) > int(engine_max))
    assert [r["custom_id"] for r in results] == [f"q{i}" for i in range(8)]
    assert max(json.loads(r["text"])["running"] for r in results) == window
    assert len(report["passes"]) == 1
    assert report["median_completion_tokens_per_second"] == report["completion_tokens_per_second"]
