"""Database clients as Airflow's are, through the node's HAProxy :5000: no query timeout, and
the connect timeout of Airflow's URL (connect_timeout=10).

Half the threads reconnect for every query, half keep one session and query every 0.3 s
(reconnecting after an error). Runs until STOP_FILE exists (at most 600 s), then prints JSON:
each thread's seconds since its last completed round (a query or a failed attempt); a thread
that a failover left hanging shows a large figure. The password comes on stdin.
"""

import json
import os
import sys
import threading
import time

import psycopg2

STOP_FILE = "/run/airflow-ha-drill/db-clients.stop"
THREADS = 16
CONNECT_TIMEOUT_S = 10  # as components/database.py DB_CONNECT_TIMEOUT_S
password = sys.stdin.readline().strip()
last: dict[int, float] = {}


def connect():
    return psycopg2.connect(
        host="127.0.0.1",
        port=5000,
        user="airflow",
        password=password,
        dbname="airflow",
        connect_timeout=CONNECT_TIMEOUT_S,
    )


def short(i: int) -> None:
    while True:
        try:
            conn = connect()
            conn.cursor().execute("select 1")
            conn.close()
        except psycopg2.Error:
            time.sleep(0.05)
        last[i] = time.time()


def persistent(i: int) -> None:
    conn = None
    while True:
        try:
            conn = conn or connect()
            conn.cursor().execute("select 1")
            conn.commit()
            time.sleep(0.3)
        except psycopg2.Error:
            conn = None
            time.sleep(0.05)
        last[i] = time.time()


for i in range(THREADS):
    last[i] = time.time()
    threading.Thread(target=persistent if i % 2 else short, args=(i,), daemon=True).start()
deadline = time.time() + 600
while time.time() < deadline and not os.path.exists(STOP_FILE):
    time.sleep(0.5)
now = time.time()
print(json.dumps({"idle_s": {i: round(now - t, 1) for i, t in sorted(last.items())}}))
