"""The order steps run in, read from the dependencies the engine double records (depends_on and
the Outputs a step reads), not from the order the SDK happened to register them in.

Only the Airflow tier rolls node by node today. The stateful tiers (database, broker, DAG sync)
run each step on every node at once: their tests state that as it is, so that chaining them
(another issue) shows here as a deliberate change.
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


@pytest.mark.parametrize("stack", ["dev", "local"])
def test_database_steps_run_on_every_node_at_once(values, deploy, stack) -> None:
    engine, nodes = _build(values, deploy, stack)
    steps = {"database-packages", "etcd", "patroni", "haproxy", "airflow-db"}
    for node in nodes:
        own = {s: engine.waits_for(f"{node}-{s}") for s in steps}
        assert f"{node}-wireguard-check" in own["database-packages"]
        assert f"{node}-database-packages" in own["etcd"] & own["haproxy"]
        assert f"{node}-etcd" in own["patroni"]
        assert {f"{node}-patroni", f"{node}-haproxy"} <= own["airflow-db"]
        # Not chained today: no database step waits for another node's, so a changed Patroni
        # or etcd config re-runs that step on every node at the same time (the members' own
        # waits, inside the scripts, are what keeps a quorum). Chaining them is another issue.
        for s in steps:
            assert not _on_other_nodes(engine, node, s, nodes, steps), (node, s)


@pytest.mark.parametrize("stack", ["dev", "local"])
def test_broker_nodes_meet_at_barriers_and_are_not_chained(values, deploy, stack) -> None:
    engine, nodes = _build(values, deploy, stack)
    first = nodes[0]
    installs = {f"{n}-rabbitmq-install" for n in nodes}
    clusters = {f"{n}-rabbitmq-cluster" for n in nodes}
    for node in nodes:
        assert f"{node}-wireguard-check" in engine.waits_for(f"{node}-rabbitmq-install")
        assert not engine.waits_for(f"{node}-rabbitmq-install") & (installs | clusters)
        # Every node's cluster step waits for every install, so blank nodes start together.
        assert installs <= engine.waits_for(f"{node}-rabbitmq-cluster")
        assert engine.waits_for(f"{node}-rabbitmq-check") >= {f"{first}-rabbitmq-users"}
        # Not chained today: no cluster step waits for another node's cluster step, so a change
        # re-runs it on every node at once. Chaining them is another issue.
        assert not engine.waits_for(f"{node}-rabbitmq-cluster") & clusters
    # The users are set once, from the lowest meshIndex, after every node joined.
    assert clusters <= engine.waits_for(f"{first}-rabbitmq-users")
    assert [s.node for s in engine.steps() if s.step == "rabbitmq-users"] == [first]


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
