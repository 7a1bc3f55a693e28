"""BackupTier: pgBackRest on every node, its repository on the stack's S3 object storage.

One stanza for the cluster (named after Patroni's scope), its repository at
`/<stack>/pgbackrest` in the stack's bucket, encrypted (aes-256-cbc) with a passphrase generated
once and kept as a Pulumi secret (a stack output too: without it the repository is unreadable).

- WAL: whichever node is primary archives (`archive_command`, in Patroni's dynamic config, see
  `archive_parameters`); `archive_timeout` switches a segment at least that often, which bounds
  the writes lost when every node is lost. archive-async keeps a slow bucket from holding up
  PostgreSQL. Replicas stream only (no restore_command: database.py says why).
- Backups: a full and a differential timer on every node (the stack's `backup` schedules); the
  script acts only on one node, under an etcd lock, so a failover moves the backups with the
  roles and two never run at once: the first asynchronous replica that streams, else the
  synchronous standby, else the primary. pgBackRest reads the files there (backup-standby)
  and reaches the primary only to start and stop the backup, through the pgBackRest TLS
  server every node runs on the mesh (the package's pgbackrest.service, port 8432). Both ends
  show a certificate of the cluster's own CA (certs.py: derived from RandomBytes seeds, secret
  in the state); only the cluster's nodes may act on the stanza.
- Restore (point in time, or everything after every node was lost): the node script
  `airflow-ha-restore`, driven by `python -m tools.restore` (docs/operations.md).

Per node: `backup-install` (package, config, certificates, the TLS server, timers; after the
node's database is ready), then `backup-stanza` once every node has it (every node loops until
the repository holds the stanza and a full backup; the primary creates them; a repository of
another cluster fails the step with the way out).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_random as random

from . import certs
from .config import BackupSettings, ObjectStorage
from .config_schema import SECRET_PLACEHOLDER_RE
from .database import DCS_NAMESPACE
from .layout import TEXTFILE_DIR
from .nodes import Node
from .remote import RemoteFile, render, render_output, run_step, timer_files
from .tier import TierArgs, generated_password

# The database tier installs it (archive_command runs it from the first start); backup-install
# too.
PACKAGES = ("pgbackrest",)
CONFIG = "/etc/pgbackrest/pgbackrest.conf"
CA_FILE = "/etc/pgbackrest/object-storage-ca.pem"
TLS_DIR = "/etc/pgbackrest/tls"
TLS_PORT = 8432  # pgBackRest's own default
TLS_FILES = {"ca": f"{TLS_DIR}/ca.crt", "cert": f"{TLS_DIR}/node.crt", "key": f"{TLS_DIR}/node.key"}
CA_NAME = "airflow-ha mesh CA"
TLS_UNIT = "pgbackrest.service"  # Debian's package ships it (as postgres, Restart=always)
SPOOL_DIR = "/var/spool/pgbackrest"
LOG_DIR = "/var/log/pgbackrest"
BACKUP_SCRIPT = "/usr/local/sbin/airflow-ha-backup"
RESTORE_SCRIPT = "/usr/local/sbin/airflow-ha-restore"
UNIT = "airflow-ha-backup"
UNIT_DIR = "/etc/systemd/system"
BACKUP_TYPES = ("full", "diff")
# Unsent WAL kept in the spool before pgBackRest drops segments (pgbackrest.conf.j2 says why).
QUEUE_MAX = "4GiB"
# The first full backup of a new cluster, and waiting for the primary's.
STANZA_WAIT_S = 1800
# The stanza step's exit status for "the repository holds another cluster's backups".
MISMATCH_STATUS = 3
# The backups' state for the node exporter, and the alerts on it (prometheus.yml reads every
# /etc/prometheus/airflow-ha*-rules.yml: components/monitoring.py).
METRICS_SCRIPT = "/usr/local/sbin/airflow-ha-backup-metrics"
METRICS_UNIT = "airflow-ha-backup-metrics"
METRICS_FILE = f"{TEXTFILE_DIR}/airflow_ha_backup.prom"
METRICS_INTERVAL_S = 300  # each run reads the repository: a few S3 requests
RULES_FILE = "/etc/prometheus/airflow-ha-backup-rules.yml"


@dataclass(frozen=True)
class BackupArgs(TierArgs):
    """The backup tier's nodes (`after`: each node's database ready) and the stack's settings."""

    stanza: str
    stack: str
    storage: ObjectStorage
    settings: BackupSettings
    data_dir: str
    bin_dir: str
    postgres_port: int
    rest_port: int  # Patroni's REST API: /primary answers 200 only on the primary
    etcd_client_port: int
    runbook_url: str = "docs/operations.md"

    @property
    def repo_path(self) -> str:
        return f"/{self.stack}/pgbackrest"


def archive_parameters(stanza: str, archive_timeout: int) -> dict[str, str | int]:
    """PostgreSQL settings of WAL archiving, for Patroni's dynamic config (every member the
    same; only the primary archives)."""
    return {
        "archive_mode": "on",
        "archive_command": f"pgbackrest --stanza={stanza} archive-push %p",
        "archive_timeout": archive_timeout,
    }


def _ca_lines(storage: ObjectStorage) -> list[str]:
    if storage.ca_certificate is None:
        return []
    return [f"repo1-storage-ca-file={CA_FILE}"]


class BackupTier(pulumi.ComponentResource):
    def __init__(self, name: str, args: BackupArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("airflow-ha:backup:BackupTier", name, None, opts)
        self._args = args
        self.cipher_pass: pulumi.Output[str] = pulumi.Output.secret(
            generated_password("pgbackrest-cipher-pass", 64, self)
        )
        opts_child = pulumi.ResourceOptions(parent=self)
        self._ca_seed = random.RandomBytes("pgbackrest-tls-ca", length=32, opts=opts_child).base64
        self._tls_seeds = {
            n.spec.name: random.RandomBytes(f"{n.spec.name}-pgbackrest-tls-key", length=32,
                                            opts=opts_child).base64
            for n in args.nodes
        }
        installs = {n.spec.name: self._install(n) for n in args.nodes}
        self.ready: dict[str, pulumi.Resource] = {
            n.spec.name: self._stanza(n, list(installs.values())) for n in args.nodes
        }
        self.register_outputs({"repositoryPassphrase": self.cipher_pass})

    def _context(self, node: Node) -> dict[str, Any]:
        a = self._args
        spec = node.spec
        return {
            "node": spec.name,
            "stack": a.stack,
            "stanza": a.stanza,
            "repo_path": a.repo_path,
            "primary_url": f"http://{spec.mesh_address}:{a.rest_port}/primary",
            "cluster_url": f"http://{spec.mesh_address}:{a.rest_port}/cluster",
            "rest_url": f"http://{spec.mesh_address}:{a.rest_port}",
            "dcs_prefix": f"{DCS_NAMESPACE}{a.stanza}",
            "data_dir": a.data_dir,
            "bin_dir": a.bin_dir,
            "etcd_endpoints": ",".join(
                f"http://{n.spec.mesh_address}:{a.etcd_client_port}" for n in a.nodes
            ),
            "lock_name": f"/airflow-ha/{a.stanza}/backup-lock",
            "script": BACKUP_SCRIPT,
            "unit": UNIT,
            "spool_dir": SPOOL_DIR,
            "log_dir": LOG_DIR,
            "wait_seconds": STANZA_WAIT_S,
            "mismatch_status": MISMATCH_STATUS,
            "metrics_file": METRICS_FILE,
            "rules_file": RULES_FILE,
            "interval": METRICS_INTERVAL_S,
        }

    def _config(self, node: Node) -> pulumi.Output[str]:
        a = self._args
        context: Mapping[str, Any] = {
            **self._context(node),
            "storage": a.storage,
            "access_key": a.storage.access_key,
            "secret_key": a.storage.secret_key,
            "cipher_pass": self.cipher_pass,
            "ca_lines": _ca_lines(a.storage),
            "retention_full": a.settings.retention_full,
            "postgres_port": a.postgres_port,
            "queue_max": QUEUE_MAX,
            "mesh_address": node.spec.mesh_address,
            "tls_port": TLS_PORT,
            "tls": TLS_FILES,
            # A node's certificate names it by its mesh address (certs.py).
            "clients": [n.spec.mesh_address for n in a.nodes],
            # pg1 is this node's own database; the others follow in meshIndex order.
            "peers": [{"index": i, "address": n.spec.mesh_address} for i, n in enumerate(
                (n for n in a.nodes if n.spec.name != node.spec.name), start=2)],
        }
        return pulumi.Output.secret(render_output("backup/pgbackrest.conf.j2", context))

    def _files(self, node: Node) -> list[RemoteFile]:
        context = self._context(node)
        schedules = {"full": self._args.settings.full_schedule,
                     "diff": self._args.settings.diff_schedule}
        files = [
            RemoteFile(CONFIG, self._config(node), mode="0640", owner="root:postgres"),
            RemoteFile(BACKUP_SCRIPT, render("backup/backup.sh.j2", context), mode="0755"),
            RemoteFile(RESTORE_SCRIPT, render("backup/restore.sh.j2", context), mode="0755"),
            RemoteFile(f"{UNIT_DIR}/{UNIT}@.service", render("backup/backup@.service.j2", context)),
        ]
        for kind in BACKUP_TYPES:
            timer = {**context, "type": kind, "schedule": utc(schedules[kind])}
            path = f"{UNIT_DIR}/{UNIT}-{kind}.timer"
            files.append(RemoteFile(path, render("backup/backup.timer.j2", timer)))
        files += self._tls_files(node)
        if self._args.storage.ca_certificate is not None:
            files.append(RemoteFile(CA_FILE, self._args.storage.ca_certificate))
        metrics = {**context, "script": METRICS_SCRIPT}
        files += timer_files(METRICS_SCRIPT, f"{UNIT_DIR}/{METRICS_UNIT}", "backup/backup-metrics",
                             metrics)
        files.append(RemoteFile(RULES_FILE, rules_yml(self._args)))
        return files

    def _tls_files(self, node: Node) -> list[RemoteFile]:
        """The CA's certificate, the node's certificate and its key (postgres's alone)."""
        spec = node.spec
        seed = self._tls_seeds[spec.name]
        ca = self._ca_seed.apply(lambda s: _derived(s, certs.ca_certificate, s, CA_NAME))
        cert = pulumi.Output.all(self._ca_seed, seed).apply(lambda s: _derived(
            s[1], certs.node_certificate, s[0], CA_NAME, s[1], spec.mesh_address))
        key = pulumi.Output.secret(seed.apply(lambda s: _derived(s, certs.private_key_pem, s)))
        return [
            RemoteFile(TLS_FILES["ca"], pulumi.Output.unsecret(ca)),
            RemoteFile(TLS_FILES["cert"], pulumi.Output.unsecret(cert)),
            RemoteFile(TLS_FILES["key"], key, mode="0600", owner="postgres:postgres"),
        ]

    def _install(self, node: Node) -> pulumi.Resource:
        context = {
            **self._context(node),
            "units": [f"{UNIT_DIR}/{UNIT}@.service",
                      *(f"{UNIT_DIR}/{UNIT}-{kind}.timer" for kind in BACKUP_TYPES),
                      *(f"{UNIT_DIR}/{METRICS_UNIT}.{kind}" for kind in ("service", "timer"))],
            "timers": [*(f"{UNIT}-{kind}.timer" for kind in BACKUP_TYPES),
                       f"{METRICS_UNIT}.timer"],
            "tls_unit": TLS_UNIT,
            "server_files": [CONFIG, *TLS_FILES.values()],
        }
        return run_step(
            "backup-install",
            node.access,
            render("backup/install.sh.j2", context),
            files=self._files(node),
            parent=self,
            depends_on=[self._args.after[node.spec.name]],
        )

    def _stanza(self, node: Node, installs: list[pulumi.Resource]) -> pulumi.Resource:
        return run_step(
            "backup-stanza",
            node.access,
            render("backup/stanza.sh.j2", self._context(node)),
            parent=self,
            depends_on=installs,
            timeout_minutes=STANZA_WAIT_S // 60 + 5,
        )


def _derived(seed: str, make: Any, *args: str) -> str:
    """`make(*args)`; the offline render's placeholder seed (tools.render: `<secret:...>`)
    gives a placeholder."""
    if SECRET_PLACEHOLDER_RE.match(seed):
        return f"<{make.__name__} of the offline render>"
    return make(*args)


def rules_yml(args: BackupArgs) -> str:
    """The backups' alert rules: the same file on every node."""
    return render(
        "backup/rules.yml.j2",
        {"runbook": args.runbook_url, "max_age_s": args.settings.alert_after_hours * 3600},
    )


def utc(schedule: str) -> str:
    """A calendar expression in UTC whatever the node's time zone (systemd.time(7))."""
    return schedule if schedule.endswith(" UTC") else f"{schedule} UTC"
