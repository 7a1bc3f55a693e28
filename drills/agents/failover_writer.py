"""The failover drill's writer; runs ON a node (Debian's python3 + python3-psycopg2).

    AIRFLOW_HA_DB_PASSWORD=... python3 failover_writer.py RUN_ID LOG [INTERVAL]

Commits one row (RUN_ID, seq) every INTERVAL seconds (default 0.1) through the node's HAProxy
(127.0.0.1:5000 -> the primary), autocommit, reconnecting after any error. Each attempt gets a
new seq and one log line: `ok SEQ STARTED DONE` once the commit was acknowledged, `err SEQ
STARTED DONE MESSAGE` otherwise (such a row may or may not exist); times are Unix seconds.
Stops on SIGTERM.
AIRFLOW_HA_DB_HOST / AIRFLOW_HA_DB_PORT point it elsewhere (the partition drill: a node's own
PostgreSQL on its mesh address, port 5432).
No statement_timeout on purpose: cancelling a commit that waits for the synchronous standby
reports success for a commit that may not be replicated, which would falsify the drill.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

import psycopg2

TABLE = "airflow_ha_drill.writes"


def main() -> int:
    run_id, log_path = sys.argv[1], sys.argv[2]
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    conn = None
    seq = 0
    with open(log_path, "a", buffering=1) as log:
        while not stop:
            started = time.time()
            seq += 1
            try:
                if conn is None:
                    conn = psycopg2.connect(
                        host=os.environ.get("AIRFLOW_HA_DB_HOST", "127.0.0.1"),
                        port=int(os.environ.get("AIRFLOW_HA_DB_PORT", "5000")),
                        dbname="airflow",
                        user="airflow",
                        password=os.environ["AIRFLOW_HA_DB_PASSWORD"],
                        connect_timeout=2,
                        keepalives=1,
                        keepalives_idle=2,
                        keepalives_interval=1,
                        keepalives_count=2,
                    )
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {TABLE} (run, seq) VALUES (%s, %s)", (run_id, seq))
                log.write(f"ok {seq} {started:.3f} {time.time():.3f}\n")
            except Exception as exc:  # any failure: log it, reconnect, go on
                message = " ".join(str(exc).split())[:160]
                log.write(
                    f"err {seq} {started:.3f} {time.time():.3f} {type(exc).__name__}: {message}\n"
                )
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
            time.sleep(max(0.0, interval - (time.time() - started)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
