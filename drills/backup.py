"""The backup drills (issue 14): pgBackRest's repository on the local cloud's S3 endpoint.

- backup-basics: the repository ok on every node; a differential asked of every node's timer
  script lands once, taken on the asynchronous replica from its own database (backup-standby);
  after a switchover WAL archiving goes on from the new primary (`pgbackrest check` there
  archives a segment end to end) and the next backup from the new asynchronous replica.
- pitr: the writer commits every 100 ms; at T a destructive DELETE, then the cluster restored
  to T (`tools.restore`): every row acknowledged before T is there, none started after it.
  Figures: the restore's duration and the database's downtime.
- task-log: a probe task that ran on node-c; node-c's machine stopped; the task's log read
  through node-a's REST API comes back whole from the object storage.
- total-loss (full suite only, by hand: it rebuilds the machines): every disk destroyed, fresh
  machines deployed (the deploy stops at the old cluster's repository), the cluster restored
  from the repository (--latest), deployed again, the probe DAG's file put back; figures: RPO
  (seconds of acknowledged writes lost), each phase, and the time to a successful DAG run.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from drills import common, failover
from drills.airflow import Api
from drills.nodes import NODES, REPO, localcloud, ssh
from drills.workload import PROBE_DAG_ID, DbWriter, ensure_probe_dag

STANZA = "airflow-ha-local"
# The report's outage columns, for a drill that measures none of them (its figures: details).
NO_OUTAGE = {"db": None, "broker": None, "airflow": None, "airflow_after_db": None}
BACKUP = "/usr/local/sbin/airflow-ha-backup"


def info(node: str) -> dict[str, Any]:
    """pgBackRest's view of the stanza from `node` (info --output=json)."""
    out = ssh(node, f"runuser -u postgres -- pgbackrest --stanza={STANZA} --output=json info")
    return json.loads(out.stdout)[0]


def backups(node: str) -> list[dict[str, Any]]:
    return info(node).get("backup", [])


def back_up_everywhere(kind: str) -> dict[str, str]:
    """What every node's backup script does when its timer fires (one node acts)."""
    return common.parallel(lambda n: ssh(n, f"{BACKUP} {kind}", timeout=900).stdout, list(NODES))


def primary() -> str:
    leader = failover.leader_of(failover.members())
    if leader is None:
        raise RuntimeError("no Patroni leader")
    return leader


def _takers(outputs: dict[str, str]) -> list[str]:
    return [node for node, out in outputs.items() if "backup of" in out and "done on" in out]


def _from_standby(outputs: dict[str, str], node: str) -> bool:
    """pgBackRest copied from `node`'s standby database (it waited for the standby's replay)."""
    out = outputs.get(node, "")
    return "from this standby's database" in out and "replay on the standby reached" in out


def basics(suite: Any, record: dict) -> None:
    leader, sync, runner = _roles()  # the workload on the async replica, where backups run
    statuses = {n: info(n)["status"]["message"] for n in NODES}
    before = backups(leader)
    with suite.workload(runner, "backup-basics", runner) as wl:
        diff = back_up_everywhere("diff")
        first_taker = _takers(diff)
        event = time.time()
        switch = failover.runbook.command("patroni-switchover", current_leader=leader,
                                          sync_standby=sync)
        ssh(leader, switch, timeout=180)
        new_leader, _, new_replica = _roles()
        checked = ssh(new_leader, f"runuser -u postgres -- pgbackrest --stanza={STANZA} check")
        after_switch = back_up_everywhere("diff")
        second_taker = _takers(after_switch)
        health, figures = suite.settle(wl, event)
    after = backups(new_leader)
    record["checks"].update({
        "the repository is ok on every node": all(s == "ok" for s in statuses.values()),
        "a full backup was in the repository": any(b["type"] == "full" for b in before),
        "one differential, on the async replica from its own database":
            first_taker == [runner] and _from_standby(diff, runner),
        "WAL archived from the new primary after the switchover": checked.returncode == 0,
        "the next backup on the new async replica from its own database":
            second_taker == [new_replica] and _from_standby(after_switch, new_replica),
        "both differentials in the repository": len(after) == len(before) + 2,
    })
    common_record(record, leader, runner, figures, health, details={
        "statuses": statuses, "old_primary": leader, "new_primary": new_leader,
        "backed_up_on": [runner, new_replica],
        "backups": [(b["label"], b["type"]) for b in after]})


def _roles() -> tuple[str, str, str]:
    """(primary, synchronous standby, asynchronous replica) of a healthy cluster."""
    listing = failover.wait_healthy()
    leader = failover.leader_of(listing)
    sync = next((m["Member"] for m in listing if m["Role"] == "Sync Standby"), None)
    assert leader is not None and sync is not None, listing
    return leader, sync, next(n for n in NODES if n not in (leader, sync))


def common_record(record: dict, victim: str, runner: str, figures: dict, health: dict,
                  details: dict) -> None:
    from drills.suite import record_outcome

    record_outcome(record, victim, runner, figures, health, rejoin_s=health.get("all_s"),
                   details=details)


def restore_to(target: str) -> dict[str, Any]:
    """`python -m tools.restore` on the local stack, as an operator runs it (--to TARGET, or
    --latest); its timings."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        when = ["--latest"] if target == "latest" else ["--to", target]
        subprocess.run([sys.executable, "-m", "tools.restore", "--stack", "local", *when,
                        "--yes", "--json", out.name], cwd=REPO, check=True, timeout=3600)
        return json.loads(Path(out.name).read_text())


def pitr(suite: Any, record: dict) -> None:
    _, _, runner = _roles()
    password = suite.secrets.db
    failover.prepare(password)
    writer = DbWriter(runner, password)
    time.sleep(10)
    target_at = time.time()
    time.sleep(2)
    deleted = failover.psql(
        runner, f"WITH d AS (DELETE FROM {failover.SCHEMA}.writes WHERE run = '{writer.run}' "
        "RETURNING 1) SELECT count(*) FROM d", password)
    time.sleep(3)
    lines = writer.stop()
    # The WAL past T archived (recovery must see a commit after T to stop there).
    ssh(primary(), f"runuser -u postgres -- pgbackrest --stanza={STANZA} check")
    target = datetime.datetime.fromtimestamp(target_at, datetime.UTC).isoformat()
    restored = restore_to(target)
    health = suite.healthy(since=time.time(), timeout=900)
    stored = failover.psql(runner, f"SELECT seq FROM {failover.SCHEMA}.writes WHERE run = "
                           f"'{writer.run}'", password)
    present = {int(s) for s in stored.split()}
    oks = [line.split() for line in lines if line.startswith("ok ")]
    before = [int(p[1]) for p in oks if float(p[3]) < target_at]
    after = [int(p[1]) for p in oks if float(p[2]) > target_at]
    missing = sorted(set(before) - present)
    resurrected = sorted(set(after) & present)
    record["checks"].update({
        "every row acknowledged before T is there": not missing,
        "no row started after T is there": not resurrected,
        "the DELETE removed the rows before the restore": int(deleted.strip() or 0) > 0,
        "the restore took at most 10 minutes": restored["total_s"] <= 600,
    })
    record.update(
        victim="cluster", runner=runner,
        outage_s={"db": restored["downtime_s"], "broker": None, "airflow": None,
                  "airflow_after_db": None},
        lost={"rows": len(missing)}, rejoin_s=restored["replicas_back_s"],
        healthy_after_s=health.get("all_s"),
        details={"restore": restored, "acked_before_t": len(before), "started_after_t":
                 len(after), "deleted": deleted.strip(), "health": health},
    )


def task_log(suite: Any, record: dict) -> None:
    """A finished task of node-c, its log read through node-a after node-c is stopped."""
    victim, reader = "node-c", "node-a"
    api = Api(reader)
    found = None
    deadline = time.time() + 600
    attempt = 0
    while found is None and time.time() < deadline:
        attempt += 1
        run_id = f"task-log-{int(time.time())}-{attempt}"
        state = _probe_run(api, run_id)
        tis = api.get(f"/api/v2/dags/{PROBE_DAG_ID}/dagRuns/{run_id}/taskInstances")
        ti = tis["task_instances"][0]
        if state == "success" and ti["hostname"] == victim:
            found = (run_id, ti["task_id"], ti["try_number"])
    assert found is not None, f"no probe task ran on {victim} in 10 minutes"
    run_id, task_id, try_number = found
    path = log_path(run_id, task_id, try_number)
    with_node, upload_s = uploaded_log(api, path)
    event = common.stop_machine(victim)
    try:
        without_node = read_log(api, path)
    finally:
        common.start_machine(victim)
    health = suite.healthy(since=event, timeout=900)
    record["checks"].update(log_checks(with_node, without_node))
    record.update(victim=victim, runner=reader, outage_s=NO_OUTAGE, lost={"logs": 0 if log_whole(
        without_node) else 1}, rejoin_s=health.get("all_s"), healthy_after_s=health.get("all_s"),
        details={"run_id": run_id, "upload_s": upload_s, "log_tail": without_node[-600:],
                 "health": health})


def log_path(run_id: str, task_id: str, try_number: int) -> str:
    return (f"/api/v2/dags/{PROBE_DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/"
            f"{try_number}?full_content=true")


def finished_log_path(api: Api, run_id: str) -> str:
    """The log of a probe run's task, the try that finished it."""
    tis = api.get(f"/api/v2/dags/{PROBE_DAG_ID}/dagRuns/{run_id}/taskInstances")
    ti = tis["task_instances"][0]
    return log_path(run_id, ti["task_id"], ti["try_number"])


def read_log(api: Api, path: str) -> str:
    """The log as the API gives it now, or why it could not (a failed check, not a crash)."""
    try:
        return log_text(api.get(path, attempts=10))
    except (RuntimeError, subprocess.TimeoutExpired) as failure:
        return f"(not read: {failure})"


def uploaded_log(api: Api, path: str, timeout: float = 120) -> tuple[str, float]:
    """A finished task's log once it is on the object storage, and how long that took.
    Airflow reports success before the task's process exits and uploads the log after it."""
    succeeded = time.time()
    text = log_text(api.get(path))
    while "s3://" not in text and time.time() < succeeded + timeout:
        time.sleep(2)
        text = log_text(api.get(path))
    return text, round(time.time() - succeeded, 1)


def log_checks(with_node: str, without_node: str) -> dict[str, bool]:
    """A task's log read with the node that ran it up, then with that node down."""
    return {
        "the log was read from the object storage": "s3://" in without_node,
        "the log is whole without the node that ran it": log_whole(without_node),
        "the same log with the node up": log_whole(with_node),
        "the log reached the object storage within 2 minutes": "s3://" in with_node,
    }


def log_text(reply: dict) -> str:
    content = reply.get("content", "")
    if isinstance(content, list):
        return "\n".join(json.dumps(c) if not isinstance(c, str) else c for c in content)
    return str(content)


def log_whole(text: str) -> bool:
    """The whole log of the probe task: its command, its exit and what came after it."""
    return (re.search(r"sleep \d+", text) is not None
            and "Command exited with return code 0" in text and "Post Execute" in text)


def _probe_run(api: Api, run_id: str) -> str:
    """A probe DAG run of a one-second task, triggered and followed to its end: its state."""
    api.patch(f"/api/v2/dags/{PROBE_DAG_ID}", {"is_paused": False})
    api.post(f"/api/v2/dags/{PROBE_DAG_ID}/dagRuns",
             {"dag_run_id": run_id, "logical_date": None, "conf": {"seconds": 1}})
    return _wait_run(api, run_id)


def _deploy() -> subprocess.CompletedProcess:
    """`python -m tools.deploy --stack local`, its output kept (a failure is a result here)."""
    return subprocess.run([sys.executable, "-m", "tools.deploy", "--stack", "local"], cwd=REPO,
                          capture_output=True, text=True, timeout=3600)


def _wait_run(api: Api, run_id: str, timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = api.get(f"/api/v2/dags/{PROBE_DAG_ID}/dagRuns/{run_id}")["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(2)
    return "timeout"


def total_loss(suite: Any, record: dict) -> None:
    """Every machine and disk destroyed, fresh ones deployed, the cluster restored (--latest);
    working again once a new probe DAG run succeeded."""
    password = suite.secrets.db
    _, _, runner = _roles()
    failover.prepare(password)
    writer = DbWriter(runner, password)
    time.sleep(30)
    lost_at = time.time()
    lines = writer.stop()
    phases: dict[str, float] = {}

    def phase(name: str, since: float) -> float:
        now = time.time()
        phases[name] = round(now - since, 1)
        suite.log(f"  {name}: {phases[name]} s")
        return now

    # The machines and their disks go; the object storage (the S3 endpoint) outlives them.
    localcloud("destroy", *NODES, timeout=900)
    started = time.time()
    localcloud("up", timeout=1800)
    at = phase("machines_up_s", started)
    first = _deploy()
    at = phase("first_deploy_s", at)
    restored = restore_to("latest")
    at = phase("restore_s", at)
    second = _deploy()
    at = phase("second_deploy_s", at)
    health = suite.healthy(since=at, timeout=900)
    stored = failover.psql(runner, f"SELECT seq FROM {failover.SCHEMA}.writes WHERE run = "
                           f"'{writer.run}'", password)
    present = {int(s) for s in stored.split()}
    oks = [(int(p[1]), float(p[3])) for p in (line.split() for line in lines) if p[:1] == ["ok"]]
    missing = [(seq, acked) for seq, acked in oks if seq not in present]
    rpo = round(lost_at - min(acked for _, acked in missing), 1) if missing else 0.0
    record["checks"].update({
        "the first deploy stopped at the repository of the lost cluster": first.returncode != 0
        and "restore it from the repository" in first.stdout + first.stderr,
        "the deploy after the restore succeeded": second.returncode == 0,
        "RPO within archive_timeout (60 s)": rpo <= 60,
    })
    details = {"rpo_s": rpo, "rows_lost": len(missing), "acked": len(oks), "phases": phases,
               "restore": restored, "health": health,
               "first_deploy_tail": (first.stdout + first.stderr)[-800:],
               "second_deploy_tail": (second.stdout + second.stderr)[-800:]}
    record.update(victim="every node", runner=runner, outage_s=NO_OUTAGE,
                  lost={"rows_beyond_rpo": 0 if rpo <= 60 else len(missing)},
                  healthy_after_s=health.get("all_s"), details=details)
    # The DAG files were on the lost disks only: the team puts its DAG folder back (from its
    # repository, as the runbook says); here the probe DAG, until it is parsed and no longer
    # stale (the restored database still holds it: a run of it is refused until then).
    ensure_probe_dag(runner, suite.log)
    probe = _probe_run(Api(runner), f"total-loss-{int(time.time())}")
    working = phase("to_a_successful_dag_run_s", at)
    record["checks"]["a new DAG run succeeded on the restored cluster"] = probe == "success"
    record["rejoin_s"] = round(working - started, 1)
    details.update(probe_run=probe, to_working_airflow_s=round(working - started, 1))
