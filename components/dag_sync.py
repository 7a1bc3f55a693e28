"""DagSync: the DAG folder kept equal on every node with csync2 (the seed's way).

How a user ships DAGs: copy the file into /opt/airflow/dags on any one node (scp, rsync, a CI
job); within about a minute every node has it, and the DAG processors pick it up. Deleting the
file on any node deletes it everywhere.

- csync2 runs from systemd's csync2.socket (Debian 13 ships it; inetd is not installed with
  --no-install-recommends, and inetd would listen on every address), re-bound by a drop-in to
  this node's mesh address, port 30865.
- Peers authenticate each other with the group key (a Pulumi secret). Transport is `nossl`:
  Debian's csync2 2.0 fails the TLS handshake with self-signed certificates (LINBIT/csync2#38);
  the traffic runs inside the WireGuard mesh, which encrypts it.
- A cron entry runs the sync script every minute. It probes each peer's csync2 port for a few
  seconds and runs `csync2 -x` only towards the peers that answer (`-P`; changes for a missing
  peer stay marked dirty and are sent when it is back), so one node down does not hold up the
  other two (a TCP connect to a dead machine would otherwise hang for about two minutes).
- Conflicts (one file changed on two nodes between two runs): `auto younger`, the newer file
  wins. Deletions propagate (csync2 sends removals of files it knew).
- Owners travel as numbers: the airflow user has the same uid/gid on every node
  (components/layout.py AIRFLOW_ACCOUNT).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from .layout import AIRFLOW_ACCOUNT, DAGS_DIR, TEXTFILE_DIR
from .nodes import Node
from .remote import RemoteFile, render, render_output, run_step
from .tier import TierArgs, generated_password

CSYNC2_PORT = 30865
GROUP = "airflow_dags"
CSYNC2_CFG = "/etc/csync2.cfg"
KEY_FILE = f"/etc/csync2.key_{GROUP}"
SOCKET_DROPIN = "/etc/systemd/system/csync2.socket.d/airflow-ha.conf"
SYNC_SCRIPT = "/usr/local/sbin/airflow-ha-dag-sync"
CRON_FILE = "/etc/cron.d/airflow-ha-dag-sync"
PROBE_TIMEOUT_S = 3
# One run never outlives the minute by much; the next run waits for the lock, at most this long.
RUN_TIMEOUT_S = 110
CONFLICT_RULE = "younger"
EXCLUDES = ("*~", ".*.swp", "*.pyc", "__pycache__")


@dataclass(frozen=True)
class DagSyncArgs(TierArgs):
    """The nodes to keep the DAG folder equal on: DAG sync takes no settings of its own."""


def csync2_cfg(hosts: list[str]) -> str:
    """One group of all nodes; the same file on every node."""
    return render(
        "dag_sync/csync2.cfg.j2",
        {
            "group": GROUP,
            "hosts": hosts,
            "key_file": KEY_FILE,
            "dags_dir": DAGS_DIR,
            "excludes": list(EXCLUDES),
            "conflict_rule": CONFLICT_RULE,
        },
    )


class DagSync(pulumi.ComponentResource):
    def __init__(self, name: str, args: DagSyncArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("airflow-ha:dag_sync:DagSync", name, None, opts)
        self._args = args
        # csync2 -k makes 64 characters; letters and digits are what it accepts.
        self.key: pulumi.Output[str] = pulumi.Output.secret(
            generated_password("csync2-key", 64, self)
        )
        config = csync2_cfg([n.spec.name for n in args.nodes])
        self.ready: dict[str, pulumi.Resource] = {
            node.spec.name: self._sync(node, config) for node in args.nodes
        }
        self.register_outputs({"dagsDir": DAGS_DIR, "group": GROUP})

    def _sync(self, node: Node, config: str) -> pulumi.Resource:
        name, mesh_address = node.spec.name, node.spec.mesh_address
        # What cron runs every minute: csync2 towards the peers that answer.
        sync = {
            "peers": [n.spec.name for n in self._args.nodes if n is not node],
            "port": CSYNC2_PORT,
            "probe_timeout": PROBE_TIMEOUT_S,
            "run_timeout": RUN_TIMEOUT_S,
            "dags_dir": DAGS_DIR,
            "textfile_dir": TEXTFILE_DIR,
        }
        context = {
            "node": name,
            **AIRFLOW_ACCOUNT.context(),
            "dags_dir": DAGS_DIR,
            "mesh_address": mesh_address,
            "port": CSYNC2_PORT,
            "dropin": SOCKET_DROPIN,
            "config": CSYNC2_CFG,
        }
        socket = render(
            "dag_sync/csync2.socket.conf.j2", {"mesh_address": mesh_address, "port": CSYNC2_PORT}
        )
        return run_step(
            "dag-sync",
            node.access,
            render("dag_sync/csync2.sh.j2", context),
            files=[
                RemoteFile(CSYNC2_CFG, config),
                RemoteFile(
                    KEY_FILE,
                    render_output("dag_sync/csync2.key.j2", {"key": self.key}),
                    mode="0600",
                ),
                RemoteFile(SOCKET_DROPIN, socket),
                RemoteFile(SYNC_SCRIPT, render("dag_sync/dag-sync.sh.j2", sync), mode="0755"),
                RemoteFile(CRON_FILE, render("dag_sync/cron.j2", {"script": SYNC_SCRIPT})),
            ],
            parent=self,
            depends_on=[self._args.after[name]],
        )
