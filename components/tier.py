"""What every tier built on the nodes shares: where it runs and what it generates.

`TierArgs` is the part of each tier's args that says on which nodes it runs (ordered by
meshIndex) and, per node, the step its first step there waits for (the mesh, for every tier
today). `generated_password` is how each tier makes its secrets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
