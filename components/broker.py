"""BrokerTier: the Celery broker, a RabbitMQ 4.0 cluster with one member on every node.

Each node runs `rabbit@<node>` (node names resolve to mesh addresses). AMQP (5672), the Erlang
distribution (25672), epmd (4369) and the management UI (15672) listen on the mesh address only
(epmd and the CLI tools also on loopback). All nodes share one Erlang cookie (a Pulumi secret).

Order: every node installs RabbitMQ with its configuration already in place (in parallel; a
changed configuration marks a restart, it restarts nothing) -> every node, at about the same
time, takes the shared cookie and (first configuration only) starts blank so that
`classic_config` peer discovery forms one cluster -> once, on the node with the lowest
meshIndex, the Airflow vhost (default queue type quorum) and user; `guest` goes -> node after
node, `rabbitmq-restart` restarts a marked broker once no quorum queue needs it and waits until
it is back -> every node checks it is ready. Later tiers use `broker_url` (a secret Celery
failover list) and `ready`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import pulumi

from .config import NodeSpec
from .nodes import Node
from .remote import RemoteFile, content_digest, render, render_output, run_step
from .tier import TierArgs, generated_password, node_by_node

AMQP_PORT = 5672
DIST_PORT = 25672
EPMD_PORT = 4369
MANAGEMENT_PORT = 15672
# rabbitmq_prometheus, on the mesh address only (the monitoring tier scrapes it). Enabling it
# changes enabled_plugins, which restarts a running broker (install.sh): on a running cluster,
# one node at a time (docs/operations.md).
PROMETHEUS_PORT = 15692
CLI_DIST_PORTS = range(35672, 35683)  # rabbitmqctl's own short-lived distribution listener
VHOST = "airflow"
USER = "airflow"
USER_TAGS = "monitoring"  # may log in to the management UI (through the SSH tunnel) and read it
PLUGINS = ("rabbitmq_management", "rabbitmq_prometheus")

CONF = "/etc/rabbitmq/rabbitmq.conf"
# The peer list, read only by a blank node: its change restarts nothing.
FORMATION_CONF = "/etc/rabbitmq/conf.d/10-airflow-ha-cluster-formation.conf"
ENV_CONF = "/etc/rabbitmq/rabbitmq-env.conf"
PLUGINS_FILE = "/etc/rabbitmq/enabled_plugins"
EPMD_DROPIN = "/etc/systemd/system/epmd.socket.d/airflow-ha.conf"
UNIT_DROPIN = "/etc/systemd/system/rabbitmq-server.service.d/airflow-ha.conf"
# A change of these marks the broker for one restart (the rabbitmq-restart step).
RESTART_PATHS = [CONF, ENV_CONF, PLUGINS_FILE, UNIT_DROPIN]
# Written once the node has joined the cluster; its absence means "first configuration". It
# lives in the data directory, so a node whose data is wiped is treated as new again.
MARKER = "/var/lib/rabbitmq/mnesia/airflow-ha-cluster-member"

# Blank nodes started together look for their peers for up to limit * interval before one of
# them would form a cluster alone.
DISCOVERY_RETRY_LIMIT = 60
DISCOVERY_RETRY_INTERVAL_MS = 2000
FORM_SECONDS = 300
WAIT_SECONDS = 180
# A restart: the quorum queues' members elsewhere caught up (before), this one back (after).
RESTART_WAIT_SECONDS = 300
RESTART_SEC = 5


def node_name(node: str) -> str:
    return f"rabbit@{node}"


def erlang_ip(address: str) -> str:
    """An IPv4 address as an Erlang tuple: 10.42.0.1 -> {10,42,0,1}."""
    return "{" + ",".join(address.split(".")) + "}"


def broker_url(nodes: list[str], password: str, user: str = USER, vhost: str = VHOST) -> str:
    """Celery's failover syntax: every node's AMQP URL, separated by ';'."""
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return ";".join(
        f"amqp://{credentials}@{node}:{AMQP_PORT}/{quote(vhost, safe='')}" for node in nodes
    )


def local_first(nodes: list[str], node: str) -> list[str]:
    """The node's own broker first, then the others in cluster order. A node whose list starts
    with a peer would connect to that peer first, and when the peer's machine vanished (no TCP
    reset) every publish waited on a dead connect: the scheduler's sends timed out until the
    runs failed (seen in the machine-stop drill). Its own broker dies only with it, or
    with a reset."""
    return [node, *(n for n in nodes if n != node)]


@dataclass(frozen=True)
class BrokerArgs(TierArgs):
    """The broker tier's nodes and the stack's settings for it."""

    cluster_name: str  # RabbitMQ's cluster name: one per stack
    consumer_timeout_ms: int
    net_ticktime_s: int


def node_context(args: BrokerArgs, spec: NodeSpec) -> dict:
    """What the per-node configuration files are rendered from (plain values only)."""
    return {
        "node": spec.name,
        "node_name": node_name(spec.name),
        "mesh_address": spec.mesh_address,
        "mesh_address_erl": erlang_ip(spec.mesh_address),
        "cluster_name": args.cluster_name,
        "peers": [node_name(n.spec.name) for n in args.nodes],
        "amqp_port": AMQP_PORT,
        "dist_port": DIST_PORT,
        "epmd_port": EPMD_PORT,
        "management_port": MANAGEMENT_PORT,
        "prometheus_port": PROMETHEUS_PORT,
        "discovery_retry_limit": DISCOVERY_RETRY_LIMIT,
        "discovery_retry_interval_ms": DISCOVERY_RETRY_INTERVAL_MS,
        "consumer_timeout_ms": args.consumer_timeout_ms,
        "net_ticktime_s": args.net_ticktime_s,
        "plugins": list(PLUGINS),
        "restart_sec": RESTART_SEC,
    }


def config_files(args: BrokerArgs, spec: NodeSpec) -> list[RemoteFile]:
    """The files every node gets, before the package is installed (none holds a secret)."""
    context = node_context(args, spec)
    return [
        RemoteFile(CONF, render("broker/rabbitmq.conf.j2", context)),
        RemoteFile(FORMATION_CONF, render("broker/cluster-formation.conf.j2", context)),
        RemoteFile(ENV_CONF, render("broker/rabbitmq-env.conf.j2", context)),
        RemoteFile(PLUGINS_FILE, render("broker/enabled_plugins.j2", context)),
        RemoteFile(EPMD_DROPIN, render("broker/epmd.socket.conf.j2", context)),
        RemoteFile(UNIT_DROPIN, render("broker/rabbitmq-server.service.conf.j2", context)),
    ]


def check_patterns(mesh_address: str) -> dict[str, str]:
    """The check step's two regexes: the broker's ports, and the addresses they may listen on
    (the mesh address and loopback)."""
    ports = sorted(
        {AMQP_PORT, DIST_PORT, EPMD_PORT, MANAGEMENT_PORT, PROMETHEUS_PORT, *CLI_DIST_PORTS}
    )
    allowed = [mesh_address, "127.0.0.1"]
    return {
        "ports_pattern": ":(" + "|".join(str(p) for p in ports) + ")$",
        "allowed_pattern": "^(" + "|".join(a.replace(".", r"\.") for a in allowed) + "):",
    }


class BrokerTier(pulumi.ComponentResource):
    def __init__(self, name: str, args: BrokerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("airflow-ha:broker:BrokerTier", name, None, opts)
        self._args = args
        # The cookie is at most 255 characters of letters and digits (an Erlang atom).
        self._cookie = generated_password("rabbitmq-erlang-cookie", 48, self)
        password = generated_password("rabbitmq-airflow-password", 32, self)
        names = [n.spec.name for n in args.nodes]
        self._running = "\n".join(sorted(node_name(n) for n in names))

        installed = [self._install(node) for node in args.nodes]
        # Every node waits for every install, so that blank nodes start at about the same time.
        clustered = [self._cluster(node, installed) for node in args.nodes]
        # Users, vhosts and permissions are cluster-wide: set them once, from the node with the
        # lowest meshIndex (a rule that reordering the stack's node list does not change).
        first = min(args.nodes, key=lambda n: n.spec.mesh_index)
        users = self._users(first, password, clustered)
        restarts = node_by_node(
            args.nodes, lambda node, prev: self._restart(node, [users, *prev])
        )
        self.ready: dict[str, pulumi.Resource] = {
            node.spec.name: self._check(node, restarts[node.spec.name]) for node in args.nodes
        }

        self.vhost = VHOST
        self.user = USER
        self.password: pulumi.Output[str] = pulumi.Output.secret(password)

        def secret_url(order: list[str]) -> pulumi.Output[str]:
            return pulumi.Output.secret(password.apply(lambda pw: broker_url(order, pw)))

        self.broker_url: pulumi.Output[str] = secret_url(names)
        # What each node's Airflow uses: the same list, its own broker first.
        self.node_broker_urls: dict[str, pulumi.Output[str]] = {
            name: secret_url(local_first(names, name)) for name in names
        }
        self.management_tunnel: pulumi.Output[str] = _management_tunnel(first)
        self.register_outputs(
            {"brokerUrl": self.broker_url, "managementTunnel": self.management_tunnel}
        )

    def _install(self, node: Node) -> pulumi.Resource:
        """RabbitMQ installed with its configuration already in place (in parallel)."""
        context = {
            "node": node.spec.name,
            "mesh_address": node.spec.mesh_address,
            "marker": MARKER,
            "epmd_dropin": EPMD_DROPIN,
            "unit_dropin": UNIT_DROPIN,
            "config_paths": RESTART_PATHS,
            "formation": FORMATION_CONF,
            "wait_seconds": WAIT_SECONDS,
        }
        return run_step(
            "rabbitmq-install",
            node.access,
            render("broker/install.sh.j2", context),
            files=config_files(self._args, node.spec),
            parent=self,
            depends_on=[self._args.after[node.spec.name]],
        )

    def _cluster(self, node: Node, installed: list[pulumi.Resource]) -> pulumi.Resource:
        name = node.spec.name
        context = {
            "node": name,
            "marker": MARKER,
            "cookie": self._cookie,
            "expected_running": self._running,
            "other_nodes": [node_name(n.spec.name) for n in self._args.nodes if n is not node],
            "form_seconds": FORM_SECONDS,
        }
        return run_step(
            "rabbitmq-cluster",
            node.access,
            render_output("broker/cluster.sh.j2", context),
            outputs=["rabbitmqNode"],
            parent=self,
            depends_on=installed,
            timeout_minutes=10,
        )

    def _users(
        self, first: Node, password: pulumi.Output[str], clustered: list[pulumi.Resource]
    ) -> pulumi.Resource:
        context = {"vhost": VHOST, "user": USER, "password": password, "tags": USER_TAGS}
        return run_step(
            "rabbitmq-users",
            first.access,
            render_output("broker/users.sh.j2", context),
            parent=self,
            depends_on=clustered,
        )

    def _restart(self, node: Node, depends_on: list[pulumi.Resource]) -> pulumi.Resource:
        """Restarts the broker rabbitmq-install marked, once no quorum queue needs it; re-runs
        when what it runs with changed."""
        runs_with = [f.content for f in config_files(self._args, node.spec)
                     if f.path in RESTART_PATHS]
        context = {
            "node": node.spec.name,
            "digest": content_digest(*runs_with),
            "expected_running": self._running,
            "wait_seconds": RESTART_WAIT_SECONDS,
        }
        return run_step(
            "rabbitmq-restart",
            node.access,
            render("broker/restart.sh.j2", context),
            parent=self,
            depends_on=depends_on,
            timeout_minutes=15,
        )

    def _check(self, node: Node, restarted: pulumi.Resource) -> pulumi.Resource:
        context = {
            "node": node.spec.name,
            "expected_running": self._running,
            "vhost": VHOST,
            "wait_seconds": WAIT_SECONDS,
            **check_patterns(node.spec.mesh_address),
        }
        return run_step(
            "rabbitmq-check",
            node.access,
            render("broker/check.sh.j2", context),
            parent=self,
            depends_on=[restarted],
        )


def _management_tunnel(first: Node) -> pulumi.Output[str]:
    spec = first.spec
    return pulumi.Output.concat(
        f"ssh -N -L {MANAGEMENT_PORT}:{spec.mesh_address}:{MANAGEMENT_PORT} -p {spec.port} "
        f"{spec.user}@",
        first.public_address,
        f"  # then open http://localhost:{MANAGEMENT_PORT} and log in as {USER}",
    )
