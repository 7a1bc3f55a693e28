"""Ports, paths and the service account that more than one tier agrees on.

One module, so that no tier imports another tier for a constant: the nodes' firewall and the
Airflow tier share the public UI port, the mesh and the nodes' firewall the WireGuard port, the
Airflow tier and DAG sync the `airflow` account and the DAG folder.
"""

from __future__ import annotations

from dataclasses import dataclass

# The public UI (publicUi): the nodes' firewall opens it, Airflow's TLS unit serves it.
UI_PORT = 443
WIREGUARD_PORT = 51820  # the mesh; the firewall admits it from the other nodes only

# node-exporter's textfile collector reads *.prom files here (the monitoring tier makes it;
# the DAG sync script writes its last successful run into it when it exists).
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
# The OS user Debian's Prometheus packages run as; also the PostgreSQL role of the
# postgres-exporter (peer authentication over the local socket: the database tier's pg_hba).
MONITORING_USER = "prometheus"

# The objectStorage's CA certificate (caCertificate), when no public CA signs the endpoint's:
# every client of the bucket (Airflow's task logs, the backups) verifies the endpoint with it.
OBJECT_STORAGE_CA = "/etc/airflow-ha/object-storage-ca.pem"

AIRFLOW_HOME = "/opt/airflow"
DAGS_DIR = f"{AIRFLOW_HOME}/dags"


@dataclass(frozen=True)
class ServiceAccount:
    """A system user and group of the same fixed id on every node, with its home."""

    user: str
    uid: int
    home: str

    def context(self) -> dict[str, str | int]:
        """The template variables a step that creates the account renders with."""
        return {"user": self.user, "uid": self.uid, "home": self.home}


# Airflow runs as it and the DAG files belong to it. A fixed uid/gid on every node: csync2
# carries numeric owners of DAG files between nodes. The Airflow install and DAG sync steps both
# create it (whichever runs first), so that neither depends on the other.
AIRFLOW_ACCOUNT = ServiceAccount("airflow", 50000, AIRFLOW_HOME)
AIRFLOW_USER = AIRFLOW_ACCOUNT.user
