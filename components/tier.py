"""What every tier built on the nodes shares: where it runs and what it generates.

`TierArgs` is the part of each tier's args that says on which nodes it runs (ordered by
meshIndex) and, per node, the step its first step there waits for (the mesh, for every tier
today). `generated_password` is how each tier makes its secrets; `node_by_node` is how each
tier's restart steps are chained (one node restarts, and is healthy again, before the next).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random

from .nodes import Node


@dataclass(frozen=True)
class TierArgs:
    nodes: Sequence[Node]
    after: Mapping[str, pulumi.Resource]


def generated_password(name: str, length: int, parent: pulumi.Resource) -> pulumi.Output[str]:
    """Generated once with pulumi_random and kept in the stack's state, secret end to end.
    Letters and digits only: the values land in URLs, an Erlang cookie (an atom) and csync2's
    key, none of which takes every character."""
    return random.RandomPassword(
        name, length=length, special=False, opts=pulumi.ResourceOptions(parent=parent)
    ).result


def node_by_node(
    nodes: Sequence[Node], make: Callable[[Node, list[pulumi.Resource]], pulumi.Resource]
) -> dict[str, pulumi.Resource]:
    """One step per node in meshIndex order, each waiting for the node before it:
    `make(node, previous)` creates the node's step with `previous` among its dependencies
    (empty for the first node). A step that restarts only when its mark exists and returns
    only once its node is healthy again keeps every tier at most one node down."""
    steps: dict[str, pulumi.Resource] = {}
    previous: list[pulumi.Resource] = []
    for node in sorted(nodes, key=lambda n: n.spec.mesh_index):
        steps[node.spec.name] = make(node, previous)
        previous = [steps[node.spec.name]]
    return steps
