"""The load drill's burst; runs ON a node (python3's standard library only).

    AIRFLOW_HA_DRILL_SETTINGS='{"api": "http://node-a:8080", "user": "admin", "password": "...",
        "dags": {"airflow_ha_burst": 5, "example_bash_operator": 1}, "prefix": "...",
        "timeout": 900}' python3 burst.py LOG

Creates every run at once (one thread per run, all released together) through Airflow's REST
API, then polls until each run has ended or `timeout` has passed, and writes one JSON document
to LOG: when the burst was sent and acknowledged, every run's state, start and end, and every
task instance's state, try number, hostname, start and end. A task instance that failed without
ever running shows no hostname (the worker never reached PATCH .../run). Retries the API on
errors (a restarting api-server answers nothing for a few seconds).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

TERMINAL = ("success", "failed")


class Api:
    def __init__(self, base: str, user: str, password: str) -> None:
        self.base, self.user, self.password = base, user, password
        self.token: str | None = None
        self.lock = threading.Lock()

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 30) -> dict:
        for attempt in range(30):
            try:
                return self._call(method, path, body, timeout)
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    self.token = None
                elif exc.code == 409 and method == "POST":
                    return {"conflict": True}  # an earlier attempt that timed out created it
                elif exc.code < 500:
                    raise
            except (OSError, ValueError):
                pass
            time.sleep(min(2.0, 0.2 * (attempt + 1)))
        raise RuntimeError(f"{method} {path}: no answer after 30 attempts")

    def _call(self, method: str, path: str, body: dict | None, timeout: float) -> dict:
        with self.lock:
            if self.token is None:
                request = urllib.request.Request(
                    f"{self.base}/auth/token",
                    json.dumps({"username": self.user, "password": self.password}).encode(),
                    {"Content-Type": "application/json"},
                    method="POST",
                )
                with urllib.request.urlopen(request, timeout=timeout) as reply:
                    self.token = json.loads(reply.read())["access_token"]
            token = self.token
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            text = reply.read()
            return json.loads(text) if text else {}


def trigger(api: Api, dag_id: str, run_id: str, start: threading.Event, out: dict) -> None:
    start.wait()
    sent = time.time()
    try:
        body = {"dag_run_id": run_id, "logical_date": None}
        api.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)
        out[run_id] = {"dag_id": dag_id, "sent": sent, "acked": time.time()}
    except Exception as exc:  # recorded: a run the API never acknowledged
        out[run_id] = {"dag_id": dag_id, "sent": sent, "error": f"{type(exc).__name__}: {exc}"}


def task_instances(api: Api, dag_id: str, run_id: str) -> list[dict]:
    quoted = urllib.parse.quote(run_id, safe="")
    reply = api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances?limit=1000")
    keep = ("task_id", "map_index", "state", "try_number", "hostname", "start_date", "end_date")
    return [{k: ti.get(k) for k in keep} for ti in reply.get("task_instances", [])]


def main() -> int:
    cfg = json.loads(os.environ["AIRFLOW_HA_DRILL_SETTINGS"])
    api = Api(cfg["api"], cfg["user"], cfg["password"])
    for dag_id in cfg["dags"]:
        api.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
    runs: dict[str, dict] = {}
    start = threading.Event()
    threads = []
    for dag_id, count in cfg["dags"].items():
        for index in range(count):
            run_id = f"{cfg['prefix']}-{dag_id}-{index:03d}"
            thread = threading.Thread(target=trigger, args=(api, dag_id, run_id, start, runs))
            thread.start()
            threads.append(thread)
    time.sleep(0.5)  # every thread waits at the gate
    began = time.time()
    start.set()
    for thread in threads:
        thread.join()
    deadline = began + float(cfg.get("timeout", 900))
    pending = {rid for rid, run in runs.items() if "acked" in run}
    while pending and time.time() < deadline:
        time.sleep(3)
        for run_id in sorted(pending):
            run = runs[run_id]
            quoted = urllib.parse.quote(run_id, safe="")
            try:
                reply = api.call("GET", f"/api/v2/dags/{run['dag_id']}/dagRuns/{quoted}")
            except RuntimeError:
                continue
            if reply.get("state") in TERMINAL:
                run.update(state=reply["state"], start=reply.get("start_date"),
                           end=reply.get("end_date"))
                pending.discard(run_id)
    for run_id, run in runs.items():
        run.setdefault("state", "unfinished" if "acked" in run else "not acknowledged")
        if "acked" in run:
            run["task_instances"] = task_instances(api, run["dag_id"], run_id)
    doc = {"began": began, "ended": time.time(), "runs": runs}
    with open(sys.argv[1], "w") as log:
        json.dump(doc, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
