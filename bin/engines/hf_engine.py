#!/usr/bin/env python3
"""The `hf` engine: torch + transformers on a local model directory (docs/engines.md).

Generation. Requests are encoded one by one (chat messages through the tokenizer's chat
template; `prompt_token_ids` as they are, no special tokens added), split into micro-batches of
`batch_size`, and each micro-batch into groups that share sampling settings (one `generate` call
takes one generation config). Prompts are left-padded; every row's output is then cut at its own
end-of-sequence, `max_tokens` and stop strings, so results do not depend on which other requests
shared the call (for greedy decoding).

Logprobs (`logprobs`, `prompt_logprobs`) are our own computation, not generate's scores: after a
group is generated, one teacher-forced forward pass over prompt + returned completion gives the
log-softmax (float32) of the model's raw logits at every position, whatever the sampling
settings (temperature, top_p and ignore_eos's end-of-sequence ban shape what is generated, not
what is reported). One pass serves both fields; it runs in chunks of columns over a KV cache
(`run_logprobs`), so the logits held at once stay within LOGIT_ELEMENTS however long the text,
and it keeps no logits before the first wanted position. Greedy decoding's chosen tokens are
then the top-1 of these logprobs (up to float rounding between the incremental and the full pass).

Scoring (`continuations`) computes each context once. Scoring requests are sorted by context
tokens, so contexts that share a prefix are neighbours, and cut into micro-batches within
`batch_tokens` key/value positions and LOGIT_ELEMENTS logits. A micro-batch is at most two
forward passes (`run_score`):
1. Prefixes (only where they pay): runs of neighbouring contexts that share at least
   MIN_SHARED_PREFIX tokens (a five-shot preamble) form groups, chosen to save the most
   recomputed tokens (`prefix_groups`); one pass computes each group's prefix once, and its keys
   and values are copied to the group's rows.
2. One pass over every row: the rest of its context, left-padded so that one column holds every
   row's last context token, followed by all its continuations minus their last tokens, packed
   side by side. A 4D attention mask makes it a tree (`TreeRows`): each continuation sees the
   context and itself, never its siblings, with explicit positions, so no context is recomputed
   or copied per continuation. Only the last context column and the continuation columns keep
   logits (`logits_to_keep`); a continuation's logprob is the sum, over its tokens, of
   log-softmax (float32) at the position before each, and it is greedy when every one of those
   positions' argmax is its token.
Single-token continuations (multiple choice) so cost one context pass and nothing else. A
micro-batch that runs out of device memory is split in two and retried (tp=1). The mask goes to
the sdpa or eager attention kernels as it is; the passes use full-attention caches, so a model
with sliding-window layers takes only sequences within its window.

Tensor parallelism (COMPASS_TP > 1): this process is rank 0. It starts ranks 1..tp-1 with the
*spawn* start method (never fork: CUDA and our threads do not survive a fork), every rank joins a
torch.distributed process group (NCCL on CUDA, gloo on CPU) and loads the model with transformers'
tensor-parallel plan (`DistributedConfig(tp_size=tp)`). Every model call is a *job* of plain lists
(`JOBS`: generate, score, logprobs) that rank 0 sends to the other ranks over a pipe before
running it itself, so all ranks make the same forward passes in lockstep. A per-step all-reduce of
a cancel flag keeps `generate` in step when a batch is cancelled; score and logprobs jobs are one
micro-batch each and always run to their end (rank 0 checks cancel between them). A monitor thread
turns the death of any rank into `fatal` (the worker then kills the process group and restarts
the engine).

Batches: the worker may hand over several batches at once (`ready` says `capacity`: batch_size
requests); those waiting when a call starts run as one call, up to batch_size requests, so a
stream of one-request batches (the gateway's clients) is batched here as one large batch is.
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
from typing import Any, TypeVar
from collections.abc import Callable, Iterable

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
    Score,
    TokenLogprobs,
    TopLogprob,
    apply_stop,
    fatal_exit,
    is_out_of_memory,
    log,
    many_encoder,
    prefetch_encoder,
    run,
    scoring_tokens,
)

ARGUMENTS = {
    "dtype": "bfloat16, float16, float32 or auto; default bfloat16 on CUDA, float32 on CPU",
    "batch_size": "requests per generate call, default 32",
    "batch_tokens": "the most key/value positions (rows x padded length) one scoring or logprobs pass holds, default 65536",
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
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                         stopping_criteria=StoppingCriteriaList([hook]), **job["generate"])
    return out[:, input_ids.shape[1]:].tolist(), hook.stopped


# MARK: Scoring and logprob passes (every rank runs them, with the same job)

# A job is plain lists (picklable: under tensor parallelism rank 0 sends it to the other ranks),
# and every rank turns it into the same forward passes, so their collectives match.


class TreeRows:
    """Rows run through the model together over one KV cache, each token in a *segment*: 0 for
    context tokens (seen by every later token of the row), s > 0 for continuation s (seen only by
    later tokens of the same continuation), -1 for padding (seen by nobody). One forward pass can
    so hold a context and all of its continuations side by side, each continuation attending to
    the context and to itself only: continuations share the context's keys and values instead of
    each recomputing (or copying) them.

    "Later" is by position, not by column: the mask is built here (a 4D additive float mask, 0 or
    the dtype's lowest value, which transformers hands to the sdpa and eager attention kernels as
    it is) from each token's segment and explicit position, so a row may hold its tokens in any
    order of columns, with padding anywhere. Every query sees at least itself, so no softmax row
    is empty (a padding query's would be; what padding computes is never read)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = model.device
        self.cache: Any = None
        self.segments: Any = None  # [rows, cached keys]: each cached key's segment
        self.positions: Any = None  # [rows, cached keys]: and its position

    def forward(self, ids: list[list[int]], positions: list[list[int]], segments: list[list[int]],
                keep: int, cache: bool) -> Any:
        """The logits of the last `keep` columns, [rows, keep, vocab]; `cache`: keep the keys and
        values for a later call."""
        import torch
        from transformers import DynamicCache

        device = self.device
        query = torch.tensor(segments, dtype=torch.long, device=device)
        where = torch.tensor(positions, dtype=torch.long, device=device)
        width = query.shape[1]
        past = 0 if self.segments is None else self.segments.shape[1]
        keys = query if self.segments is None else torch.cat([self.segments, query], dim=1)
        key_positions = where if self.positions is None else torch.cat([self.positions, where], dim=1)
        key, seg = keys[:, None, :], query[:, :, None]
        visible = (key >= 0) & ((key == 0) | (key == seg)) & (key_positions[:, None, :] <= where[:, :, None])
        diagonal = torch.arange(width, device=device)
        visible[:, diagonal, past + diagonal] = True
        dtype = self.model.dtype
        mask = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, torch.finfo(dtype).min)
        if cache and self.cache is None:
            self.cache = DynamicCache()  # full-attention layers only: see sliding_window()
        kwargs: dict[str, Any] = {"logits_to_keep": keep} if _takes_logits_to_keep(self.model) else {}
        out = self.model(input_ids=torch.tensor(ids, device=device), position_ids=where,
                         attention_mask=mask[:, None], past_key_values=self.cache, use_cache=self.cache is not None,
                         **kwargs)
        if self.cache is not None:
            self.segments, self.positions = keys, key_positions
        return out.logits[:, -keep:]

    def select(self, rows: list[int], hidden: list[bool]) -> None:
        """Makes row i a copy of cached row rows[i] (a prefix handed to the rows that share it);
        rows with `hidden` set see none of the cached keys."""
        import torch

        index = torch.tensor(rows, device=self.device)
        self.cache.batch_select_indices(index)
        self.segments, self.positions = self.segments[index], self.positions[index]
        self.segments[torch.tensor(hidden, device=self.device)] = -1


def _takes_logits_to_keep(model: Any) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


def run_score(model: Any, job: dict[str, Any], *_: Any) -> tuple[list[float], list[bool]]:
    """One scoring micro-batch: every continuation's summed logprob and greedy flag, flattened in
    row order.

    job: `prefixes` (token ids shared by a group of rows, computed once per group), `group` (each
    row's prefix index, or -1), `rest` (each row's context after its prefix, never empty) and
    `conts` (each row's continuations as token ids). Two passes: the prefixes (rows = groups),
    whose keys and values are then copied to the rows of each group; then one pass over every
    row's context rest with all its continuations minus their last token, packed side by side
    as segments 1, 2, ... The logits of the last context token score each continuation's first
    token; the logits of a continuation's k-th token score its (k+1)-th.
    """
    import torch

    prefixes, group, rest, conts = job["prefixes"], job["group"], job["rest"], job["conts"]
    rows = TreeRows(model)
    offset = [len(prefixes[g]) if g >= 0 else 0 for g in group]
    if prefixes:
        width = max(len(p) for p in prefixes)
        rows.forward([p + [0] * (width - len(p)) for p in prefixes], [list(range(width))] * len(prefixes),
                     [[0] * len(p) + [-1] * (width - len(p)) for p in prefixes], keep=1, cache=True)
        rows.select([max(g, 0) for g in group], [g < 0 for g in group])
    # Each row is [padding, context but its last token, continuations packed, last context token]:
    # as wide as its own tokens (rows pad only to the widest row), and the last `right + 1`
    # columns, whose logits are kept, hold every continuation token and the last context token.
    packed = [sum(max(len(c) - 1, 0) for c in row) for row in conts]
    width = max(len(context) + size for context, size in zip(rest, packed, strict=True))
    right = max(packed)
    ids, positions, segments = [], [], []
    targets: list[tuple[int, int, int, int]] = []  # (row, kept logits column, token, continuation)
    n = 0
    for r, (context, row_conts) in enumerate(zip(rest, conts, strict=True)):
        pad, end = width - len(context) - packed[r], offset[r] + len(context)
        row_ids, row_pos = [0] * pad + context[:-1], [0] * pad + list(range(offset[r], end - 1))
        row_seg = [-1] * pad + [0] * (len(context) - 1)
        for s, cont in enumerate(row_conts, start=1):
            for k, token in enumerate(cont):
                # Token k is scored by the logits of the token before it: the context's last (the
                # last column) or this continuation's token k-1 (in the column row_ids is at + k-1).
                targets.append((r, right if k == 0 else len(row_ids) + k - 1 - (width - right - 1), token, n))
            row_ids += cont[:-1]
            row_pos += list(range(end, end + len(cont) - 1))
            row_seg += [s] * (len(cont) - 1)
            n += 1
        ids.append(row_ids + context[-1:])
        positions.append(row_pos + [end - 1])
        segments.append(row_seg + [0])
    logits = rows.forward(ids, positions, segments, keep=right + 1, cache=rows.cache is not None)
    sums = torch.zeros(n, dtype=torch.float64, device=logits.device)
    misses = torch.zeros(n, dtype=torch.long, device=logits.device)
    step = max(1, LOGIT_ELEMENTS // 4 // logits.shape[-1])  # float32 rows at a time: a quarter of the budget
    for first in range(0, len(targets), step):  # (no targets when every continuation encoded to nothing)
        row, column, token, cont = (torch.tensor(v, device=logits.device)
                                    for v in zip(*targets[first:first + step], strict=True))
        chosen = logits[row, column].float()  # [targets, vocab]: only the positions that score a token
        logprob = chosen.gather(1, token[:, None])[:, 0] - torch.logsumexp(chosen, dim=-1)
        sums.index_add_(0, cont, logprob.double())
        misses.index_add_(0, cont, (chosen.argmax(dim=-1) != token).long())
    return sums.tolist(), (misses == 0).tolist()


def run_logprobs(model: Any, job: dict[str, Any], *_: Any) -> list[tuple[list[float], list[list[int]], list[list[float]]]]:
    """Teacher-forced logprobs: for each row, the logprob of every token from `start[r]` on
    given the tokens before it, and the `k[r]` most likely tokens there (ids and logprobs).

    job: `rows` (token ids), `start`, `k`, `chunk` (columns per forward pass: the rows run in
    chunks of columns over a KV cache, so the logits held at once stay bounded whatever the
    length). Rows are right-padded; columns before the earliest wanted one keep no logits.
    """
    import torch

    seqs, start, k, chunk = job["rows"], job["start"], job["k"], job["chunk"]
    width, top = max(len(s) for s in seqs), max(k)
    rows = TreeRows(model)
    first = min(start) - 1  # the first column whose logits score a wanted token
    out: list[tuple[list[float], list[list[int]], list[list[float]]]] = [([], [], []) for _ in seqs]
    for lo in range(0, width, chunk):
        hi = min(width, lo + chunk)
        ids = [(s + [0] * (width - len(s)))[lo:hi] for s in seqs]
        segments = [[0 if c < len(s) else -1 for c in range(lo, hi)] for s in seqs]
        keep = hi - max(lo, first)
        logits = rows.forward(ids, [list(range(lo, hi))] * len(seqs), segments, keep=max(keep, 1), cache=hi < width)
        if keep <= 0:
            continue
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # [rows, keep, vocab], column j = hi - keep + j
        nexts = torch.tensor([(s + [0] * (width + 1 - len(s)))[hi - keep + 1:hi + 1] for s in seqs], device=logits.device)
        chosen = logprobs.gather(2, nexts[:, :, None])[:, :, 0].tolist()
        if top:
            values, indices = logprobs.topk(top, dim=-1)
            top_values, top_ids = values.tolist(), indices.tolist()
        for r, s in enumerate(seqs):
            for j in range(keep):
                token = hi - keep + j + 1  # the token these logits score
                if start[r] <= token < len(s):
                    out[r][0].append(chosen[r][j])
                    out[r][1].append(top_ids[r][j][:k[r]] if top else [])
                    out[r][2].append(top_values[r][j][:k[r]] if top else [])
    return out


JOBS: dict[str, Callable[..., Any]] = {"generate": run_generate, "score": run_score, "logprobs": run_logprobs}


def run_job(model: Any, kind: str, job: dict[str, Any], world: int, group: Any, *extra: Any) -> Any:
    import torch

    with torch.inference_mode():
        return JOBS[kind](model, job, world, group, *extra)


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
            run_job(model, message[1], message[2], spec.tp, group)
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

    def send(self, kind: str, job: dict[str, Any]) -> None:
        for conn in self.conns:
            conn.send(("run", kind, job))

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

# A scoring micro-batch shares a prefix only when it is at least this long: a shorter one saves
# less than the extra forward pass costs.
MIN_SHARED_PREFIX = 32
# A scoring pass with at least this many token positions keeps a device busy: past it, a
# micro-batch is cut rather than padded much.
MIN_PASS_TOKENS = 8192
# The most logits (positions x vocabulary) one scoring or logprobs forward pass keeps at once.
LOGIT_ELEMENTS = 1 << 30


@dataclass
class GenerationItem:
    pos: int  # the request's place in the batch
    request: Request
    ids: list[int]
    limit: int


@dataclass
class ScoreItem:
    pos: int
    request: Request
    context: list[int]
    conts: list[list[int]]

    @property
    def packed(self) -> int:
        """Tokens the continuations add to the scoring pass (each without its last token)."""
        return sum(max(len(c) - 1, 0) for c in self.conts)


@dataclass
class LogprobItem:
    pos: int
    seq: list[int]  # the prompt, then the completion's tokens
    start: int  # the first token whose logprob is wanted
    k: int


T = TypeVar("T")


def micro_batches(items: list[T], shape: Callable[[T], tuple[int, ...]],
                  fits: Callable[[int, tuple[int, ...]], bool]) -> list[list[T]]:
    """`items` cut into consecutive runs, each as long as `fits(rows, widest)` allows (`widest`:
    the run's largest `shape` in each dimension); a run has at least one item."""
    batches: list[list[T]] = []
    batch: list[T] = []
    widest: tuple[int, ...] = ()
    for item in items:
        size = shape(item)
        grown = tuple(map(max, widest, size)) if batch else size
        if batch and not fits(len(batch) + 1, grown):
            batches.append(batch)
            batch, grown = [], size
        batch.append(item)
        widest = grown
    if batch:
        batches.append(batch)
    return batches


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def prefix_groups(contexts: list[list[int]], minimum: int = MIN_SHARED_PREFIX) -> tuple[list[list[int]], list[int]]:
    """Groups of consecutive contexts (sorted, or at least with the contexts that share a prefix
    next to each other) whose shared prefix of at least `minimum` tokens is computed once: the
    prefixes, and each context's group (-1: none).

    The grouping saves the most recomputed tokens, (rows - 1) x prefix summed over the groups:
    a run of contexts is either one group (its prefix: the shortest common prefix of neighbours)
    or split where that common prefix is shortest, whichever saves more, so that a long preamble
    shared by some (the five examples of a five-shot prompt) is not given up for a shorter one
    shared by more. A prefix leaves at least one token of every context to the next pass."""
    adjacent = [common_prefix(a, b) for a, b in zip(contexts, contexts[1:], strict=False)]
    chosen: list[tuple[int, int, int]] = []  # (first row, end row, shared tokens)
    start = 0
    for end in range(1, len(contexts) + 1):
        # Neighbours that share fewer than `minimum` tokens are never in one group: a cut.
        if end == len(contexts) or adjacent[end - 1] < minimum:
            chosen += _best_groups(contexts, adjacent, start, end, minimum)
            start = end
    prefixes: list[list[int]] = []
    group = [-1] * len(contexts)
    for i, j, shared in chosen:
        group[i:j] = [len(prefixes)] * (j - i)
        prefixes.append(contexts[i][:shared])
    return prefixes, group


def _best_groups(contexts: list[list[int]], adjacent: list[int], first: int, end: int,
                 minimum: int) -> list[tuple[int, int, int]]:
    """prefix_groups' choice for the rows [first, end): a post-order walk of the splits, without
    recursion (a run may hold thousands of rows)."""
    plans: dict[tuple[int, int], tuple[int, list[tuple[int, int, int]]]] = {}  # (saved, groups)
    stack = [(first, end, False)]
    while stack:
        i, j, children_done = stack.pop()
        if j - i < 2:
            plans[(i, j)] = (0, [])
            continue
        split = min(range(i, j - 1), key=adjacent.__getitem__) + 1
        if not children_done:
            stack += [(i, j, True), (i, split, False), (split, j, False)]
            continue
        shared = min(adjacent[split - 1], min(len(c) for c in contexts[i:j]) - 1)
        whole = (j - i - 1) * shared if shared >= minimum else 0
        left, right = plans.pop((i, split)), plans.pop((split, j))
        if left[0] + right[0] >= whole:  # a tie goes to the longer prefixes
            plans[(i, j)] = (left[0] + right[0], left[1] + right[1])
        else:
            plans[(i, j)] = (whole, [(i, j, shared)])
    return plans[(first, end)][1]


def scoring_batches(items: list[ScoreItem], fits: Callable[[int, tuple[int, ...]], bool]) -> list[list[ScoreItem]]:
    """Scoring micro-batches: the prefix groups of the sorted contexts (`prefix_groups`), whole
    groups together while they fit, a group too large for one micro-batch cut into even parts
    (each keeps the prefix); then the rows that share no prefix, apart (one such row would widen
    a micro-batch of short context rests to its whole context). Rows are longest first within
    each, so that rows of like length share a micro-batch and little of it is padding."""
    def shape(item: ScoreItem) -> tuple[int, ...]:
        return (len(item.context) + item.packed, item.packed + 1)

    def longest_first(rows: Iterable[ScoreItem]) -> list[ScoreItem]:
        return sorted(rows, key=lambda item: -len(item.context) - item.packed)

    def fits_all(rows: list[ScoreItem]) -> bool:
        return fits(len(rows), tuple(max(sizes) for sizes in zip(*map(shape, rows), strict=True)))

    ordered = sorted(items, key=lambda item: item.context)
    _, group = prefix_groups([item.context for item in ordered])
    batches: list[list[ScoreItem]] = []
    current: list[ScoreItem] = []
    for g, pairs in groupby(zip(ordered, group, strict=True), key=lambda pair: pair[1]):
        if g < 0:
            continue
        members = longest_first(item for item, _ in pairs)
        if current and fits_all(current + members):
            current += members
            continue
        if current:
            batches.append(current)
        parts = micro_batches(members, shape, fits)
        if len(parts) > 1:  # even parts, so that no part is left with a single row (and no prefix)
            size = -(-len(members) // len(parts))
            even = [members[i:i + size] for i in range(0, len(members), size)]
            parts = even if all(fits_all(part) for part in even) else parts
        batches += parts[:-1]
        current = parts[-1]
    if current:
        batches.append(current)
    alone = longest_first(item for item, g in zip(ordered, group, strict=True) if g < 0)
    return batches + [part for batch in micro_batches(alone, shape, fits) for part in _less_padding(batch, shape)]


def _less_padding(batch: list[ScoreItem], shape: Callable[[ScoreItem], tuple[int, ...]]) -> list[list[ScoreItem]]:
    """A micro-batch of rows, longest first, cut further where more than a tenth of a pass would
    be padding, once a pass holds MIN_PASS_TOKENS (a budget that takes a whole batch of requests
    at once would otherwise pad every row to the longest)."""
    parts: list[list[ScoreItem]] = []
    part: list[ScoreItem] = []
    real = 0
    for item in batch:
        size = shape(item)[0]
        if part and len(part) * shape(part[0])[0] >= MIN_PASS_TOKENS and \
                (len(part) + 1) * shape(part[0])[0] > 1.1 * (real + size):
            parts.append(part)
            part, real = [], 0
        part.append(item)
        real += size
    return parts + [part] if part else parts


def score_job(items: list[ScoreItem]) -> dict[str, Any]:
    prefixes, group = prefix_groups([item.context for item in items])
    return {"prefixes": prefixes, "group": group,
            "rest": [item.context[len(prefixes[g]) if g >= 0 else 0:] for item, g in zip(items, group, strict=True)],
            "conts": [item.conts for item in items]}


def sliding_window(config: Any) -> int | None:
    """The attention window of a model with sliding-window layers (None: full attention). The
    scoring passes' mask does not slide, so they take only sequences within the window."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    types = getattr(config, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    return int(window)


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
        # Batches waiting together are run as one (compass_engine: merge_requests): one-request
        # batches fill a generate call as one large batch would. `ready` says it as `capacity`.
        self.merge_requests = self.batch_size
        self.batch_tokens = args.integer("batch_tokens", 65536, minimum=1)
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
        self.vocab = int(self.model.get_input_embeddings().num_embeddings)
        # What an empty context is scored after (lm-evaluation-harness's prefix token).
        self.start_token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.window = sliding_window(config)
        # The scoring passes hand the attention a 4D mask, which these kernels take as it is.
        attention = getattr(config, "_attn_implementation", None) or "sdpa"
        self.tree_mask_error = None if attention in ("sdpa", "eager") else \
            f"scoring and logprobs need sdpa or eager attention; this model runs {attention}"
        return (f"transformers {transformers.__version__}, torch {torch.__version__}, {device} {dtype}, "
                f"tp={self.tp}{ranks}, max positions {self.max_positions}")

    # MARK: Encoding

    def encode(self, request: Request) -> list[int]:
        tok = self.tokenizer
        if request.prompt_token_ids is not None:
            return list(request.prompt_token_ids)  # as they are: no special tokens added
        if request.messages is not None and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
            # The template writes the special tokens (BOS) itself.
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return list(tok(request.flattened_prompt)["input_ids"])

    def encode_plain(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_scoring(self, request: Request, encode: Callable[[str], list[int]]) -> tuple[list[int], list[list[int]]]:
        """The context's tokens and each continuation's (compass_request.scoring_tokens: the
        context is the same for every continuation, so it is computed once); `encode` is the
        batch's (compass_request.prefetch_encoder)."""

        def start() -> list[int]:
            if self.start_token is None:
                raise ValueError("the model has neither a beginning- nor an end-of-sequence token to score "
                                 "an empty context after")
            return [self.start_token]

        return scoring_tokens(request, encode, start)

    def check(self, request: Request, tokens: list[int], length: int, what: str) -> tuple[str, str] | None:
        """Why these tokens cannot run, as (code, message): ids outside the vocabulary or too long
        for the model (`bad_request`), too long for this engine's scoring passes (`unsupported`)."""
        bad = next((t for t in tokens if t >= self.vocab), None)
        if bad is not None:
            return "bad_request", f"token id {bad} is not in the model's vocabulary (ids 0 to {self.vocab - 1})"
        if self.max_positions and length > self.max_positions:
            return "bad_request", f"{what} too long: {length} positions; the model takes at most {self.max_positions}"
        if self.window and length > self.window and (request.is_scoring or request.logprobs is not None
                                                     or request.prompt_logprobs is not None):
            return "unsupported", (f"{what} too long for scoring and logprobs here: {length} positions; this "
                                   f"model's sliding attention window is {self.window}")
        return None

    # MARK: Batches

    def generate(self, requests: list[Request], progress: Progress, cancelled: threading.Event) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        scoring: list[ScoreItem] = []
        jobs: list[GenerationItem] = []

        def fail(pos: int, request: Request, message: str, code: str = "bad_request") -> None:
            results[pos] = Result.failure(request.custom_id, f"request {request.custom_id}: {message}", code)
            progress.add(done=1)

        encode = prefetch_encoder(requests, self.encode_plain, many_encoder(self.tokenizer))
        for pos, request in enumerate(requests):
            wants_tree = request.is_scoring or request.logprobs is not None or request.prompt_logprobs is not None
            if wants_tree and self.tree_mask_error:
                fail(pos, request, self.tree_mask_error, "unsupported")
                continue
            try:
                if request.is_scoring:
                    context, conts = self.encode_scoring(request, encode)
                else:
                    ids = self.encode(request)
            except Exception as error:  # noqa: BLE001 - a template that rejects these messages, say
                fail(pos, request, f"cannot encode the request: {error}")
                continue
            if request.is_scoring:
                longest = len(context) + max(len(c) for c in conts) - 1  # the last token is never an input
                if problem := self.check(request, context + [t for c in conts for t in c], longest,
                                         "context and continuation"):
                    fail(pos, request, problem[1], problem[0])
                else:
                    scoring.append(ScoreItem(pos, request, context, conts))
                continue
            if self.max_positions and len(ids) >= self.max_positions:
                fail(pos, request, f"prompt too long: {len(ids)} tokens; the model takes at most {self.max_positions} "
                                   f"positions, so at most {self.max_positions - 1} prompt tokens")
                continue
            limit = request.max_tokens if request.max_tokens is not None else self.default_max_tokens
            if self.max_positions:
                limit = min(limit, self.max_positions - len(ids))
            if problem := self.check(request, ids, len(ids) + limit - 1, "prompt and completion"):
                fail(pos, request, problem[1], problem[0])
                continue
            jobs.append(GenerationItem(pos, request, ids, limit))

        for pos, result in self.score(scoring, progress, cancelled):
            results[pos] = result
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start:start + self.batch_size]
            for _, group in groupby(sorted(chunk, key=self.sampling_key), key=self.sampling_key):
                if cancelled.is_set():
                    raise Cancelled()
                for pos, result in self.run_group(list(group), progress, cancelled):
                    results[pos] = result
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    def run_job(self, kind: str, job: dict[str, Any], cancelled: threading.Event | None = None,
                progress: Progress | None = None) -> Any:
        """Runs one job on every rank (rank 0 sends it to the others first)."""
        try:
            if self.ranks is not None:
                self.ranks.send(kind, job)
            return run_job(self.model, kind, job, self.tp, self.group, *((cancelled, progress) if kind == "generate" else ()))
        except Exception as error:
            if self.tp > 1:  # the other ranks are now out of step: only a restart recovers
                raise FatalEngineError(f"{kind} failed on rank 0: {type(error).__name__}: {error}",
                                       "oom" if is_out_of_memory(error) else "engine_dead") from error
            if is_out_of_memory(error):
                self.free_memory()
            raise

    def split_on_oom(self, run: Callable[[list[Any]], list[Any]], items: list[Any]) -> list[Any]:
        """`run(items)`, or on out-of-memory (tp=1) the two halves one after the other: a
        micro-batch the budget let through but the device cannot hold still gets done."""
        try:
            return run(items)
        except Exception as error:
            if self.tp > 1 or len(items) < 2 or not is_out_of_memory(error):
                raise
            log(f"out of memory on a pass over {len(items)} rows; splitting it in two")
            half = len(items) // 2
            return self.split_on_oom(run, items[:half]) + self.split_on_oom(run, items[half:])

    # MARK: Scoring

    def score(self, items: list[ScoreItem], progress: Progress,
              cancelled: threading.Event) -> list[tuple[int, Result]]:
        """Scoring requests in micro-batches (`scoring_batches`) within two budgets: rows x
        (context + packed continuations) key/value positions within `batch_tokens` (a shared
        prefix's keys and values are copied to each of its rows), and the logits kept within
        LOGIT_ELEMENTS."""
        out: list[tuple[int, Result]] = []
        for batch in scoring_batches(items, lambda rows, widest: rows * widest[0] <= self.batch_tokens
                                     and rows * widest[1] * self.vocab <= LOGIT_ELEMENTS):
            if cancelled.is_set():
                raise Cancelled()
            for item, scores in zip(batch, self.split_on_oom(self.run_scores, batch), strict=True):
                out.append((item.pos, Result(item.request.custom_id, "", len(item.context), 0, "score", scores=scores)))
            progress.add(done=len(batch))
        return out

    def run_scores(self, items: list[ScoreItem]) -> list[list[Score]]:
        sums, greedy = self.run_job("score", score_job(items))
        out, first = [], 0  # the sums and flags come flat, in row order
        for item in items:
            end = first + len(item.conts)
            out.append([Score(s, len(c), g) for s, g, c in zip(sums[first:end], greedy[first:end], item.conts, strict=True)])
            first = end
        return out

    # MARK: Generation

    @staticmethod
    def sampling_key(job: GenerationItem) -> tuple[Any, ...]:
        # Requests that can share one generate call. (sorted() is stable: request order holds.)
        r = job.request
        return (r.greedy, r.temperature or 0.0, r.top_p or 1.0, r.seed is None, r.seed or 0, r.ignore_eos)

    def run_group(self, group: list[GenerationItem], progress: Progress,
                  cancelled: threading.Event) -> list[tuple[int, Result]]:
        done: list[tuple[GenerationItem, Result, list[int]]] = []
        live = [job for job in group if job.limit > 0]
        for job in group:
            if job.limit <= 0:  # max_tokens 0: nothing to generate
                done.append((job, Result(job.request.custom_id, "", len(job.ids), 0, "length"), []))
        if live:
            first = live[0].request
            longest = max(len(job.ids) for job in live)
            pad = self.tokenizer.pad_token_id
            max_new = max(job.limit for job in live)
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
            job_spec = {
                "input_ids": [[pad] * (longest - len(job.ids)) + job.ids for job in live],
                "attention_mask": [[0] * (longest - len(job.ids)) + [1] * len(job.ids) for job in live],
                "generate": settings, "seed": seed, "eos": self.eos,
            }
            rows, stopped = self.run_job("generate", job_spec, cancelled, progress)
            if stopped:
                raise Cancelled()
            for job, row in zip(live, rows, strict=True):
                done.append((job, *self.finish(job.request, len(job.ids), row, job.limit)))
        self.add_logprobs(done, cancelled)
        progress.add(done=len(done))
        return [(job.pos, result) for job, result, _ in done]

    def finish(self, request: Request, prompt_tokens: int, row: list[int], limit: int) -> tuple[Result, list[int]]:
        """One row's result and its tokens: cut at end-of-sequence, at the request's own limit,
        at stop strings."""
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
        return Result(request.custom_id, text, prompt_tokens, len(tokens), reason), tokens

    # MARK: Logprobs

    def add_logprobs(self, done: list[tuple[GenerationItem, Result, list[int]]], cancelled: threading.Event) -> None:
        """Fills in `prompt_logprobs` and `logprobs` where asked for, from one teacher-forced pass
        over the prompt and the completion as it was returned: the log-softmax of the model's raw
        logits, whatever the sampling settings were (temperature, top_p and ignore_eos shape what
        is generated, not the logprobs reported)."""
        items: list[LogprobItem] = []
        for index, (job, _, tokens) in enumerate(done):
            r = job.request
            if r.logprobs is None and r.prompt_logprobs is None:
                continue
            seq = job.ids + (tokens if r.logprobs is not None else [])
            start = 1 if r.prompt_logprobs is not None else len(job.ids)
            if start < len(seq):
                items.append(LogprobItem(index, seq, start, max(r.logprobs or 0, r.prompt_logprobs or 0)))
        values: dict[int, tuple[list[float], list[list[int]], list[list[float]]]] = {}
        for batch in micro_batches(items, lambda item: (len(item.seq),),
                                   lambda rows, widest: rows * widest[0] <= self.batch_tokens):
            if cancelled.is_set():
                raise Cancelled()
            for item, value in zip(batch, self.split_on_oom(self.run_logprobs, batch), strict=True):
                values[item.pos] = value
        for index, (job, result, tokens) in enumerate(done):
            r = job.request
            lps, top_ids, top_lps = values.get(index, ([], [], []))
            n = len(job.ids)
            if r.prompt_logprobs is not None:  # rows then start at token 1
                result.prompt_logprobs = self.token_logprobs(job.ids, [None] + lps[:n - 1], [None] + top_ids[:n - 1],
                                                             [None] + top_lps[:n - 1], r.prompt_logprobs)
                lps, top_ids, top_lps = lps[n - 1:], top_ids[n - 1:], top_lps[n - 1:]
            if r.logprobs is not None:
                result.logprobs = self.token_logprobs(tokens, list(lps), list(top_ids), list(top_lps), r.logprobs)

    def run_logprobs(self, items: list[LogprobItem]) -> list[tuple[list[float], list[list[int]], list[list[float]]]]:
        chunk = max(1, LOGIT_ELEMENTS // (len(items) * self.vocab))
        return self.run_job("logprobs", {"rows": [i.seq for i in items], "start": [i.start for i in items],
                                         "k": [i.k for i in items], "chunk": chunk})

    def token_logprobs(self, ids: list[int], lps: list[float | None], top_ids: list[list[int] | None],
                       top_lps: list[list[float] | None], k: int) -> TokenLogprobs:
        texts = self.token_texts(ids + [t for row in top_ids if row for t in row[:k]])
        it = iter(texts[len(ids):])
        tops: list[list[TopLogprob] | None] = [
            None if row is None or values is None else
            [TopLogprob(token_id=t, token=next(it), logprob=v) for t, v in zip(row[:k], values[:k], strict=True)]
            for row, values in zip(top_ids, top_lps, strict=True)]
        return TokenLogprobs(ids, texts[:len(ids)], lps, tops)

    def token_texts(self, ids: list[int]) -> list[str]:
        """Each token decoded on its own (special tokens as their text)."""
        return self.tokenizer.batch_decode([[t] for t in ids], skip_special_tokens=False,
                                           clean_up_tokenization_spaces=False)

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
