"""The drills' DAG trigger; runs ON a node (python3's standard library only).

    AIRFLOW_HA_DRILL_SETTINGS='{"apis": ["http://node-b:8080", ...], "user": "admin",
        "password": "...", "dag_id": "...", "prefix": "...", "interval": 5}' \
        python3 dag_trigger.py LOG

Every `interval` seconds it creates one run of the DAG through Airflow's REST API
(POST /api/v2/dags/{dag_id}/dagRuns), trying the api-servers in order (its own node's first).
A run the API acknowledged (HTTP 200, or 409 when an earlier attempt that timed out had created
it) gets `ok SEQ SENT ACKED RUN_ID API`; a run no api-server accepted `err SEQ SENT MESSAGE`.
Acknowledged runs must all end in success; the drills check that in the database.
A request gives up after `timeout` seconds (3: the API answers in milliseconds, and a dead
node's api-server must not hold the probe for long), and after a round that no api-server
accepted the next one starts after 1 s, not a whole interval: the probe measures when Airflow
can take a run again, not its own cadence. Stops on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

RETRY_AFTER_FAILURE_S = 1.0


def call(url: str, body: dict, token: str | None, timeout: float) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {"detail": exc.read()[:200].decode(errors="replace")}


def main() -> int:
    cfg = json.loads(os.environ["AIRFLOW_HA_DRILL_SETTINGS"])
    interval, timeout = float(cfg.get("interval", 5)), float(cfg.get("timeout", 3))
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    token: str | None = None
    seq = 0
    with open(sys.argv[1], "a", buffering=1) as log:
        while not stop:
            sent = time.time()
            seq += 1
            run_id = f"{cfg['prefix']}-{seq:05d}"
            errors = []
            for api in cfg["apis"]:
                try:
                    if token is None:
                        code, reply = call(
                            f"{api}/auth/token",
                            {"username": cfg["user"], "password": cfg["password"]},
                            None,
                            timeout,
                        )
                        if code not in (200, 201):
                            raise RuntimeError(f"token HTTP {code}")
                        token = reply["access_token"]
                    code, reply = call(
                        f"{api}/api/v2/dags/{cfg['dag_id']}/dagRuns",
                        {"dag_run_id": run_id, "logical_date": None},
                        token,
                        timeout,
                    )
                    if code == 401:
                        token = None
                    if code in (200, 409):
                        log.write(f"ok {seq} {sent:.3f} {time.time():.3f} {run_id} {api}\n")
                        break
                    raise RuntimeError(f"HTTP {code} {str(reply)[:100]}")
                except Exception as exc:  # any failure: try the next api-server
                    errors.append(f"{api}: {type(exc).__name__}: {exc}")
            else:
                text = " ".join("; ".join(errors).split())[:300]
                log.write(f"err {seq} {sent:.3f} {text}\n")
                time.sleep(RETRY_AFTER_FAILURE_S)
                continue
            time.sleep(max(0.0, interval - (time.time() - sent)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
