"""MonitoringTier: Prometheus and a clustered Alertmanager on every node, and the exporters.

Every node runs Prometheus (2.53), Alertmanager (0.28), the node exporter and the
postgres-exporter (Debian 13's packages), each on the node's mesh address only. Every node's
Prometheus scrapes every node's targets over the mesh, so that losing a node loses no view:

- node exporter (:9100): the machine, systemd units' states, and the textfile collector's
  files: WireGuard handshakes, Airflow's job heartbeats and RabbitMQ's cluster view (from
  airflow-ha-textfile-metrics, a timer), DAG sync's last success (the DAG sync script);
- postgres-exporter (:9187): the local PostgreSQL, over the socket as the role `prometheus`
  (peer authentication: no password exists);
- Patroni's REST API `/metrics`, etcd's client port `/metrics`, HAProxy's built-in exporter
  (the database tier's :8405), RabbitMQ's rabbitmq_prometheus (the broker tier's :15692);
- Prometheus and Alertmanager themselves.

Airflow's heartbeats come from its `job` table (read on this node's PostgreSQL, a replica
answers as well), not from OpenTelemetry: it is what Airflow itself judges a scheduler by, it
needs nothing added to Airflow, and a stopped process shows as a heartbeat that grows old
rather than as a series that vanishes (docs/observability.md).

The Alertmanagers form one gossip cluster on the mesh (:9094) and every Prometheus sends to all
three: an alert is delivered once, by whichever nodes are left. Receivers come from the stack
config (alertReceivers, their secret parts in the secret alertReceiverSecrets); without one,
alerts stay in the UI, reached through the SSH tunnel of the stack output.

Order per node: `monitoring-packages` (the daemons' /etc/default files, then the packages)
-> `monitoring` (configs checked with promtool / amtool, the exporter's role on the primary)
-> `monitoring-check`, once every node is configured (all targets up, 3 Alertmanagers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi

from .config import AlertReceiver, NodeSpec
from .config_schema import SECRET_PLACEHOLDER_RE
from .layout import MONITORING_USER, TEXTFILE_DIR
from .nodes import Node
from .remote import RemoteFile, render, render_output, run_step, timer_files
from .tier import TierArgs

PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
ALERTMANAGER_CLUSTER_PORT = 9094
NODE_EXPORTER_PORT = 9100
POSTGRES_EXPORTER_PORT = 9187

PACKAGES = (
    "prometheus",
    "prometheus-alertmanager",
    "prometheus-node-exporter",
    "prometheus-postgres-exporter",
    "curl",
    "dbus",  # the node exporter's systemd collector asks systemd over the system bus
)
PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"
RULES_FILE = "/etc/prometheus/airflow-ha-rules.yml"
# What prometheus.yml reads: RULES_FILE and other tiers' (the backup tier's).
RULES_GLOB = "/etc/prometheus/airflow-ha*-rules.yml"
ALERTMANAGER_CONFIG = "/etc/prometheus/alertmanager.yml"
DEFAULTS = {
    "prometheus": "/etc/default/prometheus",
    "prometheus-alertmanager": "/etc/default/prometheus-alertmanager",
    "prometheus-node-exporter": "/etc/default/prometheus-node-exporter",
    "prometheus-postgres-exporter": "/etc/default/prometheus-postgres-exporter",
}
TEXTFILE_SCRIPT = "/usr/local/sbin/airflow-ha-textfile-metrics"
TEXTFILE_UNIT = "airflow-ha-textfile-metrics"
UNIT_DIR = "/etc/systemd/system"
MESH_INTERFACE = "wg0"
TEXTFILE_INTERVAL_S = 15
RABBITMQ_EVERY_S = 60  # the textfile script's RabbitMQ part: two CLI calls, an Erlang VM each

# Modest: a week, at most 1 GB per node (three copies of the same data, one on each node).
RETENTION_TIME = "7d"
RETENTION_SIZE = "1GB"
SCRAPE_INTERVAL = "15s"
SCRAPE_TIMEOUT = "10s"
GROUP_WAIT, GROUP_INTERVAL, REPEAT_INTERVAL = "30s", "5m", "4h"
HANDSHAKE_STALE_S = 180  # WireGuard renews a live link's handshake every 2 minutes
HEARTBEAT_STALE_S = 45  # Airflow's jobs heartbeat every 5 s; the scheduler's check allows 30
DAG_SYNC_STALE_S = 300  # five runs of the every-minute cron missed
PSEUDO_FS = "tmpfs|ramfs|devtmpfs|overlay|squashfs|nsfs|fuse.lxcfs"
WAIT_SECONDS = 180

# Airflow's heart-beating jobs: the alert, the `job` table's job_type, what it is.
HEARTBEAT_JOBS = (
    {"alert": "AirflowSchedulerNotHeartbeating", "job_type": "SchedulerJob", "what": "scheduler"},
    {
        "alert": "AirflowDagProcessorNotHeartbeating",
        "job_type": "DagProcessorJob",
        "what": "DAG processor",
    },
    {"alert": "AirflowTriggererNotHeartbeating", "job_type": "TriggererJob", "what": "triggerer"},
)
# The units whose state the node exporter reports (its systemd collector).
# The long-running ones by name: a timer's oneshot service (the watchdog, the textfile metrics,
# etcd's leader placement) is inactive between its runs, so its timer is watched instead.
UNITS_PATTERN = (
    "(airflow-(api-server|scheduler|dag-processor|triggerer|worker|flower|log-firewall)|etcd"
    r"|patroni|haproxy|rabbitmq-server|csync2|wg-quick@wg0|prometheus.*)\.(service|socket)"
    r"|(airflow-watchdog|airflow-ha-textfile-metrics|airflow-ha-etcd-leader-away)\.timer"
)


@dataclass(frozen=True)
class ScrapeJob:
    """One Prometheus job: every node's `port`, at `path`."""

    name: str
    port: int
    path: str = "/metrics"


@dataclass(frozen=True)
class MonitoringArgs(TierArgs):
    """The monitoring tier's nodes, what the other tiers expose and the stack's settings."""

    # The other tiers' metrics endpoints (cluster.py names them from the tiers' constants).
    tier_jobs: Sequence[ScrapeJob]
    receivers: Sequence[AlertReceiver]
    receiver_secrets: Any  # JSON text (str or secret Output) or None
    runbook_url: str
    sync_standbys: int  # 1 with Patroni's synchronousMode, else 0
    max_lag_bytes: int  # Patroni's maximum_lag_on_failover
    postgres_port: int
    broker_vhost: str
    # Each node's step to wait for besides `after` (the tiers it scrapes), by node name.
    also_after: Mapping[str, Sequence[pulumi.Resource]] = field(default_factory=dict)


def jobs(args: MonitoringArgs) -> list[ScrapeJob]:
    return [
        ScrapeJob("node", NODE_EXPORTER_PORT),
        ScrapeJob("postgres", POSTGRES_EXPORTER_PORT),
        *args.tier_jobs,
        ScrapeJob("prometheus", PROMETHEUS_PORT),
        ScrapeJob("alertmanager", ALERTMANAGER_PORT),
    ]


def _members(nodes: Sequence[Node]) -> list[dict[str, str]]:
    return [{"name": n.spec.name, "mesh_address": n.spec.mesh_address} for n in nodes]


def prometheus_yml(args: MonitoringArgs, spec: NodeSpec) -> str:
    return render(
        "monitoring/prometheus.yml.j2",
        {
            "node": spec.name,
            "nodes": _members(args.nodes),
            "jobs": [vars(j) for j in jobs(args)],
            "rules_glob": RULES_GLOB,
            "alertmanager_port": ALERTMANAGER_PORT,
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_TIMEOUT,
        },
    )


def rules_yml(args: MonitoringArgs) -> str:
    """The alert rules: the same file on every node."""
    return render(
        "monitoring/rules.yml.j2",
        {
            "runbook": args.runbook_url,
            "node_count": len(args.nodes),
            "sync_standbys": args.sync_standbys,
            "max_lag_bytes": args.max_lag_bytes,
            "handshake_stale_s": HANDSHAKE_STALE_S,
            "heartbeat_stale_s": HEARTBEAT_STALE_S,
            "dag_sync_stale_s": DAG_SYNC_STALE_S,
            "heartbeat_jobs": list(HEARTBEAT_JOBS),
            "pseudo_fs": PSEUDO_FS,
        },
    )


def parse_receiver_secrets(text: str | None) -> dict[str, str] | None:
    """alertReceiverSecrets' value (None: not set or the offline render's placeholder)."""
    if text is None or SECRET_PLACEHOLDER_RE.match(text.strip()):
        return None
    parsed = json.loads(text)
    if not isinstance(parsed, dict):
        raise ValueError("airflow-ha:alertReceiverSecrets is not a JSON mapping")
    return parsed


def _secret_of(receiver: AlertReceiver, secrets: Mapping[str, str] | None) -> str | None:
    if secrets is None:
        return f"<secret:alertReceiverSecrets.{receiver.name}>"
    return secrets.get(receiver.name)


def receiver_context(
    receivers: Sequence[AlertReceiver], secrets: Mapping[str, str] | None
) -> list[dict[str, Any]]:
    """Each receiver's Alertmanager block: its config list's name and (key, YAML value) pairs.
    Values are JSON strings (JSON is YAML), so that no value can change the file's structure."""
    blocks = []
    for receiver in receivers:
        secret = _secret_of(receiver, secrets)
        if receiver.kind == "email":
            pairs = [
                ("to", receiver.field("to")),
                ("from", receiver.field("from")),
                ("smarthost", receiver.field("smarthost")),
                ("auth_username", receiver.field("authUsername")),
                ("auth_password", secret),
            ]
        elif receiver.kind == "slack":
            pairs = [("api_url", secret), ("channel", receiver.field("channel"))]
        else:
            pairs = [("url", secret)]
        blocks.append(
            {
                "name": json.dumps(receiver.name),
                "configs": f"{receiver.kind}_configs",
                "fields": [(k, json.dumps(v)) for k, v in pairs if v is not None],
            }
        )
    return blocks


def alertmanager_yml(args: MonitoringArgs, spec: NodeSpec) -> pulumi.Output[str]:
    """Secret when a receiver's secret part is in it."""
    blocks = pulumi.Output.from_input(args.receiver_secrets).apply(
        lambda text: receiver_context(args.receivers, parse_receiver_secrets(text))
    )
    return render_output(
        "monitoring/alertmanager.yml.j2",
        {
            "node": spec.name,
            "receivers": blocks,
            "group_wait": GROUP_WAIT,
            "group_interval": GROUP_INTERVAL,
            "repeat_interval": REPEAT_INTERVAL,
        },
    )


def defaults_files(args: MonitoringArgs, spec: NodeSpec) -> list[RemoteFile]:
    """The daemons' /etc/default files: their listen addresses and flags (no secrets)."""
    common = {"node": spec.name, "mesh_address": spec.mesh_address}
    peers = [n.spec.mesh_address for n in args.nodes if n.spec.name != spec.name]
    contexts = {
        "prometheus": {
            "config": PROMETHEUS_CONFIG,
            "port": PROMETHEUS_PORT,
            "data_dir": "/var/lib/prometheus/metrics2",
            "retention_time": RETENTION_TIME,
            "retention_size": RETENTION_SIZE,
        },
        "prometheus-alertmanager": {
            "config": ALERTMANAGER_CONFIG,
            "port": ALERTMANAGER_PORT,
            "cluster_port": ALERTMANAGER_CLUSTER_PORT,
            "data_dir": "/var/lib/prometheus/alertmanager",
            "peers": peers,
        },
        "prometheus-node-exporter": {
            "port": NODE_EXPORTER_PORT,
            "textfile_dir": TEXTFILE_DIR,
            "units_pattern": UNITS_PATTERN,
        },
        "prometheus-postgres-exporter": {
            "port": POSTGRES_EXPORTER_PORT,
            "user": MONITORING_USER,
            "postgres_port": args.postgres_port,
        },
    }
    templates = {
        "prometheus": "prometheus.default.j2",
        "prometheus-alertmanager": "alertmanager.default.j2",
        "prometheus-node-exporter": "node-exporter.default.j2",
        "prometheus-postgres-exporter": "postgres-exporter.default.j2",
    }
    return [
        RemoteFile(DEFAULTS[unit], render(f"monitoring/{templates[unit]}", common | ctx))
        for unit, ctx in contexts.items()
    ]


def textfile_files(args: MonitoringArgs, spec: NodeSpec) -> list[RemoteFile]:
    """The script that writes the textfile collector's metrics, and its timer."""
    context = {
        "node": spec.name,
        "script": TEXTFILE_SCRIPT,
        "interval": TEXTFILE_INTERVAL_S,
        "textfile_dir": TEXTFILE_DIR,
        "peers": [m for m in _members(args.nodes) if m["name"] != spec.name],
        "nodes": [n.spec.name for n in args.nodes],
        "job_types_json": json.dumps([j["job_type"] for j in HEARTBEAT_JOBS]),
        "vhost": args.broker_vhost,
        "rabbitmq_every": RABBITMQ_EVERY_S,
    }
    unit = f"{UNIT_DIR}/{TEXTFILE_UNIT}"
    return timer_files(TEXTFILE_SCRIPT, unit, "monitoring/textfile-metrics", context)


def mesh_unit_files() -> list[RemoteFile]:
    """Each daemon's drop-in: after WireGuard, and started again until its address is there."""
    return [
        RemoteFile(
            mesh_unit_path(unit),
            render(
                "monitoring/mesh-unit.conf.j2", {"unit": unit, "mesh_interface": MESH_INTERFACE}
            ),
        )
        for unit in DEFAULTS
    ]


def mesh_unit_path(unit: str) -> str:
    return f"{UNIT_DIR}/{unit}.service.d/airflow-ha-mesh.conf"


def services() -> list[dict[str, Any]]:
    """Each daemon and the files whose change restarts it."""
    return [
        {"unit": "prometheus", "files": [DEFAULTS["prometheus"], PROMETHEUS_CONFIG, RULES_FILE]},
        {
            "unit": "prometheus-alertmanager",
            "files": [DEFAULTS["prometheus-alertmanager"], ALERTMANAGER_CONFIG],
        },
        {"unit": "prometheus-node-exporter", "files": [DEFAULTS["prometheus-node-exporter"]]},
        {
            "unit": "prometheus-postgres-exporter",
            "files": [DEFAULTS["prometheus-postgres-exporter"]],
        },
    ]


def check_patterns(mesh_address: str) -> dict[str, str]:
    """The check step's regexes: the monitoring ports, and the one address they may use."""
    ports = sorted(
        {
            PROMETHEUS_PORT,
            ALERTMANAGER_PORT,
            ALERTMANAGER_CLUSTER_PORT,
            NODE_EXPORTER_PORT,
            POSTGRES_EXPORTER_PORT,
        }
    )
    return {
        "ports_pattern": ":(" + "|".join(str(p) for p in ports) + ")$",
        "allowed_pattern": "^" + mesh_address.replace(".", r"\.") + ":",
    }


class MonitoringTier(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("airflow-ha:monitoring:MonitoringTier", name, None, opts)
        self._args = args
        self._rules = rules_yml(args)
        configured = [self._configure(node, self._packages(node)) for node in args.nodes]
        self.ready: dict[str, pulumi.Resource] = {
            node.spec.name: self._check(node, configured) for node in args.nodes
        }
        first = min(args.nodes, key=lambda n: n.spec.mesh_index)
        self.prometheus_tunnel = _tunnel(first, PROMETHEUS_PORT, "Prometheus")
        self.alertmanager_tunnel = _tunnel(first, ALERTMANAGER_PORT, "Alertmanager")
        self.register_outputs(
            {
                "prometheusTunnel": self.prometheus_tunnel,
                "alertmanagerTunnel": self.alertmanager_tunnel,
            }
        )

    def _packages(self, node: Node) -> pulumi.Resource:
        name = node.spec.name
        return run_step(
            "monitoring-packages",
            node.access,
            render(
                "monitoring/packages.sh.j2",
                {"node": name, "packages": list(PACKAGES), "defaults": DEFAULTS},
            ),
            files=defaults_files(self._args, node.spec),
            parent=self,
            depends_on=[self._args.after[name], *self._args.also_after.get(name, ())],
        )

    def _configure(self, node: Node, packages: pulumi.Resource) -> pulumi.Resource:
        spec = node.spec
        context = {
            "node": spec.name,
            "user": MONITORING_USER,
            "textfile_dir": TEXTFILE_DIR,
            "prometheus_config": PROMETHEUS_CONFIG,
            "rules": RULES_FILE,
            "alertmanager_config": ALERTMANAGER_CONFIG,
            "unit_dir": UNIT_DIR,
            "timer": TEXTFILE_UNIT,
            "services": services(),
            "drop_ins": [mesh_unit_path(unit) for unit in DEFAULTS],
        }
        group = f"root:{MONITORING_USER}"
        return run_step(
            "monitoring",
            node.access,
            render("monitoring/monitoring.sh.j2", context),
            files=[
                RemoteFile(PROMETHEUS_CONFIG, prometheus_yml(self._args, spec), "0640", group),
                RemoteFile(RULES_FILE, self._rules, "0640", group),
                RemoteFile(ALERTMANAGER_CONFIG, alertmanager_yml(self._args, spec), "0640", group),
                *textfile_files(self._args, spec),
                *mesh_unit_files(),
            ],
            parent=self,
            depends_on=[packages],
        )

    def _check(self, node: Node, configured: list[pulumi.Resource]) -> pulumi.Resource:
        spec = node.spec
        context = {
            "node": spec.name,
            "mesh_address": spec.mesh_address,
            "prometheus_port": PROMETHEUS_PORT,
            "alertmanager_port": ALERTMANAGER_PORT,
            "node_count": len(self._args.nodes),
            "target_count": len(jobs(self._args)) * len(self._args.nodes),
            "wait_seconds": WAIT_SECONDS,
            **check_patterns(spec.mesh_address),
        }
        return run_step(
            "monitoring-check",
            node.access,
            render("monitoring/check.sh.j2", context),
            parent=self,
            depends_on=configured,
        )


def _tunnel(first: Node, port: int, what: str) -> pulumi.Output[str]:
    spec = first.spec
    return pulumi.Output.concat(
        f"ssh -N -L {port}:{spec.mesh_address}:{port} -p {spec.port} {spec.user}@",
        first.public_address,
        f"  # then open http://localhost:{port}/ ({what} of {spec.name}; every node has one)",
    )
