"""AirflowHaCluster: wires the tiers in dependency order (nodes -> mesh -> tiers -> outputs)."""

from __future__ import annotations

import pulumi

from .config import ClusterConfig
from .nodes import Nodes
from .vpn import VpnMesh


class AirflowHaCluster(pulumi.ComponentResource):
    def __init__(self, cfg: ClusterConfig, opts: pulumi.ResourceOptions | None = None):
        super().__init__(
            "airflow-ha:cluster:AirflowHaCluster", f"airflow-ha-{cfg.stack}", None, opts
        )
        child = pulumi.ResourceOptions(parent=self)
        self.nodes = Nodes(cfg, child)
        self.mesh = VpnMesh(cfg, self.nodes.nodes, child)

        self.outputs: dict[str, pulumi.Input] = {
            "nodes": {
                node.spec.name: {
                    "cloud": node.spec.cloud,
                    "place": node.spec.place,
                    "publicAddress": node.public_address,
                    "meshAddress": node.spec.mesh_address,
                    "ssh": pulumi.Output.concat(
                        "ssh -p ",
                        str(node.spec.port),
                        " ",
                        node.spec.user,
                        "@",
                        node.public_address,
                    ),
                }
                for node in self.nodes.nodes
            },
        }
        self.register_outputs(self.outputs)
