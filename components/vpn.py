"""VpnMesh: a WireGuard full mesh between the nodes, and the node names on mesh addresses.

Order: every node makes its key pair (in parallel) -> every wg0.conf lists all the other nodes'
public keys -> every node checks it reaches every peer. Later tiers depend on `ready`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from .layout import WIREGUARD_PORT
from .nodes import Node
from .remote import RemoteFile, render, render_output, run_step, step_output


@dataclass(frozen=True)
class VpnArgs:
    """The nodes to join (ordered by meshIndex) and the mesh network's prefix length."""

    nodes: Sequence[Node]
    prefix_len: int
    port: int = WIREGUARD_PORT


class VpnMesh(pulumi.ComponentResource):
    def __init__(self, name: str, args: VpnArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("airflow-ha:vpn:VpnMesh", name, None, opts)
        self._args = args
        keys = {node.spec.name: self._keys(node) for node in args.nodes}
        self.public_keys = {name: step_output(cmd, "wgPublicKey") for name, cmd in keys.items()}
        hosts = render("vpn/hosts.j2", {"nodes": [node.spec for node in args.nodes]})
        configured = [self._configure(node, keys[node.spec.name], hosts) for node in args.nodes]
        # Every node checks its peers once every wg0.conf is in place.
        self.ready: dict[str, pulumi.Resource] = {
            node.spec.name: self._check(node, configured) for node in args.nodes
        }
        self.register_outputs({"publicKeys": self.public_keys})

    def _others(self, node: Node) -> list[Node]:
        return [other for other in self._args.nodes if other is not node]

    def _keys(self, node: Node) -> pulumi.Resource:
        """The node makes its key pair; only the public key leaves it."""
        return run_step(
            "wireguard-keys",
            node.access,
            render("vpn/keys.sh.j2", {"node": node.spec.name}),
            outputs=["wgPublicKey"],
            parent=self,
            depends_on=[node.base],
        )

    def _configure(self, node: Node, keys: pulumi.Resource, hosts: str) -> pulumi.Resource:
        peers = [
            {
                "name": other.spec.name,
                "public_key": self.public_keys[other.spec.name],
                "endpoint": other.public_address,
                "mesh_address": other.spec.mesh_address,
            }
            for other in self._others(node)
        ]
        context = {
            "node": node.spec.name,
            "mesh_address": node.spec.mesh_address,
            "prefix_len": self._args.prefix_len,
            "port": self._args.port,
        }
        return run_step(
            "wireguard-mesh",
            node.access,
            render("vpn/mesh.sh.j2", context),
            files=[
                RemoteFile(
                    "/etc/wireguard/wg0.conf",
                    render_output("vpn/wg0.conf.j2", {**context, "peers": peers}),
                    mode="0600",
                ),
                RemoteFile("/etc/airflow-ha/mesh-hosts", hosts),
            ],
            outputs=["meshAddress"],
            parent=self,
            depends_on=[keys],
        )

    def _check(self, node: Node, configured: list[pulumi.Resource]) -> pulumi.Resource:
        peers = [
            {"name": o.spec.name, "mesh_address": o.spec.mesh_address} for o in self._others(node)
        ]
        context = {"node": node.spec.name, "mesh_address": node.spec.mesh_address, "peers": peers}
        return run_step(
            "wireguard-check",
            node.access,
            render("vpn/check.sh.j2", context),
            parent=self,
            depends_on=configured,
        )
