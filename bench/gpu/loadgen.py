"""A load generator for OpenAI-compatible servers: N concurrent clients, each a keep-alive HTTP/1.1
connection that posts one /v1/completions request at a time (the next prompt of a shared list) and
waits for its answer, as lm-evaluation-harness's local-completions or OpenCompass's OpenAISDK
clients do. Standard library only (asyncio streams), one process: it drives vLLM's own server
(`vllm serve`) and compass's gateway the same way, so the two are compared with the same clients.

    python3 loadgen.py run URL PROMPTS.jsonl REPORT.json [--clients 256] [--model NAME] [--out RESULTS.jsonl]
    python3 loadgen.py null PORT      # a server that answers every completion at once (see below)

Is the load generator itself the limit? `null` serves a canned completion answer with no work
behind it; `run` against it measures how many requests per second these clients can make on this
machine at all. A run against a real server that reaches a small fraction of that rate is not held
back by its clients (bench/gpu/stream.sh runs both and reports the ratio).

Each request: {"model", "prompt", "max_tokens", "temperature", "ignore_eos"} from the prompt line
(compass JSONL, bench/gpu/prompts.py). The report: requests, errors, seconds, completion tokens
(from each answer's usage) per second, requests per second, latency p50/p90/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlparse


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response (Content-Length or chunked body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return status, bytes(body)
    return status, await reader.readexactly(int(headers.get("content-length", "0")))


async def client(host: str, port: int, path: str, model: str, prompts: list[dict], next_index: list[int],
                 latencies: list[float], outcomes: list[dict], results: list[dict | None]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while next_index[0] < len(prompts):
            i = next_index[0]
            next_index[0] += 1
            p = prompts[i]
            body = json.dumps({"model": model, "prompt": p["prompt"], "max_tokens": p.get("max_tokens", 64),
                               "temperature": p.get("temperature", 0.0),
                               "ignore_eos": p.get("ignore_eos", False)}).encode()
            request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            started = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status, answer = await read_response(reader)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                outcomes.append({"error": status, "body": answer[:300].decode(errors="replace")})
                continue
            data = json.loads(answer)
            tokens = int(data.get("usage", {}).get("completion_tokens", 0))
            outcomes.append({"tokens": tokens})
            results[i] = {"custom_id": p.get("custom_id", str(i)), "text": data["choices"][0].get("text", ""),
                          "completion_tokens": tokens}
    finally:
        writer.close()


async def run(url: str, prompts: list[dict], clients: int, model: str) -> tuple[dict, list[dict | None]]:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    path = parsed.path.rstrip("/") + "/completions"
    next_index, latencies, outcomes = [0], [], []
    results: list[dict | None] = [None] * len(prompts)
    started = time.perf_counter()
    await asyncio.gather(*(client(host, port, path, model, prompts, next_index, latencies, outcomes, results)
                           for _ in range(min(clients, len(prompts)))))
    seconds = time.perf_counter() - started
    latencies.sort()
    errors = [o for o in outcomes if "error" in o]
    tokens = sum(o.get("tokens", 0) for o in outcomes)

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1) if latencies else 0.0

    report = {"url": url, "clients": clients, "requests": len(outcomes), "errors": len(errors),
              "first_errors": errors[:3], "seconds": round(seconds, 3), "completion_tokens": tokens,
              "completion_tokens_per_second": round(tokens / seconds, 1),
              "requests_per_second": round(len(outcomes) / seconds, 1),
              "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
                             "mean": round(sum(latencies) / len(latencies) * 1000, 1) if latencies else 0.0}}
    return report, results


NULL_ANSWER = json.dumps({"id": "cmpl-null", "object": "text_completion", "model": "null",
                          "choices": [{"index": 0, "text": " x" * 64, "finish_reason": "length"}],
                          "usage": {"prompt_tokens": 40, "completion_tokens": 64, "total_tokens": 104}}).encode()


async def null_server(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(NULL_ANSWER)).encode() + b"\r\n\r\n" + NULL_ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print(f"null server on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("url")
    r.add_argument("prompts")
    r.add_argument("report")
    r.add_argument("--clients", type=int, default=256)
    r.add_argument("--model", default="model")
    r.add_argument("--out")
    r.add_argument("--label", default="")
    n = sub.add_parser("null")
    n.add_argument("port", type=int)
    a = ap.parse_args()
    if a.command == "null":
        asyncio.run(null_server(a.port))
        return
    prompts = [json.loads(line) for line in open(a.prompts) if line.strip()]
    report, results = asyncio.run(run(a.url, prompts, a.clients, a.model))
    report["label"] = a.label
    json.dump(report, open(a.report, "w"), indent=1)
    if a.out:
        with open(a.out, "w") as f:
            for line in results:
                if line is not None:
                    f.write(json.dumps(line) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "first_errors"}))
    sys.exit(1 if report["errors"] else 0)


if __name__ == "__main__":
    main()
