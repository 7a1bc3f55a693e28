"""The monitoring tier on the local machines: every node's Prometheus sees every target up,
the Alertmanagers form one cluster of three, nothing but SSH and WireGuard is reachable on
the bridge address, and tools.status prints the cluster's health."""

from __future__ import annotations

import json
import shlex
import time
import urllib.parse

import pytest

from components import monitoring
from tests.cluster.conftest import NODES, run_tool

pytestmark = pytest.mark.cluster
MESH = {"node-a": "10.42.0.1", "node-b": "10.42.0.2", "node-c": "10.42.0.3"}
BRIDGE = {"node-a": "172.31.77.11", "node-b": "172.31.77.12", "node-c": "172.31.77.13"}
JOBS = {"node", "postgres", "etcd", "patroni", "haproxy", "rabbitmq", "prometheus", "alertmanager"}
# A target scraped every 15 s: after a deploy every one has answered within this long.
UP_WITHIN_S = 90


def _get(cluster, node: str, url: str):
    return json.loads(cluster(node, f"curl -fsS {shlex.quote(url)}").stdout)


def _targets(cluster, node: str) -> list[dict]:
    url = f"http://{MESH[node]}:{monitoring.PROMETHEUS_PORT}/api/v1/targets?state=active"
    return _get(cluster, node, url)["data"]["activeTargets"]


@pytest.mark.parametrize("node", NODES)
def test_every_target_is_up_in_every_nodes_prometheus(cluster, node) -> None:
    deadline = time.monotonic() + UP_WITHIN_S
    while True:
        targets = _targets(cluster, node)
        down = [
            f"{t['labels']['job']}@{t['labels']['node']}: {t.get('lastError')}"
            for t in targets
            if t["health"] != "up"
        ]
        if not down or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert not down, f"{node}'s Prometheus: targets down: {down}"
    seen = {(t["labels"]["job"], t["labels"]["node"]) for t in targets}
    assert seen == {(job, n) for job in JOBS for n in NODES}


@pytest.mark.parametrize("node", NODES)
def test_the_textfile_metrics_are_there(cluster, node) -> None:
    url = f"http://{MESH[node]}:{monitoring.PROMETHEUS_PORT}/api/v1/query?query="
    for query, count in (
        # Two peers each, on every node.
        ("airflow_ha_wireguard_latest_handshake_seconds", 2 * len(NODES)),
        ("airflow_ha_textfile_source_ok == 1", 3 * len(NODES)),
        ("airflow_ha_dag_sync_last_success_timestamp_seconds", len(NODES)),
    ):
        result = _get(cluster, node, url + urllib.parse.quote(query))["data"]["result"]
        assert len(result) == count, f"{query}: {result}"


def test_no_alert_fires_on_the_healthy_cluster(cluster) -> None:
    url = f"http://{MESH['node-a']}:{monitoring.ALERTMANAGER_PORT}/api/v2/alerts?active=true"
    alerts = _get(cluster, "node-a", url)
    assert [a["labels"]["alertname"] for a in alerts] == []


@pytest.mark.parametrize("node", NODES)
def test_alertmanager_cluster_has_three_peers(cluster, node) -> None:
    url = f"http://{MESH[node]}:{monitoring.ALERTMANAGER_PORT}/api/v2/status"
    status = _get(cluster, node, url)
    assert status["cluster"]["status"] == "ready"
    peers = {p["address"].split(":")[0] for p in status["cluster"]["peers"]}
    assert peers == set(MESH.values())


@pytest.mark.parametrize("node", NODES)
def test_nothing_listens_on_the_bridge_address_but_ssh_and_wireguard(cluster, node) -> None:
    tcp = cluster(node, "ss -Hltn | awk '{print $4}'").stdout.split()
    udp = cluster(node, "ss -Hlun | awk '{print $4}'").stdout.split()
    exposed = [a for a in tcp if a.rsplit(":", 1)[0] in (BRIDGE[node], "0.0.0.0", "*", "[::]")]
    # Airflow's worker and triggerer log servers (8793, 8794) have no bind option: they
    # listen everywhere and the log firewall drops them off the mesh (test_airflow.py).
    assert {a.rsplit(":", 1)[1] for a in exposed} <= {"22", "8793", "8794"}, f"TCP: {exposed}"
    exposed = [a for a in udp if a.rsplit(":", 1)[0] in (BRIDGE[node], "0.0.0.0", "*", "[::]")]
    # WireGuard's socket is the kernel's and shows no owner; resolved's stub is on loopback.
    assert {a.rsplit(":", 1)[1] for a in exposed} <= {"51820"}, f"UDP: {exposed}"


def test_status_prints_every_node_and_the_primary(cluster) -> None:
    result = run_tool("tools.status", "--stack", "local", timeout=120)
    assert result.returncode == 0, result.stderr
    screen = result.stdout
    for node in NODES:
        assert f"{node}  node:up" in screen
    leads = [line for line in screen.splitlines() if line.strip().startswith("leads:")]
    assert sum("primary" in line for line in leads) == 1, screen
    assert "no alerts firing" in screen
