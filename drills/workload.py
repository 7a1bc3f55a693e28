"""The steady workload that runs through every drill, on a node that survives it (the runner).

- database: the failover drill's writer (drills/agents/failover_writer.py) commits one row every
  100 ms through the runner's HAProxy 127.0.0.1:5000. Lost = acknowledged rows missing after.
- broker: drills/agents/publisher.py publishes one message every 100 ms with publisher
  confirms into a fresh quorum queue, through the failover list of all three brokers (the
  drill's victim first, so the publisher starts connected to the broker that fails and the
  queue's leader lives there). Afterwards drills/agents/broker_agent.py's consume phase drains
  the queue: lost = confirmed ids that never came back.
- airflow: drills/agents/dag_trigger.py creates a run of the probe DAG (one short task)
  every few seconds through the REST API (the runner's api-server first). Lost = acknowledged
  runs that do not end in success.

Outage per workload: for the writer and the publisher, the longest wait from the event (or from
one acknowledgement) to the next acknowledgement, until the drill stops the workload; for
Airflow, seconds from the event until the first task of a run created after it started.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

from drills import airflow, broker, failover
from drills.common import Agent, first_reachable
from drills.nodes import NODES, Log, say

PROBE_DAG_ID = "airflow_ha_drill_probe"
PROBE_DAG = airflow.dag_file(
    "airflow-ha drills: one short task per run, triggered every few seconds by\n"
    "`python -m drills` while it disturbs the cluster (written by drills/workload.py).",
    PROBE_DAG_ID,
    airflow.BASH_DAG_IMPORTS,
    f'    BashOperator(task_id="probe", {airflow.SLEEP_SECONDS})\n',
    max_active_runs="64",
    max_active_tasks="64",
    params='{"seconds": 3}',
    default_args=airflow.RETRIES,
)
PUBLISH_INTERVAL_S = 0.1
TERMINAL = ("success", "failed")


@dataclass
class Secrets:
    db: str
    broker: str
    airflow_user: str
    airflow: str

    @classmethod
    def load(cls, api_node: str | None = None) -> Secrets:
        return cls(
            db=failover.db_password(),
            broker=broker.broker_password(),
            airflow_user="admin",
            airflow=airflow.Api(api_node or first_reachable()).password(),
        )


def put_dag(name: str, text: str, log: Log = say) -> None:
    """A DAG file on every node, written (as the airflow user's) only where it differs."""
    path = f"{airflow.DAGS_DIR}/{name}"
    digest = hashlib.sha256(text.encode()).hexdigest()
    for node in NODES:
        have = airflow.ssh(node, f"sha256sum {path} 2>/dev/null", check=False).stdout
        if have.split()[:1] != [digest]:
            log(f"writing {name} on {node}")
            airflow.ssh(
                node,
                f"cat > {path}.tmp && chown airflow:airflow {path}.tmp && mv {path}.tmp {path}",
                stdin=text,
            )


def wait_parsed(api: airflow.Api, dag_id: str, deadline: float, tasks: int | None = None):
    """Until the DAG's tasks are in the database (`tasks` of them, if given) and the DAG is
    not stale (a restored database holds DAGs whose files are gone: their runs are refused)."""
    while True:
        with contextlib.suppress(RuntimeError):
            found = api.get(f"/api/v2/dags/{dag_id}/tasks").get("total_entries")
            if (found and (tasks is None or found == tasks)
                    and not api.get(f"/api/v2/dags/{dag_id}").get("is_stale", False)):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{dag_id} not parsed by {api.node} in time")
        time.sleep(3)


def ensure_probe_dag(api_node: str, log: Log = say, timeout: float = 300) -> None:
    """The probe DAG on every node (written where it differs), parsed and unpaused."""
    put_dag(f"{PROBE_DAG_ID}.py", PROBE_DAG, log)
    api = airflow.Api(api_node)
    wait_parsed(api, PROBE_DAG_ID, time.monotonic() + timeout, tasks=1)
    api.patch(f"/api/v2/dags/{PROBE_DAG_ID}", {"is_paused": False})


def longest_wait(times: list[float], event: float, end: float) -> float | None:
    """The longest wait from the event, or from one acknowledgement, to the next one."""
    after = sorted(t for t in times if event < t <= end)
    if not after:
        return None
    return round(max(b - a for a, b in itertools.pairwise([event, *after])), 2)


def writes_back(acks: list[tuple[int, float]], event: float, end: float) -> float | None:
    """When the database took writes again: the commit that ended the longest wait after the
    event (None when no commit was acknowledged after it)."""
    times = sorted(at for _, at in acks if event <= at <= end)
    if not times:
        return None
    earlier = [at for _, at in acks if at < event]
    waits = [(b - a, b) for a, b in itertools.pairwise([max(earlier, default=event), *times])]
    return max(waits)[1] if waits else times[0]


def parse_oks(lines: list[str]) -> list[tuple[int, float]]:
    """The `ok ID ... ACKNOWLEDGED` lines of the writer's and the publisher's logs as
    (id, time acknowledged): the last field is that time in both."""
    return [(int(p[1]), float(p[-1])) for p in (line.split() for line in lines) if p[:1] == ["ok"]]


class DbWriter:
    """drills/agents/failover_writer.py (the failover drill's writer) on a node, one commit every
    100 ms: through the node's HAProxy (default) or to host:port (a node's own PostgreSQL)."""

    def __init__(self, node: str, password: str, host: str = "127.0.0.1", port: int = 5000):
        self.node = node
        self.run = uuid.uuid4().hex[:12]
        self.agent = Agent(
            node,
            failover.WRITER,
            password,
            args=(self.run,),
            env_var="AIRFLOW_HA_DB_PASSWORD",
            env={"AIRFLOW_HA_DB_HOST": host, "AIRFLOW_HA_DB_PORT": str(port)},
        )

    def first_ok_after(self, moment: float) -> float | None:
        return self.agent.first_ok_after(moment)

    def stop(self) -> list[str]:
        return self.agent.stop()

    def acks(self) -> list[tuple[int, float]]:
        return parse_oks(self.stop())

    def errors(self) -> int:
        return sum(1 for line in self.stop() if line.startswith("err "))

    def lost(self, password: str, via: str) -> list[int]:
        """Acknowledged seqs the database does not have (read through `via`'s HAProxy)."""
        stored = failover.psql(
            via, f"SELECT seq FROM {failover.SCHEMA}.writes WHERE run = '{self.run}'", password
        )
        present = {int(line) for line in stored.split()}
        return sorted(seq for seq, _ in self.acks() if seq not in present)


class Workloads:
    """The writer, the publisher and the DAG trigger on one node, started and checked together."""

    def __init__(
        self,
        secrets: Secrets,
        runner: str,
        broker_order: list[str],
        name: str,
        db: bool = True,
        dag_interval: float = 5.0,
        log: Log = say,
    ) -> None:
        self.secrets = secrets
        self.runner = runner
        self.broker_order = broker_order
        self.db = db
        self.dag_interval = dag_interval
        self.log = log
        self.queue = f"drills-{name}-{uuid.uuid4().hex[:8]}"
        self.prefix = f"drills-{name}-{time.strftime('%Y%m%dT%H%M%S')}"
        self.writer: DbWriter | None = None
        self.publisher: Agent | None = None
        self.trigger: Agent | None = None
        self.started = 0.0
        self.stopped_at: float | None = None
        # When the disturbance was surely in effect (the kill or cut command returned): a run
        # sent between the event and then may still have slipped through, so it does not count
        # as a run created after the event. None: the event itself.
        self.in_effect_at: float | None = None

    # --- start / stop ---------------------------------------------------------------------

    def start(self) -> None:
        failover.prepare(self.secrets.db)  # the writer on every node, the drill table
        broker.prepare_runner(self.runner)  # python3-pika, broker_agent.py
        self.started = time.time()
        if self.db:
            self.writer = DbWriter(self.runner, self.secrets.db)
        urls = broker.urls(self.broker_order, self.secrets.broker)
        self.publisher = Agent(
            self.runner,
            "publisher.py",
            {"urls": urls, "queue": self.queue, "interval": PUBLISH_INTERVAL_S},
        )
        apis = [self.runner, *(n for n in NODES if n != self.runner)]
        self.trigger = Agent(
            self.runner,
            "dag_trigger.py",
            {
                "apis": [f"http://{n}:8080" for n in apis],
                "user": self.secrets.airflow_user,
                "password": self.secrets.airflow,
                "dag_id": PROBE_DAG_ID,
                "prefix": self.prefix,
                "interval": self.dag_interval,
            },
        )
        self.log(
            f"  workload on {self.runner}: writer via HAProxy :5000"
            f"{'' if self.db else ' (the failover drill runs its own)'}, publisher -> "
            f"{' -> '.join(self.broker_order)} (queue {self.queue}), a probe DAG run every "
            f"{self.dag_interval:g} s"
        )

    def stop(self) -> None:
        """Stop every agent (safe to call twice, and from a finally)."""
        if self.stopped_at is None:
            self.stopped_at = time.time()
        for agent in (self.writer, self.publisher, self.trigger):
            if agent is not None:
                with contextlib.suppress(Exception):
                    agent.stop()

    # --- during the drill -----------------------------------------------------------------

    def runs(self) -> dict[str, dict[str, Any]]:
        """The probe runs this workload created, as the database has them (empty if down)."""
        sql = (
            "SELECT dr.run_id, dr.state, coalesce(extract(epoch FROM min(ti.start_date))::text,"
            " ''), coalesce(string_agg(DISTINCT ti.hostname, ' '), ''), "
            "coalesce(string_agg(DISTINCT ti.state, ' '), '') FROM dag_run dr "
            "LEFT JOIN task_instance ti ON ti.dag_id = dr.dag_id AND ti.run_id = dr.run_id "
            f"WHERE dr.dag_id = '{PROBE_DAG_ID}' AND dr.run_id LIKE '{self.prefix}-%' "
            "GROUP BY dr.run_id, dr.state"
        )
        try:
            out = failover.psql(self.runner, sql, self.secrets.db, timeout=30)
        except Exception:  # the database is down right now
            return {}
        runs = {}
        for line in out.splitlines():
            run_id, state, start, hosts, ti_states = [*line.split("|"), "", "", "", ""][:5]
            runs[run_id] = {
                "state": state,
                "start": float(start) if start else None,
                "hosts": hosts.split(),
                "task_states": ti_states.split(),
            }
        return runs

    def acked_runs(self, lines: list[str] | None = None) -> list[dict[str, Any]]:
        assert self.trigger is not None
        lines = self.trigger.lines() if lines is None else lines
        return [
            {"seq": int(p[1]), "sent": float(p[2]), "acked": float(p[3]), "run_id": p[4]}
            for p in (line.split() for line in lines)
            if p[:1] == ["ok"] and len(p) >= 5
        ]

    def first_new_run_start(self, event: float, lines: list[str] | None = None) -> float | None:
        """When the first task of a run created after the event (in effect) started."""
        since = max(event, self.in_effect_at or event)
        new = {r["run_id"] for r in self.acked_runs(lines) if r["sent"] >= since}
        if not new:
            return None
        starts = [r["start"] for rid, r in self.runs().items() if rid in new and r["start"]]
        return min(starts) if starts else None

    def first_task_start_after(self, moment: float) -> float | None:
        """The first probe task (of any run of this workload) that started after `moment`."""
        starts = [r["start"] for r in self.runs().values() if r["start"] and r["start"] > moment]
        return min(starts) if starts else None

    def first_task_after(self, back: float) -> float | None:
        """Seconds from `back` (the database's writes back) to the first probe task started
        after it; None: none started."""
        first = self.first_task_start_after(back)
        return round(first - back, 1) if first else None

    def finished_on(self, node: str) -> list[str]:
        """This workload's successful probe runs whose task ran on `node`, oldest first."""
        runs = sorted(self.runs().items(), key=lambda item: item[1]["start"] or 0)
        return [rid for rid, r in runs if r["state"] == "success" and node in r["hosts"]]

    def running_on(self, node: str) -> list[str]:
        runs = self.runs().items()
        return [rid for rid, r in runs if "running" in r["task_states"] and node in r["hosts"]]

    def wait_recovered(
        self,
        event: float,
        timeout: float = 300,
        names: tuple[str, ...] = ("db", "broker", "airflow"),
    ) -> dict[str, float | None]:
        """Seconds from the event until each workload succeeded again (None: not in time)."""
        pending = {n for n in names if n != "db" or self.writer}
        found: dict[str, float | None] = {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                with contextlib.suppress(Exception):
                    if name == "db" and self.writer:
                        at = self.writer.first_ok_after(event)
                    elif name == "broker" and self.publisher:
                        at = self.publisher.first_ok_after(event)
                    else:
                        at = self.first_new_run_start(event)
                    if at is not None:
                        found[name] = round(at - event, 2)
                        pending.discard(name)
            if pending:
                time.sleep(1)
        for name in pending:
            found[name] = None
        self.log(
            "  recovered after the event: "
            + ", ".join(f"{k} {v if v is not None else 'NOT'} s" for k, v in sorted(found.items()))
        )
        return found

    # --- afterwards -----------------------------------------------------------------------

    def finish(self, event: float, settle_timeout: float = 600) -> dict[str, Any]:
        """Stop, then count what was acknowledged and lost; Airflow runs are waited for."""
        self.stop()
        end = self.stopped_at or time.time()
        figures: dict[str, Any] = {"runner": self.runner}
        if self.writer is not None:
            acks = self.writer.acks()
            figures["db"] = {
                "acknowledged": len(acks),
                "errors": self.writer.errors(),
                "lost": len(self.writer.lost(self.secrets.db, self.runner)),
                "outage_s": longest_wait([at for _, at in acks], event, end),
            }
            if self.writer.agent.stderr:
                figures["db"]["stderr"] = self.writer.agent.stderr[-500:]
        figures["broker"] = self._finish_broker(event, end)
        figures["airflow"] = self._finish_airflow(event, settle_timeout)
        if self.writer is not None:
            back = writes_back(self.writer.acks(), event, end)
            figures["airflow"]["after_db_s"] = self.first_task_after(back) if back else None
        return figures

    def _finish_broker(self, event: float, end: float) -> dict[str, Any]:
        assert self.publisher is not None
        lines = self.publisher.stop()
        oks = parse_oks(lines)
        ids = [i for i, _ in oks]
        result: dict[str, Any] = {
            "confirmed": len(oks),
            "errors": sum(1 for line in lines if line.startswith("err ")),
            "outage_s": longest_wait([at for _, at in oks], event, end),
        }
        if ids != list(range(len(ids))):
            result["note"] = "confirmed ids are not 0..N-1"
        if getattr(self.publisher, "stderr", ""):
            result["stderr"] = self.publisher.stderr[-500:]
        # broker_agent.py's consume phase, run over SSH on the runner (copied there again:
        # the broker drill removes it when it ends).
        broker.prepare_runner(self.runner)
        survivors_first = [self.runner, *(n for n in NODES if n != self.runner)]
        settings = {
            "phase": "consume",
            "urls": broker.urls(survivors_first, self.secrets.broker),
            "queue": self.queue,
            "messages": len(oks),
            "confirmed": len(oks),
            "retry_seconds": 60,
            "idle_seconds": 5,
        }
        drain = broker.ssh(
            self.runner,
            f"python3 {broker.AGENT_ON_NODE}",
            timeout=600,
            check=False,
            stdin=json.dumps(settings) + "\n",
        )
        out, err = drain.stdout, drain.stderr
        consumed = next(
            (json.loads(line) for line in out.splitlines() if '"consumed"' in line), None
        )
        if consumed is None:
            result["lost"] = None
            result["drain_error"] = err[-500:]
        else:
            result.update(
                lost=consumed["lost"],
                duplicates=consumed["duplicates"],
                received=consumed["received"],
            )
        return result

    def _finish_airflow(self, event: float, settle_timeout: float) -> dict[str, Any]:
        assert self.trigger is not None
        lines = self.trigger.stop()
        acked = self.acked_runs(lines)
        wanted = {r["run_id"]: r for r in acked}
        settling = time.monotonic()
        deadline = settling + settle_timeout
        runs: dict[str, dict[str, Any]] = {}
        slow: list[str] = []  # still not finished a minute after the workload stopped
        while True:
            runs = self.runs()
            unsettled = [rid for rid in wanted if runs.get(rid, {}).get("state") not in TERMINAL]
            if not unsettled or time.monotonic() > deadline:
                break
            if not slow and time.monotonic() - settling > 60:
                slow = unsettled[:5]
            time.sleep(5)
        lost = sorted(rid for rid in wanted if runs.get(rid, {}).get("state") != "success")
        first = self.first_new_run_start(event, lines)
        baseline = [
            runs[rid]["start"] - r["acked"]
            for rid, r in wanted.items()
            if r["sent"] < event and runs.get(rid, {}).get("start")
        ]
        return {
            "triggered": sum(1 for line in lines if line.split()[:1] in (["ok"], ["err"])),
            "acknowledged": len(acked),
            "errors": sum(1 for line in lines if line.startswith("err ")),
            "lost": len(lost),
            "lost_runs": {rid: runs.get(rid, {}).get("state", "missing") for rid in lost[:10]},
            "outage_s": round(first - event, 1) if first else None,
            "baseline_start_s": round(statistics.median(baseline), 1) if baseline else None,
            # A partition drill once waited 9.5 min here for runs that then succeeded.
            "settle_s": round(time.monotonic() - settling, 1),
            "slow_runs": {rid: runs.get(rid, {}) for rid in slow},
        }
