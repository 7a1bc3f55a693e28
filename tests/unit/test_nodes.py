"""Nodes per cloud: images, places, and nothing public but SSH from admins and WireGuard."""

from __future__ import annotations

import os
import subprocess

import pytest

from tools.engine import Engine, parse_step

PEER_UDP = "51820"


def _hcloud_rules(engine: Engine, name: str) -> list[dict]:
    (firewall,) = [
        r for r in engine.of_type("hcloud:index/firewall:Firewall") if r.name == f"{name}-firewall"
    ]
    return firewall.inputs["rules"]


def test_dev_makes_three_debian13_hetzner_servers_in_three_locations(values, deploy) -> None:
    engine, _ = deploy(values("dev"))
    servers = engine.of_type("hcloud:index/server:Server")
    assert sorted((s.name, s.inputs["location"], s.inputs["image"]) for s in servers) == [
        ("fsn", "fsn1", "debian-13"),
        ("hel", "hel1", "debian-13"),
        ("nbg", "nbg1", "debian-13"),
    ]
    assert all(s.inputs["serverType"] == "cx32" for s in servers)
    # Each server sits behind its own firewall and on its pre-allocated primary IP.
    firewalls = {
        r.outputs.get("id", r.name) for r in engine.of_type("hcloud:index/firewall:Firewall")
    }
    assert len(firewalls) == 3
    assert all(s.inputs["firewallIds"] for s in servers)
    assert all(s.inputs["publicNets"][0]["ipv4Enabled"] for s in servers)
    assert len(engine.of_type("hcloud:index/sshKey:SshKey")) == 1


def test_hetzner_firewall_opens_only_ssh_from_admins_and_wireguard_from_peers(
    values, deploy
) -> None:
    engine, outputs = deploy(values("dev", adminCidrs=["198.51.100.0/24", "192.0.2.7/32"]))
    public = {name: node["publicAddress"] for name, node in outputs["nodes"].items()}
    for name in ("fsn", "nbg", "hel"):
        rules = _hcloud_rules(engine, name)
        assert {(r["protocol"], r["port"]) for r in rules} == {("tcp", "22"), ("udp", PEER_UDP)}
        ssh = next(r for r in rules if r["port"] == "22")
        assert ssh["sourceIps"] == ["198.51.100.0/24", "192.0.2.7/32"]
        wireguard = next(r for r in rules if r["port"] == PEER_UDP)
        peers = sorted(f"{ip}/32" for other, ip in public.items() if other != name)
        assert sorted(wireguard["sourceIps"]) == peers
        assert all(r["direction"] == "in" for r in rules)


def test_public_ui_adds_only_https(values, deploy) -> None:
    engine, _ = deploy(values("dev", publicUi=True))
    ports = {(r["protocol"], r["port"]) for r in _hcloud_rules(engine, "fsn")}
    assert ports == {("tcp", "22"), ("udp", PEER_UDP), ("tcp", "443")}


def test_aws_nodes_get_network_security_group_instance_and_elastic_ip(values, deploy) -> None:
    engine, outputs = deploy(values("prod"), stack="prod")
    instances = engine.of_type("aws:ec2/instance:Instance")
    assert sorted(i.name for i in instances) == ["dub", "fra", "sto"]
    assert {i.inputs["ami"] for i in instances} == {"ami-0debian13"}
    assert {i.inputs["instanceType"] for i in instances} == {"m6i.xlarge"}
    # One provider per node (the bucket objectStorage.create makes has its own: test_bucket).
    providers = [p for p in engine.of_type("pulumi:providers:aws")
                 if not p.name.startswith("object-storage-")]
    assert sorted(p.inputs["region"] for p in providers) == [
        "eu-central-1",
        "eu-north-1",
        "eu-west-1",
    ]
    for typ in (
        "aws:ec2/vpc:Vpc",
        "aws:ec2/subnet:Subnet",
        "aws:ec2/internetGateway:InternetGateway",
        "aws:ec2/routeTable:RouteTable",
        "aws:ec2/eip:Eip",
        "aws:ec2/eipAssociation:EipAssociation",
        "aws:ec2/keyPair:KeyPair",
    ):
        assert len(engine.of_type(typ)) == 3, typ
    public = {name: node["publicAddress"] for name, node in outputs["nodes"].items()}
    for group in engine.of_type("aws:ec2/securityGroup:SecurityGroup"):
        node = group.name.removesuffix("-sg")
        ingress = group.inputs["ingress"]
        assert {(r["protocol"], r["fromPort"], r["toPort"]) for r in ingress} == {
            ("tcp", 22, 22),
            ("udp", 51820, 51820),
        }
        ssh = next(r for r in ingress if r["fromPort"] == 22)
        assert ssh["cidrBlocks"] == ["203.0.113.0/24", "198.51.100.0/24"]
        wireguard = next(r for r in ingress if r["fromPort"] == 51820)
        assert sorted(wireguard["cidrBlocks"]) == sorted(
            f"{ip}/32" for other, ip in public.items() if other != node
        )
    assert all(n["ssh"].startswith("ssh -p 22 admin@") for n in outputs["nodes"].values())


def test_mixed_stack_has_both_clouds(values, deploy) -> None:
    engine, outputs = deploy(values("staging"), stack="staging")
    assert len(engine.of_type("hcloud:index/server:Server")) == 2
    assert len(engine.of_type("aws:ec2/instance:Instance")) == 1
    assert {n["cloud"] for n in outputs["nodes"].values()} == {"hcloud", "aws"}


def test_static_nodes_create_no_cloud_resources(values, deploy) -> None:
    engine, outputs = deploy(values("local"), stack="local")
    cloud = [r for r in engine.resources if r.type.startswith(("hcloud:", "aws:"))]
    assert cloud == []
    assert outputs["nodes"]["node-a"]["publicAddress"] == "172.31.77.11"


def test_every_step_logs_in_with_the_secret_key(values, deploy) -> None:
    engine, _ = deploy(values("dev"))
    commands = engine.of_type("command:remote:Command")
    assert commands
    for cmd in commands:
        assert "connection" in cmd.secret_inputs, cmd.name
        assert cmd.inputs["connection"]["privateKey"].startswith(
            "-----BEGIN OPENSSH PRIVATE KEY-----"
        )


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "local"])
def test_base_step_is_valid_bash(values, deploy, stack, tmp_path) -> None:
    engine, _ = deploy(values(stack), stack=stack)
    base = [s for s in engine.steps() if s.step == "base"]
    assert len(base) == 3
    script = tmp_path / "base.sh"
    script.write_text(base[0].script)
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert "PasswordAuthentication no" in base[0].files[0][3]


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "local"])
def test_every_step_checks_the_host_key_the_server_was_given(values, deploy, stack) -> None:
    """A cloud server's user data holds the private host key whose public half every step's
    connection pins (ssh-keygen reads it back); a static node's comes from its hostKey."""
    import shutil
    import tempfile

    import yaml

    engine, _ = deploy(values(stack), stack=stack)
    pinned = {}
    for step in engine.of_type("command:remote:Command"):
        node = parse_step(step.inputs["stdin"]).node
        key = step.inputs["connection"]["hostKey"]
        assert key.startswith("ssh-ed25519 AAAA") and len(key.split()) == 2
        assert pinned.setdefault(node, key) == key  # one key per node, every step
    assert len(set(pinned.values())) == 3
    servers = [
        r for r in engine.resources
        if r.type in ("hcloud:index/server:Server", "aws:ec2/instance:Instance")
    ]
    for server in servers:
        cloud_config = yaml.safe_load(server.inputs["userData"])
        assert cloud_config["ssh_genkeytypes"] == [] and cloud_config["ssh_deletekeys"] is True
        public = cloud_config["ssh_keys"]["ed25519_public"]
        assert public.split()[:2] == pinned[server.name].split()
        if shutil.which("ssh-keygen"):
            with tempfile.NamedTemporaryFile("w") as f:
                f.write(cloud_config["ssh_keys"]["ed25519_private"])
                f.flush()
                os.chmod(f.name, 0o600)
                derived = subprocess.run(
                    ["ssh-keygen", "-y", "-f", f.name], capture_output=True, text=True
                )
            assert derived.stdout.split()[:2] == pinned[server.name].split()
    nodes = values(stack)["nodes"]
    statics = {
        n["name"]: " ".join(n["hostKey"].split()[:2]) for n in nodes if n["cloud"] == "static"
    }
    assert {n: pinned[n] for n in statics} == statics
    assert len(servers) + len(statics) == 3
