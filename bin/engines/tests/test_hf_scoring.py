"""hf_engine.py's scoring, token-id prompts and logprobs, end to end through the engine process,
checked against transformers run directly on the same tiny model (CPU, float32)."""

from __future__ import annotations

import sys
from typing import Any
from collections.abc import Iterator

import pytest

from conftest import ENGINES, Engine, engine_env

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

TOLERANCE = 1e-4
# Loading transformers twice (the engine and this process) takes a while on a busy machine.
pytestmark = pytest.mark.timeout(240)
FEW_SHOT = "".join(f"Q: What is {a} plus {b}?\nA: {a + b}\n\n" for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9)])

# (context, continuations): trailing-space contexts, an empty and a whitespace-only context,
# multi-token continuations, token-id continuations and contexts, and five-shot contexts that
# share a long preamble (so the engine's shared-prefix pass runs).
CASES: list[tuple[str | list[int], list[str | list[int]]]] = [
    ("Q: What is the capital of France?\nA:", [" Paris", " London", " Paris, the city of light"]),
    ("The quick brown fox jumps over the ", ["lazy dog", "sleepy cat", " dog"]),
    ("", ["The start", "Once upon a time"]),
    ("  ", ["hello"]),
    ("Two plus two equals", [" four", [31, 32, 33], [7]]),
    ([5, 40, 41, 42], [[43], [44, 45, 46], " the sea"]),
    (FEW_SHOT + "Q: What is 4 plus 4?\nA:", [" 8", " 9", " eight"]),
    (FEW_SHOT + "Q: What is 6 plus 1?\nA:", [" 7", " 61"]),
    (FEW_SHOT + "Q: What is 9 plus 9?\nA: ", ["18", "99"]),
    ("Once upon a time", [" there was a small model that answered every question with random words"]),
]


@pytest.fixture(scope="module")
def hf(tiny_model: str) -> Iterator[Engine]:
    """A small batch_tokens, so the cases span several scoring micro-batches."""
    engine = Engine([sys.executable, str(ENGINES / "hf_engine.py")],
                    engine_env(tiny_model, 1, {"batch_size": "4", "max_tokens": "8", "batch_tokens": "600"}))
    engine.ready(timeout=120)
    yield engine
    engine.kill()


@pytest.fixture(scope="module")
def lm(tiny_model: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True, dtype=torch.float32).eval()
    return tokenizer, model


def expected_tokens(tokenizer: Any, context: str | list[int], cont: str | list[int]) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's _encode_pair, written out independently of the engine."""
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    if isinstance(context, list):
        return context, cont if isinstance(cont, list) else encode(cont)
    spaces = len(context) - len(context.rstrip())
    if spaces and isinstance(cont, str):
        context, cont = context[:-spaces], context[-spaces:] + cont
    elif spaces:
        context = context[:-spaces]
    context_ids = encode(context)
    cont_ids = cont if isinstance(cont, list) else encode(context + cont)[len(context_ids):]
    return context_ids or [tokenizer.bos_token_id], cont_ids


def log_softmax(model: Any, ids: list[int]) -> Any:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def direct_score(model: Any, context: list[int], cont: list[int]) -> tuple[float, bool]:
    """A full forward over the concatenated ids, log_softmax, sum (what lm-eval computes)."""
    logprobs = log_softmax(model, context + cont)
    rows = logprobs[len(context) - 1:len(context) - 1 + len(cont)]
    chosen = rows.gather(1, torch.tensor(cont)[:, None])[:, 0]
    return float(chosen.sum()), bool((rows.argmax(-1) == torch.tensor(cont)).all())


def scoring_request(i: int, context: str | list[int], conts: list[str | list[int]]) -> dict[str, Any]:
    key = "prompt_token_ids" if isinstance(context, list) else "prompt"
    return {"custom_id": f"s{i}", key: context, "continuations": conts}


def test_scores_equal_a_direct_forward_pass(hf: Engine, lm: tuple[Any, Any]) -> None:
    tokenizer, model = lm
    # Plus continuations that greedy decoding gives (a random model rarely agrees with English).
    context = tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    greedy_ids = list(context)
    for _ in range(3):
        greedy_ids.append(int(log_softmax(model, greedy_ids)[-1].argmax()))
    cases = CASES + [(context, [greedy_ids[len(context):], greedy_ids[len(context):len(context) + 1]])]
    requests = [scoring_request(i, context, conts) for i, (context, conts) in enumerate(cases)]
    results = hf.result("score-1", requests, timeout=120)
    greedy_seen = set()
    for (context, conts), result in zip(cases, results, strict=True):
        assert result["error"] is None, result
        assert (result["text"], result["completion_tokens"], result["finish_reason"]) == ("", 0, "score")
        assert "logprobs" not in result and "prompt_logprobs" not in result
        assert len(result["scores"]) == len(conts)
        for cont, score in zip(conts, result["scores"], strict=True):
            context_ids, cont_ids = expected_tokens(tokenizer, context, cont)
            assert result["prompt_tokens"] == len(context_ids), (context, cont)
            logprob, greedy = direct_score(model, context_ids, cont_ids)
            assert score["tokens"] == len(cont_ids), (context, cont)
            assert abs(score["logprob"] - logprob) <= TOLERANCE, (context, cont, score, logprob)
            assert score["greedy"] == greedy, (context, cont)
            greedy_seen.add(greedy)
    assert greedy_seen == {True, False}


def test_a_greedy_continuation_is_scored_greedy(hf: Engine, lm: tuple[Any, Any]) -> None:
    tokenizer, model = lm
    generated = hf.result("greedy-gen", [{"custom_id": "g", "prompt": "The sea", "max_tokens": 4,
                                          "ignore_eos": True, "logprobs": 0}])[0]
    ids = tokenizer("The sea")["input_ids"]
    request = {"custom_id": "g", "prompt_token_ids": ids, "continuations": [generated["logprobs"]["token_ids"]]}
    score = hf.result("greedy-score", [request])[0]["scores"][0]
    assert score["greedy"] is True and score["tokens"] == 4
    assert abs(score["logprob"] - sum(generated["logprobs"]["token_logprobs"])) <= TOLERANCE


def test_scores_do_not_depend_on_the_batch(hf: Engine) -> None:
    requests = [scoring_request(i, context, conts) for i, (context, conts) in enumerate(CASES)]
    together = [r["scores"] for r in hf.result("score-all", requests, timeout=120)]
    for i, request in enumerate(requests[-4:], start=len(requests) - 4):
        alone = hf.result(f"score-alone-{i}", [request])[0]["scores"]
        for a, b in zip(alone, together[i], strict=True):
            assert abs(a["logprob"] - b["logprob"]) <= TOLERANCE and a["greedy"] == b["greedy"]


def test_prompt_logprobs_for_perplexity(hf: Engine, lm: tuple[Any, Any]) -> None:
    tokenizer, model = lm
    text = "Once upon a time there was a small model"
    ids = tokenizer(text)["input_ids"]
    requests = [{"custom_id": "text", "prompt": text, "max_tokens": 0, "prompt_logprobs": 3},
                {"custom_id": "ids", "prompt_token_ids": ids, "max_tokens": 0, "prompt_logprobs": 0},
                {"custom_id": "one", "prompt_token_ids": [7], "max_tokens": 0, "prompt_logprobs": 2}]
    text_result, ids_result, one = hf.result("ppl", requests)
    expected = log_softmax(model, ids)
    for result, k in ((text_result, 3), (ids_result, 0)):
        assert (result["text"], result["completion_tokens"], result["finish_reason"]) == ("", 0, "length")
        assert result["prompt_tokens"] == len(ids) and "logprobs" not in result
        lp = result["prompt_logprobs"]
        assert lp["token_ids"] == ids
        assert lp["tokens"] == [tokenizer.decode([t]) for t in ids] and lp["tokens"][0] == "<s>"
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        for i in range(1, len(ids)):
            assert abs(lp["token_logprobs"][i] - float(expected[i - 1, ids[i]])) <= TOLERANCE
            top = lp["top_logprobs"][i]
            assert len(top) == k
            best = expected[i - 1].topk(k) if k else None
            for j, alternative in enumerate(top):
                assert alternative["token_id"] == int(best.indices[j])
                assert abs(alternative["logprob"] - float(best.values[j])) <= TOLERANCE
                assert alternative["token"] == tokenizer.decode([alternative["token_id"]])
    assert one["prompt_logprobs"] == {"token_ids": [7], "tokens": [tokenizer.decode([7])], "token_logprobs": [None],
                                      "top_logprobs": [None]}


def test_logprobs_of_generated_tokens(hf: Engine, lm: tuple[Any, Any]) -> None:
    tokenizer, model = lm
    prompt = "Write a short poem about the sea"
    requests = [{"custom_id": "greedy", "prompt": prompt, "max_tokens": 6, "ignore_eos": True, "logprobs": 2,
                 "prompt_logprobs": 1},
                {"custom_id": "hot", "prompt": prompt, "max_tokens": 6, "ignore_eos": True, "logprobs": 0,
                 "temperature": 3.0, "seed": 5},
                {"custom_id": "plain", "prompt": prompt, "max_tokens": 6, "ignore_eos": True}]
    greedy, hot, plain = hf.result("gen-logprobs", requests)
    assert greedy["text"] == plain["text"]  # asking for logprobs changes nothing else
    assert "logprobs" not in plain and "prompt_logprobs" not in plain and "prompt_logprobs" not in hot
    prompt_ids = tokenizer(prompt)["input_ids"]
    for result, k in ((greedy, 2), (hot, 0)):
        lp = result["logprobs"]
        assert len(lp["token_ids"]) == result["completion_tokens"] == 6
        assert tokenizer.decode(lp["token_ids"], skip_special_tokens=True) == result["text"]
        assert lp["tokens"] == [tokenizer.decode([t]) for t in lp["token_ids"]]
        # The log-softmax of the raw logits (not of temperature-scaled scores), teacher-forced.
        expected = log_softmax(model, prompt_ids + lp["token_ids"])
        for i, token in enumerate(lp["token_ids"]):
            assert abs(lp["token_logprobs"][i] - float(expected[len(prompt_ids) - 1 + i, token])) <= TOLERANCE
            assert len(lp["top_logprobs"][i]) == k
    # Greedy: every chosen token is the most likely one, and the alternatives come best first.
    lp = greedy["logprobs"]
    for i, top in enumerate(lp["top_logprobs"]):
        assert top[0]["token_id"] == lp["token_ids"][i]
        assert abs(top[0]["logprob"] - lp["token_logprobs"][i]) <= TOLERANCE
        assert top[0]["logprob"] >= top[1]["logprob"]
    assert greedy["prompt_logprobs"]["token_ids"] == prompt_ids
    assert len(greedy["prompt_logprobs"]["top_logprobs"][1]) == 1


def test_token_id_prompts_generate_like_their_text(hf: Engine, lm: tuple[Any, Any]) -> None:
    tokenizer, _ = lm
    prompt = "The quick brown fox"
    ids = tokenizer(prompt)["input_ids"]
    text, by_ids = hf.result("ids", [{"custom_id": "t", "prompt": prompt, "max_tokens": 6, "ignore_eos": True},
                                     {"custom_id": "i", "prompt_token_ids": ids, "max_tokens": 6, "ignore_eos": True}])
    assert by_ids["error"] is None and by_ids["text"] == text["text"] and by_ids["prompt_tokens"] == len(ids)
    # Fed as they are: without a BOS, the same words are another prompt.
    bare = hf.result("ids-bare", [{"custom_id": "b", "prompt_token_ids": ids[1:], "max_tokens": 0}])[0]
    assert bare["prompt_tokens"] == len(ids) - 1


def test_requests_that_cannot_run_fail_alone(hf: Engine, lm: tuple[Any, Any]) -> None:
    tokenizer, _ = lm
    vocab = len(tokenizer)
    requests = [{"custom_id": "ok", "prompt": "ctx", "continuations": [" a"]},
                {"custom_id": "vocab-ids", "prompt_token_ids": [1, vocab + 5]},
                {"custom_id": "vocab-cont", "prompt": "ctx", "continuations": [[vocab]]},
                {"custom_id": "long", "prompt": "sea " * 300, "continuations": [" a"]},
                {"custom_id": "rules", "prompt": "x", "continuations": [" a"], "max_tokens": 3},
                {"custom_id": "ok2", "prompt_token_ids": [1, 2, 3], "max_tokens": 0, "prompt_logprobs": 0}]
    results = {r["custom_id"]: r for r in hf.result("bad", requests)}
    assert results["ok"]["error"] is None and results["ok2"]["error"] is None
    message = {k: r["error"]["message"] for k, r in results.items() if r["error"]}
    assert message["vocab-ids"] == f"request vocab-ids: token id {vocab + 5} is not in the model's vocabulary " \
                                   f"(ids 0 to {vocab - 1})"
    assert message["vocab-cont"].startswith(f"request vocab-cont: token id {vocab} is not in")
    assert message["long"].startswith("request long: context and continuation too long:")
    assert message["rules"] == "request rules: continuations score, they do not generate: leave max_tokens out or 0"
    assert all(r["error"]["code"] == "bad_request" for r in results.values() if r["error"])


def test_shared_prefixes_are_grouped() -> None:
    """The engine's grouping of sorted contexts: a long shared preamble is computed once."""
    sys.path.insert(0, str(ENGINES))
    from hf_engine import MIN_SHARED_PREFIX, micro_batches, prefix_groups

    shot = list(range(100, 100 + 60))
    five_shot = [shot + [1, 2, 3], shot + [1, 2, 4, 5], shot + [7], shot + [8, 1]]
    contexts = sorted(five_shot + [list(range(40)) + [1], list(range(40)) + [2], [9, 9], shot[:40] + [3]])
    prefixes, group = prefix_groups(contexts)
    by_context = {tuple(c): g for c, g in zip(contexts, group)}
    # The five-shot rows share all 60 preamble tokens, not just the 40 they share with a neighbour.
    (shot_group,) = {by_context[tuple(c)] for c in five_shot}
    assert prefixes[shot_group] == shot
    assert by_context[tuple(shot[:40] + [3])] == -1 and by_context[(9, 9)] == -1
    assert prefixes[by_context[tuple(range(40)) + (1,)]] == list(range(40))
    assert all(len(p) >= MIN_SHARED_PREFIX for p in prefixes)
    # A prefix always leaves a token of each of its contexts to the next pass.
    assert prefix_groups([shot, shot + [1]]) == ([shot[:-1]], [0, 0])
    assert prefix_groups([]) == ([], []) and prefix_groups([shot]) == ([], [-1])
    # Micro-batches keep prefix groups whole (or cut in even parts) and apart from rows that share
    # no prefix: every row once, every micro-batch within its budget.
    from hf_engine import ScoreItem, prefix_groups as groups, scoring_batches

    items = [ScoreItem(i, None, c, [[1], [2]]) for i, c in enumerate(
        [shot + [i, 5] for i in range(9)] + [list(range(40)) + [i] for i in range(3)] + [[7] * n for n in (3, 90, 9)])]
    batches = scoring_batches(items, lambda rows, widest: rows * widest[0] <= 4 * 62)
    assert sorted(item.pos for batch in batches for item in batch) == list(range(len(items)))
    for batch in batches:
        assert len(batch) * max(len(item.context) for item in batch) <= 4 * 62 or len(batch) == 1
        shared = groups([item.context for item in batch])[1]
        assert all(g >= 0 for g in shared) or all(g < 0 for g in shared), [item.context for item in batch]
    assert [len(b) for b in batches if len(b[0].context) == 62] == [3, 3, 3]  # 9 rows of 4 at most: 3 even parts
    assert micro_batches([3, 1, 4, 1, 5, 9, 2], lambda n: (n,), lambda rows, widest: rows * widest[0] <= 8) == \
        [[3, 1], [4, 1], [5], [9], [2]]


def test_passes_in_small_chunks(lm: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The score and logprobs passes, in this process, with a logits budget so small that scoring
    gathers three targets at a time and logprobs run two columns per forward pass over the cache."""
    sys.path.insert(0, str(ENGINES))
    import hf_engine

    tokenizer, model = lm
    monkeypatch.setattr(hf_engine, "LOGIT_ELEMENTS", 12 * model.config.vocab_size)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    contexts = [encode(FEW_SHOT + "Q: 1?\nA:"), encode(FEW_SHOT + "Q: 22?\nA:"), encode("Hello there")]
    conts = [[encode(" 1 and"), [5]], [encode(" twenty two")], [[7, 8, 9], encode(" x")]]
    items = [hf_engine.ScoreItem(i, None, c, k) for i, (c, k) in enumerate(zip(contexts, conts, strict=True))]
    job = hf_engine.score_job(items)
    assert job["group"][:2] == [0, 0] and job["group"][2] == -1  # the five-shot pair shares its preamble
    sums, greedy = hf_engine.run_job(model, "score", job, 1, None)
    expected = [direct_score(model, c, k) for c, row in zip(contexts, conts, strict=True) for k in row]
    assert [g for _, g in expected] == greedy
    assert max(abs(s - e) for s, (e, _) in zip(sums, expected, strict=True)) <= TOLERANCE
    start, k = [1, 30, 2], [2, 0, 5]
    out = hf_engine.run_job(model, "logprobs", {"rows": contexts, "start": start, "k": k, "chunk": 2}, 1, None)
    for row, first, top, (lps, top_ids, top_lps) in zip(contexts, start, k, out, strict=True):
        logprobs = log_softmax(model, row)
        assert len(lps) == len(row) - first
        for j, token in enumerate(row[first:], start=first):
            assert abs(lps[j - first] - float(logprobs[j - 1, token])) <= TOLERANCE
            assert top_ids[j - first] == logprobs[j - 1].topk(top).indices.tolist() if top else top_ids[j - first] == []
            assert len(top_lps[j - first]) == top
