"""Nodes: one VM per node (Hetzner Cloud or AWS) or an existing server, plus the base step.

Order inside the tier: every node's public address first (a Hetzner primary IP, an AWS Elastic
IP, or the static host), since each firewall admits WireGuard only from the other nodes'
addresses; then the firewall/security group and the server; then the base step over SSH.
Public ingress: 22/tcp from adminCidrs, 51820/udp from the other nodes, 443/tcp only with
publicUi. Nothing else.

No ordinary `pulumi up` replaces a server: the inputs that only matter when a server is made
(the image, the bootstrap SSH key) are `ignore_changes`, the base step keeps authorized_keys up
to date instead, and with protectServers the servers, disks and public addresses are
`protect`ed (docs/operations.md, "Replace a server on purpose").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

from . import hostkeys
from .config import NodeSpec
from .config_schema import SECRET_PLACEHOLDER_RE
from .layout import UI_PORT, WIREGUARD_PORT
from .remote import NodeAccess, RemoteFile, render, run_step

HCLOUD_IMAGE = "debian-13"
# Debian's own AWS account publishes the official AMIs.
DEBIAN_AMI_OWNER = "136693071363"
DEBIAN_AMI_NAME = "debian-13-amd64-*"
# Inputs read only when a server is created (SDK names; the SDK sends the provider's). A newer
# image (the AMI lookup answers the newest) or a rotated key would otherwise replace every
# server of the stack in one `pulumi up`: a new image reaches a node when it is replaced on
# purpose, one node at a time; a new key through the base step (authorized_keys).
# The user data (cloud-init: the generated host key) is read at the first boot only; a server
# made before it existed must not be replaced for it (its hostKey then comes from the stack).
HCLOUD_SERVER_IGNORED = ("image", "ssh_keys", "user_data")
AWS_INSTANCE_IGNORED = ("ami", "key_name", "user_data")
UNKNOWN_KEY = "<the public half of sshPrivateKey>"


@dataclass(frozen=True)
class NodesArgs:
    """What the nodes tier needs from the stack config."""

    nodes: tuple[NodeSpec, ...]
    cluster: str  # "airflow-ha-<stack>": cloud labels and tags, the Hetzner SSH key's name
    admin_cidrs: tuple[str, ...]
    public_ui: bool
    ssh_public_key: str | None  # the bootstrap key of new servers
    ssh_private_key: Any  # str or a secret pulumi.Output[str]
    aws_vpc_cidr: str
    # Every node's authorized_keys (ClusterConfig.authorized_keys) and whether the deploy's own
    # key is among them (it is unless the private key is the offline render's placeholder).
    authorized_keys: tuple[str, ...]
    deploy_key_known: bool
    protect: bool  # protectServers


@dataclass(frozen=True)
class NodeArgs:
    """One node: its spec, the tier's settings, and the other nodes' public addresses (the
    sources its firewall admits WireGuard from), which Nodes resolves once every node has one."""

    spec: NodeSpec
    tier: NodesArgs
    peer_addresses: pulumi.Input[Sequence[str]]
    hcloud_key: pulumi.Resource | None = None


@dataclass(frozen=True)
class Machine:
    """A cloud node's server and the resource after which it answers at its public address:
    the server itself on Hetzner (created on its primary IP), the Elastic IP's association on
    AWS. Steps wait for `reachable`, and its id is the machine's identity in their triggers:
    a replaced instance gets a new association, so every step on it runs again."""

    server: pulumi.CustomResource
    reachable: pulumi.CustomResource


def ingress_rules(args: NodesArgs, peer_addresses: pulumi.Input[Sequence[str]]) -> list[dict]:
    """The public ingress of every node, cloud-neutral: protocol, port, sources."""
    rules = [
        {"protocol": "tcp", "port": 22, "sources": list(args.admin_cidrs), "why": "SSH for admins"},
        {
            "protocol": "udp",
            "port": WIREGUARD_PORT,
            "sources": pulumi.Output.from_input(peer_addresses).apply(
                lambda ips: [f"{ip}/32" for ip in ips]
            ),
            "why": "WireGuard from the other nodes",
        },
    ]
    if args.public_ui:
        rules.append(
            {"protocol": "tcp", "port": UI_PORT, "sources": ["0.0.0.0/0"], "why": "Airflow UI"}
        )
    return rules


class Node(pulumi.ComponentResource):
    """One node, complete once constructed: its public address, its machine (None for a static
    node), how steps reach it (`access`) and its base step (`base`)."""

    def __init__(self, args: NodeArgs, opts: pulumi.ResourceOptions | None = None):
        spec = args.spec
        super().__init__("airflow-ha:nodes:Node", spec.name, None, opts)
        self.spec = spec
        self._tier = args.tier
        self._primary_ip: Any = None  # hcloud.PrimaryIp
        self._eip: Any = None  # aws.ec2.Eip
        self._provider: pulumi.ProviderResource | None = None
        self.public_address: pulumi.Output[str] = self._address()
        rules = ingress_rules(args.tier, args.peer_addresses)
        self.machine: Machine | None = None
        self.host_key: pulumi.Output[str] = pulumi.Output.from_input(spec.host_key or "")
        if spec.cloud in ("hcloud", "aws"):
            user_data, generated = self._host_key()
            self.host_key = pulumi.Output.from_input(spec.host_key) if spec.host_key else generated
            if spec.cloud == "hcloud":
                self.machine = self._hcloud_server(rules, args.hcloud_key, user_data)
            else:
                self.machine = self._aws_machine(rules, user_data)
        self.access = NodeAccess(
            name=spec.name,
            host=self.public_address,
            user=spec.user,
            port=spec.port,
            private_key=args.tier.ssh_private_key,
            instance=self.machine.reachable.id if self.machine else None,
            host_key=self.host_key,
        )
        self.base: pulumi.Resource = self._base_step()
        self.register_outputs(
            {"publicAddress": self.public_address, "meshAddress": self.spec.mesh_address}
        )

    def _kept(self, **more: Any) -> pulumi.ResourceOptions:
        """Options of what holds the node's data or identity (server, disk, public address):
        `protect`ed with protectServers, so that nothing deletes or replaces it by surprise."""
        return pulumi.ResourceOptions(parent=self, protect=self._tier.protect, **more)

    def _address(self) -> pulumi.Output[str]:
        """The node's public address, made first so that peers' firewalls can name it."""
        spec, cluster = self.spec, self._tier.cluster
        if spec.cloud == "hcloud":
            import pulumi_hcloud as hcloud

            self._primary_ip = hcloud.PrimaryIp(
                f"{spec.name}-ipv4",
                type="ipv4",
                location=spec.location,
                assignee_type="server",
                auto_delete=False,
                labels={"cluster": cluster, "node": spec.name},
                opts=self._kept(),
            )
            return self._primary_ip.ip_address
        if spec.cloud == "aws":
            import pulumi_aws as aws

            self._provider = aws.Provider(
                f"{spec.name}-aws-{spec.region}",
                region=spec.region,
                opts=pulumi.ResourceOptions(parent=self),
            )
            self._eip = aws.ec2.Eip(
                f"{spec.name}-eip",
                domain="vpc",
                tags={"Name": f"{cluster}-{spec.name}"},
                opts=self._kept(provider=self._provider),
            )
            return self._eip.public_ip
        return pulumi.Output.from_input(spec.host)

    def _host_key(self) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        """A new server's host key: (its cloud-init user data, secret; the public line).
        cloud-init installs the pair before sshd starts and makes no other host key, so the
        first connection can already check it (the public half is no secret)."""
        import pulumi_random as random

        seed = random.RandomBytes(
            f"{self.spec.name}-host-key", length=32, opts=pulumi.ResourceOptions(parent=self)
        ).base64
        pair = seed.apply(lambda s: _key_pair(s, self.spec.name))
        public = pulumi.Output.unsecret(pair.apply(lambda p: p[1].rsplit(" ", 1)[0]))
        user_data = pulumi.Output.secret(pair.apply(lambda p: cloud_init(*p)))
        return user_data, public

    def _base_step(self) -> pulumi.Resource:
        tier = self._tier
        context = {
            "node": self.spec.name,
            "user": self.spec.user,
            # A cloud server is the program's: its authorized_keys is too (the bootstrap key
            # goes). On a static server only the program's block is, the owner's lines stay.
            "whole_file": self.spec.cloud != "static",
            # Offline (a placeholder private key) the list shows where the deploy key goes;
            # the script then refuses to run.
            "keys": [*tier.authorized_keys, *([] if tier.deploy_key_known else [UNKNOWN_KEY])],
            "deploy_key_known": tier.deploy_key_known,
        }
        return run_step(
            "base",
            self.access,
            render("base/base.sh.j2", context),
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
            depends_on=[self.machine.reachable] if self.machine else [],
        )

    def _hcloud_server(
        self, rules: list[dict], key: pulumi.Resource | None, user_data: pulumi.Output[str]
    ) -> Machine:
        import pulumi_hcloud as hcloud

        spec, cluster = self.spec, self._tier.cluster
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
            labels={"cluster": cluster},
            opts=pulumi.ResourceOptions(parent=self),
        )
        server = hcloud.Server(
            spec.name,
            server_type=spec.size,
            image=HCLOUD_IMAGE,
            location=spec.location,
            ssh_keys=[key.id] if key else [],
            user_data=user_data,
            firewall_ids=[firewall.id.apply(int)],
            public_nets=[
                hcloud.ServerPublicNetArgs(
                    ipv4_enabled=True, ipv4=self._primary_ip.id.apply(int), ipv6_enabled=False
                )
            ],
            labels={"cluster": cluster, "node": spec.name},
            opts=self._kept(ignore_changes=list(HCLOUD_SERVER_IGNORED)),
        )
        return Machine(server=server, reachable=server)

    def _aws_machine(self, rules: list[dict], user_data: pulumi.Output[str]) -> Machine:
        import pulumi_aws as aws

        spec = self.spec
        opts = pulumi.ResourceOptions(parent=self, provider=self._provider)
        tags = {"Name": f"{self._tier.cluster}-{spec.name}", "cluster": self._tier.cluster}
        vpc, subnet = self._aws_network(tags, opts)
        group = self._aws_security_group(vpc, rules, tags, opts)
        key_pair = aws.ec2.KeyPair(
            f"{spec.name}-key", public_key=self._tier.ssh_public_key, tags=tags, opts=opts
        )
        ami = aws.ec2.get_ami_output(
            most_recent=True,
            owners=[DEBIAN_AMI_OWNER],
            filters=[
                aws.ec2.GetAmiFilterArgs(name="name", values=[DEBIAN_AMI_NAME]),
                aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"]),
            ],
            opts=pulumi.InvokeOutputOptions(provider=self._provider),
        )
        instance = aws.ec2.Instance(
            spec.name,
            ami=ami.id,
            instance_type=spec.size,
            subnet_id=subnet.id,
            vpc_security_group_ids=[group.id],
            key_name=key_pair.key_name,
            user_data=user_data,
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_size=40, volume_type="gp3", encrypted=True
            ),
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(http_tokens="required"),
            tags=tags,
            # The login key lives in the key pair (key_name), the host key in user_data.
            opts=self._kept(provider=self._provider, ignore_changes=list(AWS_INSTANCE_IGNORED)),
        )
        association = aws.ec2.EipAssociation(
            f"{spec.name}-eip-assoc", instance_id=instance.id, allocation_id=self._eip.id, opts=opts
        )
        return Machine(server=instance, reachable=association)

    def _aws_network(self, tags: dict[str, str], opts: pulumi.ResourceOptions) -> tuple[Any, Any]:
        """The node's own VPC and public subnet, routed to the internet; (vpc, subnet)."""
        import pulumi_aws as aws

        name, cidr = self.spec.name, self._tier.aws_vpc_cidr
        vpc = aws.ec2.Vpc(
            f"{name}-vpc", cidr_block=cidr, enable_dns_hostnames=True, tags=tags, opts=opts
        )
        subnet_cidr = cidr.rsplit("/", 1)[0] + "/24"
        subnet = aws.ec2.Subnet(
            f"{name}-subnet", vpc_id=vpc.id, cidr_block=subnet_cidr, tags=tags, opts=opts
        )
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=tags, opts=opts)
        routes = aws.ec2.RouteTable(
            f"{name}-routes",
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)],
            tags=tags,
            opts=opts,
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-routes-assoc", subnet_id=subnet.id, route_table_id=routes.id, opts=opts
        )
        return vpc, subnet

    def _aws_security_group(
        self, vpc: Any, rules: list[dict], tags: dict[str, str], opts: pulumi.ResourceOptions
    ) -> Any:
        import pulumi_aws as aws

        name = self.spec.name
        return aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=vpc.id,
            description=f"airflow-ha {name}: SSH from admins, WireGuard from peers",
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


def _key_pair(seed: str, node: str) -> tuple[str, str]:
    """(private text, public line) of a node's host key; the offline render's placeholder
    seed (tools.render: `<secret:...>`) gives placeholders."""
    try:
        return hostkeys.from_base64_seed(seed, f"root@{node}")
    except ValueError:  # binascii.Error too; RandomBytes gives 32 bytes in base64
        if SECRET_PLACEHOLDER_RE.match(seed) is None:
            raise
        return f"<secret:{node}-host-key>", f"<host key of {node}>"


def cloud_init(private_key: str, public_key: str) -> str:
    """The user data of a new server: its SSH host key and no other (cloud-init's ssh module:
    the image's keys deleted, none generated), so that sshd shows the key the program pins."""
    indented = "".join(f"    {line}\n" for line in private_key.strip().splitlines())
    return (
        "#cloud-config\n"
        "ssh_deletekeys: true\n"
        "ssh_genkeytypes: []\n"
        "ssh_keys:\n"
        f"  ed25519_private: |\n{indented}"
        f"  ed25519_public: {public_key}\n"
    )


class Nodes(pulumi.ComponentResource):
    """The nodes tier: every node, each complete when constructed.

    A node's firewall admits WireGuard from the other nodes' public addresses, which exist only
    once those nodes are constructed: each node gets a deferred Output of its peers' addresses,
    resolved here after the last node, so that every node is built in one go.
    """

    def __init__(self, name: str, args: NodesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("airflow-ha:nodes:Nodes", name, None, opts)
        hcloud_key = None
        if any(n.cloud == "hcloud" for n in args.nodes):
            import pulumi_hcloud as hcloud

            # One key per project: Hetzner refuses the same key twice.
            hcloud_key = hcloud.SshKey(
                args.cluster,
                public_key=args.ssh_public_key,
                opts=pulumi.ResourceOptions(parent=self),
            )
        peers = {spec.name: pulumi.deferred_output() for spec in args.nodes}
        self.nodes = [
            Node(
                NodeArgs(spec, args, peers[spec.name][0], hcloud_key),
                pulumi.ResourceOptions(parent=self),
            )
            for spec in args.nodes
        ]
        for node in self.nodes:
            resolve = peers[node.spec.name][1]
            resolve(pulumi.Output.all(*[o.public_address for o in self.nodes if o is not node]))
        self.register_outputs({})
