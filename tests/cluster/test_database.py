"""The database tier on the local machines: etcd, Patroni + PostgreSQL 17, HAProxy.

One quick crash drill (a single kill -9 of the primary's Patroni + PostgreSQL) runs here;
drills/failover.py repeats it per timing set and prints the medians.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import database
from drills import failover, nodes, runbook
from tests.cluster.conftest import NODES
from tools.localcloud.lock import ClusterLock
from tools.localcloud.machines import by_name, ssh_command

pytestmark = pytest.mark.cluster
MESH = {"node-a": "10.42.0.1", "node-b": "10.42.0.2", "node-c": "10.42.0.3"}
ETCDCTL = "ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379"
# After the failover and the old primary's rejoin, every client must have made progress again
# within this long.
CLIENT_RECOVERY_S = 20


@pytest.fixture(scope="module")
def password(cluster) -> Iterator[str]:
    secret = failover.db_password()
    failover.prepare(secret)
    yield secret
    failover.cleanup(secret)


@pytest.mark.parametrize("node", NODES)
def test_etcd_is_one_healthy_three_member_cluster(cluster, node) -> None:
    cluster(node, "ETCDCTL_API=3 " + runbook.command("etcd-health"))
    members = json.loads(cluster(node, f"{ETCDCTL} member list -w json").stdout)
    assert sorted(m["name"] for m in members["members"]) == NODES
    status = json.loads(cluster(node, f"{ETCDCTL} endpoint status --cluster -w json").stdout)
    # Not three one-member clusters (Debian's package data left in place): one cluster id.
    assert len({s["Status"]["header"]["cluster_id"] for s in status}) == 1
    assert len(status) == 3


def test_patroni_has_one_leader_and_two_streaming_replicas(cluster) -> None:
    listing = json.loads(cluster("node-a", failover.PATRONI_LIST_JSON).stdout)
    roles = sorted(m["Role"] for m in listing)
    assert roles == ["Leader", "Replica", "Sync Standby"], listing
    for member in listing:
        expected = "running" if member["Role"] == "Leader" else "streaming"
        assert member["State"] == expected, listing
    config = cluster("node-a", runbook.command("patroni-show-config")).stdout
    assert "synchronous_mode: true" in config and "use_pg_rewind: true" in config


def _etcd_leader_node(cluster) -> str:
    status = json.loads(cluster("node-a", f"{ETCDCTL} endpoint status --cluster -w json").stdout)
    (leader,) = [s for s in status if s["Status"]["leader"] == s["Status"]["header"]["member_id"]]
    return next(n for n, address in MESH.items() if address in leader["Endpoint"])


@pytest.mark.parametrize("role", ["Leader", "Sync Standby"])
def test_etcd_leadership_put_beside_the_primary_or_sync_standby_moves_away(cluster, role) -> None:
    """airflow-ha-etcd-leader-away.timer hands etcd's leadership to the async replica's node."""
    # Machines just started: wait until Patroni names all three roles.
    deadline = time.monotonic() + 120
    while True:
        listing = json.loads(cluster("node-a", f"{runbook.PATRONICTL} list -f json").stdout)
        by_role = {m["Role"]: m["Member"] for m in listing}
        if {"Leader", "Sync Standby", "Replica"} <= set(by_role) or time.monotonic() > deadline:
            break
        time.sleep(2)
    node = by_role[role]
    members = json.loads(cluster("node-a", f"{ETCDCTL} member list -w json").stdout)["members"]
    node_id = next(format(m["ID"], "x") for m in members if m["name"] == node)
    with ClusterLock():
        leader = _etcd_leader_node(cluster)
        if leader != node:
            moved = cluster(leader, f"{ETCDCTL} move-leader {node_id}").stdout
            # Not read back from the cluster: the timer may already have moved it on.
            assert "Leadership transferred" in moved, moved
        deadline = time.monotonic() + 3 * database.LEADER_AWAY_INTERVAL_S + 10
        # Via the sync standby's node is allowed (the fallback when the replica's member did
        # not answer its health check): the timer there moves it on within one interval.
        while _etcd_leader_node(cluster) != by_role["Replica"] and time.monotonic() < deadline:
            time.sleep(1)
        assert _etcd_leader_node(cluster) == by_role["Replica"], f"etcd still leads on {node}"
    log = cluster(node, f"journalctl -u {database.LEADER_AWAY_UNIT} --no-pager -n 20").stdout
    assert "etcd leadership moved to" in log


@pytest.mark.parametrize("node", NODES)
def test_patroni_config_validates_on_the_node(cluster, node) -> None:
    cluster(node, "patroni --validate-config --ignore-listen-port /etc/patroni/config.yml")
    cluster(node, "python3 -c 'import etcd'")  # python3-etcd, which apt does not pull in


@pytest.mark.parametrize("node", NODES)
def test_database_ports_listen_on_the_mesh_or_loopback_only(cluster, node) -> None:
    listening = cluster(node, "ss -ltnH").stdout.split("\n")
    ports = {"2379", "2380", "5432", "8008", "5000", "5001", "7000"}
    found = set()
    for line in filter(None, listening):
        address, _, port = line.split()[3].rpartition(":")
        if port in ports:
            found.add(port)
            assert address in (MESH[node], "127.0.0.1"), line
    assert found == ports


def test_unsafe_rest_endpoints_need_the_password(cluster) -> None:
    code = cluster(
        "node-a",
        "curl -s -o /dev/null -w '%{http_code}' -X POST http://10.42.0.1:8008/restart",
        check=False,
    ).stdout
    assert code == "401"


def test_superuser_cannot_log_in_over_the_network(cluster) -> None:
    result = cluster(
        "node-a",
        "PGPASSWORD=x PGCONNECT_TIMEOUT=3 psql -X -h 127.0.0.1 -p 5000 -U postgres -d postgres "
        "-c 'select 1'",
        check=False,
    )
    assert result.returncode != 0 and "no pg_hba.conf entry" in result.stderr


@pytest.mark.parametrize("node", NODES)
def test_a_row_written_through_haproxy_lands_on_the_primary_and_the_replicas(
    cluster, password, node
) -> None:
    run = f"{node}-{uuid.uuid4().hex[:8]}"
    failover.psql(
        node, f"INSERT INTO {failover.SCHEMA}.writes (run, seq) VALUES ('{run}', 1)", password
    )
    listing = failover.members()
    leader = failover.leader_of(listing)
    select = f"SELECT count(*) FROM {failover.SCHEMA}.writes WHERE run = '{run}'"
    for member in NODES:
        # Over the local socket as postgres: each server's own copy, primary or replica.
        command = (
            "for _ in $(seq 50); do "
            f'n=$(runuser -u postgres -- psql -X -tA -d airflow -c "{select}"); '
            '[ "$n" = 1 ] && break; sleep 0.1; done; echo "$n"; '
            "runuser -u postgres -- psql -X -tA -d airflow -c 'select pg_is_in_recovery()'"
        )
        count, in_recovery = cluster(member, command).stdout.split()
        assert count == "1", f"{member} lacks the row written on {node}"
        assert in_recovery == ("f" if member == leader else "t")
    # :5001 reaches a replica.
    assert failover.psql(node, "select pg_is_in_recovery()", password, port=5001).strip() == "t"


CLIENTS = Path(__file__).resolve().parent / "agents" / "db_clients.py"
CLIENTS_ON_NODE = f"{nodes.DRILL_DIR}/db_clients.py"
CLIENTS_STOP = f"{nodes.DRILL_DIR}/db-clients.stop"


def start_clients(node: str, password: str) -> subprocess.Popen[str]:
    """db_clients.py on a node: clients without timeouts through its HAProxy, until stopped."""
    nodes.ssh(
        node,
        f"mkdir -p {nodes.DRILL_DIR} && rm -f {CLIENTS_STOP} && cat > {CLIENTS_ON_NODE}",
        stdin=CLIENTS.read_text(),
    )
    proc = subprocess.Popen(
        ssh_command(by_name(node), f"python3 {CLIENTS_ON_NODE}"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(password + "\n")
    proc.stdin.close()
    return proc


# CI runs the db-crash drill instead (tests/cluster/test_drills.py).
@pytest.mark.full
def test_killing_the_primary_fails_over_without_losing_a_row(cluster, password) -> None:
    with ClusterLock(timeout=1800):
        primary = failover.leader_of(failover.wait_healthy())
        clients = {n: start_clients(n, password) for n in NODES if n != primary}
        drill = failover.crash_drill(password)
        print(json.dumps(drill, indent=1))
        listing = failover.wait_healthy()
        time.sleep(CLIENT_RECOVERY_S)
        for node in clients:
            nodes.ssh(node, f"touch {CLIENTS_STOP}")
        idle = {n: json.loads(p.stdout.read())["idle_s"] for n, p in clients.items()}
    print(f"client threads, seconds since their last round: {idle}")
    # No client is left hanging by the failover: with HAProxy's connect retries every one of
    # them hung; without, HAProxy 3.0 still strands an odd connect, which the timeout ends.
    hanging = {n: [t for t, s in v.items() if s > CLIENT_RECOVERY_S] for n, v in idle.items()}
    assert not any(hanging.values()), f"client threads hanging since the failover: {hanging}"
    assert drill["outage_s"] is not None, "no commit succeeded after the kill"
    assert drill["new_leader"] != drill["victim"]
    # synchronous_mode: only the standby that had every acknowledged commit may be promoted.
    assert drill["new_leader"] == drill["sync"]
    assert drill["lost"] == 0, f"{drill['lost']} acknowledged rows are missing"
    assert drill["rejoin_s"] is not None, f"{drill['victim']} did not rejoin as a replica"
    assert failover.is_healthy(listing)
