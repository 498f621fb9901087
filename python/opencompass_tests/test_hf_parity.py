"""CompassModel on hf workers scores what OpenCompass's own HuggingFaceCausalLM scores on the same model.

The tiny random Llama of bin/engines/tools/make_tiny_model.py runs twice: in OpenCompass's
HuggingFaceCausalLM (float32, CPU) and in compass `hf` workers (float32, CPU). Generation must give
the same text; perplexities and log-likelihoods the same numbers up to float noise (the engine
batches and pads; OpenCompass runs one sample at a time).

By default the model API is compared (every method CompassModel implements, on the same inputs);
the same comparison through a whole `opencompass` run of both models needs
COMPASS_FULL_FRAMEWORK_TESTS=1 (test_synthetic_pool's default run covers the CLI path, exactly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ENGINES, Cluster, cluster_in_temp_dir, opencompass_env, run_opencompass
from evaluation import compass_model, predictions, read_jsonl, result, write_config, write_datasets
from testsupport import full_framework_test

#: Perplexities and log-likelihoods agree to this (float32 on CPU, differently batched).
TOLERANCE = dict(rel=1e-4, abs=1e-4)

HF_MODEL = """dict(type=HuggingFaceCausalLM, abbr='hf', path={model!r}, tokenizer_path={model!r}, max_seq_len=256,
     max_out_len=16, batch_size=8, model_kwargs=dict(torch_dtype='torch.float', device_map='cpu'),
     run_cfg=dict(num_gpus=0))"""

PARITY_SCRIPT = """
import json, sys
from opencompass.models import HuggingFaceCausalLM
from compass_client.opencompass import CompassModel

model_dir, frontend = sys.argv[1:3]
hf = HuggingFaceCausalLM(path=model_dir, tokenizer_path=model_dir, max_seq_len=256,
                         model_kwargs=dict(torch_dtype='torch.float', device_map='cpu'))
compass = CompassModel(pool='oc', broker=frontend, tokenizer_path=model_dir, max_seq_len=256)
prompts = ['The quick brown fox', 'Translate the following sentence into French: hello',
           'What is the capital of France?', 'Numbers: 0 1 2 3', 'a']
contexts = ['Q: What is the capital of France?\\nA:', 'The quick brown', 'Two plus two equals']
conts = [' Paris', ' fox jumps', ' four']
# With the pad token among the tokens: CompassModel asks for prompt logprobs where it is scored (the
# first, unmasked) and a scoring request where only the masked context holds it (the second, mask 4).
pad_texts = ['Numbers: 0 <pad> 1 2 3', '<pad> The quick brown fox']


def masked_ppl(model, texts, masks):
    if model is hf:
        # HuggingFaceCausalLM.get_ppl(mask_length=...) without batch_padding hands the whole list to
        # each one-sample _get_ppl and fails to broadcast; its one-sample computation is the reference.
        return [float(model._get_ppl([t], mask_length=[m])[0]) for t, m in zip(texts, masks)]
    return model.get_ppl(texts, mask_length=masks).tolist()


out = {}
for name, model in (('hf', hf), ('compass', compass)):
    out[name] = dict(
        generate=model.generate(prompts, max_out_len=12),
        ppl=model.get_ppl(prompts).tolist(),
        ppl_masked=masked_ppl(model, prompts[:4], [2, 3, 1, 4]),
        ppl_pad=model.get_ppl(prompts[:2] + pad_texts).tolist(),
        ppl_pad_masked=masked_ppl(model, pad_texts, [1, 4]),
        loglikelihood=model.get_loglikelihood([c + x for c, x in zip(contexts, conts)], conts).tolist(),
        token_len=[model.get_token_len(p) for p in prompts])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def hf_pool(tiny_model: Path) -> Iterator[Cluster]:
    """A broker and one hf worker on CPU serving the tiny model, shared by this module's tests (an hf
    engine takes a while to start)."""
    with cluster_in_temp_dir() as cluster:
        cluster.start_broker()
        engines = os.environ.get("COMPASS_ENGINES_DIR", str(ENGINES))
        cluster.start_worker("--engine", "hf", "--model", str(tiny_model), engine_args=("device=cpu",),
                             env={"COMPASS_PYTHON": sys.executable, "COMPASS_ENGINES_DIR": engines})
        cluster.wait_for_workers(1, timeout=120)
        yield cluster


def test_hf_workers_score_and_return_prompt_logprobs(hf_pool: Cluster, tiny_model: Path) -> None:
    """What CompassModel's get_loglikelihood and get_ppl ask of the pool, asked directly: if the hf
    engine cannot answer it, this says so before the comparisons below fail on it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model), local_files_only=True)
    ids = tokenizer("The quick brown fox")["input_ids"]
    assert len(ids) >= 4, ids
    probe = [{"custom_id": "score", "prompt_token_ids": ids[:2], "continuations": [ids[2:3], ids[2:]]},
             {"custom_id": "ppl", "prompt_token_ids": ids, "max_tokens": 0, "prompt_logprobs": 0}]
    score, ppl = hf_pool.client().submit(probe, hf_pool.pool, timeout=120)
    assert score.ok and ppl.ok, (score.error, ppl.error)
    assert score.finish_reason == "score" and score.scores is not None, score
    assert [s.tokens for s in score.scores] == [1, len(ids) - 2], score.scores
    assert all(s.logprob is not None and s.logprob < 0 for s in score.scores), score.scores
    assert ppl.prompt_logprobs is not None and ppl.prompt_logprobs.token_ids == ids
    values = ppl.prompt_logprobs.token_logprobs
    assert values[0] is None and len(values) == len(ids) and all(v is not None and v < 0 for v in values[1:]), values
    # get_ppl takes a continuation's summed logprob for the sum of its prompt logprobs: the engine's
    # scoring pass and its prompt-logprobs pass must agree (float32 on CPU).
    assert score.scores[1].logprob == pytest.approx(sum(values[2:]), **TOLERANCE)
    assert score.scores[0].logprob == pytest.approx(values[2], **TOLERANCE)


def test_model_api_matches_huggingface_causal_lm(hf_pool: Cluster, opencompass_python: Path,
                                                 tiny_model: Path) -> None:
    run = subprocess.run([str(opencompass_python), "-c", PARITY_SCRIPT, str(tiny_model), hf_pool.frontend],
                         capture_output=True, text=True, timeout=300, env=opencompass_env())
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    hf, compass = out["hf"], out["compass"]
    assert compass["generate"] == hf["generate"]
    assert compass["token_len"] == hf["token_len"]
    for key in ("ppl", "ppl_masked", "ppl_pad", "ppl_pad_masked", "loglikelihood"):
        assert compass[key] == pytest.approx(hf[key], **TOLERANCE), key


@full_framework_test
def test_datasets_score_as_with_huggingface_causal_lm(hf_pool: Cluster, opencompass_python: Path,
                                                      tiny_model: Path, tmp_path: Path) -> None:
    gen_path, ppl_path = write_datasets(tmp_path, gen_rows=16, ppl_rows=16)
    models = [HF_MODEL.format(model=str(tiny_model)), compass_model(hf_pool.frontend, tiny_model)]
    imports = "from compass_client.opencompass import CompassModel\nfrom opencompass.models import HuggingFaceCausalLM"
    config = write_config(tmp_path / "eval_parity.py", gen_path, ppl_path, models, imports=imports)
    work = tmp_path / "outputs"

    # --debug: the tasks run one after the other in the opencompass process itself (several task
    # processes are test_synthetic_pool's business; here they would only add minutes of imports).
    run = run_opencompass(opencompass_python, config, work, "--debug")

    assert run.returncode == 0 and "failed with code" not in run.stdout, run.stdout[-3000:]
    assert len(predictions(work, "hf", "reverse")) == len(read_jsonl(gen_path))
    assert [p["prediction"] for p in predictions(work, "compass", "reverse")] == \
        [p["prediction"] for p in predictions(work, "hf", "reverse")]
    hf_choice, compass_choice = predictions(work, "hf", "choice"), predictions(work, "compass", "choice")
    assert [p["prediction"] for p in compass_choice] == [p["prediction"] for p in hf_choice]
    for ours, theirs in zip(compass_choice, hf_choice):
        for label in ("A", "B"):
            assert ours[f"label: {label}"]["PPL"] == pytest.approx(theirs[f"label: {label}"]["PPL"], **TOLERANCE)
    for dataset in ("reverse", "choice"):
        ours, theirs = result(work, "compass", dataset), result(work, "hf", dataset)
        assert ours is not None and theirs is not None
        ours.pop("details", None), theirs.pop("details", None)  # details quote the PPLs, equal to 1e-6 only
        assert ours == theirs, dataset
