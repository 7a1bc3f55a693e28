"""The broker on the three local machines: one RabbitMQ cluster, on the mesh only, and no
confirmed message lost when a broker's Erlang VM is killed mid-publish."""

from __future__ import annotations

import json
import re
import shlex
import socket

import pytest

from components.broker import PROMETHEUS_PORT as RABBITMQ_PROMETHEUS_PORT
from drills import broker, nodes
from tests.cluster.conftest import NODES
from tools.localcloud.machines import by_name

pytestmark = pytest.mark.cluster

MESH = {"node-a": "10.42.0.1", "node-b": "10.42.0.2", "node-c": "10.42.0.3"}
EXPECTED = [f"rabbit@{n}" for n in NODES]
BROKER_PORTS = {4369, 5672, 15672, 25672}


def _json(result) -> object:
    return json.loads(result.stdout)


def test_every_node_lists_the_same_three_running_members(cluster) -> None:
    for node in NODES:
        status = _json(cluster(node, "rabbitmqctl -q cluster_status --formatter json"))
        assert sorted(status["running_nodes"]) == EXPECTED, node
        assert sorted(status["disk_nodes"]) == EXPECTED, node
        assert status["cluster_name"] == "airflow-ha-local"
        assert not status["alarms"] and not status["partitions"], status


def test_broker_ports_listen_on_the_mesh_or_loopback_only(cluster) -> None:
    for node in NODES:
        listening = cluster(node, "ss -Hltnp").stdout.splitlines()
        beam = [line for line in listening if '"beam.smp"' in line or '"epmd"' in line]
        local = {line.split()[3] for line in beam}
        ports = {int(address.rsplit(":", 1)[1]) for address in local}
        assert ports >= BROKER_PORTS, f"{node}: {sorted(local)}"
        outside = {a for a in local if a.rsplit(":", 1)[0] not in (MESH[node], "127.0.0.1")}
        assert not outside, f"{node}: listening beyond the mesh: {sorted(outside)}"
        # What the broker itself reports.
        reported = _json(cluster(node, "rabbitmq-diagnostics -q listeners --formatter json"))
        assert {(x["interface"], x["port"]) for x in reported["listeners"]} == {
            (MESH[node], 5672), (MESH[node], 15672), (MESH[node], 25672),
            (MESH[node], RABBITMQ_PROMETHEUS_PORT),  # rabbitmq_prometheus (the monitoring tier)
        }


def test_the_public_address_refuses_amqp_and_management(cluster) -> None:
    for node in NODES:
        for port in (5672, 15672, 25672, 4369):
            with socket.socket() as s:
                s.settimeout(3)
                assert s.connect_ex((by_name(node).address, port)) != 0, f"{node}:{port} is open"


def test_the_server_runs_the_rendered_configuration(cluster) -> None:
    """rabbitmq.conf went through the server's own schema (cuttlefish) into these values."""
    probe = (
        "rabbitmqctl -q eval '[{K, application:get_env(rabbit, K)} || K <- "
        "[tcp_listeners, cluster_partition_handling, consumer_timeout, cluster_formation, "
        "cluster_nodes]].'"
    )
    for node in NODES:
        env = cluster(node, probe).stdout
        assert f'{{tcp_listeners,{{ok,[{{"{MESH[node]}",5672}}]}}}}' in env, env
        assert "{cluster_partition_handling,{ok,pause_minority}}" in env, env
        assert "{consumer_timeout,{ok,86400000}}" in env, env
        assert "rabbit_peer_discovery_classic_config" in env, env
        assert all(f"'rabbit@{n}'" in env for n in NODES), env
        plugins = cluster(node, "rabbitmq-plugins -q list -e --minimal").stdout.split()
        assert "rabbitmq_management" in plugins


def test_one_cookie_on_every_node_readable_by_rabbitmq_only(cluster) -> None:
    digests = set()
    for node in NODES:
        out = cluster(node, "stat -c '%a %U' /var/lib/rabbitmq/.erlang.cookie && "
                            "sha256sum < /var/lib/rabbitmq/.erlang.cookie").stdout.split()
        assert out[:2] == ["400", "rabbitmq"], node
        digests.add(out[2])
    assert len(digests) == 1


def test_airflow_vhost_user_and_no_guest(cluster) -> None:
    users = cluster("node-b", "rabbitmqctl -q list_users --formatter json").stdout
    assert {u["user"]: u["tags"] for u in json.loads(users)} == {"airflow": ["monitoring"]}
    vhosts = _json(cluster("node-c", "rabbitmqctl -q list_vhosts name default_queue_type "
                                     "--formatter json"))
    assert {"name": "airflow", "default_queue_type": "quorum"} in vhosts
    permissions = _json(cluster("node-a", "rabbitmqctl -q list_permissions -p airflow "
                                          "--formatter json"))
    assert permissions == [{"user": "airflow", "configure": ".*", "write": ".*", "read": ".*"}]
    # The password the deploy generated (the one in the broker URL) opens every node.
    password = broker.broker_password()
    for node in NODES:
        nodes.ssh(node, "rabbitmqctl authenticate_user airflow >/dev/null",
                         stdin=password + "\n")


def test_a_queue_declared_without_arguments_is_a_quorum_queue_on_all_nodes(cluster) -> None:
    """What Celery gets: the vhost's default queue type is quorum, replicated on 3 members."""
    broker.prepare_runner("node-a")
    name = "broker-test-default-type"
    script = (
        "import sys, pika\n"
        "password = sys.stdin.readline().strip()\n"
        "c = pika.BlockingConnection(pika.URLParameters("
        f"f'amqp://airflow:{{password}}@node-a:5672/airflow'))\n"
        f"c.channel().queue_declare('{name}', durable=True)\n"
        "c.close()\n"
    )
    declared = nodes.ssh(
        "node-a", f"python3 -c {shlex.quote(script)}", stdin=broker.broker_password() + "\n"
    )
    assert declared.returncode == 0
    try:
        queues = _json(cluster("node-a", "rabbitmqctl -q list_queues -p airflow name type "
                                         "members --formatter json"))
        (queue,) = [q for q in queues if q["name"] == name]
        assert queue["type"] == "quorum"
        assert sorted(queue["members"]) == EXPECTED
    finally:
        cluster("node-a", f"rabbitmqctl -q delete_queue -p airflow {name}", check=False)


def test_management_api_answers_on_the_mesh_for_airflow(cluster) -> None:
    password = broker.broker_password()
    result = nodes.ssh(
        "node-b",
        "curl -sS -o /dev/null -w '%{http_code}' -K - http://10.42.0.1:15672/api/overview",
        stdin=f'user = "airflow:{password}"\n',
    )
    assert result.stdout == "200"


# CI runs the broker-crash drill instead (tests/cluster/test_drills.py).
@pytest.mark.full
def test_node_loss_drill_loses_no_confirmed_message_and_the_node_rejoins(cluster) -> None:
    result = broker.run_drill(messages=10_000, victim="node-b", runner="node-a")
    print(broker.report(result))
    assert result["confirmed"] == 10_000
    assert result["lost"] == 0, result["lost_ids"]
    assert result["unique"] == 10_000
    assert result["leader_before"] == "rabbit@node-b"
    assert result["leader_after"] in ("rabbit@node-a", "rabbit@node-c")
    assert result["rejoined"] and result["restarted_by_systemd"], result
    # Back in the cluster and serving: every node lists all three members again.
    for node in NODES:
        status = _json(cluster(node, "rabbitmqctl -q cluster_status --formatter json"))
        assert sorted(status["running_nodes"]) == EXPECTED
    assert re.fullmatch(r"\d+", str(result["new_pid"]))
