"""Nodes: one VM per node (Hetzner Cloud or AWS) or an existing server, plus the base step.

Order inside the tier: every node's public address first (a Hetzner primary IP, an AWS Elastic
IP, or the static host), so that each firewall can admit WireGuard only from the other nodes;
then the firewall/security group and the server; then the base step over SSH.
Public ingress: 22/tcp from adminCidrs, 51820/udp from the other nodes, 443/tcp only with
publicUi. Nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi

from .config import ClusterConfig, NodeSpec
from .layout import UI_PORT
from .remote import NodeAccess, RemoteFile, render, run_step

HCLOUD_IMAGE = "debian-13"
# Debian's own AWS account publishes the official AMIs.
DEBIAN_AMI_OWNER = "136693071363"
DEBIAN_AMI_NAME = "debian-13-amd64-*"


def ingress_rules(cfg: ClusterConfig, peer_addresses: Sequence[pulumi.Input[str]]) -> list[dict]:
    """The public ingress of every node, cloud-neutral: protocol, port, sources."""
    rules = [
        {"protocol": "tcp", "port": 22, "sources": list(cfg.admin_cidrs), "why": "SSH for admins"},
        {
            "protocol": "udp",
            "port": cfg.wireguard_port,
            "sources": [
                pulumi.Output.from_input(a).apply(lambda ip: f"{ip}/32") for a in peer_addresses
            ],
            "why": "WireGuard from the other nodes",
        },
    ]
    if cfg.public_ui:
        rules.append(
            {"protocol": "tcp", "port": UI_PORT, "sources": ["0.0.0.0/0"], "why": "Airflow UI"}
        )
    return rules


class Node(pulumi.ComponentResource):
    """One node. Built in two phases: the address (so peers can name it), then the machine."""

    def __init__(
        self, spec: NodeSpec, cfg: ClusterConfig, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("airflow-ha:nodes:Node", spec.name, None, opts)
        self.spec = spec
        self.cfg = cfg
        self._eip = None
        self._primary_ip = None
        self._provider: pulumi.ProviderResource | None = None
        if spec.cloud == "hcloud":
            import pulumi_hcloud as hcloud

            self._primary_ip = hcloud.PrimaryIp(
                f"{spec.name}-ipv4",
                type="ipv4",
                location=spec.location,
                assignee_type="server",
                auto_delete=False,
                labels={"cluster": f"airflow-ha-{cfg.stack}", "node": spec.name},
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.public_address: pulumi.Output[str] = self._primary_ip.ip_address
        elif spec.cloud == "aws":
            import pulumi_aws as aws

            self._provider = aws.Provider(
                f"{spec.name}-aws-{spec.region}",
                region=spec.region,
                opts=pulumi.ResourceOptions(parent=self),
            )
            self._eip = aws.ec2.Eip(
                f"{spec.name}-eip",
                domain="vpc",
                tags={"Name": f"airflow-ha-{cfg.stack}-{spec.name}"},
                opts=pulumi.ResourceOptions(parent=self, provider=self._provider),
            )
            self.public_address = self._eip.public_ip
        else:
            self.public_address = pulumi.Output.from_input(spec.host)
        self.server: pulumi.Resource | None = None
        self.base: pulumi.Resource | None = None

    # --- phase 2 -------------------------------------------------------------------------
    def provision(
        self, peer_addresses: Sequence[pulumi.Input[str]], hcloud_key: pulumi.Resource | None
    ) -> None:
        rules = ingress_rules(self.cfg, peer_addresses)
        if self.spec.cloud == "hcloud":
            self.server = self._hcloud_server(rules, hcloud_key)
        elif self.spec.cloud == "aws":
            self.server = self._aws_instance(rules)
        self.access = NodeAccess(
            name=self.spec.name,
            host=self.public_address,
            user=self.spec.user,
            port=self.spec.port,
            private_key=self.cfg.ssh_private_key,
            instance=self.server.id if self.server else None,
        )
        self.base = run_step(
            "base",
            self.access,
            render("base/base.sh.j2", {"node": self.spec.name}),
            files=[
                RemoteFile(
                    "/etc/ssh/sshd_config.d/10-airflow-ha.conf",
                    render("base/sshd.conf.j2", {}),
                ),
                # cloud-init must not rewrite /etc/hosts: the mesh step owns the node names there.
                RemoteFile(
                    "/etc/cloud/cloud.cfg.d/99-airflow-ha.cfg",
                    "manage_etc_hosts: false\npreserve_hostname: true\n",
                ),
            ],
            parent=self,
            depends_on=[self.server] if self.server else [],
        )
        self.register_outputs(
            {"publicAddress": self.public_address, "meshAddress": self.spec.mesh_address}
        )

    def _hcloud_server(self, rules: list[dict], key: pulumi.Resource | None) -> pulumi.Resource:
        import pulumi_hcloud as hcloud

        spec = self.spec
        firewall = hcloud.Firewall(
            f"{spec.name}-firewall",
            rules=[
                hcloud.FirewallRuleArgs(
                    direction="in",
                    protocol=r["protocol"],
                    port=str(r["port"]),
                    source_ips=r["sources"],
                    description=r["why"],
                )
                for r in rules
            ],
            labels={"cluster": f"airflow-ha-{self.cfg.stack}"},
            opts=pulumi.ResourceOptions(parent=self),
        )
        assert self._primary_ip is not None
        return hcloud.Server(
            spec.name,
            server_type=spec.size,
            image=HCLOUD_IMAGE,
            location=spec.location,
            ssh_keys=[key.id] if key else [],
            firewall_ids=[firewall.id.apply(int)],
            public_nets=[
                hcloud.ServerPublicNetArgs(
                    ipv4_enabled=True, ipv4=self._primary_ip.id.apply(int), ipv6_enabled=False
                )
            ],
            labels={"cluster": f"airflow-ha-{self.cfg.stack}", "node": spec.name},
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _aws_instance(self, rules: list[dict]) -> pulumi.Resource:
        import pulumi_aws as aws

        spec = self.spec
        provider = self._provider
        opts = pulumi.ResourceOptions(parent=self, provider=provider)
        tags = {
            "Name": f"airflow-ha-{self.cfg.stack}-{spec.name}",
            "cluster": f"airflow-ha-{self.cfg.stack}",
        }
        vpc = aws.ec2.Vpc(
            f"{spec.name}-vpc",
            cidr_block=self.cfg.aws_vpc_cidr,
            enable_dns_hostnames=True,
            tags=tags,
            opts=opts,
        )
        subnet_cidr = self.cfg.aws_vpc_cidr.rsplit("/", 1)[0] + "/24"
        subnet = aws.ec2.Subnet(
            f"{spec.name}-subnet", vpc_id=vpc.id, cidr_block=subnet_cidr, tags=tags, opts=opts
        )
        gateway = aws.ec2.InternetGateway(f"{spec.name}-igw", vpc_id=vpc.id, tags=tags, opts=opts)
        routes = aws.ec2.RouteTable(
            f"{spec.name}-routes",
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)],
            tags=tags,
            opts=opts,
        )
        aws.ec2.RouteTableAssociation(
            f"{spec.name}-routes-assoc", subnet_id=subnet.id, route_table_id=routes.id, opts=opts
        )
        group = aws.ec2.SecurityGroup(
            f"{spec.name}-sg",
            vpc_id=vpc.id,
            description=f"airflow-ha {spec.name}: SSH from admins, WireGuard from peers",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    protocol=r["protocol"],
                    from_port=r["port"],
                    to_port=r["port"],
                    cidr_blocks=r["sources"],
                    description=r["why"],
                )
                for r in rules
            ],
            egress=[
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="-1",
                    from_port=0,
                    to_port=0,
                    cidr_blocks=["0.0.0.0/0"],
                    description="updates, packages and the mesh",
                )
            ],
            tags=tags,
            opts=opts,
        )
        key_pair = aws.ec2.KeyPair(
            f"{spec.name}-key", public_key=self.cfg.ssh_public_key, tags=tags, opts=opts
        )
        ami = aws.ec2.get_ami_output(
            most_recent=True,
            owners=[DEBIAN_AMI_OWNER],
            filters=[
                aws.ec2.GetAmiFilterArgs(name="name", values=[DEBIAN_AMI_NAME]),
                aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"]),
            ],
            opts=pulumi.InvokeOutputOptions(provider=provider),
        )
        instance = aws.ec2.Instance(
            spec.name,
            ami=ami.id,
            instance_type=spec.size,
            subnet_id=subnet.id,
            vpc_security_group_ids=[group.id],
            key_name=key_pair.key_name,
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_size=40, volume_type="gp3", encrypted=True
            ),
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(http_tokens="required"),
            tags=tags,
            opts=opts,
        )
        association = aws.ec2.EipAssociation(
            f"{spec.name}-eip-assoc", instance_id=instance.id, allocation_id=self._eip.id, opts=opts
        )
        return association


class Nodes(pulumi.ComponentResource):
    """The nodes tier: every node, its address first, then machines and base steps."""

    def __init__(self, cfg: ClusterConfig, opts: pulumi.ResourceOptions | None = None):
        super().__init__("airflow-ha:nodes:Nodes", "nodes", None, opts)
        self.nodes = [Node(spec, cfg, pulumi.ResourceOptions(parent=self)) for spec in cfg.nodes]
        hcloud_key = None
        if any(n.cloud == "hcloud" for n in cfg.nodes):
            import pulumi_hcloud as hcloud

            # One key per project: Hetzner refuses the same key twice.
            hcloud_key = hcloud.SshKey(
                f"airflow-ha-{cfg.stack}",
                public_key=cfg.ssh_public_key,
                opts=pulumi.ResourceOptions(parent=self),
            )
        for node in self.nodes:
            peers = [other.public_address for other in self.nodes if other is not node]
            node.provision(peers, hcloud_key)
        self.register_outputs({})
