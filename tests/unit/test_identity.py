"""Stable node identities: a node is its meshIndex, not its place in the stack's node list."""

from __future__ import annotations

import copy
import difflib
import re
from typing import Any

import pytest

from tests.conftest import stack_values
from tools.engine import Engine, fake_host_keys, fake_public_key, run_program, with_host_keys


def _render(values: dict[str, Any], stack: str) -> dict[str, Any]:
    """Everything the program makes, by resource name: each step's script (with the files it
    writes), login and triggers, every other resource's inputs, and the stack outputs."""
    engine = Engine()
    outputs = run_program(values, engine, stack)
    made: dict[str, Any] = {"outputs": outputs}
    for r in engine.resources:
        made[f"{r.type}::{r.name}"] = r.inputs
    return made


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "local"])
def test_reordering_nodes_changes_nothing(stack: str) -> None:
    values = stack_values(stack)
    before = _render(values, stack)
    for order in ([2, 1, 0], [1, 2, 0]):
        reordered = copy.deepcopy(values)
        reordered["nodes"] = [values["nodes"][i] for i in order]
        after = _render(reordered, stack)
        assert sorted(after) == sorted(before)
        for name, inputs in before.items():
            assert after[name] == inputs, f"{name} changed when the nodes were reordered"


def _five_static(skip: tuple[int, ...] = ()) -> dict[str, Any]:
    values = copy.deepcopy(stack_values("local"))
    values["nodes"] = [
        {"name": f"node-{c}", "meshIndex": i + 1, "cloud": "static", "host": f"172.31.77.{11 + i}"}
        for i, c in enumerate("abcde")
        if i not in skip
    ]
    return with_host_keys(values, fake_host_keys(values))


def _steps_by_name(made: dict[str, Any]) -> dict[str, str]:
    prefix = "command:remote:Command::"
    return {k.removeprefix(prefix): v["stdin"] for k, v in made.items() if k.startswith(prefix)}


REMOVED = ("node-c", "node-d")
# What names a removed peer: its name, mesh address, public address, WireGuard public key.
REMOVED_MARK = re.compile(
    "|".join(
        [r"node-[cd]\b", r"10\.42\.0\.[34]\b", r"172\.31\.77\.1[34]\b"]
        + [re.escape(fake_public_key(f"{n}/wgPublicKey")) for n in REMOVED]
    )
)
# What is derived from the member list (its count, RabbitMQ's numbered peer list) or from every
# file (a digest), not from one node.
DERIVED = re.compile(
    r"member_count|-member cluster|-eq \d+|classic_config\.nodes\.\d+ = rabbit@"
    r"|^# What the units run with|^# Digest of |^\s*$"
    # The monitoring tier's: its rules' and check's expected member and target counts.
    r"|(running_nodes|cluster_members) < \d+|^(node_count|expected_targets)=\d+$"
    # pgBackRest's numbered peer list (pgN-... blocks): a removed peer's block goes, the next
    # ones move up.
    r"|^pg\d+-[a-z-]+="
)


def _drop_removed(line: str) -> str:
    """A one-line list without the removed peers' entries ("a,c,e" -> "a e"), normalised."""
    return " ".join(t for t in re.split(r"[ ,;|]+", line) if not REMOVED_MARK.search(t))


def test_removing_nodes_changes_only_the_peer_lists_of_the_others() -> None:
    full = _steps_by_name(_render(_five_static(), "local"))
    shrunk = _steps_by_name(_render(_five_static(skip=(2, 3)), "local"))
    assert set(shrunk) == {k for k in full if not k.startswith(tuple(f"{n}-" for n in REMOVED))}
    for name, script in shrunk.items():
        old_lines, new_lines = full[name].splitlines(), script.splitlines()
        diff = list(difflib.unified_diff(old_lines, new_lines, n=0, lineterm=""))
        gone = [d[1:] for d in diff if d.startswith("-") and not d.startswith("---")]
        added = [d[1:] for d in diff if d.startswith("+") and not d.startswith("+++")]
        shortened = {_drop_removed(line) for line in gone}
        for line in gone:
            # A removed peer's line, a derived one, or a line of a repeated block (a [Peer]
            # section's boilerplate) that the script still holds for the remaining peers.
            assert REMOVED_MARK.search(line) or DERIVED.search(line) or line in new_lines, (
                f"{name}: {line!r} went without naming a removed node"
            )
        for line in added:
            assert DERIVED.search(line) or _drop_removed(line) in shortened, (
                f"{name}: {line!r} is new on a remaining node"
            )


def test_first_node_roles_follow_the_lowest_mesh_index() -> None:
    values = copy.deepcopy(stack_values("local"))
    values["nodes"] = [
        {**values["nodes"][0], "meshIndex": 9},
        {**values["nodes"][1], "meshIndex": 4},
        {**values["nodes"][2], "meshIndex": 6},
    ]
    steps = _steps_by_name(_render(values, "local"))
    assert "node-b-airflow-db-migrate" in steps and "node-b-rabbitmq-users" in steps
    assert not any(k.endswith(("-airflow-db-migrate", "-rabbitmq-users")) and
                   not k.startswith("node-b-") for k in steps)
