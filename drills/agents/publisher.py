"""The drills' steady publisher; runs ON a node next to drills/agents/broker_agent.py.

    AIRFLOW_HA_DRILL_SETTINGS='{"urls": [...], "queue": "q", "interval": 0.1}' \
        python3 publisher.py LOG

Publishes message ids 0, 1, 2, ... one at a time, every `interval` seconds, with publisher
confirms into a quorum queue, through the failover list of AMQP URLs (broker_agent.open_channel,
the broker drill's own connection code: pika tries the URLs in order, as Celery does). A
message confirmed by the broker gets the log line `ok ID UNIX_TIME`; a failed attempt
`err ID UNIX_TIME MESSAGE`, after which it reconnects and retries the same id. So the ids
0..N-1 are exactly the N confirmed messages (a retried one may be stored twice, never confirmed
and lost), which is what broker_agent's consume phase checks. Stops on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pika  # Debian's python3-pika, installed by drills/broker.py prepare_runner
from broker_agent import close, open_channel
from pika.exceptions import AMQPError


def main() -> int:
    cfg = json.loads(os.environ["AIRFLOW_HA_DRILL_SETTINGS"])
    interval = float(cfg.get("interval", 0.1))
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    conn = channel = None
    message = 0
    with open(sys.argv[1], "a", buffering=1) as log:
        while not stop:
            started = time.time()
            try:
                if channel is None:
                    conn, channel, _host = open_channel(cfg["urls"], cfg["queue"], 5)
                channel.basic_publish(
                    exchange="",
                    routing_key=cfg["queue"],
                    body=str(message).encode(),
                    properties=pika.BasicProperties(delivery_mode=2, message_id=str(message)),
                    mandatory=True,
                )
                log.write(f"ok {message} {time.time():.3f}\n")
                message += 1
            except (AMQPError, OSError) as exc:
                text = " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
                log.write(f"err {message} {time.time():.3f} {text}\n")
                close(conn)
                conn = channel = None
                time.sleep(0.2)
            time.sleep(max(0.0, interval - (time.time() - started)))
    close(conn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
