"""The broker tier's step scripts with decisions in them, run under stubbed commands: a blank
node is reset and joins, a node with cluster data never is, the cookie changes only while the
broker is stopped; the check step refuses a listener beyond the mesh."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components import broker
from tests.unit.stepharness import Answer, Node, Ran, local_stack, rendered_step

NODES = ["rabbit@node-a", "rabbit@node-b", "rabbit@node-c"]
COOKIE_FILE = "/var/lib/rabbitmq/.erlang.cookie"
MNESIA = "/var/lib/rabbitmq/mnesia"
STATUS = "-q cluster_status --formatter json"


def _cookie() -> str:
    return local_stack().secret_value("rabbitmq-erlang-cookie", "password", {"length": 48})


def _running(*nodes: str, times: int = 0) -> Answer:
    return Answer(STATUS, stdout=json.dumps({"running_nodes": list(nodes)}), times=times)


NOT_RUNNING = Answer(STATUS, status=69, times=1, stderr="Error: unable to perform an operation")


def _stubs(active: bool, status: list[Answer]) -> dict:
    return {
        "systemctl": [Answer("is-active *", status=0 if active else 3), Answer()],
        "rabbitmqctl": status,
    }


def _systemctl(ran: Ran) -> list[str]:
    return [c.removeprefix("systemctl ") for c in ran.of("systemctl") if " is-active " not in c]


def _cookie_written_after_stop(ran: Ran) -> bool:
    calls = [str(c) for c in ran.calls]
    stop = calls.index("systemctl stop rabbitmq-server.service")
    chown = f"chown rabbitmq:rabbitmq {COOKIE_FILE}."  # the new cookie, before its mv
    writes = [i for i, c in enumerate(calls) if c.startswith(chown)]
    return len(writes) == 1 and writes[0] > stop


def _data_node(tmp_path: Path, cookie: str | None, marker: bool) -> Node:
    node = Node(tmp_path)
    node.file(f"{MNESIA}/rabbit@node-a/cluster_data", "data")
    if cookie is not None:
        node.file(COOKIE_FILE, cookie, mode=0o400)
    if marker:
        node.file(broker.MARKER)
    return node


@pytest.mark.parametrize("before", ["stopped-without-cookie", "running-alone-with-its-own-cookie"])
def test_a_blank_node_is_reset_started_and_waits_for_every_node(
    tmp_path: Path, before: str
) -> None:
    running = before != "stopped-without-cookie"
    node = _data_node(tmp_path, "package-cookie" if running else None, marker=False)
    # Started, it runs alone a moment, then classic_config peer discovery has joined everyone.
    status = [NOT_RUNNING, _running("rabbit@node-a", times=2), _running(*NODES)]
    ran = node.run(rendered_step("rabbitmq-cluster").script, _stubs(running, status))
    assert ran.returncode == 0, ran.stderr
    assert _systemctl(ran) == [
        "stop rabbitmq-server.service",
        "reset-failed rabbitmq-server.service",
        "start --no-block rabbitmq-server.service",
    ]
    assert _cookie_written_after_stop(ran)
    assert node.path(COOKIE_FILE).read_text() == _cookie()
    assert oct(node.path(COOKIE_FILE).stat().st_mode & 0o777) == "0o400"
    # The blank data directory emptied before the start; the marker once every node runs.
    assert not node.path(f"{MNESIA}/rabbit@node-a").exists()
    assert node.path(broker.MARKER).exists()
    assert ran.of("sleep") == ["sleep 1"] * 3  # three polls before everyone ran
    assert "formed: rabbit@node-a rabbit@node-b rabbit@node-c" in ran.stdout
    assert ran.stdout.splitlines()[-1] == "rabbitmqNode=rabbit@node-a"
    assert rendered_step("rabbitmq-cluster").prints == ["rabbitmqNode"]


def test_a_node_clustered_before_the_marker_keeps_its_data(tmp_path: Path) -> None:
    node = _data_node(tmp_path, _cookie(), marker=False)
    ran = node.run(rendered_step("rabbitmq-cluster").script,
                   _stubs(True, [_running("rabbit@node-a", "rabbit@node-c", times=1),
                                 _running(*NODES)]))
    assert ran.returncode == 0, ran.stderr
    assert "already clustered: keeping the data" in ran.stdout
    assert _systemctl(ran) == [] and not ran.of("chown")
    assert node.path(f"{MNESIA}/rabbit@node-a/cluster_data").read_text() == "data"
    assert node.path(broker.MARKER).exists()


def test_a_reset_node_running_alone_is_reset_and_rejoins(tmp_path: Path) -> None:
    # Its data (and with it the marker) was reset: it runs with the cluster's cookie, alone.
    node = _data_node(tmp_path, _cookie(), marker=False)
    status = [_running("rabbit@node-a", times=2), _running(*NODES)]
    ran = node.run(rendered_step("rabbitmq-cluster").script, _stubs(True, status))
    assert ran.returncode == 0, ran.stderr
    assert "already clustered" not in ran.stdout
    assert _systemctl(ran) == [
        "stop rabbitmq-server.service",
        "reset-failed rabbitmq-server.service",
        "start --no-block rabbitmq-server.service",
    ]
    assert not node.path(f"{MNESIA}/rabbit@node-a").exists() and node.path(broker.MARKER).exists()


@pytest.mark.parametrize("active", [True, False])
def test_a_member_is_never_reset(tmp_path: Path, active: bool) -> None:
    node = _data_node(tmp_path, _cookie(), marker=True)
    ran = node.run(rendered_step("rabbitmq-cluster").script, _stubs(active, [_running(*NODES)]))
    assert ran.returncode == 0, ran.stderr
    assert _systemctl(ran) == ([] if active else ["start --no-block rabbitmq-server.service"])
    assert node.path(f"{MNESIA}/rabbit@node-a/cluster_data").read_text() == "data"
    assert not ran.of("chown")


def test_a_replaced_cookie_is_written_while_the_broker_is_stopped(
    tmp_path: Path
) -> None:
    node = _data_node(tmp_path, "the-old-secret", marker=True)
    systemctl = [
        # Running until stopped.
        Answer("is-active *", run='[ ! -e "$ROOT/stopped" ]'),
        Answer("stop *", run='touch "$ROOT/stopped"'),
        Answer(),
    ]
    ran = node.run(rendered_step("rabbitmq-cluster").script,
                   {"systemctl": systemctl, "rabbitmqctl": _running(*NODES)})
    assert ran.returncode == 0, ran.stderr
    assert _systemctl(ran) == [
        "stop rabbitmq-server.service",
        "reset-failed rabbitmq-server.service",
        "start --no-block rabbitmq-server.service",
    ]
    assert _cookie_written_after_stop(ran) and "Erlang cookie replaced" in ran.stdout
    assert node.path(COOKIE_FILE).read_text() == _cookie()
    assert node.path(f"{MNESIA}/rabbit@node-a/cluster_data").read_text() == "data"


# --- the check step --------------------------------------------------------------------------

LISTENING = ["10.42.0.1:5672", "10.42.0.1:25672", "127.0.0.1:4369", "10.42.0.1:4369",
             "10.42.0.1:15672", "0.0.0.0:22", "127.0.0.1:5000"]


def _check(tmp_path: Path, listeners: list[str], vhosts: str = "/\nairflow\n") -> Ran:
    ss = "".join(f"LISTEN 0 128 {address} 0.0.0.0:*\n" for address in listeners)
    stubs = {
        "rabbitmqctl": [_running(*NODES), Answer("-s list_vhosts name", stdout=vhosts)],
        "rabbitmq-diagnostics": Answer(),
        "ss": Answer("-Hltn", stdout=ss),
    }
    return Node(tmp_path).run(rendered_step("rabbitmq-check").script, stubs)


def test_check_passes_a_ready_broker_on_the_mesh(tmp_path: Path) -> None:
    ran = _check(tmp_path, LISTENING)
    assert ran.returncode == 0, ran.stderr
    assert ran.of("rabbitmq-diagnostics") == ["rabbitmq-diagnostics -q check_local_alarms"]
    assert ran.stdout.strip().endswith("rabbit@node-a ready")


@pytest.mark.parametrize(
    "exposed", ["0.0.0.0:5672", "*:4369", "[::]:15672", "172.31.77.11:25672", "0.0.0.0:35672"]
)
def test_check_refuses_a_broker_port_beyond_mesh_and_loopback(
    tmp_path: Path, exposed: str
) -> None:
    ran = _check(tmp_path, [*LISTENING, exposed])
    assert ran.returncode == 1
    assert f"RabbitMQ/epmd listens beyond the mesh: {exposed}" in ran.stderr


def test_check_fails_without_the_airflow_vhost(tmp_path: Path) -> None:
    ran = _check(tmp_path, LISTENING, vhosts="/\n")
    assert ran.returncode != 0 and "ready" not in ran.stdout
