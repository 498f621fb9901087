"""The peers compass users pick instead, on the same workload, in the same run:

- Celery 5 on a real Redis (redis-server started here on a free port, a `celery worker` process
  with the prefork pool and N child processes, started and stopped here);
- Ray tasks (ray.init here with num_cpus=N: N worker processes).

Workload, as on the compass side: a producer keeps a window of tasks in flight; each task carries a
payload of 1 KiB, 64 KiB or 1 MiB and returns it (no-op), or sleeps 20 ms first (the fixed-latency
"GPU"); the producer collects every result. Throughput is counted over a measuring window after a
warm-up; latency is submit-to-result, one task at a time on an idle cluster.

Usage: python peers.py --out FILE [--quick] [--only celery,ray]
"""

import argparse
import collections
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = [1024, 65536, 1 << 20]


def log(msg):
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


def payload(size):
    """A JSON array of requests of exactly `size` bytes (the shape does not matter for an echo)."""
    head, tail = b'[{"custom_id":"r0","prompt":"', b'"}]'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def summary(lat_s):
    if not lat_s:
        return {"count": 0}
    v = sorted(x * 1e6 for x in lat_s)

    def pct(p):
        return int(v[min(len(v) - 1, int(round(p / 100.0 * len(v) + 0.5)) - 1)])

    return {"count": len(v), "p50_us": pct(50), "p90_us": pct(90), "p99_us": pct(99), "p999_us": pct(99.9),
            "max_us": int(v[-1]), "mean_us": round(sum(v) / len(v), 1)}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def machine_busy():
    with open("/proc/stat") as f:
        v = [float(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def closed_loop(submit, wait_one, window, warmup, duration):
    """Keeps `window` tasks in flight; returns (completed in the measuring window, latencies).
    The measuring window opens after `warmup` seconds and once `window` results have come back
    (a slow peer's pipeline is full by then), and lasts `duration` seconds."""
    inflight = collections.deque()
    t0 = time.perf_counter()
    for _ in range(window):
        inflight.append((submit(), time.perf_counter()))
    done, lat, received = 0, [], 0
    start = end = None
    while inflight:
        handle, sent = inflight.popleft()
        wait_one(handle)
        t = time.perf_counter()
        received += 1
        if start is None and received >= window and t >= t0 + warmup:
            start, end = t, t + duration
        elif start is not None and t < end:
            done += 1
            lat.append(t - sent)
        if start is None or t < end:
            inflight.append((submit(), t))
    return done, lat


def ping_pong(submit, wait_one, count, warmup):
    lat = []
    for i in range(count + warmup):
        t = time.perf_counter()
        wait_one(submit())
        if i >= warmup:
            lat.append(time.perf_counter() - t)
    return lat


def run_cells(name, make_submit, wait_one, workers, args, work_cells):
    """The no-op cells (payload sizes), idle latency, and the 20 ms cells for this concurrency."""
    out = {"throughput": [], "work20": []}
    warm, dur = (0.3, 1.0) if args.quick else (1.0, 3.0)
    if workers == 4:
        for size in SIZES:
            p = payload(size)
            b0 = machine_busy()
            n, lat = closed_loop(make_submit(p, 0), wait_one, 64, warm, dur)
            b1 = machine_busy()
            rate = n / dur
            out["throughput"].append({"size": size, "workers": workers, "window": 64, "batches_per_s": round(rate),
                                      "mb_per_s": round(rate * size / 1e6, 1), "latency": summary(lat),
                                      "machine_busy_percent": round((b1[0] - b0[0]) / max(1e-3, b1[1] - b0[1]) * 100, 1)})
            log(f"{name} {size} B x{workers}: {rate:.0f} tasks/s")
        lat = ping_pong(make_submit(payload(1024), 0), wait_one, 200 if args.quick else 1000, 50)
        out["latency_idle"] = summary(lat)
        log(f"{name} idle latency: {out['latency_idle']}")
    for w in work_cells:
        if w != workers:
            continue
        n, lat = closed_loop(make_submit(payload(1024), 20), wait_one, 4 * w, warm, dur)
        rate = n / dur
        ideal = w / 0.020
        out["work20"].append({"workers": w, "window": 4 * w, "batches_per_s": round(rate), "ideal_batches_per_s": ideal,
                              "efficiency": round(rate / ideal, 4), "latency": summary(lat)})
        log(f"{name} 20 ms x{w}: {rate:.0f}/{ideal:.0f} tasks/s")
    return out


def merge(into, part):
    for k, v in part.items():
        if isinstance(v, list):
            into.setdefault(k, []).extend(v)
        else:
            into[k] = v


# --------------------------------------------------------------------------------------------- Celery

def celery_bench(args):
    import celery
    import redis as redis_py

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    # C_FORCE_ROOT: Celery refuses pickle under root without it (this machine runs everything as root).
    env = dict(os.environ, BENCH_REDIS=url, PYTHONPATH=HERE, C_FORCE_ROOT="1")
    procs = []
    result = {"version": celery.__version__, "redis_py": redis_py.__version__}
    try:
        rs = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(rs)
        r = redis_py.Redis.from_url(url)
        for _ in range(200):
            try:
                r.ping()
                break
            except redis_py.exceptions.ConnectionError:
                time.sleep(0.05)
        result["redis_server"] = r.info()["redis_version"]
        sys.path.insert(0, HERE)
        os.environ["BENCH_REDIS"] = url
        from celery_app import app, echo  # noqa: E402

        work_cells = [4] if args.quick else [4, 16]
        for workers in sorted(set([4] + work_cells)):
            w = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", sys.executable, "-m", "celery", "-A", "celery_app", "worker",
                                  "--pool", "prefork", "--concurrency", str(workers), "--loglevel", "WARNING",
                                  "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q", "bench"],
                                 cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=open(f"{args.dir}/celery-{workers}.err", "w"),
                                 start_new_session=True)
            procs.append(w)
            t = time.time()
            echo.apply_async((b"[]", 0)).get(timeout=120)  # ready once a task round-trips
            for _ in range(2 * workers):  # warm every child process
                echo.apply_async((b"[]", 0)).get(timeout=60)
            log(f"celery worker x{workers} ready in {time.time() - t:.1f} s")

            def make_submit(p, work_ms):
                return lambda: echo.apply_async((p, work_ms))

            def wait_one(res):
                res.get(timeout=120)
                res.forget()

            merge(result, run_cells("celery", make_submit, wait_one, workers, args, work_cells))
            result.setdefault("workers", []).append(workers)
            os.killpg(w.pid, signal.SIGTERM)
            try:
                w.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
            r.flushall()
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    return result


# --------------------------------------------------------------------------------------------- Ray

def ray_bench(args):
    import ray

    result = {"version": ray.__version__}

    @ray.remote
    def echo(p, work_ms=0):
        if work_ms:
            time.sleep(work_ms / 1000.0)
        return p

    work_cells = [4] if args.quick else [4, 16]
    for workers in sorted(set([4] + work_cells)):
        t = time.time()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="warning",
                 object_store_memory=1 << 30, _temp_dir=f"{args.dir}/ray")
        try:
            ray.get([echo.remote(b"[]") for _ in range(4 * workers)])  # start and warm every worker process
            log(f"ray x{workers} ready in {time.time() - t:.1f} s")

            def make_submit(p, work_ms):
                # Each task ships its own payload (Ray puts large arguments in its object store per call).
                return lambda: echo.remote(p, work_ms)

            def wait_one(ref):
                ray.get(ref, timeout=120)

            merge(result, run_cells("ray", make_submit, wait_one, workers, args, work_cells))
            result.setdefault("workers", []).append(workers)
        finally:
            ray.shutdown()
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="celery,ray")
    ap.add_argument("--dir", default=f"/tmp/compass-bench-peers-{os.getpid()}")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    out = {"python": platform.python_version()}
    for name, fn in [("celery", celery_bench), ("ray", ray_bench)]:
        if name not in args.only.split(","):
            continue
        t = time.time()
        try:
            out[name] = fn(args)
        except Exception as e:  # keep the other peer's figures
            log(f"{name} FAILED: {e!r}")
            out[name] = {"error": repr(e)}
        out[name]["seconds"] = round(time.time() - t, 1)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
