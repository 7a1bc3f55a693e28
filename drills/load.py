"""The load drill: a burst of task instances created within one second, in four conditions.

    python -m drills.load [--runs 5] [--conditions warm,api-restart,rolling,db-crash]

The burst is `runs` runs of a 40-task DAG (airflow_ha_burst) plus one run of each of a few of
Airflow's own example DAGs, created at once through one node's REST API
(drills/agents/burst.py). Every run is followed to its end; the drill reports, per
condition, the task instances that failed (and those of them that never ran: no hostname, the
worker never reached PATCH .../run), runs not succeeded, and the burst's throughput (task
instances ended per minute, from the first run's creation to the last task's end).

Conditions:
  warm          the cluster as it is (the api-servers have served task work before)
  api-restart   right after `systemctl restart airflow-api-server` on every node
  rolling       during a rolling restart of every Airflow unit, node by node, as a deploy of a
                changed Airflow config does (the start step's restart, node after node)
  db-crash      during a kill -9 of the PostgreSQL primary's Patroni and PostgreSQL
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from drills import airflow, common, failover, report
from drills.common import Agent
from drills.nodes import NODES, RESULTS, Log, say, ssh
from drills.workload import put_dag, wait_parsed

BURST_DAG_ID = "airflow_ha_burst"
BURST_TASKS = 40
BURST_DAG = airflow.dag_file(
    f"airflow-ha load drill: {BURST_TASKS} independent short tasks per run\n"
    "(written by drills/load.py).",
    BURST_DAG_ID,
    "from datetime import datetime\n\nfrom airflow.sdk import DAG, task",
    f"""    for index in range({BURST_TASKS}):

        @task(task_id=f"work_{{index:02d}}")
        def work(index: int = index) -> int:
            return index * index

        work()
""",
    max_active_runs="64",
    max_active_tasks="64",
)
# Airflow's own example DAGs (from the venv) that end in success without anything outside the
# cluster: (file under site-packages/airflow, dag_id).
EXAMPLES = (
    ("providers/standard/example_dags/example_bash_operator.py", "example_bash_operator"),
    ("example_dags/example_complex.py", "example_complex"),
    ("example_dags/example_dynamic_task_mapping.py", "example_dynamic_task_mapping"),
    ("example_dags/example_task_group.py", "example_task_group"),
    ("example_dags/tutorial_taskflow_api.py", "tutorial_taskflow_api"),
)
SITE = "/opt/airflow/venv/lib/python3.13/site-packages/airflow"
CONDITIONS = ("warm", "api-restart", "rolling", "db-crash")
# The suite's quick form (CI): the two conditions that failed tasks before, a smaller burst.
# db-crash: the quick drills crash the primary under the workload already.
QUICK_CONDITIONS = ("api-restart",)
QUICK_RUNS = 3
FULL_RUNS = 5
AIRFLOW_UNITS = " ".join(airflow.SERVICES)


def ensure_dags(api_node: str, log: Log = say, timeout: float = 300) -> None:
    """The burst DAG and the example DAGs on every node (written where they differ), parsed."""
    wanted = {f"{BURST_DAG_ID}.py": BURST_DAG}
    node = NODES[0]
    for path, _ in EXAMPLES:
        wanted[f"airflow_ha_{Path(path).name}"] = ssh(node, f"cat {SITE}/{path}").stdout
    for name, text in wanted.items():
        put_dag(name, text, log)
    api = airflow.Api(api_node)
    deadline = time.monotonic() + timeout
    for dag_id in [BURST_DAG_ID, *(d for _, d in EXAMPLES)]:
        wait_parsed(api, dag_id, deadline)


def burst(
    api_node: str, password: str, runs: int, prefix: str, timeout: float = 900
) -> dict[str, Any]:
    """Send the burst from `api_node` and follow it to its end; the agent's document."""
    dags = {BURST_DAG_ID: runs, **{dag_id: 1 for _, dag_id in EXAMPLES}}
    settings = {
        "api": f"http://{api_node}:8080",
        "user": "admin",
        "password": password,
        "dags": dags,
        "prefix": prefix,
        "timeout": timeout,
    }
    agent = Agent(api_node, "burst.py", stdin=settings)
    deadline = time.monotonic() + timeout + 120
    while time.monotonic() < deadline:
        out = ssh(api_node, f"cat {agent.log} 2>/dev/null || true").stdout
        if out.strip():
            agent.stop()
            return json.loads(out)
        time.sleep(5)
    agent.stop()
    raise TimeoutError(f"the burst on {api_node} wrote nothing in {timeout + 120:.0f} s")


def _ts(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def figures(doc: dict[str, Any]) -> dict[str, Any]:
    """What a burst shows: failures, never-ran failures, runs not succeeded, throughput."""
    tis = [ti for run in doc["runs"].values() for ti in run.get("task_instances", [])]
    failed = [ti for ti in tis if ti["state"] not in ("success", "skipped")]
    never_ran = [ti for ti in failed if not ti.get("hostname")]
    retried = [ti for ti in tis if (ti.get("try_number") or 1) > 1]
    ends = [t for t in (_ts(ti.get("end_date")) for ti in tis) if t]
    ran = [ti for ti in tis if ti["state"] == "success"]
    span = (max(ends) - doc["began"]) if ends else None
    return {
        "runs": len(doc["runs"]),
        "runs_not_success": sorted(
            f"{rid}: {run['state']}"
            for rid, run in doc["runs"].items()
            if run["state"] != "success"
        ),
        "task_instances": len(tis),
        "failed": len(failed),
        "failed_never_ran": len(never_ran),
        "failed_examples": [
            f"{ti['task_id']}[{ti['map_index']}] {ti['state']} host={ti.get('hostname')!r}"
            for ti in failed[:10]
        ],
        "retried": len(retried),
        "seconds": round(span, 1) if span else None,
        "per_minute": round(len(ran) / span * 60, 1) if span else None,
    }


# From the journals during the burst: how long each PATCH .../run took on the api-servers
# (Airflow's access log) and how often a task runner had to call the Execution API again.
RUN_DURATIONS = (
    "journalctl -o cat -u airflow-api-server --since @{since} | "
    "grep -F 'method=PATCH' | grep -E 'path=/execution/task-instances/[^ ]*/run ' | "
    "sed -nE 's/.*duration_us=([0-9]+).*/\\1/p'"
)
CLIENT_RETRIES = (
    "journalctl -o cat -u airflow-worker --since @{since} | "
    "grep -cF 'airflow.sdk.api.client.Client.request' || true"
)


def execution_api_figures(since: float) -> dict[str, Any]:
    """The slowest PATCH .../run per node, and the task runners' repeated calls."""
    slowest: dict[str, float | None] = {}
    retries = 0
    for node in NODES:
        out = common.quiet_ssh(node, RUN_DURATIONS.format(since=int(since)), timeout=60)
        values = [int(v) / 1e6 for v in out.stdout.split()] if out else []
        slowest[node] = round(max(values), 2) if values else None
        out = common.quiet_ssh(node, CLIENT_RETRIES.format(since=int(since)), timeout=60)
        retries += int(out.stdout.strip() or 0) if out else 0
    return {"slowest_run_call_s": slowest, "execution_api_calls_repeated": retries}


def after_failover(
    doc: dict[str, Any], record: dict[str, Any], writer: failover.Writer, db_password: str
) -> dict[str, Any]:
    """When writes came back after the kill, and when the first task started after that."""
    killed_at = record.get("killed_at")
    back = writer.first_ok_started_after(killed_at) if killed_at else None
    entries = writer.stop()
    lost = failover.lost_rows(writer, entries, db_password)
    starts = [
        t
        for run in doc["runs"].values()
        for t in (_ts(ti.get("start_date")) for ti in run.get("task_instances", []))
        if t and back and t > back
    ]
    return {
        "writes_back_s": round(back - killed_at, 1) if back else None,
        "first_task_after_writes_s": round(min(starts) - back, 1) if starts else None,
        "rows_lost": len(lost),
    }


def _wait_api_answers(node: str, mesh: str) -> None:
    """Until the node's api-server answers on its mesh address (at most 300 s)."""
    ssh(
        node,
        f"for i in $(seq 300); do curl -sf -o /dev/null http://{mesh}:8080/api/v2/version"
        " && exit 0; sleep 1; done; exit 1",
        timeout=330,
    )


def _rolling_restart(log: Log) -> None:
    """What the deploy's airflow-start steps do for a changed config: node after node, restart
    every Airflow unit and wait until the api-server answers health again."""
    mesh = common.mesh_addresses()
    for node in NODES:
        log(f"  rolling: restarting Airflow on {node}")
        ssh(
            node,
            f"systemctl stop airflow-worker; systemctl stop {AIRFLOW_UNITS}; "
            f"systemctl start {AIRFLOW_UNITS}",
            timeout=600,
        )
        _wait_api_answers(node, mesh[node])


def condition(name: str, runs: int, password: str, db_password: str, log: Log) -> dict[str, Any]:
    """One burst in one condition; the record."""
    api_node = NODES[0]
    prefix = f"load-{name}-{int(time.time())}"
    record: dict[str, Any] = {"condition": name}
    background: threading.Thread | None = None
    if name == "api-restart":
        common.parallel(lambda n: ssh(n, "systemctl restart airflow-api-server"), NODES)
        mesh = common.mesh_addresses()
        common.parallel(lambda n: _wait_api_answers(n, mesh[n]), NODES)
        log("  every api-server restarted and answering")
    elif name == "rolling":
        background = threading.Thread(target=_rolling_restart, args=(log,))
    elif name == "db-crash":
        leader = failover.leader_of(failover.members())
        record["victim"] = leader
        # A writer on a surviving node tells when the database accepts writes again.
        failover.prepare(db_password)
        writer = failover.Writer(next(n for n in NODES if n != leader), db_password)

        def crash() -> None:
            # As drills/failover.py crash_drill: killed, kept down until another node
            # leads, then started again (it rejoins as a replica).
            time.sleep(3)
            log(f"  db-crash: kill -9 of Patroni and PostgreSQL on {leader}")
            record["killed_at"] = float(ssh(
                leader,
                "systemctl kill --signal=SIGKILL patroni.service; date +%s.%N; "
                "systemctl stop patroni.service",
            ).stdout.strip())
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                time.sleep(1)
                try:
                    if failover.leader_of(failover.members()) not in (None, leader):
                        break
                except Exception:  # patronictl on a node mid-failover: ask again
                    pass
            record["promoted_s"] = round(time.time() - record["killed_at"], 1)
            ssh(leader, "systemctl start patroni.service")

        background = threading.Thread(target=crash)
    if background:
        background.start()
    started = time.time()
    doc = burst(api_node, password, runs, prefix)
    if background:
        background.join()
    record.update(figures(doc))
    record.update(execution_api_figures(started - 1))
    if name == "db-crash":
        record.update(after_failover(doc, record, writer, db_password))
    record["wall_s"] = round(time.time() - started, 1)
    log(
        f"  {name}: {record['task_instances']} TIs, failed {record['failed']} (never ran "
        f"{record['failed_never_ran']}), runs not success {len(record['runs_not_success'])}, "
        f"{record['per_minute']} TIs/min"
    )
    return record


def run(conditions: list[str], runs: int, log: Log = say) -> dict[str, Any]:
    with common.lock():
        secrets_password = airflow.Api(NODES[0]).password()
        db_password = failover.db_password()
        mesh = common.mesh_addresses()
        common.wait_healthy(mesh, db_password, timeout=900, log=log)
        ensure_dags(NODES[0], log)
        records = []
        for name in conditions:
            log(f"== load drill: {name}")
            records.append(condition(name, runs, secrets_password, db_password, log))
            common.wait_healthy(mesh, db_password, timeout=900, log=log)
    for record in records:
        record["ok"] = passed(record)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": common.host_machine(),
        "burst": {"runs_of_burst_dag": runs, "tasks_per_run": BURST_TASKS,
                  "examples": [d for _, d in EXAMPLES]},
        "records": records,
        "ok": all(r["ok"] for r in records),
        "median_per_minute": statistics.median(
            [r["per_minute"] for r in records if r["per_minute"]] or [0]
        ),
    }


def passed(record: dict[str, Any]) -> bool:
    """Nothing failed, every run succeeded, no acknowledged row lost (db-crash)."""
    return (
        record["failed"] == 0
        and not record["runs_not_success"]
        and record.get("rows_lost", 0) == 0
        and record["task_instances"] > 0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drills.load", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs of the 40-task DAG (default 5)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="where <time>-load-<host>.json goes"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (it restarts units and kills PostgreSQL on the local machines)")
    chosen = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = set(chosen) - set(CONDITIONS)
    if unknown:
        parser.error(f"unknown condition(s) {sorted(unknown)}: choose from {list(CONDITIONS)}")
    doc = run(chosen, args.runs)
    doc["command"] = "python -m drills.load " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print(report.load_markdown(doc))
    if not args.no_write:
        stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
        path = args.out / f"{stamp}-load-{os.uname().nodename}.json"
        path.parent.mkdir(parents=True, exist_ok=True)  # after the drill, not lost to a typo
        path.write_text(json.dumps(doc, indent=1) + "\n")
        say(f"wrote {path}")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
