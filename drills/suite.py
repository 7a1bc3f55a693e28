"""The drills. Each takes the cluster lock, waits until the cluster is healthy, starts the steady
workload (drills/workload.py) on a node that survives, disturbs the cluster, waits until
every workload succeeds again, puts back what it disturbed (try/finally) and waits until every
part has rejoined by itself (drills/common.py wait_healthy). Each returns one record:

  outage_s   {db, broker, airflow}: seconds each workload could not succeed (see workload.py)
  lost       {rows, messages, dag_runs}: acknowledged, and missing afterwards (must all be 0)
  rejoin_s   the failed part back by itself (what that means is in each drill's docstring)
  checks     named yes/no facts the drill proves (all must be true)
"""

from __future__ import annotations

import contextlib
import itertools
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from drills import backup, broker, common, failover
from drills.airflow import Api
from drills.common import Agent
from drills.nodes import NODES, Log, say, ssh
from drills.workload import DbWriter, Secrets, Workloads, ensure_probe_dag

BASELINE_S = 5  # the workload runs this long before the event
AIRFLOW_SCHEDULING_UNITS = ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
JOB_TYPES = {
    "airflow-scheduler": "SchedulerJob",
    "airflow-dag-processor": "DagProcessorJob",
    "airflow-triggerer": "TriggererJob",
}


@dataclass
class Suite:
    secrets: Secrets
    mesh: dict[str, str]
    dag_interval: float = 5.0
    log: Log = say
    tuned: dict[str, int] = field(default_factory=failover.stack_timings)

    @contextlib.contextmanager
    def workload(
        self, runner: str, name: str, broker_first: str, db: bool = True
    ) -> Iterator[Workloads]:
        """The steady workload on `runner`, started, and stopped however the block ends; the
        publisher tries `broker_first`'s broker first. db=False: the drill runs the failover
        drill's own writer instead."""
        wl = Workloads(
            self.secrets,
            runner,
            [broker_first, *others(broker_first)],
            name,
            db=db,
            dag_interval=self.dag_interval,
            log=self.log,
        )
        wl.start()
        try:
            yield wl
        finally:
            wl.stop()

    def healthy(self, **kwargs: Any) -> dict[str, Any]:
        """common.wait_healthy for this suite's cluster (since=, timeout=, log=)."""
        return common.wait_healthy(self.mesh, self.secrets.db, **kwargs)

    def settle(self, wl: Workloads, event: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """After the event: every workload succeeds again, then the whole cluster is healthy;
        (the health wait, the workload's figures)."""
        wl.wait_recovered(event)
        health = self.healthy(since=event)
        return health, wl.finish(event)


def healthy_leader() -> tuple[str, str | None, list[dict[str, Any]]]:
    listing = failover.wait_healthy()
    leader = failover.leader_of(listing)
    assert leader is not None
    sync = next((m["Member"] for m in listing if m["Role"] == "Sync Standby"), None)
    return leader, sync, listing


def others(*nodes: str | None) -> list[str]:
    return [n for n in NODES if n not in nodes]


def rejoined(suite: Suite, since: float, timeout: float = 600) -> dict[str, Any]:
    """wait_healthy, but a part that does not rejoin is a result (all_s None), not an error."""
    try:
        return suite.healthy(since=since, timeout=timeout)
    except TimeoutError as exc:
        suite.log(f"  NOT REJOINED: {exc}")
        return {"all_s": None, "parts_s": {}, "not_rejoined": str(exc)}


def workload_outages(figures: dict[str, Any], db: float | None = None) -> dict[str, float | None]:
    return {
        "db": figures.get("db", {}).get("outage_s") if db is None else db,
        "broker": figures["broker"].get("outage_s"),
        "airflow": figures["airflow"].get("outage_s"),
        # The first probe task to start after the database took writes again.
        "airflow_after_db": figures["airflow"].get("after_db_s"),
    }


def workload_lost(figures: dict[str, Any], rows: int | None = None) -> dict[str, int | None]:
    return {
        "rows": figures.get("db", {}).get("lost") if rows is None else rows,
        "messages": figures["broker"].get("lost"),
        "dag_runs": figures["airflow"].get("lost"),
    }


def record_outcome(
    record: dict[str, Any],
    victim: str,
    runner: str,
    figures: dict[str, Any],
    health: dict[str, Any],
    rejoin_s: float | None,
    details: dict[str, Any],
    db: dict[str, Any] | None = None,
    rows: int | None = None,
) -> None:
    """What every drill records: outages and losses per workload, how long the failed part
    took to rejoin, and the details with the workload's figures and the health wait last.
    `db`: drills/failover.py's result where it ran its own writer (its outage and lost rows are
    the database's); `rows`: lost rows counted by the drill itself."""
    record.update(
        victim=victim,
        runner=runner,
        outage_s=workload_outages(figures, db=db["outage_s"] if db else None),
        lost=workload_lost(figures, rows=db["lost"] if db else rows),
        rejoin_s=rejoin_s,
        healthy_after_s=health["all_s"],
        details={**details, "workload": figures, "health": health},
    )


def run(suite: Suite, name: str, label: str, body: Callable[[Suite, dict], None]) -> dict:
    """One drill under the lock, with the cluster healthy before and after; never raises."""
    record: dict[str, Any] = {"drill": name, "label": label, "checks": {}}
    with common.lock():
        before = common.machine_state()
        started = time.time()
        record["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
        try:
            suite.log(f"== {label}")
            suite.healthy(timeout=900, log=suite.log)
            ensure_probe_dag(NODES[0], suite.log)
            body(suite, record)
        except Exception as exc:  # one failed drill must not stop the others
            record["error"] = f"{type(exc).__name__}: {exc}"
            suite.log(f"  FAILED: {record['error']}")
            traceback.print_exc()
        finally:
            try:  # leave the cluster healthy for the next drill, by hand if it must be
                done = common.restore_machines(before, suite.log)
                if done:
                    record["restored_after_failure"] = done
                try:
                    suite.healthy(timeout=120, log=say)
                except TimeoutError:
                    repaired = common.repair_stuck_replicas(suite.log)
                    if repaired:
                        record["repaired_by_hand"] = repaired
                        record["checks"]["every part rejoined without a manual step"] = False
                    suite.healthy(timeout=600, log=say)
            except Exception as exc:
                record.setdefault("error", f"restore: {type(exc).__name__}: {exc}")
                record["restore_error"] = f"{type(exc).__name__}: {exc}"
        record["seconds"] = round(time.time() - started, 1)
    lost = record.get("lost", {})
    record["checks"].setdefault("nothing acknowledged lost", all(v == 0 for v in lost.values()))
    record["ok"] = "error" not in record and all(record["checks"].values())
    suite.log(
        f"  {label}: outage {record.get('outage_s')}, lost {lost}, rejoin "
        f"{record.get('rejoin_s')} s, {'ok' if record['ok'] else 'NOT OK'} "
        f"({record['seconds']} s)"
    )
    return record


# --- PostgreSQL ------------------------------------------------------------------------------


def db_crash(timings: dict[str, int] | None) -> Callable[[Suite, dict], None]:
    """kill -9 of the primary's Patroni and PostgreSQL (drills/failover.py crash_drill:
    kept down until the writer commits again, then started). Patroni's timings are set for the
    drill with patronictl edit-config and restored after; None = the stack's own.
    rejoin_s: the old primary's Patroni started -> it streams from the new primary."""

    def body(suite: Suite, record: dict) -> None:
        original = {k: v for k, v in failover.dynamic_config().items() if k in failover.TIMING_KEYS}
        wanted = timings or suite.tuned
        record["timings"] = wanted
        changed = {k: v for k, v in wanted.items() if original.get(k) != v}
        if changed:
            suite.log(f"  patronictl edit-config: {changed} (was {original})")
            failover.set_timings(wanted)
        try:
            leader, _sync, _ = healthy_leader()
            runner = others(leader)[0]  # crash_drill's writer node: the first survivor
            with suite.workload(runner, "dbcrash", runner, db=False) as wl:
                drill = failover.crash_drill(suite.secrets.db)
                killed = drill["killed_at"]
                suite.log(
                    f"  killed {drill['victim']}'s Patroni+PostgreSQL; {drill['new_leader']} took "
                    f"over, writes back after {drill['outage_s']} s; rejoined {drill['rejoin_s']} s"
                )
                health, figures = suite.settle(wl, killed)
                # The crash drill's own writer found the database back (the workload has none).
                if drill["outage_s"] is not None:
                    figures["airflow"]["after_db_s"] = wl.first_task_after(
                        killed + drill["outage_s"])
        finally:
            if changed:
                failover.set_timings({k: original[k] for k in changed})
                suite.log(f"  restored Patroni timings {original}")
        details = {"failover": drill}
        record_outcome(
            record, drill["victim"], runner, figures, health, drill["rejoin_s"], details, db=drill
        )
        record["checks"].update(
            {
                "the synchronous standby was promoted": drill["new_leader"] == drill["sync"],
                "old primary rejoined as a replica": drill["rejoin_s"] is not None,
            }
        )

    return body


def switchover(suite: Suite, record: dict) -> None:
    """A planned `patronictl switchover` (drills/failover.py switchover_drill).
    outage db: the longest gap between commits. rejoin_s: the switchover began -> the old
    primary streams as a replica and the whole cluster is healthy."""
    leader, _sync, _ = healthy_leader()
    runner = others(leader)[0]
    with suite.workload(runner, "switchover", runner, db=False) as wl:
        time.sleep(BASELINE_S)
        before = time.time()
        drill = failover.switchover_drill(suite.secrets.db)
        event = drill.get("begun_at", before + 3)
        suite.log(
            f"  switchover {drill['old_leader']} -> {drill['new_leader']}: longest gap "
            f"{drill['outage_s']} s"
        )
        health, figures = suite.settle(wl, event)
    rejoin_s = health["parts_s"].get("patroni")
    details = {"switchover": drill}
    record_outcome(record, leader, runner, figures, health, rejoin_s, details, db=drill)
    record["checks"]["new leader elected"] = drill["new_leader"] not in (None, leader)


# --- RabbitMQ --------------------------------------------------------------------------------


def broker_crash(suite: Suite, record: dict) -> None:
    """kill -9 of a broker's Erlang VM (drills/broker.py kill_broker) while the
    publisher is connected to it and the queue's leader lives there. rejoin_s: kill -> the
    node runs in the cluster again, restarted by systemd (broker.wait_rejoin)."""
    leader, _sync, _ = healthy_leader()
    victim = others(leader)[-1]
    runner = others(leader, victim)[0]
    try:
        with suite.workload(runner, "broker", victim) as wl:
            time.sleep(BASELINE_S)
            killed = broker.kill_broker(victim)
            event, mono = time.time(), time.monotonic()
            suite.log(f"  killed rabbit@{victim} (beam pid {killed.get('pid')})")
            wl.wait_recovered(event)
            back = broker.wait_rejoin(victim, killed, mono)
            health = suite.healthy(since=event)
            figures = wl.finish(event)
    finally:
        common.quiet_ssh(
            victim,
            "systemctl is-active --quiet rabbitmq-server || systemctl start --no-block "
            "rabbitmq-server",
        )
    record_outcome(
        record, victim, runner, figures, health, back.get("rejoin_seconds"), {"rejoin": back}
    )
    record["checks"].update(
        {
            "broker rejoined": bool(back.get("rejoined")),
            "restarted by systemd": bool(back.get("restarted_by_systemd")),
        }
    )


# --- Airflow schedulers ----------------------------------------------------------------------

JOBS_SQL = (
    "SELECT job_type, hostname, extract(epoch FROM start_date) FROM job WHERE state = 'running' "
    f"AND latest_heartbeat > now() - interval '{common.SCHEDULER_ALIVE_S} seconds' "
    "AND start_date > to_timestamp({since})"
)


def jobs_back(
    runner: str, password: str, event: float, expected: set[tuple[str, str]], timeout: float = 300
) -> dict[tuple[str, str], float]:
    """Seconds from the event until each expected (job type, host) had a new job heartbeating."""
    back: dict[tuple[str, str], float] = {}
    deadline = time.monotonic() + timeout
    while set(back) != expected and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            out = failover.psql(runner, JOBS_SQL.format(since=event), password)
            for line in out.splitlines():
                kind, host, at = line.split("|")
                if (kind, host) in expected and (kind, host) not in back:
                    back[(kind, host)] = round(float(at) - event, 1)
        time.sleep(2)
    return back


def scheduler_kill(scope: str) -> Callable[[Suite, dict], None]:
    """kill -9 (systemctl kill --signal=SIGKILL: the unit's whole process tree) of
    one: one node's scheduler; node: every scheduling process of one node (scheduler,
    dag-processor, triggerer); all: the scheduler of every node at once.
    outage airflow: kill -> the first task of a DAG run created after the kill starts.
    rejoin_s: kill -> every killed process is back (a new job row heartbeating), restarted by
    systemd (Restart=always)."""

    def body(suite: Suite, record: dict) -> None:
        leader, _sync, _ = healthy_leader()
        victim = others(leader)[0]
        runner = others(victim)[0]
        targets = NODES if scope == "all" else [victim]
        units = AIRFLOW_SCHEDULING_UNITS if scope == "node" else ("airflow-scheduler",)
        unit_list = " ".join(units)
        restarts = "for u in " + unit_list + "; do systemctl show -p NRestarts --value $u; done"
        expected = {(JOB_TYPES[u], n) for u in units for n in targets}
        try:
            with suite.workload(runner, f"sched{scope}", runner) as wl:
                time.sleep(BASELINE_S + suite.dag_interval)
                before = common.parallel(lambda n: ssh(n, restarts).stdout.split(), targets)
                event = time.time()
                common.parallel(
                    lambda n: ssh(n, f"systemctl kill --signal=SIGKILL {unit_list}"), targets
                )
                suite.log(f"  kill -9 of {unit_list} on {', '.join(targets)}")
                wl.wait_recovered(event)
                back = jobs_back(runner, suite.secrets.db, event, expected)
                after = common.parallel(lambda n: ssh(n, restarts).stdout.split(), targets)
                health = suite.healthy(since=event)
                figures = wl.finish(event)
        finally:
            for node in targets:
                common.quiet_ssh(node, f"systemctl start {unit_list}")
        restarted = all(
            int(a) > int(b) for n in targets for a, b in zip(after[n], before[n], strict=True)
        )
        record_outcome(
            record,
            ",".join(targets),
            runner,
            figures,
            health,
            rejoin_s=max(back.values()) if set(back) == expected else None,
            details={
                "killed": list(units),
                "back_s": {f"{k}@{h}": s for (k, h), s in sorted(back.items())},
            },
        )
        record["checks"].update(
            {
                "every killed process back": set(back) == expected,
                "restarted by systemd": restarted,
            }
        )

    return body


# --- whole machines ------------------------------------------------------------------------


def machine_stop(suite: Suite, record: dict) -> None:
    """A whole machine killed like a power cut (tools.localcloud stop --kill) while a probe DAG
    run's task runs on it; the machine is the synchronous standby's (the primary must switch
    to the other replica). Started again once every workload succeeds again.
    rejoin_s: machine started -> every part of the cluster healthy (nothing done by hand)."""
    leader, sync, _ = healthy_leader()
    victim = sync or others(leader)[0]
    runner = others(leader, victim)[0]
    started_at = None
    api = Api(runner)
    with suite.workload(runner, "machine", victim) as wl:
        time.sleep(BASELINE_S)
        # A probe task the victim finished: its log is read through the runner while the
        # victim is down (from the object storage: the victim's log server is gone with it).
        deadline = time.monotonic() + 180
        done: list[str] = []
        while not done and time.monotonic() < deadline:
            done = wl.finished_on(victim)
            time.sleep(1)
        path = backup.finished_log_path(api, done[-1]) if done else None
        with_node, upload_s = backup.uploaded_log(api, path) if path else ("", None)
        deadline = time.monotonic() + 180
        in_flight: list[str] = []
        while not in_flight and time.monotonic() < deadline:
            in_flight = wl.running_on(victim)
            time.sleep(1)
        event = common.stop_machine(victim)
        wl.in_effect_at = time.time()
        suite.log(f"  {victim} killed (power cut) with probe runs {in_flight} running on it")
        try:
            without_node = backup.read_log(api, path) if path else ""
            recovered = wl.wait_recovered(event)
            time.sleep(BASELINE_S)
        finally:
            started_at = time.time()
            common.start_machine(victim)
            suite.log(f"  {victim} started again")
        health = rejoined(suite, started_at)
        figures = wl.finish(event)
    details = {
        "in_flight_on_victim": in_flight,
        "down_s": round(started_at - event, 1),
        "recovered": recovered,
        "task_log": {"run_id": done[-1] if done else None, "upload_s": upload_s},
    }
    record_outcome(record, victim, runner, figures, health, health["all_s"], details)
    record["lost"]["logs"] = 0 if backup.log_whole(without_node) else 1
    record["checks"]["a DAG run was in flight on the machine"] = bool(in_flight)
    record["checks"]["a probe task had finished on the machine"] = bool(done)
    record["checks"].update(backup.log_checks(with_node, without_node))
    record["checks"]["every part rejoined by itself"] = health["all_s"] is not None


def split_brain_check(acks: dict[str, list[float]], victim: str) -> dict[str, Any]:
    """From every node's own writer: who acknowledged commits when. One handover, from the
    isolated primary to one new primary, with no acknowledgement of the old after the first of
    the new, is what "no split brain" means here."""
    timeline = sorted((at, node) for node, times in acks.items() for at in times)
    handovers = [(a, b) for (_, a), (_, b) in itertools.pairwise(timeline) if a != b]
    periods = {n: (min(t), max(t)) for n, t in acks.items() if t}
    new = [n for n in periods if n != victim]
    result: dict[str, Any] = {
        "acknowledged": {n: len(t) for n, t in acks.items()},
        "periods": {n: [round(a, 3), round(b, 3)] for n, (a, b) in periods.items()},
        "handovers": [f"{a}->{b}" for a, b in handovers],
    }
    if victim in periods and len(new) == 1:
        result["victim_last_ack"] = round(periods[victim][1], 3)
        result["new_primary"] = new[0]
        result["new_primary_first_ack"] = round(periods[new[0]][0], 3)
        result["handover_gap_s"] = round(periods[new[0]][0] - periods[victim][1], 2)
    result["no_split_brain"] = (
        len(handovers) == 1 and handovers[0][0] == victim and result.get("handover_gap_s", -1) > 0
    )
    return result


def monitor_check(
    lines: dict[str, list[str]], victim: str, event: float, healed: float
) -> dict[str, Any]:
    """What each node saw of itself (drills/agents/monitor.sh) during the partition."""

    def parse(text: list[str]) -> list[tuple[float, dict[str, str]]]:
        rows = []
        for line in text:
            fields = line.split()
            with contextlib.suppress(ValueError):
                rows.append((float(fields[0]), dict(f.split("=", 1) for f in fields[1:])))
        return rows

    samples = {node: parse(text) for node, text in lines.items()}

    def during(node: str, key: str) -> list[tuple[float, str]]:
        return [(t, s[key]) for t, s in samples.get(node, []) if key in s and event < t < healed]

    def last(node: str, key: str) -> str | None:
        values = [s[key] for _, s in samples.get(node, []) if key in s]
        return values[-1] if values else None

    paused = [t for t, v in during(victim, "diag") if v == "stopped"]
    closed = [t for t, v in during(victim, "amqp") if v == "closed"]
    demoted = [t for t, v in during(victim, "patroni") if v != "primary/running"]
    # A paused RabbitMQ closes its AMQP listener; a lone `rabbitmq-diagnostics is_running` that
    # failed (it starts an Erlang VM per call, 15 s at most, on a host the partition keeps busy)
    # is not a pause: one such sample, with the listener open and no pause in the broker's log,
    # failed a quick run. The failed calls are still counted, for the record.
    def on_survivors(key: str, value: str) -> int:
        survivors = [node for node in samples if node != victim]
        return sum(1 for node in survivors for _, v in during(node, key) if v == value)

    survivors_paused = on_survivors("amqp", "closed")
    survivors_diag_failed = on_survivors("diag", "stopped")
    return {
        "victim_samples": {k: len(during(victim, k)) for k in ("diag", "amqp", "patroni", "etcd")},
        "rabbit_paused_after_s": round(paused[0] - event, 1) if paused else None,
        "rabbit_paused_samples": len(paused),
        "amqp_closed_after_s": round(closed[0] - event, 1) if closed else None,
        "patroni_demoted_after_s": round(demoted[0] - event, 1) if demoted else None,
        "etcd_unhealthy_samples": sum(1 for _, v in during(victim, "etcd") if v != "healthy"),
        "survivor_rabbit_paused_samples": survivors_paused,
        "survivor_rabbit_diag_failed_samples": survivors_diag_failed,
        "victim_after": {k: last(victim, k) for k in ("diag", "amqp", "patroni", "etcd")},
    }


def partition(suite: Suite, record: dict) -> None:
    """The PostgreSQL primary's machine cut off from the others and the host (tools.localcloud
    partition: every frame of its veth dropped at the bridge, WireGuard included) for longer
    than Patroni's ttl and RabbitMQ's net_ticktime, then healed. Besides the steady workload on a
    survivor, a writer on EVERY node commits every 100 ms straight to that node's own PostgreSQL
    (mesh address :5432), and a monitor on every node records RabbitMQ's, Patroni's and etcd's
    state as the node itself sees it; both logs are read after healing.
    rejoin_s: healed -> every part healthy again, nothing done by hand."""
    leader, sync, _ = healthy_leader()
    victim = leader
    runner = others(victim)[0]
    ttl = int(failover.dynamic_config().get("ttl", 30))
    monitors: dict[str, Agent] = {}
    direct: dict[str, DbWriter] = {}
    healed_at = None
    try:
        with suite.workload(runner, "partition", victim) as wl:
            monitors = {n: Agent(n, "monitor.sh", args=(suite.mesh[n],)) for n in NODES}
            direct = {
                n: DbWriter(n, suite.secrets.db, host=suite.mesh[n], port=5432) for n in NODES
            }
            time.sleep(BASELINE_S)
            event = common.partition(victim)
            wl.in_effect_at = time.time()
            suite.log(f"  {victim} (the primary) partitioned")
            survivors = others(victim)

            def promoted() -> bool:
                return failover.leader_of(common.members_from(survivors) or []) in survivors

            def rabbit_gone() -> bool:
                running = broker.running_nodes(runner)
                return bool(running) and f"rabbit@{victim}" not in running

            watches = {
                "promoted": common.Watch(promoted, event),
                "rabbit": common.Watch(rabbit_gone, event),
            }
            for watch in watches.values():
                watch.start()
            try:
                recovered = wl.wait_recovered(event, names=("db", "broker"))
                for watch in watches.values():
                    watch.join()
                rabbit_down = watches["rabbit"].seconds
                suite.log(
                    f"  a survivor was primary after {watches['promoted'].seconds} s; the "
                    f"survivors saw rabbit@{victim} down after {rabbit_down} s"
                )
                # Past Patroni's ttl, and long enough for the cut-off RabbitMQ to pause and be seen.
                hold_until = event + max(ttl + 10, (rabbit_down or 0) + 20)
                time.sleep(max(0.0, hold_until - time.time()))
            finally:
                healed_at = time.time()
                common.heal(victim)
                suite.log(f"  {victim} healed after {healed_at - event:.0f} s")
            health = rejoined(suite, healed_at)
            direct_acks = {n: w.acks() for n, w in direct.items()}
            monitor_lines = {n: m.stop() for n, m in monitors.items()}
            figures = wl.finish(event)
    finally:
        for writer in direct.values():
            with contextlib.suppress(Exception):
                writer.stop()
        for monitor in monitors.values():
            with contextlib.suppress(Exception):
                monitor.stop()
    brain = split_brain_check({n: [at for _, at in a] for n, a in direct_acks.items()}, victim)
    direct_lost = {n: len(w.lost(suite.secrets.db, runner)) for n, w in direct.items()}
    seen = monitor_check(monitor_lines, victim, event, healed_at)
    rows = figures["db"]["lost"] + sum(direct_lost.values())
    record_outcome(
        record,
        victim,
        runner,
        figures,
        health,
        rejoin_s=health["all_s"],
        details={
            "partition_s": round(healed_at - event, 1),
            "ttl": ttl,
            "new_primary_after_s": watches["promoted"].seconds,
            "survivors_saw_rabbit_down_after_s": rabbit_down,
            "recovered": recovered,
            "split_brain": brain,
            "direct_writers_lost": direct_lost,
            "monitor": seen,
        },
        rows=rows,
    )
    last = seen["victim_after"]
    record["checks"].update(
        {
            "no split brain": brain["no_split_brain"],
            "the isolated primary's acknowledged commits all present": direct_lost.get(victim) == 0,
            "the new primary was the synchronous standby": brain.get("new_primary") == sync,
            "RabbitMQ on the isolated node paused": seen["rabbit_paused_samples"] > 0,
            "RabbitMQ on the majority kept running": seen["survivor_rabbit_paused_samples"] == 0,
            # The shared health check saw its RabbitMQ running in the cluster; its own last
            # `is_running` sample is not asked again (on a busy host that call times out: a
            # quick run failed on one taken as the cluster had already turned healthy).
            "the isolated node rejoined by itself": health["all_s"] is not None
            and last["amqp"] == "listening"
            and last["etcd"] == "healthy"
            and (last["patroni"] or "").startswith("replica"),
        }
    )


def region_lost(suite: Suite, record: dict) -> None:
    """A region lost: the primary's machine partitioned AND killed at once while every workload
    runs; restored (healed, started) once every workload succeeds again.
    RTO = outage_s per workload; RPO = lost (acknowledged data lost, 0 with synchronous mode).
    rejoin_s: restored -> every part healthy, nothing done by hand."""
    leader, sync, _ = healthy_leader()
    victim = leader
    runner = others(victim)[0]
    restored_at = None
    with suite.workload(runner, "region", victim) as wl:
        time.sleep(BASELINE_S)
        event = common.partition(victim, verify=False)
        common.stop_machine(victim)
        wl.in_effect_at = time.time()
        suite.log(f"  region of {victim} (the primary) lost: partitioned and killed")
        try:
            recovered = wl.wait_recovered(event)
            listing = common.members_from(others(victim)) or []
            new = failover.leader_of(listing)
            time.sleep(BASELINE_S)
        finally:
            common.heal(victim)
            restored_at = time.time()
            common.start_machine(victim)
            suite.log(f"  {victim} healed and started after {restored_at - event:.0f} s")
        health = rejoined(suite, restored_at)
        figures = wl.finish(event)
    details = {"down_s": round(restored_at - event, 1), "new_primary": new, "recovered": recovered}
    record_outcome(record, victim, runner, figures, health, health["all_s"], details)
    record["checks"]["the synchronous standby took over"] = new == sync
    record["checks"]["every part rejoined by itself"] = health["all_s"] is not None


# --- the list ---------------------------------------------------------------------------------


def catalogue(quick: bool) -> list[tuple[str, str, Callable[[Suite, dict], None]]]:
    """(name, label, body) in the order they run. --quick (CI, which must stay under 45
    minutes) skips the Patroni-defaults crash drill (the full suite's comparison), the
    scheduler drills, the switchover, the broker crash and the task log (covered as the list
    says), the
    region lost (machine-stop kills a machine, the partition isolates the primary's) and the
    total loss (it rebuilds every machine)."""
    defaults = failover.PATRONI_DEFAULTS
    tuned = failover.stack_timings()

    def timing(t: dict[str, int]) -> str:
        return f"{t['ttl']}/{t['loop_wait']}/{t['retry_timeout']}"

    drills = [
        (
            "db-crash-defaults",
            f"PostgreSQL primary crash, Patroni defaults {timing(defaults)}",
            db_crash(defaults),
        ),
        ("db-crash", f"PostgreSQL primary crash, stack timings {timing(tuned)}", db_crash(None)),
        ("switchover", "planned switchover (patronictl switchover)", switchover),
        ("broker-crash", "broker node crash while publishing (kill -9)", broker_crash),
        ("scheduler-one", "one scheduler killed (kill -9)", scheduler_kill("one")),
        ("scheduler-node", "all scheduling processes of one node killed", scheduler_kill("node")),
        ("scheduler-all", "the schedulers of every node killed at once", scheduler_kill("all")),
        ("machine-stop", "whole machine killed during a DAG run, then started", machine_stop),
        ("partition", "network partition of the primary's machine, then healed", partition),
        ("region-lost", "region lost: primary's machine partitioned + killed", region_lost),
        ("backup-basics", "backups on the async replica across a switchover (diff, switch, diff)",
         backup.basics),
        ("pitr", "point-in-time restore to before a destructive DELETE", backup.pitr),
        ("task-log", "a task's log read with the node that ran it stopped", backup.task_log),
        ("total-loss", "every machine and disk lost, restored from the repository",
         backup.total_loss),
    ]
    if quick:
        # The quick form keeps one drill per kind of loss: backup-basics makes a switchover
        # under the workload (the switchover drill's event), machine-stop loses a broker and
        # a node's schedulers with its machine (broker-crash's and scheduler-node's).
        # machine-stop also reads a log the killed machine's task wrote (task-log's check).
        full_only = ("db-crash-defaults", "scheduler-all", "scheduler-one", "region-lost",
                     "total-loss", "switchover", "broker-crash", "scheduler-node", "task-log")
        drills = [d for d in drills if d[0] not in full_only]
    return drills
