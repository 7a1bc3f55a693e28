"""The foundation on real machines: a WireGuard full mesh and node names on mesh addresses."""

from __future__ import annotations

import time

import pytest

from drills import runbook
from tests.cluster.conftest import NODES

pytestmark = pytest.mark.cluster
MESH = {"node-a": "10.42.0.1", "node-b": "10.42.0.2", "node-c": "10.42.0.3"}


@pytest.mark.parametrize("node", NODES)
def test_wireguard_lists_two_peers_with_a_recent_handshake(cluster, node) -> None:
    handshakes = cluster(node, runbook.command("wg-handshakes")).stdout.split()
    pairs = dict(zip(handshakes[::2], handshakes[1::2], strict=True))
    assert len(pairs) == 2
    now = time.time()
    for key, when in pairs.items():
        # PersistentKeepalive is 25 s; a handshake is renewed at least every 2 minutes.
        assert now - int(when) < 180, (
            f"{node}: peer {key} last handshake {now - int(when):.0f}s ago"
        )


@pytest.mark.parametrize("node", NODES)
def test_other_nodes_answer_over_the_mesh_by_name(cluster, node) -> None:
    for other, address in MESH.items():
        resolved = cluster(node, f"getent hosts {other}").stdout.split()[0]
        assert resolved == address
        if other != node:
            cluster(node, f"ping -c 2 -W 2 -I wg0 {address}")


def test_a_second_deploy_skips_every_step(cluster) -> None:
    from tests.cluster.conftest import run_tool

    result = run_tool("tools.deploy", "--stack", "local")
    assert result.returncode == 0
    assert " 0 steps run" in result.stdout
    assert "  start  " not in result.stdout
