"""OpenCompass configs and outputs for the tests: local datasets, a config file, reading predictions.

Two datasets, both local JSONL (nothing is downloaded): ``reverse``, a generation dataset (a
question's answer is its words reversed, which the synthetic engine produces; a few answers are
wrong on purpose so that the accuracy is not 100) and ``choice``, a perplexity dataset (the label
whose prompt has the lower perplexity wins).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Optional

#: ``choice``'s labels and the prompt of each (PPLInferencer: one prompt per label).
CHOICE_TEMPLATES = {"A": "{question} yes", "B": "{question} no it is not"}

CONFIG = '''
from opencompass.datasets import CustomDataset
from opencompass.openicl.icl_evaluator import AccEvaluator, EMEvaluator
from opencompass.openicl.icl_inferencer import GenInferencer, PPLInferencer
from opencompass.openicl.icl_prompt_template import PromptTemplate
from opencompass.openicl.icl_retriever import ZeroRetriever
{imports}

reverse = dict(
    abbr='reverse', type=CustomDataset, path={gen_path!r}, local_mode=True,
    reader_cfg=dict(input_columns=['question'], output_column='answer'),
    infer_cfg=dict(prompt_template=dict(type=PromptTemplate, template='{{question}}'),
                   retriever=dict(type=ZeroRetriever), inferencer=dict(type=GenInferencer, max_out_len=16)),
    eval_cfg=dict(evaluator=dict(type=EMEvaluator)))

choice = dict(
    abbr='choice', type=CustomDataset, path={ppl_path!r}, local_mode=True,
    reader_cfg=dict(input_columns=['question'], output_column='label'),
    infer_cfg=dict(prompt_template=dict(type=PromptTemplate, template={templates!r}),
                   retriever=dict(type=ZeroRetriever), inferencer=dict(type=PPLInferencer)),
    eval_cfg=dict(evaluator=dict(type=AccEvaluator)))

datasets = [{datasets}]
models = [{models}]
'''


def compass_model(frontend: str, tokenizer: Path, abbr: str = "compass", **settings: Any) -> str:
    """A CompassModel entry of `models`, as config source."""
    fields = dict(abbr=abbr, pool="oc", broker=frontend, tokenizer_path=str(tokenizer), max_seq_len=256,
                  max_out_len=16, batch_size=8, compass_batch_size=4, run_cfg=dict(num_gpus=0), **settings)
    return "dict(type=CompassModel, " + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


def write_datasets(directory: Path, gen_rows: int = 24, ppl_rows: int = 20, seed: int = 7) -> tuple[Path, Path]:
    """The two JSONL files; every fifth `reverse` answer is wrong."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    gen_path, ppl_path = directory / "reverse.jsonl", directory / "choice.jsonl"
    with open(gen_path, "w") as f:
        for i in range(gen_rows):
            question = " ".join(rng.choice(words) for _ in range(rng.randint(2, 7))) + f" q{i}"
            answer = " ".join(question.split()[::-1]) if i % 5 else question
            f.write(json.dumps({"question": question, "answer": [answer]}) + "\n")  # EMEvaluator: a list
    with open(ppl_path, "w") as f:
        for i in range(ppl_rows):
            question = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
            f.write(json.dumps({"question": question, "label": rng.choice(sorted(CHOICE_TEMPLATES))}) + "\n")
    return gen_path, ppl_path


def write_config(path: Path, gen_path: Path, ppl_path: Path, models: list[str], datasets: str = "reverse, choice",
                 imports: str = "from compass_client.opencompass import CompassModel") -> Path:
    path.write_text(CONFIG.format(imports=imports, gen_path=str(gen_path), ppl_path=str(ppl_path),
                                  templates=CHOICE_TEMPLATES, datasets=datasets, models=", ".join(models)))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def run_dir(work_dir: Path) -> Path:
    """The timestamped folder of the latest run in `work_dir`."""
    runs = sorted(p for p in work_dir.iterdir() if p.is_dir())
    assert runs, f"no run in {work_dir}"
    return runs[-1]


def predictions(work_dir: Path, model: str, dataset: str) -> list[dict[str, Any]]:
    """A dataset's predictions in row order, whether one task made them or several (``name_0.json``...)."""
    folder = run_dir(work_dir) / "predictions" / model
    whole = folder / f"{dataset}.json"
    parts = [whole] if whole.exists() else sorted(folder.glob(f"{dataset}_*.json"),
                                                   key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert parts, f"no predictions for {model}/{dataset} in {folder}"
    rows: list[dict[str, Any]] = []
    for part in parts:
        data = json.loads(part.read_text())
        rows += [data[str(i)] for i in range(len(data))]
    return rows


def result(work_dir: Path, model: str, dataset: str) -> Optional[dict[str, Any]]:
    """The evaluation's scores, or None when there are none (the summary's '-')."""
    path = run_dir(work_dir) / "results" / model / f"{dataset}.json"
    return json.loads(path.read_text()) if path.exists() else None
