"""Unmodified lm-evaluation-harness (`local-completions`, token-id requests) against the gateway.

lm-eval is installed on demand (lm_eval_env.py) and runs offline on two local tasks written here:
a multiple_choice task (loglikelihood) and a loglikelihood_rolling task (perplexity), with the
tokenizer of a tiny random Llama made by bin/engines/tools/make_tiny_model.py.

- Against synthetic workers, each per-sample log-likelihood must be what the synthetic model's
  rule gives for the token ids lm-eval sent (token id n is the word `t<n>`, which a prompt
  position scores minus its length): the plumbing (token-id prompts, echo, logprobs, the slice
  lm-eval takes) is exact.
- Against `--engine hf` workers on the tiny model, per-sample log-likelihoods and metrics must
  equal `lm-eval --model hf` on the same model.
- Against an engine that cannot score, lm-eval fails with the gateway's message.

The first runs by default; the other two (three lm-eval runs and an hf model load: minutes on a
2-core machine) need COMPASS_FULL_FRAMEWORK_TESTS=1. What they add is covered more cheaply too: the
hf engine's scores against transformers (bin/engines/tests/test_hf_scoring.py) and against
OpenCompass's HuggingFaceCausalLM (python/opencompass_tests/test_hf_parity.py), the 400 of a pool
that cannot score with the openai package (test_scoring.py).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Cluster, Gateway
from lm_eval_env import ensure_lm_eval, lm_eval_command, offline_environment
from testsupport import full_framework_test, watchdog

REPO = Path(__file__).resolve().parents[2]
#: Longest one lm-eval run may take (it takes 15-40 s on the 2-core test machine).
RUN_TIMEOUT_S = 240

QUESTIONS = [
    ("The capital of France is", [" Paris", " a small model", " four"], 0),
    ("Two plus two equals", [" four", " five apples", " the sea"], 0),
    ("A batch of prompts goes to a pool of", [" workers", " stars and wind"], 0),
    ("Each worker hosts one", [" engine", " broker that counts", " poem"], 0),
    ("Once upon a time there was a small", [" model", " French sentence"], 1),
    ("Punctuation and symbols:", [" ( ) [ ]", " tensor parallelism"], 0),
]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "The broker hands out batches, counts credits, retries failures and keeps results.",
    "Summarise this paragraph in one line. Write a short poem about the sea, the wind and the stars.",
]

MC_TASK = """task: compass_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""
PPL_TASK = """task: compass_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    """The suite's watchdog (testsupport) with a longer bound: a test here runs lm-eval once or
    twice, tens of seconds each on an idle machine, minutes on a loaded one. (The install, in a
    module fixture, runs before it starts and is bounded by its own timeout.)"""
    yield from watchdog(3 * RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def lm_eval(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lm-eval installed (once; later runs find it), and a directory with the two tasks."""
    if os.environ.get("COMPASS_SKIP_LM_EVAL"):
        pytest.skip("COMPASS_SKIP_LM_EVAL is set")
    root = tmp_path_factory.mktemp("lm-eval")
    seconds = ensure_lm_eval(log=root / "pip.log")
    if seconds:
        print(f"installed lm-eval in {seconds:.0f} s")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "mc.jsonl").write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                                            for q, c, a in QUESTIONS))
    (tasks / "ppl.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    (tasks / "compass_mc.yaml").write_text(MC_TASK.format(data=tasks / "mc.jsonl"))
    (tasks / "compass_ppl.yaml").write_text(PPL_TASK.format(data=tasks / "ppl.jsonl"))
    return tasks


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    subprocess.run([sys.executable, str(REPO / "bin" / "engines" / "tools" / "make_tiny_model.py"), str(out)],
                   check=True, timeout=300, stdout=subprocess.DEVNULL)
    return out


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model), local_files_only=True)


class Run:
    """One finished lm-eval run: its exit status, output, metrics and per-sample answers."""

    def __init__(self, done: subprocess.CompletedProcess[str], out: Path, seconds: float) -> None:
        self.status = done.returncode
        self.output = done.stdout + done.stderr
        self.seconds = seconds
        self.out = out

    def results(self) -> dict[str, dict[str, Any]]:
        files = sorted(self.out.rglob("results_*.json"))
        assert files, f"lm-eval wrote no results:\n{self.output[-4000:]}"
        return json.loads(files[-1].read_text())["results"]

    def samples(self, task: str) -> list[dict[str, Any]]:
        files = sorted(self.out.rglob(f"samples_{task}_*.jsonl"))
        assert files, f"lm-eval wrote no samples of {task}:\n{self.output[-4000:]}"
        return sorted((json.loads(line) for line in files[-1].read_text().splitlines() if line), key=lambda s: s["doc_id"])


def run_lm_eval(tasks: Path, out: Path, model: str, model_args: str, *extra: str) -> Run:
    out.mkdir(parents=True, exist_ok=True)
    env = offline_environment()
    env["HF_HOME"] = str(out / "hf-home")  # the datasets cache of the json tasks, private to the run
    command = [*lm_eval_command(), "run", "--model", model, "--model_args", model_args,
               "--tasks", "compass_mc,compass_ppl", "--include_path", str(tasks),
               "--output_path", str(out), "--log_samples", *extra]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S, cwd=out)
    run = Run(done, out, time.monotonic() - started)
    (out / "lm-eval.log").write_text(run.output)
    return run


def gateway_args(gateway: Gateway, pool: str, tiny_model: Path, retries: int = 3) -> str:
    return (f"model={pool},base_url={gateway.base_url}/completions,tokenizer={tiny_model},tokenizer_backend=huggingface,"
            f"tokenized_requests=True,num_concurrent=4,max_retries={retries}")


def loglikelihoods(samples: list[dict[str, Any]]) -> list[list[float]]:
    """Per sample, the log-likelihood of each of its requests (each choice; each rolling text)."""
    out = []
    for s in samples:
        out.append([float(r[0][0]) if isinstance(r[0], list) else float(r[0]) for r in s["resps"]])
    return out


def greedy(samples: list[dict[str, Any]]) -> list[list[bool]]:
    """Per multiple-choice sample, whether each choice was greedy (lm-eval logs it as a bool or its text)."""
    return [[str(r[0][1]) == "True" for r in s["resps"]] for s in samples]


def synthetic_score(ids: list[int]) -> float:
    """The synthetic engine's score of prompt tokens that nothing predicts: minus each one's length as `t<id>`."""
    return -float(sum(len(f"t{i}") for i in ids))


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def expected_synthetic(tokenizer: Any, run: Run) -> tuple[list[list[float]], list[list[float]]]:
    """What the synthetic engine gives for the token ids lm-eval sends (lm-eval's _encode_pair:
    the context's trailing spaces move to the continuation; the continuation's tokens are those of
    context + continuation after the context's; a rolling text is scored whole after BOS)."""
    mc = []
    for s in run.samples("compass_mc"):
        scores = []
        for args in s["arguments"].values():
            context, continuation = args["arg_0"], args["arg_1"]
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            whole, head = encode(tokenizer, context + continuation), encode(tokenizer, context)
            scores.append(synthetic_score(whole[len(head):]))
        mc.append(scores)
    ppl = [[synthetic_score(encode(tokenizer, s["doc"]["text"]))] for s in run.samples("compass_ppl")]
    return mc, ppl


@pytest.fixture
def synthetic_gateway(cluster: Cluster) -> Iterator[Gateway]:
    cluster.start_broker()
    cluster.start_worker()
    cluster.start_worker()
    gateway = cluster.start_gateway()
    cluster.wait_for_workers(gateway, {"default": 2})
    yield gateway


def test_lm_eval_scores_through_synthetic_workers(lm_eval: Path, tiny_model: Path, tokenizer: Any,
                                                 synthetic_gateway: Gateway, tmp_path: Path) -> None:
    run = run_lm_eval(lm_eval, tmp_path, "local-completions", gateway_args(synthetic_gateway, "default", tiny_model),
                      "--batch_size", "4")
    assert run.status == 0, run.output[-6000:]
    mc, ppl = expected_synthetic(tokenizer, run)
    assert loglikelihoods(run.samples("compass_mc")) == mc
    assert loglikelihoods(run.samples("compass_ppl")) == ppl
    # A prompt position's top token is the token itself: every continuation is greedy.
    assert all(all(g) for g in greedy(run.samples("compass_mc")))
    results = run.results()
    golds = [a for _, _, a in QUESTIONS]
    accuracy = sum(max(range(len(scores)), key=lambda i: scores[i]) == gold for scores, gold in zip(mc, golds)) / len(golds)
    assert results["compass_mc"]["acc,none"] == pytest.approx(accuracy)
    total_bytes = sum(len(t.encode()) for t in TEXTS)
    bits_per_byte = -sum(s[0] for s in ppl) / total_bytes / math.log(2)
    assert results["compass_ppl"]["bits_per_byte,none"] == pytest.approx(bits_per_byte)
    health = synthetic_gateway.health()
    assert health is not None and health["batcher"]["requests"] >= sum(len(q[1]) for q in QUESTIONS) + len(TEXTS)


@full_framework_test
def test_lm_eval_fails_clearly_on_a_pool_that_cannot_score(lm_eval: Path, tiny_model: Path, cluster: Cluster,
                                                           tmp_path: Path) -> None:
    """An engine that ignores the logprobs fields (as engines did before scoring): every
    loglikelihood request is a 400 saying that the pool cannot score. lm-eval retries every failed
    request (its tenacity wrapper retries any exception, 4xx included) up to max_retries times,
    then the run fails with the message."""
    cluster.start_broker(pools=("plain",))
    cluster.start_plain_worker("plain", refuses=False)
    gateway = cluster.start_gateway()
    cluster.wait_for_workers(gateway, {"plain": 1})
    run = run_lm_eval(lm_eval, tmp_path, "local-completions", gateway_args(gateway, "plain", tiny_model, retries=1),
                      "--batch_size", "4")
    assert run.status != 0
    assert "cannot score" in run.output and "'plain'" in run.output, run.output[-4000:]
    assert "Status code: 400" in run.output
    health = gateway.health()
    # max_retries=1: no prompt was sent twice, and the run stopped in the multiple-choice task's
    # requests (all in flight at once: 4 requests of 4 prompts), before the perplexity task's.
    choices = sum(len(q[1]) for q in QUESTIONS)
    assert health is not None and 0 < health["batcher"]["requests"] <= choices


@pytest.fixture
def hf_gateway(cluster: Cluster, tiny_model: Path) -> Iterator[Gateway]:
    cluster.start_broker(pools=("hf",))
    cluster.start_worker("hf", "device=cpu", "dtype=float32", f"python={sys.executable}", engine="hf",
                         extra=("--model", str(tiny_model)))
    gateway = cluster.start_gateway()
    cluster.wait_for_workers(gateway, {"hf": 1}, timeout=180)  # torch and the model load first
    yield gateway


@full_framework_test
def test_lm_eval_through_hf_workers_equals_lm_eval_hf(lm_eval: Path, tiny_model: Path, hf_gateway: Gateway,
                                                      tmp_path: Path) -> None:
    served = run_lm_eval(lm_eval, tmp_path / "gateway", "local-completions", gateway_args(hf_gateway, "hf", tiny_model),
                         "--batch_size", "4")
    assert served.status == 0, served.output[-6000:]
    # add_bos_token=False as local-completions has it: lm-eval's hf model otherwise follows the
    # tokenizer, which puts BOS before every context, and the two would score other tokens.
    direct = run_lm_eval(lm_eval, tmp_path / "hf", "hf", f"pretrained={tiny_model},dtype=float32,add_bos_token=False",
                         "--device", "cpu", "--batch_size", "4")
    assert direct.status == 0, direct.output[-6000:]
    for task in ("compass_mc", "compass_ppl"):
        got, want = loglikelihoods(served.samples(task)), loglikelihoods(direct.samples(task))
        assert len(got) == len(want) and all(g == pytest.approx(w, abs=1e-4) for g, w in zip(got, want)), (task, got, want)
    # Greedy as lm-eval decides it from the gateway's top_logprobs, and from the model's argmax.
    assert greedy(served.samples("compass_mc")) == greedy(direct.samples("compass_mc"))
    got_results, want_results = served.results(), direct.results()
    assert got_results["compass_mc"]["acc,none"] == want_results["compass_mc"]["acc,none"]
    assert got_results["compass_ppl"]["bits_per_byte,none"] == pytest.approx(want_results["compass_ppl"]["bits_per_byte,none"], rel=1e-5)
