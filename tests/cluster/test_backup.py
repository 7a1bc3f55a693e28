"""The backup tier on the local machines: pgBackRest's TLS server on every node's mesh address
admits the cluster's own certificates only, and a backup that every node's timer script is
asked for is taken once, on the asynchronous replica, from its own database. The drills
(drills/backup.py) take the rest: backups across a switchover, point-in-time and total-loss
restores."""

from __future__ import annotations

import json

import pytest

from components import backup
from tests.cluster.conftest import NODES

pytestmark = pytest.mark.cluster
MESH = {"node-a": "10.42.0.1", "node-b": "10.42.0.2", "node-c": "10.42.0.3"}
STANZA = "airflow-ha-local"


@pytest.mark.parametrize("node", NODES)
def test_the_tls_server_listens_on_the_mesh_only(cluster, node) -> None:
    listening = cluster(node, f"ss -ltnH 'sport = :{backup.TLS_PORT}'").stdout.split("\n")
    addresses = [line.split()[3].rpartition(":")[0] for line in filter(None, listening)]
    assert addresses == [MESH[node]]


def _handshake(cluster, node: str, peer: str, cert: str, key: str):
    # stdin open for 2 s: under TLS 1.3 the server judges the client's certificate after the
    # handshake, and its alert reaches only a client still reading.
    return cluster(node, f"sleep 2 | timeout 20 openssl s_client -connect {MESH[peer]}:"
                         f"{backup.TLS_PORT} -CAfile {backup.TLS_FILES['ca']} -cert {cert} "
                         f"-key {key} -verify_return_error 2>&1", check=False).stdout


def test_the_tls_server_admits_only_the_clusters_certificates(cluster) -> None:
    ours = _handshake(cluster, "node-a", "node-b", backup.TLS_FILES["cert"],
                      backup.TLS_FILES["key"])
    assert "Verify return code: 0 (ok)" in ours and "TLSv1.3" in ours
    # The same name, another issuer: pgBackRest's server refuses it in the handshake.
    cluster("node-a", "cd /tmp && openssl req -x509 -newkey ed25519 -nodes -keyout foreign.key "
                      "-out foreign.crt -subj /CN=node-a -days 1 2>/dev/null")
    foreign = _handshake(cluster, "node-a", "node-b", "/tmp/foreign.crt", "/tmp/foreign.key")
    assert "alert unknown ca" in foreign


def _members(cluster) -> dict[str, str]:
    listing = json.loads(cluster("node-a", "curl -fsS http://10.42.0.1:8008/cluster").stdout)
    return {m["name"]: m["role"] for m in listing["members"]}


def test_a_backup_is_taken_once_on_the_async_replica_from_its_own_database(cluster) -> None:
    roles = _members(cluster)
    (replica,) = [n for n, role in roles.items() if role == "replica"]
    ran = {n: cluster(n, f"{backup.BACKUP_SCRIPT} incr 2>&1", timeout=600).stdout for n in NODES}
    taken = [n for n, out in ran.items() if "incr backup of" in out]
    assert taken == [replica], ran
    assert "from this standby's database (replica)" in ran[replica]
    # pgBackRest waited for the standby's replay: it copied from the standby.
    assert "replay on the standby reached" in ran[replica]
    for node in NODES:
        if node != replica:
            assert f"taken on {replica}, not on {node}" in ran[node]
    info = json.loads(cluster(replica, f"runuser -u postgres -- pgbackrest --stanza={STANZA} "
                                       "--output=json info").stdout)[0]
    assert info["backup"][-1]["type"] == "incr"
