"""AirflowHaCluster: wires the tiers in dependency order (nodes -> mesh -> tiers -> outputs)."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi

from .airflow import AirflowArgs, AirflowTier, lock_file
from .broker import BrokerArgs, BrokerTier
from .config import ClusterConfig
from .dag_sync import DagSync, DagSyncArgs
from .database import DatabaseArgs, DatabaseTier
from .nodes import Node, Nodes, NodesArgs
from .vpn import VpnArgs, VpnMesh


def cluster_name(cfg: ClusterConfig) -> str:
    """The stack's name in cloud labels, Patroni's scope, etcd's token and RabbitMQ's cluster."""
    return f"airflow-ha-{cfg.stack}"


def nodes_args(cfg: ClusterConfig) -> NodesArgs:
    return NodesArgs(
        nodes=cfg.nodes,
        cluster=cluster_name(cfg),
        admin_cidrs=cfg.admin_cidrs,
        public_ui=cfg.public_ui,
        ssh_public_key=cfg.ssh_public_key,
        ssh_private_key=cfg.ssh_private_key,
        aws_vpc_cidr=cfg.aws_vpc_cidr,
    )


def broker_args(cfg: ClusterConfig, nodes: Sequence[Node], mesh: VpnMesh) -> BrokerArgs:
    return BrokerArgs(
        nodes=nodes,
        after=mesh.ready,
        cluster_name=cluster_name(cfg),
        consumer_timeout_ms=cfg.rabbitmq_consumer_timeout_ms,
    )


class AirflowHaCluster(pulumi.ComponentResource):
    def __init__(self, cfg: ClusterConfig, opts: pulumi.ResourceOptions | None = None):
        lock_file(cfg.airflow_version)  # ConfigError before any resource when the lock is missing
        super().__init__(
            "airflow-ha:cluster:AirflowHaCluster", f"airflow-ha-{cfg.stack}", None, opts
        )
        child = pulumi.ResourceOptions(parent=self)
        self.nodes = Nodes("nodes", nodes_args(cfg), child)
        self.mesh = VpnMesh("mesh", VpnArgs(self.nodes.nodes, cfg.mesh_prefix_len), child)
        self.database = DatabaseTier(
            "database",
            DatabaseArgs(
                nodes=self.nodes.nodes,
                after=self.mesh.ready,
                scope=cluster_name(cfg),
                postgres_version=cfg.postgres_version,
                patroni=cfg.patroni,
                mesh_cidr=cfg.mesh_cidr,
            ),
            child,
        )
        self.broker = BrokerTier("broker", broker_args(cfg, self.nodes.nodes, self.mesh), child)
        self.airflow = AirflowTier(
            "airflow",
            AirflowArgs(
                nodes=self.nodes.nodes,
                after=self.mesh.ready,
                version=cfg.airflow_version,
                admin_user=cfg.airflow_admin_user,
                worker_concurrency=cfg.celery_worker_concurrency,
                public_ui=cfg.public_ui,
                database_url=self.database.airflow_db_url,
                database_port=self.database.primary_port,
                database_ready=self.database.ready,
                broker_urls=self.broker.node_broker_urls,
                broker_ready=self.broker.ready,
            ),
            child,
        )
        self.dag_sync = DagSync("dag-sync", DagSyncArgs(self.nodes.nodes, self.mesh.ready), child)

        self.outputs: dict[str, pulumi.Input] = {
            "nodes": {
                node.spec.name: {
                    "cloud": node.spec.cloud,
                    "place": node.spec.place,
                    "publicAddress": node.public_address,
                    "meshAddress": node.spec.mesh_address,
                    "ssh": pulumi.Output.concat(
                        "ssh -p ",
                        str(node.spec.port),
                        " ",
                        node.spec.user,
                        "@",
                        node.public_address,
                    ),
                }
                for node in self.nodes.nodes
            },
            # The RabbitMQ management UI listens on the mesh only: reach it through SSH.
            "brokerManagementTunnel": self.broker.management_tunnel,
            # HAProxy's stats page listens on each node's mesh address: reach it through SSH.
            "databaseStatsTunnel": self.database.stats_tunnels,
            "patronictl": "patronictl -c /etc/patroni/config.yml list  # on any node, as root",
            "airflow": {
                "uiUrls": self.airflow.ui_urls,
                "uiTunnels": self.airflow.ui_tunnels,
                "flowerTunnel": self.airflow.flower_tunnel,
                "adminUser": self.airflow.admin_user,
                "shipDags": "copy DAG files into /opt/airflow/dags on any node; csync2 copies them "
                "to the others within a minute",
            },
            # Secret, so on its own: `pulumi stack output airflowAdminPassword --show-secrets`.
            "airflowAdminPassword": self.airflow.admin_password,
        }
        self.register_outputs(self.outputs)
