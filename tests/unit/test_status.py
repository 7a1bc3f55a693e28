"""tools.status renders a stack's health from Prometheus' and Alertmanager's answers (canned)."""

from __future__ import annotations

import urllib.parse
from typing import Any

from tools import status


def _vector(*samples: tuple[dict[str, str], float]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": m, "value": [1700000000.0, str(v)]} for m, v in samples],
        },
    }


def _up(node: str, job: str, value: int) -> tuple[dict[str, str], float]:
    return {"__name__": "up", "job": job, "node": node, "instance": "x"}, value


ANSWERS = {
    "up": _vector(
        *(_up(n, j, 1) for n in ("node-a", "node-b") for j in ("node", "etcd", "patroni")),
        _up("node-c", "node", 0),
        _up("node-c", "etcd", 0),
    ),
    "etcd_leader": _vector(({"node": "node-b"}, 1)),
    "primary": _vector(({"node": "node-a"}, 1)),
    "sync": _vector(({"node": "node-b"}, 1)),
    "lag": _vector(({"node": "node-b", "instance": "b"}, 2048)),
    "memory_alarm": _vector(({"node": "node-b"}, 1)),
    "disk_alarm": _vector(),
    "partitions": _vector(),
    "heartbeat": _vector(
        ({"hostname": "node-a", "job_type": "SchedulerJob"}, 3),
        ({"hostname": "node-c", "job_type": "SchedulerJob"}, 7200),
    ),
}
ALERTS = [
    {
        "labels": {"alertname": "NodeDown", "severity": "critical", "node": "node-c"},
        "annotations": {"summary": "node node-c does not answer over the mesh"},
        "startsAt": "2025-01-01T10:00:00.000Z",
    }
]


def _fetch(url: str) -> Any:
    if "/api/v2/alerts" in url:
        return ALERTS
    query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)["query"][0]
    (name,) = [n for n, q in status.QUERIES.items() if q == query]
    return ANSWERS[name]


def test_one_screen_per_node_roles_lag_alarms_heartbeats_and_alerts() -> None:
    screen = status.status("http://p", "http://a", _fetch)
    lines = screen.splitlines()
    assert lines[0] == "node-a  node:up etcd:up patroni:up"
    assert "    leads: primary" in lines
    assert "    heartbeats scheduler 3s" in lines
    b = lines.index("node-b  node:up etcd:up patroni:up")
    assert lines[b + 1] == "    leads: etcd leader, sync"
    assert lines[b + 2] == "    replica lag 2 KiB"
    assert lines[b + 3] == "    RabbitMQ ALARM: memory"
    assert "node-c  node:DOWN etcd:DOWN" in lines
    assert "    heartbeats scheduler >1h" in lines
    assert "NO PostgreSQL PRIMARY" not in screen
    assert lines[-1] == (
        "FIRING critical NodeDown (node-c) since 2025-01-01T10:00:00: "
        "node node-c does not answer over the mesh"
    )


def test_no_primary_and_no_alerts_are_said() -> None:
    answers = {name: _vector() for name in status.QUERIES}
    screen = status.render(status.collect(answers), [])
    assert screen.splitlines() == ["NO PostgreSQL PRIMARY", "", "no alerts firing"]


def test_the_local_stack_tunnels_to_its_first_node() -> None:
    ssh, address = status.ssh_target("local", None)
    assert address == "10.42.0.1"
    assert ssh[0] == "ssh" and ssh[-1] == "root@172.31.77.11"
