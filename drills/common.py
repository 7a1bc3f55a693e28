"""What the suite's drills share beyond drills/nodes.py: the cluster lock, the machines
(tools.localcloud), background agents on the nodes, and the whole cluster's health.

`wait_healthy` is the one definition of "the cluster is as we found it": all machines running
and none partitioned; every etcd member healthy; Patroni with one running leader, two streaming
replicas without lag and a synchronous standby; every RabbitMQ node seeing all three running;
on every node the Airflow units active and the api-server's health all "healthy"; a live
scheduler on each node. It records when each part first became healthy, which is how the drills
measure how long a failed part took to rejoin by itself.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from drills import failover
from drills.airflow import SERVICES
from drills.nodes import AGENTS, DRILL_DIR, NODES, Log, localcloud, say, ssh
from tools.localcloud import net, runtime
from tools.localcloud.lock import ClusterLock
from tools.localcloud.machines import MACHINES

LOCK_TIMEOUT_S = 4 * 3600  # other engineers' drills may hold the lock for a long time
SCHEDULER_ALIVE_S = 30  # Airflow's scheduler_health_check_threshold
DATABASE_UNITS = ("etcd", "patroni", "haproxy", "rabbitmq-server")
MONITORING_UNITS = (
    "prometheus", "prometheus-alertmanager", "prometheus-node-exporter",
    "prometheus-postgres-exporter",
)
PARTS = ("machines", "etcd", "patroni", "rabbitmq", "airflow", "monitoring")


def lock() -> ClusterLock:
    """/run/airflow-ha-cluster.lock, waited for as long as other drills hold it."""
    return ClusterLock(timeout=LOCK_TIMEOUT_S)


def parallel(function: Callable[[str], Any], nodes: list[str]) -> dict[str, Any]:
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        futures = {node: pool.submit(function, node) for node in nodes}
    return {node: future.result() for node, future in futures.items()}


def quiet_ssh(node: str, command: str, timeout: float = 60, stdin: str | None = None):
    """ssh that never raises: None when the node cannot be reached in time."""
    try:
        return ssh(node, command, timeout=timeout, stdin=stdin, check=False)
    except Exception:  # any failure means unreachable here
        return None


def mesh_addresses() -> dict[str, str]:
    out = ssh(first_reachable(), "getent hosts " + " ".join(NODES)).stdout.split("\n")
    found = {parts[1]: parts[0] for parts in (line.split() for line in out) if len(parts) >= 2}
    return {node: found[node] for node in NODES}


# --- the machines ---------------------------------------------------------------------------


def machine_state() -> dict[str, dict[str, bool]]:
    cut = net.partitioned()
    return {
        m.name: {"running": runtime.is_running(m), "partitioned": m.veth in cut} for m in MACHINES
    }


def partition(node: str, verify: bool = True) -> float:
    """Cut the machine off; returns when the command started (the cut happens a fraction of a
    second later; the check that the others cannot ping it takes another second or two)."""
    at = time.time()
    localcloud("partition", node, *([] if verify else ["--no-verify"]))
    return at


def heal(node: str) -> None:
    localcloud("heal", node)


def stop_machine(node: str) -> float:
    at = time.time()
    localcloud("stop", "--kill", node)
    return at


def start_machine(node: str) -> None:
    localcloud("start", node)


def restore_machines(before: dict[str, dict[str, bool]], log: Log = say) -> list[str]:
    """Heal what a drill partitioned and start what it stopped; return what was done."""
    done = []
    now = machine_state()
    for node in NODES:
        if now[node]["partitioned"] and not before[node]["partitioned"]:
            log(f"restore: healing {node}")
            heal(node)
            done.append(f"healed {node}")
        if before[node]["running"] and not now[node]["running"]:
            log(f"restore: starting {node}")
            start_machine(node)
            done.append(f"started {node}")
    return done


# --- agents: background processes on a node that log to a file there ------------------------


class Agent:
    """Copy a script to a node and run it there detached (its own session), logging to a file.

    `script` is a file name in drills/agents (e.g. "monitor.sh") or a path to a script;
    its arguments are `args` then the log's path. The secret part of its input (`stdin`: a dict
    becomes JSON) reaches it in the environment variable `env_var`, read from SSH's stdin, never
    on a command line; `env` adds plain variables.
    """

    def __init__(
        self,
        node: str,
        script: str | Path,
        stdin: dict | str | None = None,
        args: tuple[str, ...] = (),
        env_var: str = "AIRFLOW_HA_DRILL_SETTINGS",
        env: dict[str, str] | None = None,
    ) -> None:
        self.node = node
        source = script if isinstance(script, Path) else AGENTS / script
        remote = f"{DRILL_DIR}/{source.name}"
        ssh(node, f"install -d -m 0700 {DRILL_DIR} && cat > {remote}", stdin=source.read_text())
        self.log = f"{DRILL_DIR}/{source.stem}-{uuid.uuid4().hex[:10]}.log"
        interpreter = "python3" if source.suffix == ".py" else "bash"
        argv = " ".join(shlex.quote(a) for a in (*args, self.log))
        plain = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        secret = json.dumps(stdin) if isinstance(stdin, dict) else (stdin or "")
        self.pid = ssh(
            node,
            f"IFS= read -r {env_var}; export {env_var}; "
            f"{plain} nohup setsid {interpreter} {remote} {argv} </dev/null >{self.log}.err 2>&1 & "
            "echo $!",
            stdin=secret + "\n",
        ).stdout.strip()
        self.stopped: list[str] | None = None
        self.stderr = ""

    def lines(self) -> list[str]:
        return ssh(self.node, f"cat {self.log} 2>/dev/null || true").stdout.splitlines()

    def first_ok_after(self, moment: float) -> float | None:
        """The time of the first `ok` line acknowledged after `moment` (its last field)."""
        out = ssh(
            self.node,
            f"awk '$1 == \"ok\" && $NF > {moment:.3f} {{ print $NF; exit }}' "
            f"{self.log} 2>/dev/null || true",
        ).stdout.strip()
        return float(out) if out else None

    def stop(self) -> list[str]:
        """Stop it (TERM, then KILL after 10 s) and return its log; idempotent."""
        if self.stopped is None:
            out = ssh(
                self.node,
                f"kill -TERM -- -{self.pid} 2>/dev/null || kill -TERM {self.pid} 2>/dev/null; "
                f"for _ in $(seq 100); do kill -0 {self.pid} 2>/dev/null || break; sleep 0.1; "
                f"done; kill -KILL -- -{self.pid} 2>/dev/null; "
                f"test -f {self.log} || echo 'the log {self.log} is gone' >&2; "
                f"cat {self.log} 2>/dev/null; tail -n 5 {self.log}.err >&2 2>/dev/null; "
                f"rm -f {self.log} {self.log}.err; true",
                timeout=60,
            )
            self.stopped = out.stdout.splitlines()
            self.stderr = out.stderr.strip()
        return self.stopped


# --- the cluster's health -------------------------------------------------------------------

NODE_PROBE = r"""
units="{units}"
echo "units=$(systemctl is-active $units | tr '\n' ' ')"
echo "monitoring=$(systemctl is-active {monitoring} | tr '\n' ' ')"
if ETCDCTL_API=3 timeout 5 etcdctl --endpoints=http://127.0.0.1:2379 endpoint health \
    >/dev/null 2>&1; then echo etcd=healthy; else echo etcd=unhealthy; fi
echo "rabbit=$(timeout 20 rabbitmqctl -q cluster_status --formatter json 2>/dev/null | python3 -c \
    'import json, sys; print(",".join(sorted(json.load(sys.stdin)["running_nodes"])))' \
    2>/dev/null)"
echo "api=$(curl -s -m 5 http://{mesh}:8080/api/v2/monitor/health | python3 -c \
    'import json, sys; d = json.load(sys.stdin); print(",".join(sorted({{v.get("status", "?")
    for v in d.values()}})))' 2>/dev/null)"
"""

SCHEDULERS_SQL = (
    "SELECT string_agg(DISTINCT hostname, ',' ORDER BY hostname) FROM job "
    "WHERE job_type = 'SchedulerJob' AND state = 'running' "
    f"AND latest_heartbeat > now() - interval '{SCHEDULER_ALIVE_S} seconds'"
)


def node_probe(node: str, mesh: str) -> dict[str, str] | None:
    units = " ".join((*DATABASE_UNITS, *SERVICES))
    script = NODE_PROBE.format(units=units, monitoring=" ".join(MONITORING_UNITS), mesh=mesh)
    result = quiet_ssh(node, script, timeout=45)
    if result is None or result.returncode != 0:
        return None
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def members_from(nodes: list[str]) -> list[dict[str, Any]] | None:
    """`patronictl list` asked of the first of `nodes` that answers."""
    for node in nodes:
        result = quiet_ssh(node, failover.PATRONI_LIST_JSON, timeout=20)
        if result is not None and result.returncode == 0 and result.stdout.strip():
            return json.loads(result.stdout)
    return None


def repair_stuck_replicas(log: Log = say) -> list[str]:
    """Last resort after a drill, when a Patroni member neither leads nor streams: re-clone it
    (`patronictl reinit`). A manual step: the drill that needed it fails."""
    listing = members_from(NODES) or []
    leader = failover.leader_of(listing)
    done = []
    for member in listing:
        if leader and member["Role"] != "Leader" and member["State"] != "streaming":
            log(f"  REPAIR by hand: patronictl reinit {member['Member']} ({member['State']})")
            ssh(
                leader,
                f"{failover.PATRONICTL} reinit {member['Cluster']} {member['Member']} --force",
                timeout=120,
            )
            done.append(f"patronictl reinit {member['Member']}")
    return done


class Watch(threading.Thread):
    """Polls `check` in the background until it is true; `seconds` = when, from `since`."""

    def __init__(
        self, check: Callable[[], bool], since: float, timeout: float = 300, every: float = 2
    ) -> None:
        super().__init__(daemon=True)
        self.check, self.since, self.timeout, self.every = check, since, timeout, every
        self.seconds: float | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                if self.check():
                    self.seconds = round(time.time() - self.since, 1)
                    return
            except Exception:  # a failed look counts as "not yet"
                pass
            time.sleep(self.every)


def live_schedulers(node: str, password: str) -> set[str]:
    try:
        out = failover.psql(node, SCHEDULERS_SQL, password, timeout=30).strip()
    except Exception:  # any failure means unreachable here
        return set()
    return set(out.split(",")) if out else set()


def snapshot(mesh: dict[str, str], password: str) -> dict[str, Any]:
    """Which parts of the cluster are healthy right now, with the evidence."""
    machines = machine_state()
    reachable = [n for n in NODES if machines[n]["running"] and not machines[n]["partitioned"]]
    probes = parallel(lambda n: node_probe(n, mesh[n]), reachable)
    probes.update({n: None for n in NODES if n not in reachable})
    answered = [n for n in NODES if probes[n] is not None]
    everyone = ",".join(sorted(f"rabbit@{n}" for n in NODES))
    listing = members_from(answered) or []
    schedulers = live_schedulers(answered[0], password) if answered else set()
    parts = {
        "machines": len(reachable) == len(NODES),
        "etcd": all(p is not None and p.get("etcd") == "healthy" for p in probes.values()),
        "patroni": failover.is_healthy(listing) if listing else False,
        "rabbitmq": all(p is not None and p.get("rabbit") == everyone for p in probes.values()),
        "airflow": schedulers == set(NODES)
        and all(
            p is not None
            and p.get("units", "").split() == ["active"] * (len(DATABASE_UNITS) + len(SERVICES))
            and p.get("api") == "healthy"
            for p in probes.values()
        ),
        # Prometheus and Alertmanager watch the cluster: they must come back by themselves too.
        "monitoring": all(
            p is not None and p.get("monitoring", "").split() == ["active"] * len(MONITORING_UNITS)
            for p in probes.values()
        ),
    }
    return {"parts": parts, "probes": probes, "patroni": listing, "schedulers": sorted(schedulers)}


def why_not(state: dict[str, Any]) -> str:
    """The unhealthy parts of a snapshot, with the evidence."""
    parts = []
    for part, ok in state["parts"].items():
        if ok:
            continue
        if part == "patroni":
            parts.append(
                "patroni "
                + ", ".join(f"{m['Member']} {m['Role']} {m['State']}" for m in state["patroni"])
            )
        elif part == "airflow":
            parts.append(f"airflow (schedulers alive {state['schedulers']})")
        else:
            parts.append(part)
    probes = {
        n: {k: v for k, v in (p or {"ssh": "unreachable"}).items() if v not in ("healthy",)}
        for n, p in state["probes"].items()
    }
    return f"{'; '.join(parts)}; nodes {probes}"


def wait_healthy(
    mesh: dict[str, str],
    password: str,
    since: float | None = None,
    timeout: float = 900,
    log: Log = say,
) -> dict[str, Any]:
    """Until every part is healthy at once; seconds from `since` until each part was first
    healthy (`parts_s`) and until all were (`all_s`). Raises TimeoutError naming what is not."""
    since = time.time() if since is None else since
    first: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        state = snapshot(mesh, password)
        now = time.time()
        for part, ok in state["parts"].items():
            if ok and part not in first:
                first[part] = round(now - since, 1)
        if all(state["parts"].values()):
            return {"all_s": round(now - since, 1), "parts_s": first}
        if time.monotonic() > deadline:
            raise TimeoutError(f"cluster not healthy after {timeout:.0f} s: {why_not(state)}")
        if time.monotonic() - last_report > 30:
            log(f"  waiting for a healthy cluster: {why_not(state)}")
            last_report = time.monotonic()
        time.sleep(2)


# --- what the report says about the setup ---------------------------------------------------

VERSIONS = r"""
dpkg-query -W -f='${Package}=${Version}\n' postgresql-17 patroni etcd-server rabbitmq-server \
    haproxy 2>/dev/null
echo "apache-airflow=$(/opt/airflow/venv/bin/python -c \
    'import importlib.metadata as m; print(m.version("apache-airflow"))' 2>/dev/null)"
echo "server_version=$(runuser -u postgres -- psql -X -tA -c 'show server_version' 2>/dev/null)"
echo "etcd_version=$(etcd --version 2>/dev/null | head -n 1 | awk '{print $3}')"
echo "rabbitmq_version=$(rabbitmqctl -q version 2>/dev/null)"
. /etc/os-release; echo "os=$PRETTY_NAME"
"""


def first_reachable() -> str:
    state = machine_state()
    for node in NODES:
        if state[node]["running"] and not state[node]["partitioned"]:
            return node
    raise RuntimeError("no machine is running: python3 -m tools.localcloud up")


def versions(node: str | None = None) -> dict[str, str]:
    out = ssh(node or first_reachable(), VERSIONS, timeout=60).stdout
    raw = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {
        "postgresql": raw.get("server_version") or raw.get("postgresql-17", "?"),
        "patroni": raw.get("patroni", "?"),
        "etcd": raw.get("etcd_version") or raw.get("etcd-server", "?"),
        "rabbitmq": raw.get("rabbitmq_version") or raw.get("rabbitmq-server", "?"),
        "haproxy": raw.get("haproxy", "?"),
        "airflow": raw.get("apache-airflow", "?"),
        "node_os": raw.get("os", "?"),
    }


def host_machine() -> dict[str, Any]:
    meminfo = dict(
        line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    return {
        "cores": os.cpu_count(),
        "ram_gb": round(int(meminfo["MemTotal"].split()[0]) / 1024 / 1024, 1),
        "cpu": cpu,
        "kernel": platform.release(),
        "host_os": next(
            (
                line.split("=", 1)[1].strip('"')
                for line in Path("/etc/os-release").read_text().splitlines()
                if line.startswith("PRETTY_NAME=")
            ),
            "?",
        ),
        "nodes": f"{len(NODES)} systemd-nspawn machines on this host (tools.localcloud)",
    }
