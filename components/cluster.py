"""AirflowHaCluster: wires the tiers in dependency order (nodes -> mesh -> tiers -> outputs).

Each tier takes its own small args object; the functions below build them from the stack's
ClusterConfig and from what the tiers before it give (a step per node to wait for, URLs).
"""

from __future__ import annotations

import dataclasses

import pulumi

from . import backup as backup_tier
from . import broker as broker_tier
from . import database as database_tier
from .airflow import AirflowArgs, AirflowTier, TaskLogs, lock_file
from .backup import BackupArgs, BackupTier
from .broker import BrokerArgs, BrokerTier
from .bucket import BucketArgs, ObjectStorageBucket
from .config import ClusterConfig
from .dag_sync import DagSync, DagSyncArgs
from .database import PATRONI_CONFIG, DatabaseArgs, DatabaseTier
from .layout import DAGS_DIR
from .monitoring import MonitoringArgs, MonitoringTier, ScrapeJob
from .nodes import Nodes, NodesArgs
from .tier import TierArgs
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
        authorized_keys=cfg.authorized_keys,
        deploy_key_known=cfg.deploy_public_key is not None,
        protect=cfg.protect_servers,
    )


def bucket_args(cfg: ClusterConfig) -> BucketArgs:
    assert cfg.object_storage is not None
    return BucketArgs(
        cluster=cluster_name(cfg),
        stack=cfg.stack,
        bucket=cfg.object_storage.bucket,
        region=cfg.object_storage.region,
        protect=cfg.protect_servers,
    )


def with_created_keys(cfg: ClusterConfig, bucket: ObjectStorageBucket) -> ClusterConfig:
    """The stack config with the keys the program made in objectStorage: the backups' for
    pgBackRest, the task logs' for Airflow (the tiers read them from there, as they read keys
    from the stack config)."""
    assert cfg.object_storage is not None
    storage = dataclasses.replace(
        cfg.object_storage,
        access_key=bucket.backup_keys.access_key,
        secret_key=bucket.backup_keys.secret_key,
        task_log_access_key=bucket.task_log_keys.access_key,
        task_log_secret_key=bucket.task_log_keys.secret_key,
    )
    return dataclasses.replace(cfg, object_storage=storage)


def database_args(cfg: ClusterConfig, on: TierArgs) -> DatabaseArgs:
    scope = cluster_name(cfg)
    backups = cfg.object_storage is not None
    return DatabaseArgs(
        on.nodes,
        on.after,
        scope=scope,
        postgres_version=cfg.postgres_version,
        patroni=cfg.patroni,
        mesh_cidr=cfg.mesh_cidr,
        postgres_parameters=cfg.postgres_parameters,
        archive=backup_tier.archive_parameters(scope, cfg.backup.archive_timeout)
        if backups else {},
        extra_packages=backup_tier.PACKAGES if backups else (),
    )


def backup_args(cfg: ClusterConfig, database: DatabaseTier, db: DatabaseArgs) -> BackupArgs:
    assert cfg.object_storage is not None
    return BackupArgs(
        db.nodes,
        database.ready,
        stanza=db.scope,
        stack=cfg.stack,
        storage=cfg.object_storage,
        settings=cfg.backup,
        data_dir=db.data_dir,
        bin_dir=db.bin_dir,
        postgres_port=database_tier.POSTGRES_PORT,
        rest_port=database_tier.PATRONI_PORT,
        etcd_client_port=database_tier.ETCD_CLIENT_PORT,
        runbook_url=cfg.alert_runbook_url,
    )


def broker_args(cfg: ClusterConfig, on: TierArgs) -> BrokerArgs:
    return BrokerArgs(
        on.nodes,
        on.after,
        cluster_name=cluster_name(cfg),
        consumer_timeout_ms=cfg.rabbitmq_consumer_timeout_ms,
        net_ticktime_s=cfg.rabbitmq_net_ticktime_s,
    )


def airflow_args(
    cfg: ClusterConfig, on: TierArgs, database: DatabaseTier, broker: BrokerTier
) -> AirflowArgs:
    return AirflowArgs(
        on.nodes,
        on.after,
        version=cfg.airflow_version,
        admin_user=cfg.airflow_admin_user,
        worker_concurrency=cfg.celery_worker_concurrency,
        public_ui=cfg.public_ui,
        database_url=database.airflow_db_url,
        database_port=database.primary_port,
        database_ready=database.ready,
        broker_urls=broker.node_broker_urls,
        broker_ready=broker.ready,
        task_logs=TaskLogs.of(cfg.object_storage, cfg.stack),
    )


def monitoring_args(
    cfg: ClusterConfig, on: TierArgs, after: list[dict[str, pulumi.Resource]]
) -> MonitoringArgs:
    """The tiers' metrics endpoints, named from their own constants; `after`: the ready steps
    of the tiers it scrapes (each node's monitoring waits for its node's)."""
    return MonitoringArgs(
        on.nodes,
        on.after,
        tier_jobs=(
            ScrapeJob("etcd", database_tier.ETCD_CLIENT_PORT),
            ScrapeJob("patroni", database_tier.PATRONI_PORT),
            ScrapeJob("haproxy", database_tier.HAPROXY_METRICS_PORT),
            ScrapeJob("rabbitmq", broker_tier.PROMETHEUS_PORT),
        ),
        receivers=cfg.alert_receivers,
        receiver_secrets=cfg.alert_receiver_secrets,
        runbook_url=cfg.alert_runbook_url,
        sync_standbys=1 if cfg.patroni.synchronous_mode else 0,
        max_lag_bytes=cfg.patroni.maximum_lag_on_failover,
        postgres_port=database_tier.POSTGRES_PORT,
        broker_vhost=broker_tier.VHOST,
        also_after={n.spec.name: [tier[n.spec.name] for tier in after] for n in on.nodes},
    )


class AirflowHaCluster(pulumi.ComponentResource):
    def __init__(self, cfg: ClusterConfig, opts: pulumi.ResourceOptions | None = None):
        lock_file(cfg.airflow_version)  # ConfigError before any resource when the lock is missing
        super().__init__("airflow-ha:cluster:AirflowHaCluster", cluster_name(cfg), None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # objectStorage.create: the bucket and its two keys first; nothing of it waits for a node.
        self.bucket: ObjectStorageBucket | None = None
        if cfg.object_storage is not None and cfg.object_storage.create:
            self.bucket = ObjectStorageBucket("object-storage", bucket_args(cfg), child)
            cfg = with_created_keys(cfg, self.bucket)
        self.nodes = Nodes("nodes", nodes_args(cfg), child)
        self.mesh = VpnMesh("mesh", VpnArgs(self.nodes.nodes, cfg.mesh_prefix_len), child)
        # Every tier runs on every node, each node's part once that node's mesh is ready.
        on_mesh = TierArgs(self.nodes.nodes, self.mesh.ready)
        db_args = database_args(cfg, on_mesh)
        self.database = DatabaseTier("database", db_args, child)
        # Backups need a bucket: without objectStorage there are none (config.py says so).
        self.backup = (
            BackupTier("backup", backup_args(cfg, self.database, db_args), child)
            if cfg.object_storage is not None else None
        )
        self.broker = BrokerTier("broker", broker_args(cfg, on_mesh), child)
        self.airflow = AirflowTier(
            "airflow", airflow_args(cfg, on_mesh, self.database, self.broker), child
        )
        self.dag_sync = DagSync("dag-sync", DagSyncArgs(on_mesh.nodes, on_mesh.after), child)
        # After the tiers it scrapes: its check wants every target up.
        scraped = [self.database.ready, self.broker.ready, self.airflow.ready, self.dag_sync.ready]
        if self.backup is not None:
            scraped.append(self.backup.ready)
        self.monitoring = MonitoringTier(
            "monitoring", monitoring_args(cfg, on_mesh, scraped), child
        )
        self.outputs: dict[str, pulumi.Input] = self._outputs()
        self.register_outputs(self.outputs)

    def _outputs(self) -> dict[str, pulumi.Input]:
        return {
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
            # Prometheus and Alertmanager listen on the mesh only: reach them through SSH.
            "monitoring": {
                "prometheusTunnel": self.monitoring.prometheus_tunnel,
                "alertmanagerTunnel": self.monitoring.alertmanager_tunnel,
                "status": "python -m tools.status --stack <stack>  # the one-screen health view",
            },
            "patronictl": f"patronictl -c {PATRONI_CONFIG} list  # on any node, as root",
            "airflow": {
                "uiUrls": self.airflow.ui_urls,
                "uiTunnels": self.airflow.ui_tunnels,
                "flowerTunnel": self.airflow.flower_tunnel,
                "adminUser": self.airflow.admin_user,
                "shipDags": f"copy DAG files into {DAGS_DIR} on any node; csync2 copies them "
                "to the others within a minute",
            },
            # Without it the backups cannot be read: keep a copy outside the stack's state.
            "backupRepositoryPassphrase": self.backup.cipher_pass if self.backup else None,
            # Secret, so on its own: `pulumi stack output airflowAdminPassword --show-secrets`.
            "airflowAdminPassword": self.airflow.admin_password,
            # Flower's basic auth (user adminUser): `pulumi stack output airflowFlowerPassword`.
            "airflowFlowerPassword": self.airflow.flower_password,
        }
