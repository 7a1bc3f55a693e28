"""VpnMesh: a WireGuard full mesh between the nodes, and the node names on mesh addresses.

Order: every node makes its key pair (in parallel) -> every wg0.conf lists all the other nodes'
public keys -> every node checks it reaches every peer. Later tiers depend on `ready`.
"""

from __future__ import annotations

import pulumi

from .config import ClusterConfig
from .nodes import Node
from .remote import RemoteFile, render, render_output, run_step, step_output


class VpnMesh(pulumi.ComponentResource):
    def __init__(
        self, cfg: ClusterConfig, nodes: list[Node], opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("airflow-ha:vpn:VpnMesh", "mesh", None, opts)
        hosts = render("vpn/hosts.j2", {"nodes": cfg.nodes})

        keys = {
            node.spec.name: run_step(
                "wireguard-keys",
                node.access,
                render("vpn/keys.sh.j2", {"node": node.spec.name}),
                outputs=["wgPublicKey"],
                parent=self,
                depends_on=[node.base],
            )
            for node in nodes
        }
        self.public_keys = {name: step_output(cmd, "wgPublicKey") for name, cmd in keys.items()}

        configured = []
        for node in nodes:
            peers = [
                {
                    "name": other.spec.name,
                    "public_key": self.public_keys[other.spec.name],
                    "endpoint": other.public_address,
                    "mesh_address": other.spec.mesh_address,
                }
                for other in nodes
                if other is not node
            ]
            context = {
                "node": node.spec.name,
                "mesh_address": node.spec.mesh_address,
                "prefix_len": cfg.mesh_prefix_len,
                "port": cfg.wireguard_port,
            }
            configured.append(
                run_step(
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
                    depends_on=[keys[node.spec.name]],
                )
            )

        self.ready: dict[str, pulumi.Resource] = {}
        for node in nodes:
            peers = [
                {"name": o.spec.name, "mesh_address": o.spec.mesh_address}
                for o in nodes
                if o is not node
            ]
            self.ready[node.spec.name] = run_step(
                "wireguard-check",
                node.access,
                render(
                    "vpn/check.sh.j2",
                    {
                        "node": node.spec.name,
                        "mesh_address": node.spec.mesh_address,
                        "peers": peers,
                    },
                ),
                parent=self,
                depends_on=configured,
            )
        self.register_outputs({"publicKeys": self.public_keys})
