"""The real `opencompass` CLI with CompassModel on a pool of synthetic workers.

The synthetic engine is deterministic (Sources/CompassEngines/SyntheticModel.swift): a completion
is the prompt's words reversed, and a prompt token sent as id ``n`` has the logprob
``-len("t<n>")``. So every prediction and every perplexity OpenCompass writes is known exactly.

By default one OpenCompass run (two datasets, two task processes) and the model API; the runs with
a worker SIGKILLed, with `-r` and with a failed task take minutes and need
COMPASS_FULL_FRAMEWORK_TESTS=1.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Cluster, opencompass_env, run_opencompass
from evaluation import (CHOICE_TEMPLATES, compass_model, predictions, read_jsonl, result, run_dir, write_config,
                        write_datasets)
from testsupport import expected_text, full_framework_test

#: Deadline for a background wait on the pool's state.
WAIT_S = 200.0


def expected_ppl(tokenizer: Any, prompt: str, max_seq_len: int = 256) -> float:
    """OpenCompass's perplexity of `prompt` on the synthetic engine, sent as the tiny tokenizer's ids."""
    ids = tokenizer(prompt)["input_ids"][:max_seq_len]
    pad = tokenizer.pad_token_id
    return sum(len(f"t{t}") for t in ids[1:] if t != pad) / sum(1 for t in ids if t != pad)


def check_generation(work_dir: Path, gen_path: Path, model: str = "compass") -> None:
    rows = read_jsonl(gen_path)
    got = predictions(work_dir, model, "reverse")
    assert [p["prediction"] for p in got] == [expected_text(r["question"]) for r in rows]
    right = sum(expected_text(r["question"]) == r["answer"][0] for r in rows)
    scores = result(work_dir, model, "reverse")
    assert scores is not None and scores["score"] == pytest.approx(100 * right / len(rows))


def check_perplexity(work_dir: Path, ppl_path: Path, tokenizer: Any, model: str = "compass") -> None:
    rows = read_jsonl(ppl_path)
    got = predictions(work_dir, model, "choice")
    assert len(got) == len(rows)
    right = 0
    for row, pred in zip(rows, got):
        ppls = {label: expected_ppl(tokenizer, template.format(question=row["question"]))
                for label, template in CHOICE_TEMPLATES.items()}
        for label, value in ppls.items():
            assert pred[f"label: {label}"]["PPL"] == pytest.approx(value, rel=1e-12), (row, label)
        best = min(ppls.values())
        assert pred["prediction"] == next(label for label, v in ppls.items() if v == best)
        right += pred["prediction"] == row["label"]
    scores = result(work_dir, "compass", "choice")
    assert scores is not None and scores["accuracy"] == pytest.approx(100 * right / len(rows))


def pool_counters(cluster: Cluster) -> dict[str, int]:
    return cluster.pool_status(cluster.client())["counters"]


def in_background(action: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as error:  # reported by the test after the run
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def kill_when_busy(cluster: Cluster, victim: Any, min_completed: int) -> Callable[[], None]:
    """SIGKILLs `victim` once the pool has completed `min_completed` requests and the victim runs a
    batch (each check is a STATUS round trip)."""

    def act() -> None:
        client = cluster.client()
        deadline = time.monotonic() + WAIT_S
        while True:
            status = client.status(timeout=10)
            pool = next(p for p in status["scheduler"]["pools"] if p["name"] == cluster.pool)
            pids = {w["id"]: w["capabilities"].get("pid") for w in status["workers"]}
            busy = {pids.get(w["id"]) for w in status["scheduler"]["workers"] if w["running"]}
            if pool["counters"]["completed_requests"] >= min_completed and victim.pid in busy:
                victim.send_signal(signal.SIGKILL)
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the pool never got busy enough to kill a worker: {pool}")

    return act


@pytest.fixture
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model), local_files_only=True)


def check_split_run(work: Path) -> None:
    """Several tasks at once: each dataset was split in two, and two OpenCompass task processes ran
    a half of each (a task is logged under its first dataset's name)."""
    logs = sorted(p.name for p in (run_dir(work) / "logs" / "infer" / "compass").iterdir())
    assert logs == ["reverse_0.out", "reverse_1.out"], logs
    parts = sorted(p.name for p in (run_dir(work) / "predictions" / "compass").iterdir())
    assert parts == ["choice_0.json", "choice_1.json", "reverse_0.json", "reverse_1.json"], parts


def start_two_workers(cluster: Cluster) -> Any:
    """A broker and two synthetic workers; returns the first."""
    cluster.start_broker()
    first = cluster.start_worker(engine_args=("batch_ms=150",))
    cluster.start_worker(engine_args=("batch_ms=150",))
    cluster.wait_for_workers(2, timeout=30)
    return first


def test_generation_and_perplexity_datasets_in_several_tasks(
        cluster: Cluster, opencompass_python: Path, tiny_model: Path, tokenizer: Any, tmp_path: Path) -> None:
    """The one OpenCompass CLI run of the default suite: a generation and a perplexity dataset, each
    split over two task processes that share the pool, every prediction and PPL exact."""
    start_two_workers(cluster)
    gen_path, ppl_path = write_datasets(tmp_path)
    config = write_config(tmp_path / "eval_compass.py", gen_path, ppl_path, [compass_model(cluster.frontend, tiny_model)])
    work = tmp_path / "outputs"

    run = run_opencompass(opencompass_python, config, work, "--max-num-workers", "2")

    assert run.returncode == 0 and "failed with code" not in run.stdout, run.stdout[-3000:]
    check_split_run(work)
    check_generation(work, gen_path)
    check_perplexity(work, ppl_path, tokenizer)
    counters = pool_counters(cluster)
    gen_rows, ppl_rows = len(read_jsonl(gen_path)), len(read_jsonl(ppl_path))
    # Each prompt once: one request per generation row, one per perplexity row and label.
    assert counters["completed_requests"] == gen_rows + ppl_rows * len(CHOICE_TEMPLATES), counters


@full_framework_test
def test_generation_and_perplexity_with_several_tasks_and_a_worker_killed(
        cluster: Cluster, opencompass_python: Path, tiny_model: Path, tokenizer: Any, tmp_path: Path) -> None:
    victim = start_two_workers(cluster)
    gen_path, ppl_path = write_datasets(tmp_path)
    config = write_config(tmp_path / "eval_compass.py", gen_path, ppl_path, [compass_model(cluster.frontend, tiny_model)])
    work = tmp_path / "outputs"
    killer, errors = in_background(kill_when_busy(cluster, victim, min_completed=8))

    run = run_opencompass(opencompass_python, config, work, "--max-num-workers", "2")

    killer.join(timeout=WAIT_S)
    assert not errors, errors
    assert run.returncode == 0, run.stdout[-3000:]
    assert victim.poll() == -signal.SIGKILL
    check_split_run(work)
    check_generation(work, gen_path)
    check_perplexity(work, ppl_path, tokenizer)
    counters = pool_counters(cluster)
    assert counters["retried"] >= 1, counters  # the kill hit a running batch, which ran again elsewhere
    gen_rows, ppl_rows = len(read_jsonl(gen_path)), len(read_jsonl(ppl_path))
    assert counters["completed_requests"] == gen_rows + ppl_rows * len(CHOICE_TEMPLATES)

    # -r: everything is there already; nothing reaches the pool and the results stay.
    again = run_opencompass(opencompass_python, config, work, "--max-num-workers", "2", "-r")
    assert again.returncode == 0, again.stdout[-3000:]
    assert pool_counters(cluster)["completed_requests"] == counters["completed_requests"]
    check_generation(work, gen_path)
    check_perplexity(work, ppl_path, tokenizer)


@full_framework_test
def test_a_failed_batch_fails_the_task_and_reuse_finishes_it(
        cluster: Cluster, opencompass_python: Path, tiny_model: Path, tmp_path: Path) -> None:
    cluster.start_broker()
    victim = cluster.start_worker(engine_args=("batch_ms=300",))
    cluster.wait_for_workers(1, timeout=30)
    gen_path, ppl_path = write_datasets(tmp_path)
    # One dispatch per batch: a lost worker fails its batch instead of having it retried.
    model = compass_model(cluster.frontend, tiny_model, max_attempts=1)
    config = write_config(tmp_path / "eval_compass.py", gen_path, ppl_path, [model], datasets="reverse")
    work = tmp_path / "outputs"
    killer, errors = in_background(kill_when_busy(cluster, victim, min_completed=8))

    failed = run_opencompass(opencompass_python, config, work)

    killer.join(timeout=WAIT_S)
    assert not errors, errors
    # OpenCompass itself exits 0 and prints '-' for a failed task; the failure is in its logs.
    assert failed.returncode == 0, failed.stdout[-3000:]
    assert "failed with code" in failed.stdout
    assert result(work, "compass", "reverse") is None
    task_log = (run_dir(work) / "logs" / "infer" / "compass" / "reverse.out").read_text()
    assert "CompassEvaluationError" in task_log and "worker_lost" in task_log, task_log[-3000:]
    assert not (run_dir(work) / "predictions" / "compass" / "reverse.json").exists()
    # What finished before the failure is kept by OpenCompass and not asked again.
    done = read_jsonl(next((run_dir(work) / "predictions" / "compass").glob("tmp_reverse*.jsonl")))
    assert 8 <= len(done) < len(read_jsonl(gen_path))
    before = pool_counters(cluster)["completed_requests"]

    cluster.start_worker()
    resumed = run_opencompass(opencompass_python, config, work, "-r")

    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "failed with code" not in resumed.stdout
    check_generation(work, gen_path)
    assert pool_counters(cluster)["completed_requests"] - before == len(read_jsonl(gen_path)) - len(done)


MODEL_SCRIPT = """
import json, sys
from compass_client.opencompass import CompassModel

frontend, tokenizer = sys.argv[1:3]
out = {}

def catch(action):
    try:
        action()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None

out["no_tokenizer"] = catch(lambda: CompassModel(pool="oc", broker=frontend))
out["unknown_kwargs"] = catch(lambda: CompassModel(pool="oc", broker=frontend, tokenizer_path=tokenizer,
                                                   generation_kwargs=dict(top_k=5)))
out["unknown_pool"] = catch(lambda: CompassModel(pool="nope", broker=frontend, tokenizer_path=tokenizer).generate(["a b"], 4))
model = CompassModel(pool="oc", broker=frontend, tokenizer_path=tokenizer, stop_words=["gamma"])
out["bad_request"] = catch(lambda: model.generate(["a b"], -1))
out["generate"] = model.generate(["alpha beta", "beta gamma delta"], 8)
out["loglikelihood"] = model.get_loglikelihood(["hello world foo", "x"], [" foo", "x"]).tolist()
out["token_len"] = model.get_token_len("hello world foo")
print(json.dumps(out))
"""


def synthetic_score(context: list[int], continuation: list[int]) -> float:
    """SyntheticModel.score for token ids: the model predicts the context's tokens reversed."""
    predicted = [f"t{t}" for t in reversed(context)]
    words = [f"t{t}" for t in continuation]
    return sum(-0.125 if i < len(predicted) and w == predicted[i] else -float(len(w)) for i, w in enumerate(words))


def test_model_api_answers_and_errors(cluster: Cluster, opencompass_python: Path, tiny_model: Path,
                                      tokenizer: Any) -> None:
    cluster.start_broker()
    cluster.start_worker()
    cluster.wait_for_workers(1, timeout=30)
    run = subprocess.run([str(opencompass_python), "-c", MODEL_SCRIPT, cluster.frontend, str(tiny_model)],
                         capture_output=True, text=True, timeout=300, env=opencompass_env())
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["no_tokenizer"].startswith("ValueError: CompassModel needs tokenizer_path")
    assert "generation_kwargs ['top_k'] are not compass request fields" in out["unknown_kwargs"]
    assert out["unknown_pool"].startswith("CompassEvaluationError: compass refused the generation requests on pool "
                                          "'nope': unknown_pool")
    assert out["bad_request"].startswith("CompassEvaluationError: 1 of 1 generation requests failed on pool 'oc'")
    assert "bad_request" in out["bad_request"] and "max_tokens" in out["bad_request"]
    assert out["generate"] == ["beta alpha", "delta "]  # the stop word cuts the second completion
    expected = []
    for text, cont in (("hello world foo", " foo"), ("x", "x")):
        full = tokenizer(text)["input_ids"]
        context = len(tokenizer(text.replace(cont, ""))["input_ids"])
        expected.append(synthetic_score(full[:context], full[context:]))
    assert out["loglikelihood"] == pytest.approx(expected, rel=1e-12)
    assert out["token_len"] == len(tokenizer("hello world foo")["input_ids"])
