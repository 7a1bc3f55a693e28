"""One-screen health of a stack: `python -m tools.status --stack S`.

Asks one node's Prometheus and Alertmanager (their HTTP APIs, through an SSH tunnel to the node
with the lowest meshIndex; every node's Prometheus sees every node) and prints, per node and
tier, what is up, who leads (etcd leader, Patroni primary and sync standby), replica lag,
RabbitMQ alarms and partitions, Airflow heartbeats, then the firing alerts.

    python -m tools.status --stack local                  # the local machines (their SSH key)
    python -m tools.status --stack dev --host 203.0.113.7  # a cloud node's public address
    python -m tools.status --prometheus http://localhost:9090 --alertmanager http://localhost:9093
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

PROMETHEUS_PORT = 9090  # components/monitoring.py
ALERTMANAGER_PORT = 9093
TIERS = ("node", "etcd", "patroni", "postgres", "haproxy", "rabbitmq", "prometheus", "alertmanager")
QUERIES = {
    "up": "up",
    "etcd_leader": "etcd_server_is_leader == 1",
    "primary": "patroni_primary == 1",
    "sync": "patroni_sync_standby == 1",
    "lag": "scalar(max(patroni_xlog_location)) - (patroni_xlog_replayed_location"
    " and on(instance) patroni_replica == 1)",
    "memory_alarm": "rabbitmq_alarms_memory_used_watermark > 0",
    "disk_alarm": "rabbitmq_alarms_free_disk_space_watermark > 0",
    "partitions": "airflow_ha_rabbitmq_partitions > 0",
    "heartbeat": "time() - max by (hostname, job_type)"
    " (airflow_ha_airflow_job_latest_heartbeat_timestamp_seconds)",
}
JOB_NAMES = {
    "SchedulerJob": "scheduler",
    "DagProcessorJob": "dag-proc",
    "TriggererJob": "triggerer",
}

Fetch = Callable[[str], Any]  # URL -> parsed JSON


@dataclass
class NodeHealth:
    up: dict[str, bool] = field(default_factory=dict)  # tier -> up
    roles: list[str] = field(default_factory=list)
    lag_bytes: float | None = None
    alarms: list[str] = field(default_factory=list)
    heartbeats: dict[str, float] = field(default_factory=dict)  # job -> age in s


def _samples(answer: Any) -> list[tuple[dict[str, str], float]]:
    return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]


def collect(results: dict[str, Any]) -> dict[str, NodeHealth]:
    """Per node, from the answers to QUERIES (name -> Prometheus' JSON)."""
    nodes: dict[str, NodeHealth] = {}

    def node(name: str) -> NodeHealth:
        return nodes.setdefault(name, NodeHealth())

    for labels, value in _samples(results["up"]):
        node(labels.get("node", labels.get("instance", "?"))).up[labels["job"]] = value == 1
    for query, role in (("etcd_leader", "etcd leader"), ("primary", "primary"), ("sync", "sync")):
        for labels, _ in _samples(results[query]):
            node(labels["node"]).roles.append(role)
    for labels, value in _samples(results["lag"]):
        node(labels["node"]).lag_bytes = value
    for query, alarm in (
        ("memory_alarm", "memory"),
        ("disk_alarm", "disk"),
        ("partitions", "partition"),
    ):
        for labels, _ in _samples(results[query]):
            node(labels["node"]).alarms.append(alarm)
    for labels, value in _samples(results["heartbeat"]):
        job = JOB_NAMES.get(labels["job_type"], labels["job_type"])
        node(labels["hostname"]).heartbeats[job] = value
    return nodes


def _age(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 3600 else ">1h"


def _node_lines(name: str, health: NodeHealth) -> list[str]:
    tiers = " ".join(f"{t}:{'up' if health.up[t] else 'DOWN'}" for t in TIERS if t in health.up)
    lines = [f"{name}  {tiers}"]
    details = []
    if health.roles:
        details.append("leads: " + ", ".join(health.roles))
    if health.lag_bytes is not None:
        details.append(f"replica lag {health.lag_bytes / 1024:.0f} KiB")
    if health.alarms:
        details.append("RabbitMQ ALARM: " + ", ".join(health.alarms))
    if health.heartbeats:
        details.append(
            "heartbeats " + " ".join(f"{j} {_age(a)}" for j, a in sorted(health.heartbeats.items()))
        )
    lines += [f"    {d}" for d in details]
    return lines


def render(nodes: dict[str, NodeHealth], alerts: list[dict[str, Any]]) -> str:
    """The screen: one block per node, then the firing alerts (or that there are none)."""
    lines: list[str] = []
    for name in sorted(nodes):
        lines += _node_lines(name, nodes[name])
    if not any("primary" in h.roles for h in nodes.values()):
        lines.append("NO PostgreSQL PRIMARY")
    lines.append("")
    firing = sorted(
        alerts, key=lambda a: (a["labels"].get("severity", ""), a["labels"]["alertname"])
    )
    if not firing:
        lines.append("no alerts firing")
    for alert in firing:
        labels = alert["labels"]
        where = labels.get("node") or labels.get("hostname") or labels.get("queue") or "cluster"
        summary = alert.get("annotations", {}).get("summary", "")
        lines.append(
            f"FIRING {labels.get('severity', '?'):8} {labels['alertname']} ({where}) "
            f"since {alert.get('startsAt', '?')[:19]}: {summary}"
        )
    return "\n".join(lines) + "\n"


def status(prometheus: str, alertmanager: str, fetch: Fetch) -> str:
    results = {
        name: fetch(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": q}))
        for name, q in QUERIES.items()
    }
    alerts = fetch(f"{alertmanager}/api/v2/alerts?active=true&silenced=false&inhibited=false")
    return render(collect(results), alerts)


def fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def tunnel(ssh: list[str], mesh_address: str) -> Iterator[tuple[str, str]]:
    """Prometheus' and Alertmanager's URLs through `ssh -N -L` to the node."""
    ports = {remote: _free_port() for remote in (PROMETHEUS_PORT, ALERTMANAGER_PORT)}
    forwards = [a for r, p in ports.items() for a in ("-L", f"{p}:{mesh_address}:{r}")]
    proc = subprocess.Popen([*ssh[:1], "-N", "-o", "ExitOnForwardFailure=yes", *forwards, *ssh[1:]])
    try:
        url = f"http://127.0.0.1:{ports[PROMETHEUS_PORT]}"
        for _ in range(30):
            with contextlib.suppress(OSError):
                fetch_json(f"{url}/api/v1/status/buildinfo")
                break
            if proc.poll() is not None:
                raise SystemExit(f"ssh exited with {proc.returncode}")
            time.sleep(0.5)
        yield url, f"http://127.0.0.1:{ports[ALERTMANAGER_PORT]}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ssh_target(stack: str, host: str | None) -> tuple[list[str], str]:
    """The ssh command (its options and login) to the lowest-meshIndex node, and its mesh
    address, from the committed stack file."""
    from tools.engine import load_stack_file, stack_path

    values = load_stack_file(stack_path(stack))
    first = min(values["nodes"], key=lambda n: int(n["meshIndex"]))
    mesh = ipaddress.ip_network(values.get("meshCidr", "10.42.0.0/24"))
    address = str(mesh[int(first["meshIndex"])])
    host = host or first.get("host")
    if host is None:
        raise SystemExit(
            f"{first['name']} is a cloud node: give its public address with --host "
            "(pulumi stack output nodes)"
        )
    user = first.get("user", "root" if first["cloud"] != "aws" else "admin")
    ssh = ["ssh", "-p", str(first.get("port", 22))]
    if stack == "local":
        from tools.localcloud.machines import SSH_KEY_PATH, SSH_OPTIONS

        ssh += ["-i", str(SSH_KEY_PATH), *SSH_OPTIONS]
    return [*ssh, f"{user}@{host}"], address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.status", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stack", default="local")
    parser.add_argument("--host", help="the first node's public address (cloud nodes)")
    parser.add_argument("--prometheus", help="Prometheus' URL (no tunnel then)")
    parser.add_argument("--alertmanager", help="Alertmanager's URL (with --prometheus)")
    args = parser.parse_args(argv)
    if args.prometheus:
        sys.stdout.write(status(args.prometheus, args.alertmanager or args.prometheus, fetch_json))
        return 0
    ssh, address = ssh_target(args.stack, args.host)
    with tunnel(ssh, address) as (prometheus, alertmanager):
        sys.stdout.write(status(prometheus, alertmanager, fetch_json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
