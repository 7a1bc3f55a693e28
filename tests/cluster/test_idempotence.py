"""A deploy with every step forced to re-run changes nothing on the nodes: same WireGuard keys,
same files, no service restarted."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import NODES, run_tool

pytestmark = pytest.mark.cluster

# Everything the deploy writes lives under these; their checksums must not move.
WATCHED = " ".join(
    [
        "/etc/wireguard /etc/hosts /etc/airflow-ha /etc/ssh/sshd_config.d /etc/default",
        "/etc/patroni /etc/haproxy /etc/rabbitmq /etc/airflow /etc/csync2* /etc/systemd/system",
    ]
)
TRANSIENT_UNITS = ("csync2@", "sshd@", "ssh@")
SNAPSHOT = (
    f"find {WATCHED} -type f 2>/dev/null | sort | xargs -r sha256sum; "
    "wg show wg0 public-key; "
    "for u in $(systemctl list-units --type=service --state=running --no-legend --plain "
    "| awk '{print $1}'); do echo \"$u $(systemctl show -p InvocationID --value $u)\"; done"
)


def _snapshot(cluster) -> dict[str, set[str]]:
    return {node: set(cluster(node, SNAPSHOT).stdout.splitlines()) for node in NODES}


def test_forced_redeploy_changes_nothing(cluster) -> None:
    before = _snapshot(cluster)
    result = run_tool("tools.deploy", "--stack", "local", "--force")
    assert result.returncode == 0
    assert " 0 skipped" in result.stdout
    after = _snapshot(cluster)
    for node in NODES:
        # Per-connection units (csync2 from inetd/socket, ssh sessions) come and go by themselves.
        changed = {
            line for line in before[node] ^ after[node] if not line.startswith(TRANSIENT_UNITS)
        }
        assert not changed, f"{node}: the forced deploy changed:\n" + "\n".join(sorted(changed))
