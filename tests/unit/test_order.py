"""The order steps run in, read from the dependencies the engine double records (depends_on and
the Outputs a step reads), not from the order the SDK happened to register them in.

Config steps run on every node at once and restart nothing; every tier's restart steps (etcd,
HAProxy's reload, PostgreSQL, RabbitMQ, Airflow's start) run node after node in meshIndex order,
each after the config steps it restarts for. DAG sync has nothing to restart.
"""

from __future__ import annotations

import pytest

from components.config import parse_config
from tools.engine import Engine

STACKS = ["dev", "staging", "prod", "local"]


def _build(values, deploy, stack: str) -> tuple[Engine, list[str]]:
    """The engine after the program ran, and the node names in meshIndex order."""
    engine, _ = deploy(values(stack), stack=stack)
    return engine, [n.name for n in parse_config(values(stack), stack=stack).nodes]


def _on_other_nodes(
    engine: Engine, node: str, step: str, nodes: list[str], steps: set[str]
) -> set[str]:
    """Which of `steps` on the other nodes the node's `step` waits for."""
    others = {f"{other}-{s}" for other in nodes if other != node for s in steps}
    return others & engine.waits_for(f"{node}-{step}")


@pytest.mark.parametrize("stack", STACKS)
def test_airflow_starts_roll_node_by_node_in_mesh_index_order(values, deploy, stack) -> None:
    engine, nodes = _build(values, deploy, stack)
    first = nodes[0]
    for i, node in enumerate(nodes):
        waits = engine.waits_for(f"{node}-airflow-start")
        assert {f"{first}-airflow-db-migrate", f"{node}-airflow-config"} <= waits
        starts = {w for w in waits if w.endswith("-airflow-start")}
        # The node before it, and only that one: one node restarts at a time.
        assert starts == ({f"{nodes[i - 1]}-airflow-start"} if i else set()), node


def _assert_chain(engine: Engine, nodes: list[str], step: str, config: set[str]) -> None:
    """`step` on each node waits for the node before it (and no other node's `step`), and for
    that node's own `config` steps."""
    for i, node in enumerate(nodes):
        waits = engine.waits_for(f"{node}-{step}")
        chained = {w for w in waits if w.endswith(f"-{step}")}
        assert chained == ({f"{nodes[i - 1]}-{step}"} if i else set()), (step, node)
        assert {f"{node}-{c}" for c in config} <= _all_waits(engine, f"{node}-{step}"), node


def _all_waits(engine: Engine, name: str) -> set[str]:
    """Every step `name` waits for, directly or through others."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dep in engine.waits_for(todo.pop()) - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


@pytest.mark.parametrize("stack", ["dev", "local"])
def test_database_config_steps_run_at_once_and_restarts_roll_node_by_node(
    values, deploy, stack
) -> None:
    engine, nodes = _build(values, deploy, stack)
    config = {"database-packages", "etcd", "patroni", "haproxy", "airflow-db"}
    for node in nodes:
        own = {s: engine.waits_for(f"{node}-{s}") for s in config}
        assert f"{node}-wireguard-check" in own["database-packages"]
        assert f"{node}-database-packages" in own["etcd"] & own["haproxy"]
        assert f"{node}-etcd" in own["patroni"]
        assert {f"{node}-patroni", f"{node}-haproxy-reload"} <= own["airflow-db"]
        # The config steps wait for no other node's config step (they restart nothing).
        for s in config - {"airflow-db"}:
            assert not _on_other_nodes(engine, node, s, nodes, config), (node, s)
    _assert_chain(engine, nodes, "etcd-restart", {"etcd"})
    _assert_chain(engine, nodes, "haproxy-reload", {"haproxy"})
    _assert_chain(engine, nodes, "postgres-restart", set())
    first = nodes[0]
    restarts = _all_waits(engine, f"{first}-postgres-restart")
    # PostgreSQL restarts once the parameters are in the DCS and every etcd member is back.
    assert {f"{n}-{s}" for n in nodes for s in ("airflow-db", "etcd-restart")} <= restarts
    # The primary last: after every replica's restart step.
    switchover = engine.waits_for(f"{first}-postgres-switchover")
    assert {f"{n}-postgres-restart" for n in nodes} <= switchover
    assert [s.node for s in engine.steps() if s.step == "postgres-switchover"] == [first]


@pytest.mark.parametrize("stack", ["dev", "local"])
def test_broker_nodes_meet_at_barriers_and_restarts_roll_node_by_node(
    values, deploy, stack
) -> None:
    engine, nodes = _build(values, deploy, stack)
    first = nodes[0]
    installs = {f"{n}-rabbitmq-install" for n in nodes}
    clusters = {f"{n}-rabbitmq-cluster" for n in nodes}
    for node in nodes:
        assert f"{node}-wireguard-check" in engine.waits_for(f"{node}-rabbitmq-install")
        assert not engine.waits_for(f"{node}-rabbitmq-install") & (installs | clusters)
        # Every node's cluster step waits for every install, so blank nodes start together.
        assert installs <= engine.waits_for(f"{node}-rabbitmq-cluster")
        assert not engine.waits_for(f"{node}-rabbitmq-cluster") & clusters
        assert engine.waits_for(f"{node}-rabbitmq-check") == {f"{node}-rabbitmq-restart"}
    # The users are set once, from the lowest meshIndex, after every node joined.
    assert clusters <= engine.waits_for(f"{first}-rabbitmq-users")
    assert [s.node for s in engine.steps() if s.step == "rabbitmq-users"] == [first]
    # Restarts after every node's install and cluster step, one node at a time.
    _assert_chain(engine, nodes, "rabbitmq-restart", {"rabbitmq-install", "rabbitmq-cluster"})
    assert f"{first}-rabbitmq-users" in engine.waits_for(f"{first}-rabbitmq-restart")


@pytest.mark.parametrize("stack", STACKS)
def test_airflow_waits_for_every_database_and_broker_restart(values, deploy, stack) -> None:
    engine, nodes = _build(values, deploy, stack)
    for node in nodes:
        waits = _all_waits(engine, f"{node}-airflow-config")
        assert f"{nodes[0]}-postgres-switchover" in waits
        assert f"{node}-rabbitmq-restart" in waits


@pytest.mark.parametrize("stack", ["dev", "local"])
def test_dag_sync_runs_on_every_node_at_once_after_its_mesh(values, deploy, stack) -> None:
    engine, nodes = _build(values, deploy, stack)
    for node in nodes:
        # Only its own mesh; not chained today (csync2 copes with a peer that is not there yet).
        assert engine.waits_for(f"{node}-dag-sync") == {f"{node}-wireguard-check"}


def test_the_engine_records_parents_and_dependencies(values, deploy) -> None:
    engine, _ = deploy(values("dev"))
    key = ("command:remote:Command", "fsn-base")
    assert engine.parents[key] == "airflow-ha:nodes:Node::fsn"
    # depends_on (the server) and the resources its inputs come from (the address, and the
    # host key the connection pins).
    assert engine.dependencies[key] == {
        "hcloud:index/server:Server::fsn",
        "hcloud:index/primaryIp:PrimaryIp::fsn-ipv4",
        "random:index/randomBytes:RandomBytes::fsn-host-key",
    }
    assert engine.waits_for("fsn-wireguard-keys") == {"fsn-base"}
