"""BrokerTier: the Celery broker, a RabbitMQ 4.0 cluster with one member on every node.

Each node runs `rabbit@<node>` (node names resolve to mesh addresses). AMQP (5672), the Erlang
distribution (25672), epmd (4369) and the management UI (15672) listen on the mesh address only
(epmd and the CLI tools also on loopback). All nodes share one Erlang cookie (a Pulumi secret).

Order: every node installs RabbitMQ with its configuration already in place (in parallel) ->
every node, at about the same time, takes the shared cookie and (first configuration only)
starts blank so that `classic_config` peer discovery forms one cluster -> once, on the node with
the lowest meshIndex, the Airflow vhost (default queue type quorum) and user; `guest` goes ->
every node checks it is ready. Later tiers use `broker_url` (a secret Celery failover list) and
`ready`.
"""

from __future__ import annotations

from urllib.parse import quote

import pulumi
import pulumi_random as random

from .config import ClusterConfig
from .nodes import Node
from .remote import RemoteFile, render, render_output, run_step
from .vpn import VpnMesh

AMQP_PORT = 5672
DIST_PORT = 25672
EPMD_PORT = 4369
MANAGEMENT_PORT = 15672
CLI_DIST_PORTS = range(35672, 35683)  # rabbitmqctl's own short-lived distribution listener
VHOST = "airflow"
USER = "airflow"
USER_TAGS = "monitoring"  # may log in to the management UI (through the SSH tunnel) and read it
PLUGINS = ("rabbitmq_management",)

CONF = "/etc/rabbitmq/rabbitmq.conf"
ENV_CONF = "/etc/rabbitmq/rabbitmq-env.conf"
PLUGINS_FILE = "/etc/rabbitmq/enabled_plugins"
EPMD_DROPIN = "/etc/systemd/system/epmd.socket.d/airflow-ha.conf"
UNIT_DROPIN = "/etc/systemd/system/rabbitmq-server.service.d/airflow-ha.conf"
# Written once the node has joined the cluster; its absence means "first configuration". It
# lives in the data directory, so a node whose data is wiped is treated as new again.
MARKER = "/var/lib/rabbitmq/mnesia/airflow-ha-cluster-member"

# Blank nodes started together look for their peers for up to limit * interval before one of
# them would form a cluster alone.
DISCOVERY_RETRY_LIMIT = 60
DISCOVERY_RETRY_INTERVAL_MS = 2000
FORM_SECONDS = 300
WAIT_SECONDS = 180
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


def node_context(cfg: ClusterConfig, node: str) -> dict:
    """What the per-node configuration files are rendered from (plain values only)."""
    spec = cfg.node(node)
    return {
        "node": node,
        "node_name": node_name(node),
        "mesh_address": spec.mesh_address,
        "mesh_address_erl": erlang_ip(spec.mesh_address),
        "cluster_name": f"airflow-ha-{cfg.stack}",
        "peers": [node_name(n.name) for n in cfg.nodes],
        "amqp_port": AMQP_PORT,
        "dist_port": DIST_PORT,
        "epmd_port": EPMD_PORT,
        "management_port": MANAGEMENT_PORT,
        "discovery_retry_limit": DISCOVERY_RETRY_LIMIT,
        "discovery_retry_interval_ms": DISCOVERY_RETRY_INTERVAL_MS,
        "consumer_timeout_ms": cfg.rabbitmq_consumer_timeout_ms,
        "net_ticktime_s": cfg.rabbitmq_net_ticktime_s,
        "plugins": list(PLUGINS),
        "restart_sec": RESTART_SEC,
    }


def config_files(cfg: ClusterConfig, node: str) -> list[RemoteFile]:
    """The files every node gets, before the package is installed (none holds a secret)."""
    context = node_context(cfg, node)
    return [
        RemoteFile(CONF, render("broker/rabbitmq.conf.j2", context)),
        RemoteFile(ENV_CONF, render("broker/rabbitmq-env.conf.j2", context)),
        RemoteFile(PLUGINS_FILE, render("broker/enabled_plugins.j2", context)),
        RemoteFile(EPMD_DROPIN, render("broker/epmd.socket.conf.j2", context)),
        RemoteFile(UNIT_DROPIN, render("broker/rabbitmq-server.service.conf.j2", context)),
    ]


class BrokerTier(pulumi.ComponentResource):
    def __init__(
        self,
        cfg: ClusterConfig,
        nodes: list[Node],
        mesh: VpnMesh,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("airflow-ha:broker:BrokerTier", "broker", None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Generated once, kept in the stack's state, secret end to end. The cookie is at most
        # 255 characters of letters and digits (an Erlang atom).
        cookie = random.RandomPassword(
            "rabbitmq-erlang-cookie", length=48, special=False, opts=child
        ).result
        password = random.RandomPassword(
            "rabbitmq-airflow-password", length=32, special=False, opts=child
        ).result

        names = [n.spec.name for n in nodes]
        running = "\n".join(sorted(node_name(n) for n in names))

        installed = {}
        for node in nodes:
            name = node.spec.name
            installed[name] = run_step(
                "rabbitmq-install",
                node.access,
                render(
                    "broker/install.sh.j2",
                    {
                        "node": name,
                        "mesh_address": node.spec.mesh_address,
                        "marker": MARKER,
                        "epmd_dropin": EPMD_DROPIN,
                        "unit_dropin": UNIT_DROPIN,
                        "config_paths": [CONF, ENV_CONF, PLUGINS_FILE, UNIT_DROPIN],
                        "wait_seconds": WAIT_SECONDS,
                    },
                ),
                files=config_files(cfg, name),
                parent=self,
                depends_on=[mesh.ready[name]],
            )

        # Every node waits for every install, so that blank nodes start at about the same time.
        clustered = [
            run_step(
                "rabbitmq-cluster",
                node.access,
                render_output(
                    "broker/cluster.sh.j2",
                    {
                        "node": node.spec.name,
                        "marker": MARKER,
                        "cookie": cookie,
                        "expected_running": running,
                        "other_nodes": [node_name(n) for n in names if n != node.spec.name],
                        "form_seconds": FORM_SECONDS,
                    },
                ),
                outputs=["rabbitmqNode"],
                parent=self,
                depends_on=list(installed.values()),
                timeout_minutes=10,
            )
            for node in nodes
        ]

        # Users, vhosts and permissions are cluster-wide: set them once, from the node with the
        # lowest meshIndex (a rule that reordering the stack's node list does not change).
        first = min(nodes, key=lambda n: n.spec.mesh_index)
        users = run_step(
            "rabbitmq-users",
            first.access,
            render_output(
                "broker/users.sh.j2",
                {"vhost": VHOST, "user": USER, "password": password, "tags": USER_TAGS},
            ),
            parent=self,
            depends_on=clustered,
        )

        ports = sorted({AMQP_PORT, DIST_PORT, EPMD_PORT, MANAGEMENT_PORT, *CLI_DIST_PORTS})
        self.ready: dict[str, pulumi.Resource] = {}
        for node in nodes:
            allowed = [node.spec.mesh_address, "127.0.0.1"]
            self.ready[node.spec.name] = run_step(
                "rabbitmq-check",
                node.access,
                render(
                    "broker/check.sh.j2",
                    {
                        "node": node.spec.name,
                        "expected_running": running,
                        "vhost": VHOST,
                        "wait_seconds": WAIT_SECONDS,
                        "ports_pattern": ":(" + "|".join(str(p) for p in ports) + ")$",
                        "allowed_pattern": "^("
                        + "|".join(a.replace(".", r"\.") for a in allowed)
                        + "):",
                    },
                ),
                parent=self,
                depends_on=[users],
            )

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
        self.management_tunnel: pulumi.Output[str] = pulumi.Output.concat(
            "ssh -N -L ", str(MANAGEMENT_PORT), ":", first.spec.mesh_address, ":",
            str(MANAGEMENT_PORT), " -p ", str(first.spec.port), " ", first.spec.user, "@",
            first.public_address, "  # then open http://localhost:", str(MANAGEMENT_PORT),
            " and log in as ", USER,
        )
        self.register_outputs(
            {"brokerUrl": self.broker_url, "managementTunnel": self.management_tunnel}
        )
