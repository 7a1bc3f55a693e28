"""Airflow node-loss drill on the local machines: `python3 -m drills.airflow`.

Ships a fan-out DAG (one `start` task, then `--tasks` BashOperator tasks sleeping `--seconds`,
each with retries) by writing it on one node and letting csync2 carry it, triggers a run through
the REST API of `--api` (node-a), and once tasks run on every worker, kills the whole machine
`--victim` (node-c) like a power cut (`tools.localcloud stop --kill`). Then it prints:

  sync seconds            DAG file written on one node -> present on the others
  first start seconds     kill -> the first task instance that started after the loss
  lost detected seconds   kill -> the lost tries marked failed/up for retry (heartbeat timeout)
  lost retry seconds      kill -> the first retry (elsewhere) of a task lost with the victim
                          (it waits for a free slot on the survivors)
  run seconds             the in-flight run: trigger -> success (on the two survivors)
  lost tasks              task instances that were running on the victim, and their retries
  new run seconds         a run triggered after the loss: trigger -> success
  rejoin seconds          machine started again -> its six units active, its api-server healthy
                          and three schedulers alive (nothing done by hand)
  tasks per node          hostnames of the task instances' last tries

The drill holds /run/airflow-ha-cluster.lock from the kill until the victim has rejoined (a few
minutes), unless an ancestor process already holds it. Nothing is asserted here:
tests/cluster/test_airflow.py asserts on the same run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime

from drills import failover, runbook
from drills.nodes import NODES, deploy_secret, localcloud, ssh
from tools.localcloud.lock import ClusterLock

DAGS_DIR = "/opt/airflow/dags"
DAG_ID = "airflow_ha_fanout"
SERVICES = runbook.AIRFLOW_UNITS

# What the bash-task DAGs import, and how their tasks retry.
BASH_DAG_IMPORTS = """from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG"""
RETRIES = '{"retries": 3, "retry_delay": timedelta(seconds=5)}'
SLEEP_SECONDS = 'bash_command="sleep {{ params.seconds }}"'  # a run's conf sets the seconds


def dag_file(doc: str, dag_id: str, imports: str, body: str, **dag_args: str) -> str:
    """The source of one of the drills' DAGs: triggered by hand only (no schedule, no
    catchup), unpaused as soon as it is parsed, tagged airflow-ha. `dag_args` are more
    DAG(...) arguments as Python source; `body` is the tasks, indented under the `with`."""
    more = "".join(f"    {key}={value},\n" for key, value in dag_args.items())
    return (
        f'"""{doc}"""\n\n{imports}\n\nwith DAG(\n    dag_id="{dag_id}",\n    schedule=None,\n'
        "    start_date=datetime(2024, 1, 1),\n    catchup=False,\n"
        f'    is_paused_upon_creation=False,\n{more}    tags=["airflow-ha"],\n):\n{body}'
    )


def fanout_dag(tasks: int) -> str:
    """`start`, then `tasks` bash tasks in parallel, each sleeping the run's `seconds`."""
    return dag_file(
        f"airflow-ha fan-out: `start`, then {tasks} parallel tasks (the cluster tests).",
        DAG_ID,
        BASH_DAG_IMPORTS,
        '    start = BashOperator(task_id="start", bash_command="true")\n'
        f"    for i in range({tasks}):\n"
        f'        start >> BashOperator(task_id=f"t{{i:02d}}", {SLEEP_SECONDS})\n',
        max_active_tasks="64",
        params='{"seconds": 2}',
        default_args=RETRIES,
    )


def parse_time(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


class Api:
    """Airflow's REST API of one node, called with curl on that node (it listens on the mesh)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.base = f"http://{node}:8080"
        self._token: str | None = None

    def password(self) -> str:
        # The admin's password is on no node in plain (Flower has its own): the deploy's state.
        return deploy_secret(
            "airflow-admin-password/password", "AIRFLOW_ADMIN_PASSWORD", "Airflow admin password"
        )

    def token(self, user: str = "admin") -> str:
        if self._token is None:
            body = json.dumps({"username": user, "password": self.password()})
            reply = self._curl("POST", "/auth/token", body, auth=False)
            self._token = reply["access_token"]
        return self._token

    def _curl(self, method: str, path: str, body: str | None = None, auth: bool = True) -> dict:
        args = ["curl", "-sS", "--max-time", "20", "-X", method, "-w", r"\n%{http_code}"]
        args += ["-H", "Content-Type: application/json"]
        if auth:
            args += ["-H", f"Authorization: Bearer {self.token()}"]
        if body is not None:
            args += ["--data-binary", "@-"]
        args.append(self.base + path)
        result = ssh(self.node, shlex.join(args), timeout=60, stdin=body)
        text, _, code = result.stdout.rpartition("\n")
        if not code.startswith("2"):
            raise RuntimeError(f"{method} {path} on {self.node}: HTTP {code}: {text[:300]}")
        return json.loads(text) if text.strip() else {}

    def get(self, path: str, attempts: int = 3) -> dict:
        """GET, retried briefly: a database failover elsewhere answers 5xx for a few seconds."""
        for attempt in range(attempts):
            try:
                return self._curl("GET", path)
            except (RuntimeError, subprocess.TimeoutExpired):
                if attempt == attempts - 1:
                    raise
                time.sleep(2)
        raise AssertionError("unreachable")

    def post(self, path: str, payload: dict) -> dict:
        return self._curl("POST", path, json.dumps(payload))

    def patch(self, path: str, payload: dict) -> dict:
        return self._curl("PATCH", path, json.dumps(payload))

    def health(self) -> dict:
        return self._curl("GET", "/api/v2/monitor/health", auth=False)

    # --- DAG runs -----------------------------------------------------------------------
    def trigger(self, run_id: str, seconds: int) -> dict:
        self.patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        return self.post(
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            {"dag_run_id": run_id, "logical_date": None, "conf": {"seconds": seconds}},
        )

    def run_state(self, run_id: str) -> str:
        return self.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]

    def task_instances(self, run_id: str) -> list[dict]:
        return self.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=200")[
            "task_instances"
        ]

    def tries(self, run_id: str, task_id: str) -> list[dict]:
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/tries"
        return self.get(path)["task_instances"]


def write_dag(node: str, tasks: int) -> str:
    """Write the fan-out DAG into one node's DAG folder; return its sha256."""
    # A fresh stamp each time: the other nodes cannot already have this exact file.
    source = fanout_dag(tasks) + f"# written {time.time():.3f}\n"
    path = f"{DAGS_DIR}/{DAG_ID}.py"
    ssh(
        node,
        f"cat > {path}.tmp && chown airflow:airflow {path}.tmp && mv {path}.tmp {path}",
        stdin=source,
    )
    return ssh(node, f"sha256sum {path}").stdout.split()[0]


def wait_synced(digest: str, nodes: list[str], timeout: float = 180) -> float:
    """Seconds until every node in `nodes` has the DAG file with this checksum."""
    started = time.monotonic()
    pending = set(nodes)
    while pending:
        for node in sorted(pending):
            out = ssh(node, f"sha256sum {DAGS_DIR}/{DAG_ID}.py 2>/dev/null", check=False).stdout
            if out.split()[:1] == [digest]:
                pending.discard(node)
        if pending:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"DAG file not on {sorted(pending)} after {timeout} s")
            time.sleep(2)
    return time.monotonic() - started


def wait_parsed(api: Api, tasks: int, timeout: float = 300) -> float:
    """Seconds until the api-server knows the DAG with all its tasks."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(RuntimeError):
            listed = api.get(f"/api/v2/dags/{DAG_ID}/tasks")
            if listed.get("total_entries") == tasks + 1:
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{DAG_ID} with {tasks + 1} tasks not parsed after {timeout} s")
        time.sleep(3)


def wait_run(api: Api, run_id: str, timeout: float = 900) -> str:
    started = time.monotonic()
    while True:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            state = api.run_state(run_id)
            if state in ("success", "failed"):
                return state
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"run {run_id} not finished after {timeout} s")
        time.sleep(3)


def hostnames(api: Api, run_id: str) -> collections.Counter:
    """Where each task's last try ran."""
    return collections.Counter(
        ti["hostname"] for ti in api.task_instances(run_id) if ti["task_id"] != "start"
    )


def node_rejoined(node: str) -> bool:
    active = ssh(node, runbook.command("airflow-units-active"), check=False, timeout=30)
    if active.returncode != 0:
        return False
    try:
        health = Api(node).health()
    except RuntimeError:  # the api-server is not answering yet
        return False
    if not all(part.get("status") == "healthy" for part in health.values()):
        return False
    # The health endpoint is cluster-wide (any scheduler will do): this node's own jobs too.
    return own_jobs_fresh(node)


# This node's scheduler, DAG processor and triggerer, each with a fresh job heartbeat.
OWN_JOBS_SQL = (
    "SELECT count(DISTINCT job_type) FROM job WHERE hostname = '{node}' AND state = 'running'"
    " AND job_type IN ('SchedulerJob', 'DagProcessorJob', 'TriggererJob')"
    " AND latest_heartbeat > now() - interval '30 seconds'"
)


def own_jobs_fresh(node: str) -> bool:
    sql = OWN_JOBS_SQL.format(node=node)
    try:
        out = failover.psql(node, sql, failover.db_password(), timeout=30)
    except Exception:  # unreachable or failing: not rejoined yet
        return False
    return out.strip() == "3"


def schedulers_alive(node: str) -> int:
    out = ssh(
        node,
        runbook.command("schedulers-alive") + " 2>&1 | tail -n 1",
        check=False,
        timeout=120,
    ).stdout
    words = out.split()
    return int(words[1]) if len(words) > 2 and words[0] == "Found" and words[1].isdigit() else 0


def roles(node: str, victim: str) -> list[str]:
    """What else the victim held: the Patroni leader, the sync standby."""
    out = ssh(node, failover.PATRONI_LIST_JSON, check=False).stdout
    try:
        members = json.loads(out)
    except ValueError:
        return ["unknown"]
    return [m["Role"] for m in members if m.get("Member") == victim]


def patroni_leader(node: str) -> str | None:
    out = ssh(node, failover.PATRONI_LIST_JSON, check=False).stdout
    try:
        return next(m["Member"] for m in json.loads(out) if m["Role"] == "Leader")
    except (ValueError, StopIteration):
        return None


def _terminated(signum, frame) -> None:
    raise SystemExit(f"terminated by signal {signum}")


def drill(api_node: str, victim: str, writer: str, tasks: int, seconds: int) -> dict:
    if victim == api_node:
        raise SystemExit("the victim must not be the node whose API drives the drill")
    api = Api(api_node)
    figures: dict = {"api": api_node, "victim": victim, "tasks": tasks, "task_seconds": seconds}
    digest = write_dag(writer, tasks)
    figures["sync_seconds"] = round(wait_synced(digest, [n for n in NODES if n != writer]), 1)
    wait_parsed(api, tasks)
    with ClusterLock():
        run_id = f"drill-{int(time.time())}"
        triggered = time.time()
        api.trigger(run_id, seconds)

        # Wait until tasks run on every worker (or, after a minute, at least on the victim's).
        waited = time.monotonic()
        while True:
            running = [ti for ti in api.task_instances(run_id) if ti["state"] == "running"]
            busy = {ti["hostname"] for ti in running}
            if busy >= set(NODES) or (victim in busy and time.monotonic() - waited > 60):
                break
            if time.monotonic() - waited > 300:
                raise TimeoutError(f"no task of {run_id} ran on {victim} within 300 s")
            time.sleep(1)
        figures["victim_roles"] = roles(api_node, victim)
        lost = sorted(ti["task_id"] for ti in running if ti["hostname"] == victim)
        figures["running_at_kill"] = len(running)
        figures["lost_tasks"] = len(lost)

        # A SIGTERM (a timeout, a CI stop) must still bring the machine back: make it an
        # exception, so that the `finally` below runs.
        previous = signal.signal(signal.SIGTERM, _terminated)
        killed = time.time()
        localcloud("stop", "--kill", victim)
        try:
            print(
                f"killed {victim} with {len(lost)} of {len(running)} running tasks on it",
                flush=True,
            )
            # The first task instance that started after the loss.
            first_start = None
            deadline = time.monotonic() + 600
            while first_start is None and time.monotonic() < deadline:
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    starts = [
                        parse_time(ti["start_date"])
                        for ti in api.task_instances(run_id)
                        if ti["start_date"] and parse_time(ti["start_date"]) > killed
                    ]
                    if starts:
                        first_start = min(starts)
                time.sleep(1)
            figures["first_start_seconds"] = round(first_start - killed, 1) if first_start else None
            state = wait_run(api, run_id)
            figures["run_state"] = state
            figures["run_seconds"] = round(time.time() - triggered, 1)
            figures["lost_task_tries"] = {task: api.tries(run_id, task) for task in lost}
            figures["tasks_per_node"] = dict(hostnames(api, run_id))
            retries = [
                parse_time(t["start_date"]) - killed
                for tries in figures["lost_task_tries"].values()
                for t in tries
                if t["hostname"] != victim and t["start_date"]
            ]
            figures["lost_task_retry_seconds"] = round(min(retries), 1) if retries else None
            # When the schedulers gave up on the lost tries (no heartbeat) and set them to retry.
            detected = [
                parse_time(t["end_date"]) - killed
                for tries in figures["lost_task_tries"].values()
                for t in tries
                if t["hostname"] == victim and t["end_date"]
            ]
            figures["lost_detected_seconds"] = round(max(detected), 1) if detected else None

            # A new run after the loss, on the two survivors.
            new_id = f"after-loss-{int(time.time())}"
            new_started = time.time()
            api.trigger(new_id, 2)
            figures["new_run_state"] = wait_run(api, new_id)
            figures["new_run_seconds"] = round(time.time() - new_started, 1)
            figures["new_run_tasks_per_node"] = dict(hostnames(api, new_id))
            figures["lost_task_tries"] = {
                task: [(t["try_number"], t["hostname"], t["state"]) for t in tries]
                for task, tries in figures["lost_task_tries"].items()
            }
        finally:
            # Whatever happened above, the machine comes back.
            started = time.time()
            localcloud("start", victim)
            signal.signal(signal.SIGTERM, previous)
        # Everything on it starts by itself.
        deadline = time.monotonic() + 600
        while True:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                if node_rejoined(victim) and schedulers_alive(api_node) == len(NODES):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{victim} did not rejoin within 600 s")
            time.sleep(3)
        figures["rejoin_seconds"] = round(time.time() - started, 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m drills.airflow", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--api", default="node-a", help="the node whose REST API drives the run")
    parser.add_argument(
        "--victim",
        default="node-c",
        help="the machine that is killed; `leader`: the node of the PostgreSQL primary",
    )
    parser.add_argument("--writer", default="node-b", help="the node the DAG file is written on")
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--seconds", type=int, default=20, help="how long each task sleeps")
    args = parser.parse_args(argv)
    victim = patroni_leader(args.api) if args.victim == "leader" else args.victim
    if victim is None:
        raise SystemExit("no Patroni leader found")
    if victim == args.api:
        args.api = next(n for n in NODES if n != victim)
    if victim == args.writer:
        args.writer = next(n for n in NODES if n not in (victim, args.api))
    figures = drill(args.api, victim, args.writer, args.tasks, args.seconds)
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
