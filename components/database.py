"""DatabaseTier: etcd, Patroni + PostgreSQL, and HAProxy to the primary on every node.

Per node, in order: `database-packages` (one apt run) -> `etcd` (a member of a static
cluster of all nodes, on the mesh) -> `patroni` (PostgreSQL run by Patroni, which keeps the
leader lock in etcd) -> `airflow-db` (on whichever node is primary: the Airflow role and
database, and the stack's Patroni timings and PostgreSQL parameters in the cluster's dynamic
config; on every node: wait until Airflow's login works through the local HAProxy). `haproxy`
(127.0.0.1:5000 -> the primary, :5001 -> the replicas, following Patroni's REST API) runs
beside etcd and Patroni; `airflow-db` needs it.

Those steps write configuration and start what is not running; they restart nothing. What a
change needs is done by restart steps chained node after node in meshIndex order (each returns
only once its node is healthy again): `etcd-restart` (a member marked by the etcd step),
`haproxy-reload` (a reload, never a restart), then `postgres-restart` (a replica Patroni
reports "pending restart") and, last, `postgres-switchover` on the first node (the primary
pending a restart: a switchover to a healthy synchronous standby, then its restart). `ready`
is that last step, for every node.

Every port listens on the node's mesh address or 127.0.0.1. The passwords (PostgreSQL
superuser, replication, pg_rewind, Patroni's REST API, Airflow) are generated once with
pulumi_random and stay secrets in every file and URL derived from them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi

from .config import NodeSpec, PatroniSettings
from .layout import MONITORING_USER
from .nodes import Node
from .remote import RemoteFile, content_digest, render, render_output, run_step, timer_files
from .tier import TierArgs, generated_password, node_by_node

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
# The package's throwaway single-member cluster lives in /var/lib/etcd/default; the cluster's
# member data gets its own directory, and <data dir>.joined marks a node that has been seen in
# the full cluster: only a node without it is configured for the first time (wiped, re-added).
ETCD_DATA_DIR = "/var/lib/etcd/airflow-ha"
ETCD_PACKAGE_DATA_DIR = "/var/lib/etcd/default"
# Raft timings: heartbeat about the worst round trip between regions, election 10x that.
ETCD_HEARTBEAT_MS = 200
ETCD_ELECTION_MS = 2000

POSTGRES_PORT = 5432
PATRONI_PORT = 8008
HAPROXY_PRIMARY_PORT = 5000
HAPROXY_REPLICA_PORT = 5001
HAPROXY_STATS_PORT = 7000
# HAProxy's built-in Prometheus exporter, on the mesh address (the monitoring tier scrapes it).
HAPROXY_METRICS_PORT = 8405
# HAProxy health checks against Patroni's REST API:
# - inter 1s: a promoted node answers 200 on /primary at most a second before HAProxy sees it;
#   3 HAProxies x 3 nodes x 2 listeners is ~18 tiny HTTP requests a second: nothing.
# - fall 2: a dead primary is out after 2 failed checks (<= 2 s), not on one lost packet;
#   on-marked-down shutdown-sessions then cuts its client sessions so they reconnect at once.
# - rise 1: /primary is 200 only on the node holding Patroni's leader lock, so one success
#   is proof enough; waiting for more would add seconds to every failover.
HAPROXY_CHECK = {"inter": "1s", "fall": 2, "rise": 1, "timeout": "1s"}
HAPROXY_MAXCONN = 2000
# libpq's connect timeout for Airflow: a connect (TCP to HAProxy, then the server's greeting and
# authentication) that takes longer fails and is retried by the client, instead of hanging.
DB_CONNECT_TIMEOUT_S = 10

PATRONI_CONFIG = "/etc/patroni/config.yml"
# Patroni's keys in etcd: <namespace><scope>/leader, /members/<name>, /config, ...
DCS_NAMESPACE = "/airflow-ha/"
ETCD_ENV = "/etc/default/etcd"
# Read only when a member's data dir is new: its change restarts nothing.
ETCD_BOOTSTRAP_ENV = "/etc/default/etcd-bootstrap"
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
HAPROXY_SOCKET = "/run/haproxy/admin.sock"
# The servers' checked states, dumped before a reload and read by the new process, so that it
# does not start with every server UP (a replica taking writes) until its first checks.
HAPROXY_STATE = "/var/lib/haproxy/server-state"
# Bounds of the restart steps' waits (a member healthy again, a replica streaming again).
ETCD_RESTART_WAIT_S = 120
HAPROXY_RELOAD_WAIT_S = 30
POSTGRES_RESTART_WAIT_S = 600
SWITCHOVER_WAIT_S = 120
PATRONI_DROPIN = "/etc/systemd/system/patroni.service.d/airflow-ha.conf"
ETCD_DROPIN = "/etc/systemd/system/etcd.service.d/airflow-ha.conf"
# Keeps etcd's Raft leader off the primary's and sync standby's nodes (why: the script's
# docstring).
LEADER_AWAY_SCRIPT = "/usr/local/sbin/airflow-ha-etcd-leader-away"
LEADER_AWAY_UNIT = "airflow-ha-etcd-leader-away"
LEADER_AWAY_INTERVAL_S = 10
# Patroni restarts after a crash; 5 s keeps a crash loop from spinning while staying well
# under the leader TTL, so a crashed Patroni is usually back before a failover is needed.
PATRONI_RESTART_SEC = 5

SUPERUSER = "postgres"
REPLICATION_USER = "replicator"
REWIND_USER = "rewinder"
REST_USER = "patroni"
AIRFLOW_USER = "airflow"
AIRFLOW_DB = "airflow"

# The postgresParameters names a node last applied (airflow-db), one per line.
PARAMETERS_APPLIED = "/var/lib/airflow-ha/postgres-parameters"
# PostgreSQL settings kept in Patroni's dynamic config (the same on every member).
POSTGRES_PARAMETERS = {
    "max_connections": 300,  # three nodes of Airflow processes, each with a pool
    "password_encryption": "scram-sha-256",
    "wal_level": "replica",
    "hot_standby": "on",
    "wal_log_hints": "on",  # pg_rewind
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_keep_size": "256MB",
    # A replica that stays away does not fill the primary's disk: past this its slot is
    # invalidated and Patroni re-clones it.
    "max_slot_wal_keep_size": "4096MB",
    # A client whose machine died (power cut, region lost) sends no FIN or RST: without these its
    # backend waited for it for hours (the kernel's 2 h keepalive) and, idle in a transaction,
    # held its row locks; every Airflow request touching those task instances hung behind it
    # (machine-stop: a task queued for 6 min, its supervisor's /run timing out 10 times). Now
    # the primary drops such a session within ~11 s of silence, or 10 s of unacknowledged data.
    "tcp_keepalives_idle": 5,
    "tcp_keepalives_interval": 2,
    "tcp_keepalives_count": 3,
    "tcp_user_timeout": 10000,
    # A backstop for a client that is alive but forgot its transaction: no Airflow transaction
    # sits idle anywhere near this long.
    "idle_in_transaction_session_timeout": "5min",
}


@dataclass(frozen=True)
class DatabaseArgs(TierArgs):
    """The database tier's nodes and the stack's settings for it."""

    scope: str  # Patroni's scope and etcd's cluster token: one per stack
    postgres_version: int
    patroni: PatroniSettings
    mesh_cidr: str
    # The stack's postgresParameters, over POSTGRES_PARAMETERS.
    postgres_parameters: Mapping[str, str | int] = field(default_factory=dict)
    # WAL archiving (the backup tier's archive_parameters; empty: none). Replicas get no
    # restore_command: they stream only (Patroni re-clones one that fell too far behind). With
    # one, a fresh replica kept re-reading a switched segment from the archive and never
    # started streaming (local cluster, PostgreSQL 17).
    archive: Mapping[str, str | int] = field(default_factory=dict)
    # Installed with the tier's own: what archive_command runs is there from the first start.
    extra_packages: Sequence[str] = ()

    def parameters(self) -> dict[str, str | int]:
        """Every PostgreSQL setting of the cluster's dynamic config: the program's, the
        archive's, then the stack's (which win; config_schema.PG_OWNED keeps the archive's
        out of them)."""
        return {**POSTGRES_PARAMETERS, **self.archive, **self.postgres_parameters}

    @property
    def data_dir(self) -> str:
        return f"/var/lib/postgresql/{self.postgres_version}/airflow-ha"

    @property
    def bin_dir(self) -> str:
        return f"/usr/lib/postgresql/{self.postgres_version}/bin"


# The tier's generated passwords: what each is for -> its resource name.
PASSWORDS = {
    "superuser": "postgres-superuser-password",
    "replication": "postgres-replication-password",
    "rewind": "postgres-rewind-password",
    "rest": "patroni-rest-password",
    "airflow": "airflow-db-password",
}


def packages_for(postgres_version: int) -> list[str]:
    """Debian 13's packages for the tier. python3-etcd is not pulled in by patroni (apt takes
    python3-consul): without it Patroni finds no etcd implementation and exits."""
    return [
        "etcd-server",
        "etcd-client",
        f"postgresql-{postgres_version}",
        "patroni",
        "python3-etcd",
        "python3-psycopg2",
        "haproxy",
        "socat",  # HAProxy's stats socket: the server states kept across a reload
        "curl",
    ]


def leader_away_files(spec: NodeSpec) -> list[RemoteFile]:
    """The script and timer that keep etcd's leader off the primary's and sync standby's nodes."""
    context = {
        "node": spec.name,
        "mesh_address": spec.mesh_address,
        "rest_port": PATRONI_PORT,
        "client_port": ETCD_CLIENT_PORT,
        "script": LEADER_AWAY_SCRIPT,
        "interval": LEADER_AWAY_INTERVAL_S,
    }
    unit = f"/etc/systemd/system/{LEADER_AWAY_UNIT}"
    return timer_files(LEADER_AWAY_SCRIPT, unit, "database/etcd-leader-away", context)


def pg_hba(mesh: str) -> list[str]:
    """Who may connect: postgres over the local socket; the rest from the mesh, by password."""
    return [
        f"local all {SUPERUSER} peer",
        # The monitoring tier's postgres-exporter (OS user and role of one name, no password).
        f"local postgres {MONITORING_USER} peer",
        # Patroni's own replication connection to its local PostgreSQL (timeline checks
        # before a rewind) goes to localhost.
        f"host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256",
        f"host replication {REPLICATION_USER} ::1/128 scram-sha-256",
        f"host replication {REPLICATION_USER} {mesh} scram-sha-256",
        f"host postgres {REWIND_USER} {mesh} scram-sha-256",
        f"host {AIRFLOW_DB} {AIRFLOW_USER} {mesh} scram-sha-256",
    ]


def dynamic_settings(p: PatroniSettings) -> dict[str, object]:
    """The stack's Patroni settings for the cluster's dynamic config (bootstrap and later)."""
    return {
        "ttl": p.ttl,
        "loop_wait": p.loop_wait,
        "retry_timeout": p.retry_timeout,
        "maximum_lag_on_failover": p.maximum_lag_on_failover,
        "synchronous_mode": p.synchronous_mode,
        "failsafe_mode": p.failsafe_mode,
    }


def _yaml(values: dict[str, object]) -> dict[str, str]:
    """Values as YAML scalars (JSON is YAML): strings quoted, so "on" stays a string."""
    return {key: json.dumps(value) for key, value in values.items()}


def _members(nodes: Sequence[Node]) -> list[dict[str, str]]:
    return [{"name": n.spec.name, "mesh_address": n.spec.mesh_address} for n in nodes]


def haproxy_cfg(servers: list[dict[str, str]], spec: NodeSpec) -> str:
    """The node's haproxy.cfg: every node is a backend server, checked on Patroni's API."""
    return render(
        "database/haproxy.cfg.j2",
        {
            "node": spec.name,
            "mesh_address": spec.mesh_address,
            "servers": servers,
            "primary_port": HAPROXY_PRIMARY_PORT,
            "replica_port": HAPROXY_REPLICA_PORT,
            "stats_port": HAPROXY_STATS_PORT,
            "metrics_port": HAPROXY_METRICS_PORT,
            "postgres_port": POSTGRES_PORT,
            "rest_port": PATRONI_PORT,
            "check": HAPROXY_CHECK,
            "maxconn": HAPROXY_MAXCONN,
            "socket": HAPROXY_SOCKET,
            "state_file": HAPROXY_STATE,
        },
    )


def etcd_context(scope: str, spec: NodeSpec, members: list[dict[str, str]]) -> dict[str, Any]:
    """What the node's etcd step and files are rendered from (plain values only)."""
    return {
        "node": spec.name,
        "mesh_address": spec.mesh_address,
        "client_port": ETCD_CLIENT_PORT,
        "peer_port": ETCD_PEER_PORT,
        "data_dir": ETCD_DATA_DIR,
        "package_data_dir": ETCD_PACKAGE_DATA_DIR,
        "members": members,
        "token": scope,
        "heartbeat_ms": ETCD_HEARTBEAT_MS,
        "election_ms": ETCD_ELECTION_MS,
        "peer_client_urls": ",".join(
            f"http://{m['mesh_address']}:{ETCD_CLIENT_PORT}"
            for m in members
            if m["name"] != spec.name
        ),
        "peer_url": f"http://{spec.mesh_address}:{ETCD_PEER_PORT}",
        "joined": f"{ETCD_DATA_DIR}.joined",
        "dropin": ETCD_DROPIN,
        "bootstrap_env": ETCD_BOOTSTRAP_ENV,
        "wait_seconds": ETCD_RESTART_WAIT_S,
        "member_count": len(members),
    }


def patroni_context(
    args: DatabaseArgs, spec: NodeSpec, passwords: Mapping[str, pulumi.Output[str]]
) -> dict[str, Any]:
    """What the node's Patroni config is rendered from: plain values plus secret Outputs."""
    return {
        "node": spec.name,
        "mesh_address": spec.mesh_address,
        "scope": args.scope,
        "etcd_hosts": [f"{n.spec.mesh_address}:{ETCD_CLIENT_PORT}" for n in args.nodes],
        "dynamic": _yaml(dynamic_settings(args.patroni)),
        "parameters": _yaml(args.parameters()),
        "pg_hba": pg_hba(args.mesh_cidr),
        "data_dir": args.data_dir,
        "bin_dir": args.bin_dir,
        "namespace": DCS_NAMESPACE,
        "postgres_port": POSTGRES_PORT,
        "rest_port": PATRONI_PORT,
        "users": {
            "superuser": SUPERUSER,
            "replication": REPLICATION_USER,
            "rewind": REWIND_USER,
            "rest": REST_USER,
        },
        "passwords": passwords,
    }


class DatabaseTier(pulumi.ComponentResource):
    def __init__(self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("airflow-ha:database:DatabaseTier", name, None, opts)
        self._args = args
        self.scope = args.scope
        self._passwords = {
            role: generated_password(name, 32, self) for role, name in PASSWORDS.items()
        }
        self.airflow_db_password: pulumi.Output[str] = pulumi.Output.secret(
            self._passwords["airflow"]
        )
        # Where this tier's clients reach the primary on every node (Airflow's start gate).
        self.primary_port = HAPROXY_PRIMARY_PORT
        self.airflow_db_url: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.concat(
                f"postgresql+psycopg2://{AIRFLOW_USER}:",
                self._passwords["airflow"],
                f"@127.0.0.1:{HAPROXY_PRIMARY_PORT}/{AIRFLOW_DB}?connect_timeout={DB_CONNECT_TIMEOUT_S}",
            )
        )
        self.ready: dict[str, pulumi.Resource] = self._steps(args.nodes)
        self.stats_tunnels = {node.spec.name: _stats_tunnel(node) for node in args.nodes}
        self.register_outputs(
            {"airflowDbUrl": self.airflow_db_url, "haproxyStats": self.stats_tunnels}
        )

    def _steps(self, nodes: Sequence[Node]) -> dict[str, pulumi.Resource]:
        """Every node's config steps (in parallel), then the restart chains node by node:
        etcd, HAProxy, the PostgreSQL replicas, then the primary. Every node is ready when
        the last of them is done."""
        packages = {n.spec.name: self._packages(n) for n in nodes}
        etcd = {n.spec.name: self._etcd(n, [packages[n.spec.name]]) for n in nodes}
        etcd_restarts = node_by_node(
            nodes, lambda n, prev: self._etcd_restart(n, [etcd[n.spec.name], *prev])
        )
        haproxy = {n.spec.name: self._haproxy(n, [packages[n.spec.name]]) for n in nodes}
        reloads = node_by_node(
            nodes, lambda n, prev: self._haproxy_reload(n, [haproxy[n.spec.name], *prev])
        )
        databases = [
            self._airflow_db(
                n,
                depends_on=[self._patroni(n, [etcd[n.spec.name]]), reloads[n.spec.name]],
            )
            for n in nodes
        ]
        # After every etcd member is back and the parameters are in the dynamic config.
        after = [*databases, *etcd_restarts.values()]
        restarts = node_by_node(
            nodes, lambda n, prev: self._postgres_restart(n, [*after, *prev])
        )
        first = min(nodes, key=lambda n: n.spec.mesh_index)
        last = self._postgres_switchover(first, list(restarts.values()))
        return {n.spec.name: last for n in nodes}

    def _packages(self, node: Node) -> pulumi.Resource:
        # Packages first, in one apt run, before any step writes a file that is also a
        # package's conffile (/etc/default/etcd, haproxy.cfg): dpkg would stop to ask.
        return run_step(
            "database-packages",
            node.access,
            render(
                "database/packages.sh.j2",
                {"packages": [*packages_for(self._args.postgres_version),
                              *self._args.extra_packages]},
            ),
            parent=self,
            depends_on=[self._args.after[node.spec.name]],
        )

    def _etcd_files(self, node: Node) -> list[RemoteFile]:
        context = etcd_context(self.scope, node.spec, _members(self._args.nodes))
        return [
            RemoteFile(ETCD_ENV, render("database/etcd.env.j2", context)),
            RemoteFile(ETCD_BOOTSTRAP_ENV, render("database/etcd-bootstrap.env.j2", context)),
            RemoteFile(ETCD_DROPIN, render("database/etcd.override.conf.j2", context)),
        ]

    def _etcd(self, node: Node, depends_on: list[pulumi.Resource]) -> pulumi.Resource:
        context = etcd_context(self.scope, node.spec, _members(self._args.nodes))
        return run_step(
            "etcd",
            node.access,
            render("database/etcd.sh.j2", context),
            files=self._etcd_files(node),
            parent=self,
            depends_on=depends_on,
        )

    def _etcd_restart(self, node: Node, depends_on: list[pulumi.Resource]) -> pulumi.Resource:
        """Restarts the member the etcd step marked; re-runs when what it runs with changed."""
        context = etcd_context(self.scope, node.spec, _members(self._args.nodes))
        runs_with = [f for f in self._etcd_files(node) if f.path != ETCD_BOOTSTRAP_ENV]
        context["digest"] = content_digest(*(f.content for f in runs_with))
        return run_step(
            "etcd-restart",
            node.access,
            render("database/etcd-restart.sh.j2", context),
            parent=self,
            depends_on=depends_on,
        )

    def _patroni(self, node: Node, depends_on: list[pulumi.Resource]) -> pulumi.Resource:
        spec = node.spec
        context = patroni_context(self._args, spec, self._passwords)
        step = {
            "node": spec.name,
            "mesh_address": spec.mesh_address,
            "pg": self._args.postgres_version,
            "data_dir": context["data_dir"],
            "config": PATRONI_CONFIG,
            "dropin": PATRONI_DROPIN,
            "rest_port": PATRONI_PORT,
            "leader_away_unit": LEADER_AWAY_UNIT,
        }
        return run_step(
            "patroni",
            node.access,
            render("database/patroni.sh.j2", step),
            files=[
                *leader_away_files(spec),
                RemoteFile(
                    PATRONI_CONFIG,
                    render_output("database/patroni.yml.j2", context),
                    mode="0600",
                    owner="postgres:postgres",
                ),
                RemoteFile(
                    PATRONI_DROPIN,
                    render(
                        "database/patroni.override.conf.j2", {"restart_sec": PATRONI_RESTART_SEC}
                    ),
                ),
            ],
            parent=self,
            depends_on=depends_on,
            timeout_minutes=30,
        )

    def _haproxy(self, node: Node, depends_on: list[pulumi.Resource]) -> pulumi.Resource:
        spec = node.spec
        context = {
            "node": spec.name,
            "config": HAPROXY_CFG,
            "state_file": HAPROXY_STATE,
            "primary_port": HAPROXY_PRIMARY_PORT,
            "replica_port": HAPROXY_REPLICA_PORT,
        }
        config = haproxy_cfg(_members(self._args.nodes), spec)
        return run_step(
            "haproxy",
            node.access,
            render("database/haproxy.sh.j2", context),
            files=[RemoteFile(HAPROXY_CFG, config)],
            parent=self,
            depends_on=depends_on,
        )

    def _haproxy_reload(self, node: Node, depends_on: list[pulumi.Resource]) -> pulumi.Resource:
        """Reloads (never restarts) the HAProxy the haproxy step marked, keeping the servers'
        checked states; re-runs when the config changed."""
        context = {
            "node": node.spec.name,
            "digest": content_digest(haproxy_cfg(_members(self._args.nodes), node.spec)),
            "config": HAPROXY_CFG,
            "socket": HAPROXY_SOCKET,
            "state_file": HAPROXY_STATE,
            "wait_seconds": HAPROXY_RELOAD_WAIT_S,
        }
        return run_step(
            "haproxy-reload",
            node.access,
            render("database/haproxy-reload.sh.j2", context),
            parent=self,
            depends_on=depends_on,
        )

    def _postgres_context(self, node: Node) -> dict[str, Any]:
        return {
            "node": node.spec.name,
            "mesh_address": node.spec.mesh_address,
            "rest_port": PATRONI_PORT,
            "config": PATRONI_CONFIG,
            "scope": self.scope,
            # The parameters a restart applies: a change re-runs the restart steps.
            "digest": content_digest(json.dumps(self._args.parameters(), sort_keys=True)),
            "wait_seconds": POSTGRES_RESTART_WAIT_S,
            "switchover_seconds": SWITCHOVER_WAIT_S,
        }

    def _postgres_restart(
        self, node: Node, depends_on: list[pulumi.Resource]
    ) -> pulumi.Resource:
        """A replica Patroni reports pending a restart is restarted (the primary is left for
        the switchover step); returns once it streams again."""
        return run_step(
            "postgres-restart",
            node.access,
            render("database/postgres-restart.sh.j2", self._postgres_context(node)),
            parent=self,
            depends_on=depends_on,
            timeout_minutes=15,
        )

    def _postgres_switchover(
        self, first: Node, depends_on: list[pulumi.Resource]
    ) -> pulumi.Resource:
        """Last: a primary pending a restart hands over to a healthy synchronous standby, then
        restarts as a replica. Runs from the first node (patronictl acts on any member)."""
        return run_step(
            "postgres-switchover",
            first.access,
            render("database/postgres-switchover.sh.j2", self._postgres_context(first)),
            parent=self,
            depends_on=depends_on,
            timeout_minutes=20,
        )

    def _airflow_db(self, node: Node, depends_on: list[pulumi.Resource]) -> pulumi.Resource:
        """On the primary: Airflow's role and database and the stack's Patroni timings; on
        every node: wait until Airflow's login works through the local HAProxy."""
        spec = node.spec
        # The stack's PostgreSQL parameters too, so that a running cluster gets a changed one.
        dynamic = _yaml(dynamic_settings(self._args.patroni)) | {
            f"postgresql.parameters.{k}": v for k, v in _yaml(self._args.parameters()).items()
        }
        context = {
            "node": spec.name,
            "mesh_address": spec.mesh_address,
            "rest_port": PATRONI_PORT,
            "config": PATRONI_CONFIG,
            # One argument each, shell-quoted by the template.
            "settings": [arg for k, v in dynamic.items() for arg in ("-s", f"{k}={v}")],
            "user": AIRFLOW_USER,
            "database": AIRFLOW_DB,
            "password": self._passwords["airflow"],
            "haproxy_port": HAPROXY_PRIMARY_PORT,
            # A name dropped from postgresParameters is removed from the dynamic config
            # (edit-config only sets): each node records the names it last applied.
            "applied_file": PARAMETERS_APPLIED,
            "stack_parameters": sorted(self._args.postgres_parameters),
            "managed_parameters": sorted(self._args.parameters()),
        }
        return run_step(
            "airflow-db",
            node.access,
            render_output("database/airflow-db.sh.j2", context),
            parent=self,
            depends_on=depends_on,
        )


def _stats_tunnel(node: Node) -> pulumi.Output[str]:
    spec = node.spec
    return pulumi.Output.concat(
        f"ssh -p {spec.port} -N -L {HAPROXY_STATS_PORT}:{spec.mesh_address}:"
        f"{HAPROXY_STATS_PORT} {spec.user}@",
        node.public_address,
        f"  # then open http://127.0.0.1:{HAPROXY_STATS_PORT}/",
    )
