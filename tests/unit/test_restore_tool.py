"""tools.restore: the order it runs each node's airflow-ha-restore in, and its input checks."""

from __future__ import annotations

import pytest

from tools import restore


def test_a_time_is_read_as_utc_with_microseconds() -> None:
    assert restore.utc_target("2026-12-02 22:10:00") == "2026-12-02 22:10:00.000000+00:00"
    assert restore.utc_target("2026-12-02T23:10:00.5+01:00") == (
        "2026-12-02 22:10:00.500000+00:00"
    )


def test_a_bad_time_is_one_clear_error() -> None:
    with pytest.raises(SystemExit, match="--to 'yesterday' is not a time"):
        restore.utc_target("yesterday")


def test_local_nodes_are_ordered_by_mesh_index_and_reached_as_root() -> None:
    nodes = restore.targets("local", {})
    assert [n.name for n in nodes] == ["node-a", "node-b", "node-c"]
    assert nodes[0].ssh[-1] == "root@172.31.77.11"


def test_a_cloud_node_without_its_address_is_refused() -> None:
    with pytest.raises(SystemExit, match="is a cloud node: give its public address with --host"):
        restore.targets("dev", {})


def test_the_steps_run_in_order_and_the_plan_comes_first() -> None:
    nodes = restore.targets("local", {})
    ran: list[tuple[str, tuple[str, ...]]] = []

    def run(target: restore.Target, command: list[str]) -> str:
        ran.append((target.name, tuple(command[1:])))
        return "20261202-010000F (full, ended 2026-12-02 01:00:09 UTC)\n"

    result = restore.restore(nodes, nodes[0], "latest", run=run, say=lambda _: None)
    assert ran[0] == ("node-a", ("plan", "latest"))
    stops = [name for name, cmd in ran if cmd == ("stop",)]
    assert sorted(stops) == ["node-a", "node-b", "node-c"]
    order = [cmd[0] for _, cmd in ran]
    assert order.index("forget") > max(i for i, c in enumerate(order) if c == "stop")
    assert order.index("restore") > order.index("forget")
    rejoins = [name for name, cmd in ran if cmd == ("rejoin",)]
    assert sorted(rejoins) == ["node-b", "node-c"]
    assert ran[-1] == ("node-a", ("full",))  # a full backup of the new timeline
    assert result["from_backup"].startswith("20261202-010000F")


def test_a_failed_plan_stops_nothing() -> None:
    nodes = restore.targets("local", {})
    ran: list[str] = []

    def run(target: restore.Target, command: list[str]) -> str:
        ran.append(command[1])
        raise restore.RestoreError("node-a: plan failed")

    with pytest.raises(restore.RestoreError):
        restore.restore(nodes, nodes[0], "latest", run=run, say=lambda _: None)
    assert ran == ["plan"]
