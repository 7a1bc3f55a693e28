"""PostgreSQL failover drill on the local machines: `python3 -m drills.failover`.

    python3 -m drills.failover [--runs N] [--timings default|tuned|both] [--json PATH]

For each set of Patroni timings (Patroni's defaults ttl 30 / loop_wait 10 / retry_timeout 10,
and the local stack's tuned ones), set at run time in the cluster's dynamic config with
`patronictl edit-config` (no redeploy) and restored afterwards, it runs N crash drills and one
planned switchover. A crash drill:

  1. a writer on a surviving node (drills/agents/failover_writer.py, Debian's python3-psycopg2)
     commits one row every 100 ms through that node's HAProxy 127.0.0.1:5000;
  2. the primary's Patroni and PostgreSQL are killed with SIGKILL (`systemctl kill -s KILL
     patroni`) and kept down, as if the node had died;
  3. once the writer commits again, the old primary's Patroni is started: it must rejoin as a
     replica by itself (pg_rewind), and the writer is stopped.

It prints, per drill and as medians per timing set:
  outage s    kill -> the first commit acknowledged after it
  lost        rows whose commit was acknowledged but that are missing afterwards (must be 0)
  rejoin s    start of the old primary's Patroni -> it is streaming as a replica again
and for the switchover the longest gap between two acknowledged commits.

The airflow user's password comes from the local deploy's state (.deploy-state/local.json) or
$AIRFLOW_HA_DB_PASSWORD. Rows go to the schema airflow_ha_drill of the airflow database, which
is dropped at the end. Each timing set holds /run/airflow-ha-cluster.lock (a few minutes).
Nothing is asserted here: tests/cluster/test_database.py runs one drill and asserts on it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from drills import runbook
from drills.nodes import (
    AGENTS,
    DRILL_DIR,
    DRILL_LOCK_TIMEOUT_S,
    NODES,
    REPO,
    deploy_secret,
    ssh,
)
from drills.runbook import PATRONICTL
from tools.localcloud.lock import ClusterLock

PASSWORD_SECRET = "airflow-db-password/password"  # tools.deploy's key for the RandomPassword
WRITER = AGENTS / "failover_writer.py"
WRITER_ON_NODE = f"{DRILL_DIR}/failover_writer.py"
PATRONI_LIST_JSON = runbook.command("patroni-list") + " -f json"  # the runbook's, machine-readable
SCHEMA = "airflow_ha_drill"
PATRONI_DEFAULTS = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10}
TIMING_KEYS = tuple(PATRONI_DEFAULTS)


def db_password() -> str:
    return deploy_secret(PASSWORD_SECRET, "AIRFLOW_HA_DB_PASSWORD", "airflow database password")


def stack_timings(stack: str = "local") -> dict[str, int]:
    """The stack's tuned timings (what the deploy puts in the dynamic config)."""
    # Read directly: the benchmark runs on the host's python3, without the venv's pulumi.
    stack_file = yaml.safe_load((REPO / "stacks" / f"Pulumi.{stack}.yaml").read_text())
    raw = stack_file["config"].get("airflow-ha:patroni") or {}
    return {
        "ttl": int(raw.get("ttl", 30)),
        "loop_wait": int(raw.get("loopWait", 10)),
        "retry_timeout": int(raw.get("retryTimeout", 10)),
    }


def psql(node: str, sql: str, password: str, port: int = 5000, timeout: float = 60) -> str:
    """Run SQL as the airflow user through the node's HAProxy; the password goes on stdin."""
    command = (
        "IFS= read -r PGPASSWORD; export PGPASSWORD; "
        f"psql -X -q -tA -v ON_ERROR_STOP=1 -h 127.0.0.1 -p {port} -U airflow -d airflow "
        f"-c {shlex.quote(sql)}"
    )
    return ssh(node, command, stdin=password + "\n", timeout=timeout).stdout


# --- Patroni's view -----------------------------------------------------------------------


def members() -> list[dict[str, Any]]:
    """`patronictl list` as JSON, asked of the first node that answers."""
    for node in NODES:
        result = ssh(node, PATRONI_LIST_JSON, check=False, timeout=30)
        if result.returncode == 0 and result.stdout.strip():
            return json.loads(result.stdout)
    raise RuntimeError("no node answered patronictl list")


def leader_of(listing: list[dict[str, Any]]) -> str | None:
    leaders = [m["Member"] for m in listing if m["Role"] == "Leader" and m["State"] == "running"]
    return leaders[0] if len(leaders) == 1 else None


def is_healthy(listing: list[dict[str, Any]], sync: bool = True) -> bool:
    """One running leader; every other member streaming with no lag; a sync standby if sync."""
    if len(listing) != len(NODES) or leader_of(listing) is None:
        return False
    replicas = [m for m in listing if m["Role"] != "Leader"]
    if any(m["State"] != "streaming" or m.get("Lag in MB", 0) not in (0, "0") for m in replicas):
        return False
    return not sync or any(m["Role"] == "Sync Standby" for m in replicas)


def wait_healthy(timeout: float = 300) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        listing = members()
        if is_healthy(listing):
            return listing
        if time.monotonic() > deadline:
            raise TimeoutError(f"cluster not healthy after {timeout:.0f}s: {listing}")
        time.sleep(1)


def dynamic_config() -> dict[str, Any]:
    return yaml.safe_load(ssh(NODES[0], runbook.command("patroni-show-config")).stdout)


def set_timings(timings: dict[str, int]) -> None:
    """Change the timings in the dynamic config; wait until every member ran a loop with them."""
    before = dynamic_config()
    settings = " ".join(f"-s {k}={v}" for k, v in timings.items())
    ssh(NODES[0], f"{PATRONICTL} edit-config --force --quiet {settings}")
    time.sleep(max(int(before.get("loop_wait", 10)), timings.get("loop_wait", 10)) + 2)


# --- the writer ---------------------------------------------------------------------------


def prepare(password: str) -> None:
    """The writer on every node (any may be the survivor) and the drill's table."""
    source = WRITER.read_text()
    for node in NODES:
        ssh(node, f"mkdir -p {DRILL_DIR} && cat > {WRITER_ON_NODE}", stdin=source)
    node = leader_of(members()) or NODES[0]
    psql(
        node,
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}; CREATE TABLE IF NOT EXISTS {SCHEMA}.writes "
        "(run text NOT NULL, seq integer NOT NULL, at timestamptz NOT NULL DEFAULT now(), "
        "PRIMARY KEY (run, seq))",
        password,
    )


def cleanup(password: str) -> None:
    node = leader_of(members()) or NODES[0]
    psql(node, f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE", password)


class Writer:
    """One writer process on a node, started in the background over SSH."""

    def __init__(self, node: str, password: str) -> None:
        self.node = node
        self.run = uuid.uuid4().hex[:12]
        self.log = f"{DRILL_DIR}/writer-{self.run}.log"
        self.pid = ssh(
            node,
            "IFS= read -r AIRFLOW_HA_DB_PASSWORD; export AIRFLOW_HA_DB_PASSWORD; "
            f"nohup python3 {WRITER_ON_NODE} {self.run} {self.log} "
            "</dev/null >/dev/null 2>&1 & echo $!",
            stdin=password + "\n",
        ).stdout.strip()
        self.stopped: list[Entry] | None = None

    def first_ok_started_after(self, moment: float) -> float | None:
        """When the first commit attempted after `moment` was acknowledged."""
        out = ssh(
            self.node,
            f"awk '$1 == \"ok\" && $3 > {moment:.3f} {{ print $4; exit }}' {self.log}",
        ).stdout.strip()
        return float(out) if out else None

    def stop(self) -> list[Entry]:
        """Stop it (once); its log as (ok|err, seq, started, done)."""
        if self.stopped is None:
            ssh(
                self.node,
                f"kill -TERM {self.pid} 2>/dev/null || true; "
                f"for _ in $(seq 50); do kill -0 {self.pid} 2>/dev/null || break; sleep 0.1; done",
            )
            lines = ssh(self.node, f"cat {self.log} && rm -f {self.log}").stdout.splitlines()
            self.stopped = [
                (p[0], int(p[1]), float(p[2]), float(p[3]))
                for p in (line.split()[:4] for line in lines)
            ]
        return self.stopped


Entry = tuple[str, int, float, float]


def acknowledged(log: list[Entry]) -> list[tuple[int, float]]:
    """(seq, when acknowledged) of every acknowledged commit."""
    return [(seq, done) for kind, seq, _, done in log if kind == "ok"]


def lost_rows(writer: Writer, log: list[Entry], password: str) -> list[int]:
    """Acknowledged seqs that the database does not have (read through the primary)."""
    stored = psql(
        writer.node, f"SELECT seq FROM {SCHEMA}.writes WHERE run = '{writer.run}'", password
    )
    present = {int(line) for line in stored.split()}
    return sorted(seq for seq, _ in acknowledged(log) if seq not in present)


def longest_gap(acks: list[tuple[int, float]], start: float, end: float) -> float:
    times = [at for _, at in acks if start <= at <= end]
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


# --- the drills ---------------------------------------------------------------------------


def crash_drill(password: str, baseline_s: float = 3.0, timeout_s: float = 180) -> dict[str, Any]:
    """Kill the primary's Patroni + PostgreSQL, measure, bring it back as a replica."""
    listing = wait_healthy()
    victim = leader_of(listing)
    assert victim is not None
    sync_standby = next((m["Member"] for m in listing if m["Role"] == "Sync Standby"), None)
    writer_node = next(n for n in NODES if n != victim)
    writer = Writer(writer_node, password)
    result: dict[str, Any] = {"victim": victim, "writer": writer_node, "sync": sync_standby}
    try:
        time.sleep(baseline_s)
        # Stopped after the kill, so that systemd does not restart it: the node stays "dead"
        # until a new primary serves writes (restarted within the ttl, the old primary would
        # still hold the leader lock and simply come back as primary).
        killed_at = float(
            ssh(
                victim,
                "systemctl kill --signal=SIGKILL patroni.service; date +%s.%N; "
                "systemctl stop patroni.service",
            ).stdout.strip()
        )
        # Outage: the kill -> the first commit that was attempted after it and acknowledged.
        first, new_leader = None, None
        deadline = time.monotonic() + timeout_s
        while (first is None or new_leader in (None, victim)) and time.monotonic() < deadline:
            time.sleep(0.5)
            first = first or writer.first_ok_started_after(killed_at)
            new_leader = leader_of(members())
        result["killed_at"] = killed_at
        result["outage_s"] = round(first - killed_at, 2) if first else None
        result["new_leader"] = new_leader
        time.sleep(2)  # a few commits on the new primary before the old one comes back
    finally:
        started = time.time()
        ssh(victim, "systemctl start patroni.service")
        try:
            result["rejoin_s"] = wait_rejoin(victim, started)
        finally:
            log = writer.stop()
    acks = acknowledged(log)
    result["acknowledged"] = len(acks)
    result["errors"] = sum(1 for entry in log if entry[0] == "err")
    result["lost"] = len(lost_rows(writer, log, password))
    result["longest_gap_s"] = round(longest_gap(acks, killed_at - 1, time.time()), 2)
    return result


def wait_rejoin(victim: str, started: float, timeout_s: float = 300) -> float | None:
    """Seconds from the old primary's start until it streams from the new one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        mine = [m for m in members() if m["Member"] == victim]
        if mine and mine[0]["Role"] != "Leader" and mine[0]["State"] == "streaming":
            return round(time.time() - started, 1)
        time.sleep(1)
    return None


def switchover_drill(password: str, baseline_s: float = 3.0) -> dict[str, Any]:
    """A planned `patronictl switchover`: the longest gap between acknowledged commits."""
    listing = wait_healthy()
    old = leader_of(listing)
    # wait_healthy: one leader and a synchronous standby, the only member synchronous mode
    # lets Patroni promote; the runbook (section 5) names it, and so does the drill.
    sync = next(m["Member"] for m in listing if m["Role"] == "Sync Standby")
    assert old is not None
    writer_node = next(n for n in NODES if n != old)
    writer = Writer(writer_node, password)
    switch = runbook.command("patroni-switchover", current_leader=old, sync_standby=sync)
    try:
        time.sleep(baseline_s)
        begun = time.time()
        ssh(writer_node, switch, timeout=120)
        command_s = time.time() - begun
        deadline = time.monotonic() + 60
        while (
            writer.first_ok_started_after(time.time() - 0.5) is None and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        time.sleep(2)
    finally:
        log = writer.stop()
    acks = acknowledged(log)
    listing = wait_healthy()
    return {
        "old_leader": old,
        "new_leader": leader_of(listing),
        "begun_at": round(begun, 3),
        "outage_s": round(longest_gap(acks, begun - 1, time.time()), 2),
        "command_s": round(command_s, 1),
        "acknowledged": len(acks),
        "lost": len(lost_rows(writer, log, password)),
    }


def run_set(
    label: str, timings: dict[str, int], runs: int, password: str, restore: dict[str, Any]
) -> dict[str, Any]:
    """N crash drills and a switchover with `timings`; `restore` is back before the lock goes."""
    with ClusterLock(timeout=DRILL_LOCK_TIMEOUT_S):
        wait_healthy()
        try:
            set_timings(timings)
            name = f"{label} {timings['ttl']}/{timings['loop_wait']}/{timings['retry_timeout']}"
            print(f"\n== {name} (ttl/loop_wait/retry_timeout) ==", flush=True)
            drills = []
            for index in range(runs):
                drill = crash_drill(password)
                drills.append(drill)
                print(
                    f"  kill {index + 1}/{runs}: primary {drill['victim']} killed, "
                    f"{drill['new_leader']} took over; outage {drill['outage_s']} s, "
                    f"acknowledged {drill['acknowledged']}, lost {drill['lost']}, "
                    f"rejoin {drill['rejoin_s']} s",
                    flush=True,
                )
            switchover = switchover_drill(password)
            print(
                f"  switchover {switchover['old_leader']} -> {switchover['new_leader']}: "
                f"longest gap {switchover['outage_s']} s (command {switchover['command_s']} s), "
                f"lost {switchover['lost']}",
                flush=True,
            )
        finally:
            set_timings(restore)
    return {"label": name, "timings": timings, "drills": drills, "switchover": switchover}


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if known else None


def summary(sets: list[dict[str, Any]]) -> str:
    lines = [
        "",
        f"{'timings':<22} {'kills':>5} {'outage median s':>16} {'(min-max)':>13} "
        f"{'lost':>5} {'rejoin median s':>16} {'switchover s':>13}",
    ]
    for s in sets:
        outages = [d["outage_s"] for d in s["drills"]]
        known = [o for o in outages if o is not None]
        spread = f"({min(known):.1f}-{max(known):.1f})" if known else "(-)"
        lost = sum(d["lost"] for d in s["drills"]) + s["switchover"]["lost"]
        lines.append(
            f"{s['label']:<22} {len(s['drills']):>5} {_median(outages)!s:>16} {spread:>13} "
            f"{lost:>5} {_median([d['rejoin_s'] for d in s['drills']])!s:>16} "
            f"{s['switchover']['outage_s']:>13}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m drills.failover", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="kills per timing set (default 3)")
    parser.add_argument("--timings", choices=("default", "tuned", "both"), default="both")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    password = db_password()
    original = {k: v for k, v in dynamic_config().items() if k in TIMING_KEYS}
    sets_to_run = []
    if args.timings in ("default", "both"):
        sets_to_run.append(("defaults", PATRONI_DEFAULTS))
    if args.timings in ("tuned", "both"):
        sets_to_run.append(("tuned", stack_timings()))
    print(f"Patroni timings now: {original}; writer commits every 0.1 s through HAProxy :5000")
    results = []
    prepare(password)
    try:
        for label, timings in sets_to_run:
            results.append(run_set(label, timings, args.runs, password, restore=original))
    finally:
        cleanup(password)
    print(f"Patroni timings restored to {original}", flush=True)
    print(summary(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
