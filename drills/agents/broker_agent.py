"""The AMQP side of the broker drill; runs ON a node (python3 + Debian's python3-pika).

AMQP listens on mesh addresses only, which the host cannot reach, so drills/broker.py
copies this file to a node over SSH and runs it there with one JSON line of settings (the
password among them) on stdin; it answers with JSON lines on stdout:

  {"event": "progress", "confirmed": N, "t": seconds}    every `progress_every` confirms
  {"event": "error", "at": id, "t": seconds, "error": "..."}  a publish that failed
  {"event": "connected", "host": "node-x", "t": seconds}
  {"event": "published", ...}  {"event": "consumed", ...}  the results of each phase

Publisher: publishes messages 0..N-1 with publisher confirms through the failover list (pika
tries the URLs in order, as Celery's failover does), one at a time; a message counts as
confirmed only when the broker acked it. A publish that fails (connection lost, nack, timeout)
is retried on a fresh connection, so a message may be stored twice, never confirmed and lost.
Consumer: drains the queue, acknowledging, and reports which ids arrived.
"""

from __future__ import annotations

import json
import sys
import time

import pika
from pika.exceptions import AMQPError


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def connect(urls: list[str], retry_seconds: float) -> tuple[pika.BlockingConnection, str]:
    deadline = time.monotonic() + retry_seconds
    params = []
    for url in urls:
        p = pika.URLParameters(url)
        p.connection_attempts = 1
        p.socket_timeout = 2
        p.blocked_connection_timeout = 10
        p.heartbeat = 10
        params.append(p)
    while True:
        try:
            conn = pika.BlockingConnection(params)
            impl = getattr(conn, "_impl", None)
            return conn, getattr(getattr(impl, "params", None), "host", "?")
        except AMQPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def open_channel(urls: list[str], queue: str, retry_seconds: float):
    conn, host = connect(urls, retry_seconds)
    channel = conn.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    return conn, channel, host


def close(conn) -> None:
    try:
        if conn is not None and conn.is_open:
            conn.close()
    except Exception:
        pass


def publish(cfg: dict) -> dict:
    urls, queue, total = cfg["urls"], cfg["queue"], int(cfg["messages"])
    started = time.monotonic()
    confirmed = 0
    errors = 0
    reconnects = 0
    last_confirm = started
    longest_gap = 0.0
    gap_start = 0.0
    conn = channel = None
    hosts = []
    message = 0
    while message < total:
        try:
            if channel is None:
                conn, channel, host = open_channel(urls, queue, cfg["retry_seconds"])
                hosts.append(host)
                emit(event="connected", host=host, t=round(time.monotonic() - started, 3))
            channel.basic_publish(
                exchange="",
                routing_key=queue,
                body=str(message).encode(),
                properties=pika.BasicProperties(delivery_mode=2, message_id=str(message)),
                mandatory=True,
            )
        except (AMQPError, OSError) as exc:
            errors += 1
            emit(event="error", at=message, t=round(time.monotonic() - started, 3),
                 error=f"{type(exc).__name__}: {exc}"[:300])
            close(conn)
            conn = channel = None
            reconnects += 1
            if time.monotonic() - last_confirm > cfg["retry_seconds"]:
                break
            time.sleep(0.2)
            continue
        now = time.monotonic()
        if now - last_confirm > longest_gap:
            longest_gap = now - last_confirm
            gap_start = last_confirm - started
        last_confirm = now
        confirmed += 1
        message += 1
        if confirmed % cfg["progress_every"] == 0:
            emit(event="progress", confirmed=confirmed, t=round(now - started, 3))
    close(conn)
    seconds = time.monotonic() - started
    return {
        "event": "published",
        "confirmed": confirmed,
        "attempted": total,
        "errors": errors,
        "reconnects": reconnects,
        "hosts": hosts,
        "seconds": round(seconds, 3),
        "rate_per_s": round(confirmed / seconds, 1) if seconds else 0.0,
        "stall_seconds": round(longest_gap, 3),
        "stall_began_at": round(gap_start, 3),
    }


def consume(cfg: dict) -> dict:
    urls, queue = cfg["urls"], cfg["queue"]
    started = time.monotonic()
    conn, host = connect(urls, cfg["retry_seconds"])
    channel = conn.channel()
    channel.basic_qos(prefetch_count=1000)
    declared = channel.queue_declare(queue, passive=True)
    ready = declared.method.message_count
    seen: set[int] = set()
    received = 0
    unacked = 0
    for method, _properties, body in channel.consume(queue, inactivity_timeout=cfg["idle_seconds"]):
        if method is None:
            break
        seen.add(int(body))
        received += 1
        unacked += 1
        if unacked >= 500:
            channel.basic_ack(method.delivery_tag, multiple=True)
            unacked = 0
        last_tag = method.delivery_tag
    if unacked:
        channel.basic_ack(last_tag, multiple=True)
    channel.cancel()
    total = int(cfg["messages"])
    confirmed_upto = int(cfg.get("confirmed", total))
    missing = [i for i in range(confirmed_upto) if i not in seen]
    if cfg.get("delete", True):
        channel.queue_delete(queue)
    close(conn)
    return {
        "event": "consumed",
        "host": host,
        "ready_before": ready,
        "received": received,
        "unique": len(seen),
        "duplicates": received - len(seen),
        "lost": len(missing),
        "lost_ids": missing[:20],
        "seconds": round(time.monotonic() - started, 3),
    }


def main(cfg: dict) -> None:
    if cfg["phase"] == "publish":
        emit(**publish(cfg))
    elif cfg["phase"] == "consume":
        emit(**consume(cfg))
    else:
        sys.exit(f"unknown phase {cfg['phase']!r}")


if __name__ == "__main__":
    main(json.loads(sys.stdin.readline()))
