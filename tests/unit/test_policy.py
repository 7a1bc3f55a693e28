"""The policy pack (policy/): every rule refuses its failing case and accepts its passing one, and
the real program, run for every committed stack under the engine double, breaks none of them.

The policies are called the way `pulumi preview --policy-pack policy` calls them: through the
pulumi-policy SDK's own analyzer servicer (Analyze for validations, Remediate for remediations),
with the inputs in the engine's wire form, secrets marked as the engine marks them.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import pulumi
import pulumi_command as command
import pytest
import yaml
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime import proto
from pulumi.runtime.proto import analyzer_pb2_grpc
from pulumi_policy import EnforcementLevel, ResourceValidationPolicy
from pulumi_policy.policy import _PolicyAnalyzerServicer

from policy import airflow_ha_policies as pack
from tools.engine import Engine

REPO = Path(__file__).resolve().parents[2]
POLICY_DIR = REPO / "policy"
SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
UNKNOWN_STRING = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
UNKNOWN_ARRAY = "6a19a0b0-7e62-4c92-b797-7f8e31da9cc2"
ADMIN = "203.0.113.0/24"
PEER = "198.51.100.7/32"
COMMITTED_STACKS = sorted(p.name.split(".")[1] for p in (REPO / "stacks").glob("Pulumi.*.yaml"))
PREVIEWED_STACKS = [stack for stack in COMMITTED_STACKS if stack != "local"]

FW = pack.HCLOUD_FIREWALL
SG = pack.AWS_SECURITY_GROUP
SG_RULE = pack.AWS_SECURITY_GROUP_RULE
INGRESS_RULE = pack.AWS_INGRESS_RULE
CMD = "command:remote:Command"


# --- calling the pack the way the engine does --------------------------------------------------


def secret(value: Any) -> dict:
    """A value as the engine sends a Pulumi secret."""
    return {SIG_KEY: SECRET_SIG, "value": value}


def to_wire(value: Any, secret_paths: Iterable[str], path: str = "") -> Any:
    """Plain recorded inputs back into the wire form, secrets marked at their dotted paths."""
    paths = set(secret_paths)
    if path and path in paths:
        return secret(to_wire(value, (), path))
    if isinstance(value, dict):
        return {k: to_wire(v, paths, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [to_wire(v, paths, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def struct(props: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(props)
    return message


class Analyzer:
    """The pack behind pulumi-policy's servicer, configured like `--policy-pack-config`."""

    def __init__(self, config: dict[str, dict] | None = None, policies: list | None = None):
        self.servicer = _PolicyAnalyzerServicer(
            pack.PACK_NAME, "0.1.0", policies or pack.POLICIES, EnforcementLevel.MANDATORY
        )
        if config:
            levels = {p.name: p.enforcement_level for p in (policies or pack.POLICIES)}
            request = proto.ConfigureAnalyzerRequest()
            for name, properties in config.items():
                level = proto.REMEDIATE if levels.get(name) == EnforcementLevel.REMEDIATE else (
                    proto.MANDATORY
                )
                request.policyConfig[name].CopyFrom(
                    proto.PolicyConfig(enforcementLevel=level, properties=struct(properties))
                )
            self.servicer.Configure(request, None)

    @staticmethod
    def request(typ: str, props: dict, name: str = "r") -> Any:
        return proto.AnalyzeRequest(
            type=typ,
            name=name,
            urn=f"urn:pulumi:test::airflow-ha::{typ}::{name}",
            properties=struct(props),
        )

    def violations(self, typ: str, props: dict, name: str = "r") -> list[tuple[str, str]]:
        response = self.servicer.Analyze(self.request(typ, props, name), None)
        return [(d.policyName, d.message) for d in response.diagnostics]

    def remediations(self, typ: str, props: dict, name: str = "r") -> list[tuple[str, dict]]:
        response = self.servicer.Remediate(self.request(typ, props, name), None)
        return [
            (r.policyName, json_format.MessageToDict(r.properties))
            for r in response.remediations
            if r.HasField("properties")
        ]


def names(found: list[tuple[str, str]]) -> list[str]:
    return [policy for policy, _ in found]


def firewall(*rules: dict) -> dict:
    return {"rules": list(rules), "labels": {"cluster": "airflow-ha-test"}}


def fw_rule(protocol: str, port: str | None, *sources: str, direction: str = "in") -> dict:
    rule = {"direction": direction, "protocol": protocol, "sourceIps": list(sources)}
    if port is not None:
        rule["port"] = port
    return rule


def sg(*ingress: dict) -> dict:
    egress = [sg_rule("-1", 0, 0, "0.0.0.0/0")]
    return {"vpcId": "vpc-1", "ingress": list(ingress), "egress": egress}


def sg_rule(protocol: str, low: int, high: int, *cidrs: str, **extra: Any) -> dict:
    rule = {"protocol": protocol, "fromPort": low, "toPort": high, "cidrBlocks": list(cidrs)}
    return {**rule, **extra}


PROGRAM_LIKE_FIREWALL = firewall(
    fw_rule("tcp", "22", ADMIN),
    fw_rule("udp", "51820", PEER, "198.51.100.8/32"),
)


# --- public-ingress-allowlist --------------------------------------------------------------------


def test_the_programs_ingress_shape_is_allowed():
    analyzer = Analyzer()
    assert analyzer.violations(FW, PROGRAM_LIKE_FIREWALL) == []
    group = sg(sg_rule("tcp", 22, 22, ADMIN), sg_rule("udp", 51820, 51820, PEER))
    assert analyzer.violations(SG, group) == []


@pytest.mark.parametrize(
    ("typ", "props"),
    [
        (FW, firewall(fw_rule("tcp", "80", "0.0.0.0/0"))),
        (FW, firewall(fw_rule("tcp", "any", ADMIN))),
        (FW, firewall(fw_rule("udp", "53", "0.0.0.0/0", "::/0"))),
        (FW, firewall(fw_rule("gre", None, PEER))),
        (SG, sg(sg_rule("-1", 0, 0, PEER))),
        (SG, sg(sg_rule("tcp", 20, 23, ADMIN))),
        (SG_RULE, {"type": "ingress", **sg_rule("tcp", 8443, 8443, "0.0.0.0/0")}),
        (INGRESS_RULE, {"ipProtocol": "udp", "fromPort": 1000, "toPort": 2000, "cidrIpv4": PEER}),
    ],
    ids=["fw-80-world", "fw-any-admin", "fw-udp53", "fw-gre", "sg-all", "sg-range", "sg-rule",
         "vpc-rule"],
)
def test_any_other_public_port_is_refused(typ, props):
    found = Analyzer().violations(typ, props)
    assert "public-ingress-allowlist" in names(found), found


def test_egress_is_not_ingress():
    analyzer = Analyzer()
    outbound = firewall(fw_rule("tcp", "any", "0.0.0.0/0", direction="out"))
    assert analyzer.violations(FW, outbound) == []
    egress = {"type": "egress", **sg_rule("-1", 0, 0, "0.0.0.0/0")}
    assert analyzer.violations(SG_RULE, egress) == []


def test_wireguard_may_be_open_to_the_internet():
    rule = {"ipProtocol": "udp", "fromPort": 51820, "toPort": 51820, "cidrIpv4": "0.0.0.0/0"}
    assert Analyzer().violations(INGRESS_RULE, rule) == []


def test_public_ui_needs_the_policy_flag():
    ui = firewall(fw_rule("tcp", "443", "0.0.0.0/0", "::/0"))
    refused = Analyzer().violations(FW, ui)
    assert names(refused) == ["public-ingress-allowlist"]
    assert "allowPublicUi" in refused[0][1]
    allowed = Analyzer({"public-ingress-allowlist": {"allowPublicUi": True}})
    assert allowed.violations(FW, ui) == []
    # the flag opens 443/tcp, nothing more
    assert names(allowed.violations(FW, firewall(fw_rule("tcp", "444", "0.0.0.0/0")))) == [
        "public-ingress-allowlist"
    ]


def test_icmp_is_not_a_port():
    assert Analyzer().violations(FW, firewall(fw_rule("icmp", None, "0.0.0.0/0"))) == []


# --- ssh-not-from-internet -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typ", "props"),
    [
        (FW, firewall(fw_rule("tcp", "22", "0.0.0.0/0"))),
        (FW, firewall(fw_rule("tcp", "22", "::/0"))),
        (SG, sg(sg_rule("tcp", 22, 22, ipv6CidrBlocks=["::/0"]))),
        (SG_RULE, {"type": "ingress", **sg_rule("tcp", 22, 22, "0.0.0.0/1", "128.0.0.0/1")}),
        (INGRESS_RULE, {"ipProtocol": "-1", "cidrIpv4": "0.0.0.0/0"}),
    ],
    ids=["v4", "v6", "sg-v6", "split-halves", "all-ports"],
)
def test_ssh_from_the_internet_is_refused(typ, props):
    found = Analyzer().violations(typ, props)
    assert "ssh-not-from-internet" in names(found), found


@pytest.mark.parametrize("source", [ADMIN, "10.0.0.0/8", "2001:db8::/32", "sg-0abc"])
def test_ssh_from_admin_networks_is_fine(source):
    rule = {"type": "ingress", "protocol": "tcp", "fromPort": 22, "toPort": 22}
    rule["sourceSecurityGroupId" if source.startswith("sg-") else "cidrBlocks"] = (
        source if source.startswith("sg-") else [source]
    )
    assert Analyzer().violations(SG_RULE, rule) == []


def test_internet_wide_sources():
    assert pack.internet_wide("0.0.0.0/0") and pack.internet_wide("::/0")
    assert pack.internet_wide("64.0.0.0/2") and pack.internet_wide("2000::/3")
    assert not pack.internet_wide("10.0.0.0/8")  # private
    assert not pack.internet_wide("203.0.113.0/24")
    assert not pack.internet_wide("pl-12345")


# --- cluster-ports-mesh-only ---------------------------------------------------------------------


@pytest.mark.parametrize("port", sorted(pack.CLUSTER_PORTS))
def test_every_cluster_port_is_refused_from_any_source(port):
    found = Analyzer().violations(FW, firewall(fw_rule("tcp", str(port), ADMIN)))
    assert "cluster-ports-mesh-only" in names(found), found
    message = dict(found)["cluster-ports-mesh-only"]
    assert f"{port} ({pack.CLUSTER_PORTS[port]})" in message


def test_the_brief_ports_are_all_covered():
    brief = {2379, 2380, 5432, 5000, 5001, 8008, 5672, 15672, 25672, 4369, 5555, 8080, 30865}
    assert brief <= set(pack.CLUSTER_PORTS)


def test_a_range_names_every_service_it_reaches():
    found = Analyzer().violations(SG, sg(sg_rule("tcp", 5000, 5999, PEER)))
    message = dict(found)["cluster-ports-mesh-only"]
    for port in (5000, 5001, 5432, 5555, 5672):
        assert str(port) in message
    assert "8008" not in message


def test_all_protocols_from_the_own_group_reach_the_cluster_ports():
    found = Analyzer().violations(SG, sg(sg_rule("-1", 0, 0, self=True)))
    assert "cluster-ports-mesh-only" in names(found)


def test_ssh_and_wireguard_reach_no_cluster_port():
    found = Analyzer().violations(FW, PROGRAM_LIKE_FIREWALL)
    assert "cluster-ports-mesh-only" not in names(found)


# --- server-has-firewall -------------------------------------------------------------------------


def test_servers_need_a_firewall():
    analyzer = Analyzer()
    server = {"serverType": "cx32", "image": "debian-13", "location": "fsn1"}
    assert names(analyzer.violations(pack.HCLOUD_SERVER, server)) == ["server-has-firewall"]
    assert names(analyzer.violations(pack.HCLOUD_SERVER, {**server, "firewallIds": []})) == [
        "server-has-firewall"
    ]
    assert analyzer.violations(pack.HCLOUD_SERVER, {**server, "firewallIds": [7]}) == []
    # during a first preview the firewall's id is not known yet: not a violation
    unknown_id = {**server, "firewallIds": [UNKNOWN_STRING]}
    assert analyzer.violations(pack.HCLOUD_SERVER, unknown_id) == []
    assert analyzer.violations(pack.HCLOUD_SERVER, {**server, "firewallIds": UNKNOWN_ARRAY}) == []


def test_instances_need_a_security_group():
    analyzer = Analyzer()
    instance = {"ami": "ami-1", "instanceType": "t3.large", "subnetId": "subnet-1"}
    assert names(analyzer.violations(pack.AWS_INSTANCE, instance)) == ["server-has-firewall"]
    with_group = {**instance, "vpcSecurityGroupIds": ["sg-1"]}
    assert analyzer.violations(pack.AWS_INSTANCE, with_group) == []


# --- secret-inputs-encrypted ---------------------------------------------------------------------


def command_props(**extra: Any) -> dict:
    return {
        "create": "bash",
        "stdin": "# airflow-ha step",
        "connection": secret({"host": "203.0.113.5", "user": "root", "privateKey": "KEY"}),
        **extra,
    }


def test_secret_inputs_that_are_secrets_need_nothing():
    analyzer = Analyzer()
    props = command_props(environment={"PGPASSWORD": secret("s3cret"), "PGHOST": "127.0.0.1"})
    assert analyzer.remediations(CMD, props) == []


@pytest.mark.parametrize(
    "environment",
    [{"PGPASSWORD": "s3cret"}, {"RABBITMQ_ERLANG_COOKIE": "c"}, {"API_TOKEN": "t"},
     {"FERNET_SECRET": "f"}, {"SSH_PRIVATE_KEY": "k"}],
)
def test_a_plain_secret_input_is_wrapped_as_a_secret(environment):
    found = Analyzer().remediations(CMD, command_props(environment=environment))
    assert [policy for policy, _ in found] == ["secret-inputs-encrypted"]
    props = found[0][1]
    (key,) = environment
    assert props["environment"][key] == secret(environment[key])
    # the rest is passed through unchanged, secrets still secret
    assert props["connection"] == command_props()["connection"]
    assert props["stdin"] == "# airflow-ha step"


def test_a_plain_private_key_in_the_connection_is_wrapped():
    props = command_props(connection={"host": "h", "user": "root", "privateKey": "KEY"})
    ((policy, fixed),) = Analyzer().remediations(CMD, props)
    assert policy == "secret-inputs-encrypted"
    assert fixed["connection"]["privateKey"] == secret("KEY")
    assert fixed["connection"]["host"] == "h"


def test_unknown_secret_inputs_wait_for_up():
    props = command_props(environment={"PGPASSWORD": UNKNOWN_STRING})
    assert Analyzer().remediations(CMD, props) == []


def test_only_command_resources_are_remediated():
    password = "random:index/randomPassword:RandomPassword"
    assert Analyzer().remediations(password, {"length": 32}) == []
    assert Analyzer().remediations("aws:ec2/keyPair:KeyPair", {"publicKey": "ssh-ed25519 A"}) == []


def test_validations_cannot_see_secretness():
    """The reason secret-inputs-encrypted is a remediation: pulumi-policy gives a validation a
    Pulumi secret and a plain string alike (pulumi/pulumi-policy#241). If this ever fails, the
    SDK started to expose secretness: make the policy a mandatory validation."""
    seen: list[Any] = []
    probe = ResourceValidationPolicy(
        name="probe", description="records what a validation sees",
        validate=lambda args, report: seen.append(pack.plain(args.props)),
    )
    analyzer = Analyzer(policies=[probe])
    analyzer.violations(CMD, {"environment": {"A": secret("x"), "B": "x"}})
    assert seen == [{"environment": {"A": "x", "B": "x"}}]


def test_secret_like_input_names():
    props = {"connection": {"privateKey": "k", "host": "h"}, "environment": {"PASSWORD": "p"},
             "stdin": "s", "triggers": ["t"]}
    expected = ["connection.privateKey", "environment.PASSWORD"]
    assert sorted(pack.secret_like_inputs(props)) == expected


# --- the real program, every committed stack ----------------------------------------------------


def analyse_program(engine: Engine, analyzer: Analyzer) -> tuple[list, list, dict[str, int]]:
    violations, remediations, seen = [], [], {}
    for resource in engine.resources:
        secrets = getattr(resource, "secret_inputs", set())
        props = to_wire(resource.inputs, secrets)
        for policy, message in analyzer.violations(resource.type, props, resource.name):
            violations.append((resource.type, resource.name, policy, message))
        for policy, fixed in analyzer.remediations(resource.type, props, resource.name):
            remediations.append((resource.type, resource.name, policy, sorted(fixed)))
        seen[resource.type] = seen.get(resource.type, 0) + 1
    return violations, remediations, seen


def policy_config(stack: str) -> dict:
    path = POLICY_DIR / "config" / f"{stack}.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize("stack", COMMITTED_STACKS)
def test_the_program_breaks_no_policy(stack, values, deploy):
    engine, _ = deploy(values(stack), stack)
    violations, remediations, seen = analyse_program(engine, Analyzer(policy_config(stack)))
    assert violations == []
    assert remediations == []  # every secret-looking command input is already a Pulumi secret
    # not vacuous: the program's firewalls/security groups and servers were analysed
    clouds = {n["cloud"] for n in values(stack)["nodes"]}
    if "hcloud" in clouds:
        assert seen[FW] >= 1 and seen[pack.HCLOUD_SERVER] >= 1
    if "aws" in clouds:
        assert seen[SG] >= 1 and seen[pack.AWS_INSTANCE] >= 1
    assert seen[CMD] >= 3


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_a_public_ui_stack_needs_the_policy_flag(stack, values, deploy):
    engine, _ = deploy(values(stack, publicUi=True), stack)
    refused, _, _ = analyse_program(engine, Analyzer())
    assert {policy for *_, policy, _ in refused} == {"public-ingress-allowlist"}
    assert all("443/tcp" in message for *_, message in refused)
    allowed, _, _ = analyse_program(
        engine, Analyzer({"public-ingress-allowlist": {"allowPublicUi": True}})
    )
    assert allowed == []


def _command_program(environment: dict) -> Engine:
    engine = Engine()
    pulumi.runtime.set_mocks(engine, project="airflow-ha", stack="test", preview=False)

    def program():
        command.remote.Command(
            "step",
            connection=command.remote.ConnectionArgs(
                host="203.0.113.5", user="root", private_key=pulumi.Output.secret("KEY")
            ),
            create="bash",
            stdin='# airflow-ha step "probe" on node node-a\n',
            environment=environment,
        )

    pulumi.runtime.test(program)()
    return engine


def test_a_plain_password_through_the_engine_double_is_caught():
    """The unencrypted case end to end: a program passes a password as a plain string."""
    engine = _command_program({"PGPASSWORD": "plain-password"})
    _, remediations, _ = analyse_program(engine, Analyzer())
    assert [(name, policy) for _, name, policy, _ in remediations] == [
        ("step", "secret-inputs-encrypted")
    ]
    engine = _command_program({"PGPASSWORD": pulumi.Output.secret("secret-password")})
    assert analyse_program(engine, Analyzer())[1] == []


# --- the pack's own files ------------------------------------------------------------------------


def test_policy_pack_project_file():
    project = yaml.safe_load((POLICY_DIR / "PulumiPolicy.yaml").read_text())
    assert project["runtime"]["name"] == "python"
    assert project["version"]
    assert (POLICY_DIR / project["runtime"]["options"]["virtualenv"]).resolve() == REPO / ".venv"
    main = (POLICY_DIR / "__main__.py").read_text()
    assert "PolicyPack(" in main and "POLICIES" in main
    requirements = (POLICY_DIR / "requirements.txt").read_text()
    assert "pulumi-policy" in requirements
    assert "-r policy/requirements.txt" in (REPO / "requirements-dev.txt").read_text()


def test_policy_names_are_unique_and_valid():
    policy_names = [p.name for p in pack.POLICIES]
    assert len(set(policy_names)) == len(policy_names)
    assert all(p.description for p in pack.POLICIES)


@pytest.mark.parametrize("stack", PREVIEWED_STACKS)
def test_each_previewed_stack_has_a_policy_config_matching_its_public_ui(stack, values):
    config = policy_config(stack)
    known = {p.name: p for p in pack.POLICIES}
    assert set(config) <= set(known)
    for name, properties in config.items():
        schema = known[name].config_schema
        allowed = set(schema.properties) if schema else set()
        assert set(properties) - {"enforcementLevel"} <= allowed, (name, properties)
    public_ui = str(values(stack).get("publicUi", False)).lower() == "true"
    assert config.get("public-ingress-allowlist", {}).get("allowPublicUi", False) == public_ui


def test_the_pack_serves_its_policies_over_grpc():
    """Start the pack the way the CLI's pulumi-analyzer-policy-python does (`python -m
    pulumi.policy <engine address> .` in the pack's directory) and talk to it over the analyzer
    protocol: its policies are listed and a bad firewall is refused."""
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:1", "."],
        cwd=POLICY_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        port = int(server.stdout.readline().strip())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = analyzer_pb2_grpc.AnalyzerStub(channel)
            info = stub.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
            assert info.name == pack.PACK_NAME
            assert sorted(p.name for p in info.policies) == sorted(p.name for p in pack.POLICIES)
            levels = {p.name: p.enforcementLevel for p in info.policies}
            assert levels["secret-inputs-encrypted"] == proto.REMEDIATE
            assert levels["cluster-ports-mesh-only"] == proto.MANDATORY
            bad = firewall(fw_rule("tcp", "5432", "0.0.0.0/0"))
            response = stub.Analyze(Analyzer.request(FW, bad), timeout=30)
            assert {d.policyName for d in response.diagnostics} == {
                "public-ingress-allowlist", "cluster-ports-mesh-only"
            }
            assert all(d.enforcementLevel == proto.MANDATORY for d in response.diagnostics)
    finally:
        server.terminate()
        server.wait(timeout=10)


# --- issue 13: the pack's blind spots ---------------------------------------------------------


def test_a_default_security_group_is_read_like_any_other():
    default_sg = pack.AWS_DEFAULT_SECURITY_GROUP
    open_db = sg(sg_rule("tcp", 5432, 5432, "0.0.0.0/0"))
    found = names(Analyzer().violations(default_sg, open_db))
    assert "public-ingress-allowlist" in found and "cluster-ports-mesh-only" in found
    closed = sg(sg_rule("tcp", 22, 22, ADMIN))
    assert Analyzer().violations(default_sg, closed) == []


def _component_ports() -> set[int]:
    """Every port constant the program's tiers listen on (components/*.py: `*_PORT = n` and
    `*_PORTS = range(...)`), but the two public ones."""
    import components.airflow
    import components.broker
    import components.dag_sync
    import components.database

    ports: set[int] = set()
    for module in (components.airflow, components.broker, components.dag_sync, components.database):
        for name, value in vars(module).items():
            if name.endswith("_PORT") and isinstance(value, int):
                ports.add(value)
            elif name.endswith("_PORTS") and isinstance(value, range):
                ports.update(value)
    return ports - {443, 51820}


def test_every_port_of_the_program_is_a_cluster_port():
    ports = _component_ports()
    assert {7000, 4369, 25672, 35672, 35682} <= ports  # not vacuous: HAProxy stats, CLI ports
    assert ports - set(pack.CLUSTER_PORTS) == set()


def test_the_cli_distribution_range_is_named_once():
    found = Analyzer().violations(FW, firewall(fw_rule("tcp", "35000-36000", ADMIN)))
    message = dict(found)["cluster-ports-mesh-only"]
    assert "35672-35682 (RabbitMQ CLI distribution)" in message


@pytest.mark.parametrize(
    "attached",
    [
        {"networkInterfaces": [{"networkInterfaceId": "eni-1", "deviceIndex": 0}]},
        {"primaryNetworkInterface": {"networkInterfaceId": "eni-1"}},
        {"networkInterfaces": UNKNOWN_ARRAY},
    ],
)
def test_an_instance_with_its_groups_on_a_network_interface_is_fine(attached):
    instance = {"ami": "ami-1", "instanceType": "t3.large", **attached}
    assert Analyzer().violations(pack.AWS_INSTANCE, instance) == []


def test_a_network_interface_needs_a_security_group():
    eni = {"subnetId": "subnet-1"}
    found = Analyzer().violations(pack.AWS_NETWORK_INTERFACE, eni)
    assert names(found) == ["server-has-firewall"]
    assert (
        Analyzer().violations(pack.AWS_NETWORK_INTERFACE, {**eni, "securityGroups": ["sg-1"]}) == []
    )


PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
CLOUD_INIT = f"#cloud-config\nssh_keys:\n  ed25519_private: |\n    {PRIVATE_KEY}"


@pytest.mark.parametrize(
    ("typ", "plain_props", "path"),
    [
        (CMD, command_props(stdin=f"put_file /root/key 0600 <<'E'\n{PRIVATE_KEY}E\n"), "stdin"),
        (CMD, command_props(stdin="airflow users create --password Xy7Qw9Lk2Pm4\n"), "stdin"),
        (CMD, command_props(stdin="s: 'x'\npassword: 'Xy7Qw9Lk2Pm4'\n"), "stdin"),
        (pack.HCLOUD_SERVER, {"serverType": "cx22", "userData": CLOUD_INIT}, "userData"),
        (
            pack.AWS_INSTANCE,
            {"userDataBase64": base64.b64encode(CLOUD_INIT.encode()).decode()},
            "userDataBase64",
        ),
    ],
)
def test_secret_text_in_a_plain_input_is_wrapped_and_passes_as_a_secret(typ, plain_props, path):
    analyzer = Analyzer()
    found = analyzer.remediations(typ, plain_props)
    assert [policy for policy, _ in found] == ["secret-values-encrypted"]
    fixed = found[0][1]
    assert fixed[path] == secret(plain_props[path])
    # the passing case: the same value, a Pulumi secret
    assert analyzer.remediations(typ, {**plain_props, path: secret(plain_props[path])}) == []


def test_a_secret_inputs_value_repeated_in_plain_is_wrapped():
    password = "generated-Kq3Zr8Vt"
    props = command_props(
        environment={"PW": secret(password)}, stdin=f"echo {password} | chpasswd\n"
    )
    ((policy, fixed),) = Analyzer().remediations(CMD, props)
    assert policy == "secret-values-encrypted" and fixed["stdin"] == secret(props["stdin"])
    # a script that reads it from the environment holds no secret text
    clean = command_props(environment={"PW": secret(password)}, stdin='echo "$PW" | chpasswd\n')
    assert Analyzer().remediations(CMD, clean) == []


@pytest.mark.parametrize(
    "create",
    [
        "airflow users create --password Xy7Qw9Lk2Pm4",
        f"bash -c 'echo {PRIVATE_KEY.splitlines()[0]}'",
        "PGPASSWORD=generated-Kq3Zr8Vt psql",
    ],
)
def test_a_secret_on_a_command_line_is_refused_secret_or_not(create):
    env = {"PGPASSWORD": secret("generated-Kq3Zr8Vt")}
    for wrapped in (create, secret(create)):
        found = Analyzer().violations(CMD, command_props(create=wrapped, environment=env))
        assert names(found) == ["no-secret-on-command-line"], found
    fine = command_props(create="bash", environment=env)
    assert Analyzer().violations(CMD, fine) == []
