#!/usr/bin/env python3
"""The `hf` engine: torch + transformers `generate` on a local model directory (docs/engines.md).

Requests are encoded one by one (chat messages through the tokenizer's chat template), split into
micro-batches of `batch_size`, and each micro-batch into groups that share sampling settings (one
`generate` call takes one generation config). Prompts are left-padded; every row's output is then
cut at its own end-of-sequence, `max_tokens` and stop strings, so results do not depend on which
other requests shared the call (for greedy decoding).

Tensor parallelism (COMPASS_TP > 1): this process is rank 0. It starts ranks 1..tp-1 with the
*spawn* start method (never fork: CUDA and our threads do not survive a fork), every rank joins a
torch.distributed process group (NCCL on CUDA, gloo on CPU) and loads the model with transformers'
tensor-parallel plan (`DistributedConfig(tp_size=tp)`). Rank 0 sends each group's padded inputs
to the other ranks over a pipe and all ranks run `generate` in lockstep. A per-step all-reduce of
a cancel flag keeps them in step when a batch is cancelled. A monitor thread turns the death of
any rank into `fatal` (the worker then kills the process group and restarts the engine).
"""

from __future__ import annotations

import os
import random
import socket
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta
from itertools import groupby
from typing import Any

# Never download: the model is a local directory. Set before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compass_engine import (  # noqa: E402
    Cancelled,
    EngineConfigError,
    EngineSettings,
    FatalEngineError,
    Progress,
    Request,
    Result,
    apply_stop,
    fatal_exit,
    is_out_of_memory,
    log,
    run,
)

ARGUMENTS = {
    "dtype": "bfloat16, float16, float32 or auto; default bfloat16 on CUDA, float32 on CPU",
    "batch_size": "requests per generate call, default 32",
    "max_tokens": "completion limit of requests without max_tokens, default 16",
    "device": "cuda or cpu; default cuda when available",
}


@dataclass(frozen=True)
class ModelSpec:
    """What every rank needs to load the model (picklable: it crosses the spawn boundary)."""

    path: str
    device: str
    dtype: str
    tp: int


def load_model(spec: ModelSpec) -> Any:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # No progress bars in the worker's log (and tqdm's bar takes a multiprocessing lock that
    # the resource tracker then reports as leaked when the engine exits).
    hf_logging.disable_progress_bar()
    dtype: Any = "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    if spec.tp > 1:
        try:
            from transformers.distributed import DistributedConfig
        except ImportError:  # transformers 4.5x: the older spelling of the same plan
            kwargs["tp_plan"] = "auto"
        else:
            kwargs["distributed_config"] = DistributedConfig(tp_size=spec.tp)
    model = AutoModelForCausalLM.from_pretrained(spec.path, **kwargs)
    if spec.tp == 1:
        model.to(spec.device)
    model.eval()
    return model


def shard_summary(model: Any) -> str:
    """The shape of this rank's slice of the first attention projection (proof that TP split it)."""
    for name, param in model.named_parameters():
        if name.endswith("q_proj.weight"):
            local = param.to_local() if hasattr(param, "to_local") else param
            return f"{name.split('.')[-2]} {'x'.join(map(str, local.shape))} of {'x'.join(map(str, param.shape))}"
    return "no q_proj"


# MARK: Distributed plumbing shared by every rank


def init_distributed(rank: int, world: int, port: int, device: str) -> Any:
    """Joins the process group; returns the gloo group used for the per-step cancel flag."""
    import torch
    import torch.distributed as dist

    # transformers' tensor-parallel loader reads these.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(rank)  # CUDA_VISIBLE_DEVICES is the worker's group: 0..tp-1
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # ranks share the cores
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(minutes=30))
    log(f"hf rank {rank}/{world} pid {os.getpid()}: joined the {backend} process group")
    # The flag is a CPU tensor; on CUDA a separate gloo group carries it.
    return dist.new_group(backend="gloo") if backend != "gloo" else None


class StepHook:
    """A stopping criterion called once per decoding step on every rank: reports generated
    tokens (rank 0) and stops every row when the batch is cancelled. With several ranks the
    flag is all-reduced, so all of them stop at the same step (one stopping early would leave
    the others waiting in a collective forever)."""

    def __init__(self, world: int, group: Any, cancelled: threading.Event | None,
                 progress: Progress | None, eos: list[int], rows: int) -> None:
        import torch

        self.world, self.group, self.cancelled, self.progress = world, group, cancelled, progress
        self.eos = torch.tensor(eos) if eos else None
        self.finished = torch.zeros(rows, dtype=torch.bool)
        self.stopped = False

    def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
        import torch

        stop = self.cancelled is not None and self.cancelled.is_set()
        if self.world > 1:
            import torch.distributed as dist

            flag = torch.tensor([1 if stop else 0], dtype=torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
            stop = bool(flag.item())
        if self.progress is not None:
            last = input_ids[:, -1].cpu()
            self.progress.add(tokens=int((~self.finished).sum()))
            if self.eos is not None:
                self.finished |= torch.isin(last, self.eos)
        self.stopped = stop
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def run_generate(model: Any, job: dict[str, Any], world: int, group: Any,
                 cancelled: threading.Event | None = None, progress: Progress | None = None) -> tuple[list[list[int]], bool]:
    """One `generate` call; every rank runs it with the same `job`. Returns the new tokens of
    each row and whether the cancel flag stopped it."""
    import torch
    from transformers import StoppingCriteriaList

    input_ids = torch.tensor(job["input_ids"], device=model.device)
    attention_mask = torch.tensor(job["attention_mask"], device=model.device)
    if job["seed"] is not None:
        torch.manual_seed(job["seed"])  # the same on every rank, so sampled tokens agree
    hook = StepHook(world, group, cancelled, progress, job["eos"], len(job["input_ids"]))
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                             stopping_criteria=StoppingCriteriaList([hook]), **job["generate"])
    return out[:, input_ids.shape[1]:].tolist(), hook.stopped


def rank_main(rank: int, spec: ModelSpec, port: int, conn: Any, errors: Any) -> None:
    """Ranks 1..tp-1: load, then run every job rank 0 sends until it says exit or goes away."""
    try:
        group = init_distributed(rank, spec.tp, port, spec.device)
        model = load_model(spec)
        summary = shard_summary(model)
        log(f"hf rank {rank}/{spec.tp} pid {os.getpid()}: loaded, {summary}")
        conn.send(("loaded", rank, os.getpid(), summary))
        while True:
            try:
                message = conn.recv()
            except EOFError:
                break  # rank 0 is gone
            if message[0] == "exit":
                break
            run_generate(model, message[1], spec.tp, group)
    except BaseException as error:  # noqa: BLE001 - report any death to rank 0, then die
        import traceback

        traceback.print_exc()
        code = "oom" if is_out_of_memory(error) else "engine_dead"
        errors.put((rank, code, f"tensor-parallel rank {rank} failed: {type(error).__name__}: {error}"))
        errors.close()
        errors.join_thread()
        os._exit(1)
    os._exit(0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Ranks:
    """Rank 0's handle on ranks 1..tp-1: started by spawn, watched by a monitor thread."""

    def __init__(self, spec: ModelSpec, port: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.start_method = ctx.get_start_method()
        log(f"starting tensor-parallel ranks 1..{spec.tp - 1} with the {self.start_method} start method")
        self.errors = ctx.Queue()
        self.conns: list[Any] = []
        self.processes: list[Any] = []
        self.closing = False
        for rank in range(1, spec.tp):
            mine, theirs = ctx.Pipe()
            process = ctx.Process(target=rank_main, args=(rank, spec, port, theirs, self.errors),
                                  name=f"compass-hf-rank{rank}", daemon=True)
            process.start()
            theirs.close()
            self.conns.append(mine)
            self.processes.append(process)
        threading.Thread(target=self.monitor, name="compass-rank-monitor", daemon=True).start()

    def monitor(self) -> None:
        from multiprocessing.connection import wait

        wait([p.sentinel for p in self.processes])
        if self.closing:
            return
        dead = next(p for p in self.processes if not p.is_alive())
        try:
            _, code, message = self.errors.get(timeout=2)
        except Exception:  # noqa: BLE001 - no word from it: it was killed
            code, message = "engine_dead", f"tensor-parallel rank process {dead.name} exited with {dead.exitcode}"
        fatal_exit(code, message)

    def wait_loaded(self) -> list[str]:
        return [f"rank {rank} pid {pid}" for _, rank, pid, _ in (c.recv() for c in self.conns)]

    def send(self, job: dict[str, Any]) -> None:
        for conn in self.conns:
            conn.send(("generate", job))

    def close(self) -> None:
        self.closing = True
        for conn in self.conns:
            try:
                conn.send(("exit",))
            except OSError:
                pass
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


# MARK: The backend (rank 0)


class HFBackend:
    name = "hf"
    arguments = ARGUMENTS

    def __init__(self) -> None:
        self.ranks: Ranks | None = None
        self.group: Any = None
        self.tp = 1

    def load(self, settings: EngineSettings) -> str:
        args = settings.args
        self.batch_size = args.integer("batch_size", 32, minimum=1)
        self.default_max_tokens = args.integer("max_tokens", 16, minimum=0)
        dtype = args.choice("dtype", ["bfloat16", "float16", "float32", "auto"])
        device = args.choice("device", ["cuda", "cpu"])
        if not settings.model:
            raise EngineConfigError("no model: pass --model with a local model directory")
        if not os.path.isdir(settings.model):
            raise EngineConfigError(f"model directory not found: {settings.model}")

        import torch
        import transformers
        from transformers import AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise EngineConfigError("--engine-arg device=cuda, but torch sees no CUDA device")
        dtype = dtype or ("bfloat16" if device == "cuda" else "float32")
        self.tp = settings.tp
        if device == "cuda" and self.tp > torch.cuda.device_count():
            raise EngineConfigError(f"tp={self.tp} but only {torch.cuda.device_count()} CUDA devices are visible")
        spec = ModelSpec(settings.model, device, dtype, self.tp)

        tokenizer = AutoTokenizer.from_pretrained(settings.model, local_files_only=True)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:  # many causal LMs have none; pad with end-of-sequence
            # (padded positions are masked out, so any token would do; id 0 when there is no EOS)
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(0)
        self.tokenizer = tokenizer

        ranks = ""
        if self.tp > 1:
            port = free_port()
            self.ranks = Ranks(spec, port)
            self.group = init_distributed(0, self.tp, port, device)
        self.model = load_model(spec)
        if self.ranks is not None:
            others = self.ranks.wait_loaded()
            ranks = f" ({'nccl' if device == 'cuda' else 'gloo'}; rank 0 pid {os.getpid()}, {', '.join(others)}; " \
                    f"{shard_summary(self.model)} per rank)"
        config = self.model.config
        self.max_positions: int | None = getattr(config, "max_position_embeddings", None)
        if not self.max_positions and 0 < getattr(tokenizer, "model_max_length", 0) < 10**8:
            self.max_positions = tokenizer.model_max_length
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos: list[int] = [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
        return (f"transformers {transformers.__version__}, torch {torch.__version__}, {device} {dtype}, "
                f"tp={self.tp}{ranks}, max positions {self.max_positions}")

    def encode(self, request: Request) -> list[int]:
        tok = self.tokenizer
        if request.messages is not None and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
            # The template writes the special tokens (BOS) itself.
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return list(tok(request.flattened_prompt)["input_ids"])

    def generate(self, requests: list[Request], progress: Progress, cancelled: threading.Event) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        jobs: list[tuple[int, Request, list[int], int]] = []
        for pos, request in enumerate(requests):
            try:
                ids = self.encode(request)
            except Exception as error:  # noqa: BLE001 - a template that rejects these messages, say
                results[pos] = Result.failure(request.custom_id, f"cannot encode the request: {error}")
                progress.add(done=1)
                continue
            if self.max_positions and len(ids) >= self.max_positions:
                results[pos] = Result.failure(
                    request.custom_id,
                    f"prompt too long: {len(ids)} tokens; the model takes at most {self.max_positions} "
                    f"positions, so at most {self.max_positions - 1} prompt tokens")
                progress.add(done=1)
                continue
            limit = request.max_tokens if request.max_tokens is not None else self.default_max_tokens
            if self.max_positions:
                limit = min(limit, self.max_positions - len(ids))
            jobs.append((pos, request, ids, limit))

        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start:start + self.batch_size]
            for _, group in groupby(sorted(chunk, key=self.sampling_key), key=self.sampling_key):
                if cancelled.is_set():
                    raise Cancelled()
                for pos, result in self.run_group(list(group), progress, cancelled):
                    results[pos] = result
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    @staticmethod
    def sampling_key(job: tuple[int, Request, list[int], int]) -> tuple[Any, ...]:
        # Requests that can share one generate call. (sorted() is stable: request order holds.)
        r = job[1]
        return (r.greedy, r.temperature or 0.0, r.top_p or 1.0, r.seed is None, r.seed or 0, r.ignore_eos)

    def run_group(self, group: list[tuple[int, Request, list[int], int]], progress: Progress,
                  cancelled: threading.Event) -> list[tuple[int, Result]]:
        out: list[tuple[int, Result]] = []
        live = []
        for pos, request, ids, limit in group:
            if limit <= 0:  # max_tokens 0: nothing to generate
                out.append((pos, Result(request.custom_id, "", len(ids), 0, "length")))
                progress.add(done=1)
            else:
                live.append((pos, request, ids, limit))
        if not live:
            return out
        first = live[0][1]
        longest = max(len(ids) for _, _, ids, _ in live)
        pad = self.tokenizer.pad_token_id
        max_new = max(limit for *_, limit in live)
        settings: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": pad, "eos_token_id": self.eos}
        if first.greedy:
            settings.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:  # OpenAI semantics: temperature and top_p only, no top-k cut
            settings.update(do_sample=True, temperature=first.temperature, top_p=first.top_p or 1.0, top_k=0)
        if first.ignore_eos:
            settings["min_new_tokens"] = max_new
        seed = first.seed
        if seed is None and self.tp > 1 and not first.greedy:
            seed = random.getrandbits(31)  # ranks must draw the same samples
        job = {
            "input_ids": [[pad] * (longest - len(ids)) + ids for _, _, ids, _ in live],
            "attention_mask": [[0] * (longest - len(ids)) + [1] * len(ids) for _, _, ids, _ in live],
            "generate": settings, "seed": seed, "eos": self.eos,
        }
        try:
            if self.ranks is not None:
                self.ranks.send(job)
            rows, stopped = run_generate(self.model, job, self.tp, self.group, cancelled, progress)
        except Exception as error:
            if self.tp > 1:  # the other ranks are now out of step: only a restart recovers
                raise FatalEngineError(f"generate failed on rank 0: {type(error).__name__}: {error}",
                                       "oom" if is_out_of_memory(error) else "engine_dead") from error
            if is_out_of_memory(error):
                self.free_memory()
            raise
        if stopped:
            raise Cancelled()
        for (pos, request, ids, limit), row in zip(live, rows, strict=True):
            out.append((pos, self.finish(request, len(ids), row, limit)))
            progress.add(done=1)
        return out

    def finish(self, request: Request, prompt_tokens: int, row: list[int], limit: int) -> Result:
        """One row's result: cut at end-of-sequence, at the request's own limit, at stop strings."""
        tokens = row[:limit]
        reason = "length" if len(tokens) >= limit else "stop"
        if not request.ignore_eos:
            for i, token in enumerate(tokens):
                if token in self.eos:
                    tokens, reason = tokens[:i + 1], "stop"  # the end-of-sequence token counts
                    break
        decode = self.tokenizer.decode
        text = decode(tokens, skip_special_tokens=True)
        if request.stop:
            text, hit = apply_stop(text, request.stop)
            if hit:
                reason = "stop"
                # Count the tokens up to the one that completed the stop string.
                lo, hi = 1, len(tokens)
                while lo < hi:
                    mid = (lo + hi) // 2
                    if apply_stop(decode(tokens[:mid], skip_special_tokens=True), request.stop)[1]:
                        hi = mid
                    else:
                        lo = mid + 1
                tokens = tokens[:lo]
        return Result(request.custom_id, text, prompt_tokens, len(tokens), reason)

    def free_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        if self.ranks is not None:
            self.ranks.close()
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


if __name__ == "__main__":
    run(HFBackend())
