"""The Celery side of the peer benchmark: one task that echoes its payload, optionally after a
fixed sleep (the same 20 ms "GPU" as compass's null workers). Broker and result backend: the Redis
server bench/peers.py starts on a free port (BENCH_REDIS)."""

import os
import time

from celery import Celery

app = Celery("compass_bench", broker=os.environ["BENCH_REDIS"], backend=os.environ["BENCH_REDIS"])
app.conf.update(
    # bytes in, bytes out, like compass's opaque payload frames (JSON would need base64 or str).
    task_serializer="pickle",
    result_serializer="pickle",
    accept_content=["pickle"],
    result_accept_content=["pickle"],
    task_default_queue="bench",
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # Everything else is Celery's default (prefork pool, prefetch multiplier 4, early ack).
)


@app.task(name="echo")
def echo(payload, work_ms=0):
    if work_ms:
        time.sleep(work_ms / 1000.0)
    return payload
