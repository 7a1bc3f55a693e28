"""The stack config: every committed stack loads, every bad input is refused with one message."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from components.config import ConfigError, parse_config
from tests.conftest import stack_values
from tools import render
from tools.engine import (
    Engine,
    fake_ssh_private_key,
    fake_ssh_public_key,
    run_program,
    stack_path,
)

DROP = object()  # a change that removes the key


def _dev(**changes: Any) -> dict[str, Any]:
    values = copy.deepcopy(stack_values("dev"))
    for key, value in changes.items():
        if value is DROP:
            values.pop(key, None)
        else:
            values[key] = value
    return values


def _nodes(**per_node: dict[str, Any]) -> list[Any]:
    """dev's nodes with changes, e.g. _nodes(n0={"name": "x"}); DROP removes a field."""
    nodes = copy.deepcopy(stack_values("dev")["nodes"])
    for label, changes in per_node.items():
        node = nodes[int(label[1:])]
        for key, value in changes.items():
            if value is DROP:
                node.pop(key, None)
            else:
                node[key] = value
    return nodes


def _node(index: int, **changes: Any) -> list[Any]:
    return _nodes(**{f"n{index}": changes})


def _static(index: int, **changes: Any) -> list[Any]:
    """dev's nodes with node `index` turned into a static one (plus changes)."""
    fields = {"cloud": "static", "host": f"203.0.113.{10 + index}", "location": DROP, "size": DROP,
              "hostKey": HOST_KEY}
    return _node(index, **{**fields, **changes})


HOST_KEY = fake_ssh_public_key("host").rsplit(" ", 1)[0]


def _many(count: int) -> list[dict[str, Any]]:
    return [
        {"name": f"n{i}", "meshIndex": i + 1, "cloud": "hcloud", "location": "fsn1"}
        for i in range(count)
    ]


def _local(**changes: Any) -> dict[str, Any]:
    values = copy.deepcopy(stack_values("local"))
    values.update(changes)
    return values


def _local_nodes(index: int, **changes: Any) -> list[Any]:
    nodes = copy.deepcopy(stack_values("local")["nodes"])
    nodes[index].update(changes)
    return nodes


DEV = "".join(
    line + "\n"
    for line in stack_path("dev").read_text().splitlines()
    if not line.startswith(("  airflow-ha:patroni:", "  airflow-ha:adminCidrs:"))
) + '  airflow-ha:adminCidrs: ["203.0.113.0/24"]\n'
HCLOUD = {"cloud": "hcloud", "location": "fsn1", "size": "cx22"}
EXTRA_KEY = fake_ssh_public_key("alice")
# What `ssh-keygen -m PEM` writes: the deploy's key must be in OpenSSH's format.
PEM_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"
_BODY = "".join(fake_ssh_private_key(EXTRA_KEY).splitlines()[1:-1])
DAMAGED_KEY = "\n".join(  # cut short inside the public key (68 characters: 51 bytes)
    ["-----BEGIN OPENSSH PRIVATE KEY-----", _BODY[:68], "-----END OPENSSH PRIVATE KEY-----"]
)
NOT_BASE64_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nnot base64!\n-----END OPENSSH PRIVATE KEY-----"
)
DEPLOY_COMMENT = "airflow-ha deploy key (sshPrivateKey)"
INJECTION = "x'; touch /tmp/pwned; echo '"

# (case, values, key named in the message, words of the problem or the fix)
BAD_CONFIGS: list[tuple[str, dict[str, Any], str, str]] = [
    # --- the node list ---------------------------------------------------------------------
    ("two nodes", _dev(nodes=_nodes()[:2]), "nodes", "at least 3"),
    ("one node", _dev(nodes=_nodes()[:1]), "nodes", "at least 3"),
    ("no nodes", _dev(nodes=DROP), "nodes", "missing"),
    ("even count", _dev(nodes=[*_nodes(), {"name": "x4", "meshIndex": 4, **HCLOUD}]), "nodes",
     "even"),
    ("nine nodes", _dev(nodes=_many(9)), "nodes", "more than 7"),
    ("101 nodes", _dev(nodes=_many(101)), "nodes", "more than 7"),
    ("nodes as text", _dev(nodes="fsn"), "nodes", "found the text 'fsn'"),
    ("nodes as a mapping", _dev(nodes={"fsn": HCLOUD}), "nodes", "found a mapping"),
    ("typo: node", _dev(nodes=DROP, node=_nodes()), "node", "did you mean nodes?"),
    ("a node as text", _dev(nodes=["fsn", *_nodes()[1:]]), "nodes[0]", "expected a mapping"),
    ("a node null", _dev(nodes=[None, *_nodes()[1:]]), "nodes[0]", "found nothing"),
    # --- a node's fields -------------------------------------------------------------------
    ("duplicate name", _dev(nodes=_node(1, name="fsn")), "nodes[1].name", "used twice"),
    ("not a DNS label", _dev(nodes=_node(0, name="Node_A")), "nodes[0].name", "DNS label"),
    ("name too long", _dev(nodes=_node(0, name="a" * 64)), "nodes[0].name", "DNS label"),
    ("name localhost", _dev(nodes=_node(0, name="localhost")), "nodes[0].name", "reserved"),
    ("name ip6-localhost", _dev(nodes=_node(2, name="ip6-localhost")), "nodes[2].name",
     "reserved"),
    ("name a number", _dev(nodes=_node(0, name=7)), "nodes[0].name", "found the number 7"),
    ("name missing", _dev(nodes=_node(0, name=DROP)), "nodes[0].name", "missing"),
    ("name with a newline", _dev(nodes=_node(0, name="a\nb")), "nodes[0].name", "newline"),
    ("unknown cloud", _dev(nodes=_node(2, cloud="gcp")), "nodes[2].cloud", "not a known cloud"),
    ("cloud missing", _dev(nodes=_node(0, cloud=DROP)), "nodes[0].cloud", "not a known cloud"),
    ("typo: szie", _dev(nodes=_node(0, size=DROP, szie="cx32")), "nodes[0].szie",
     "did you mean size?"),
    ("field of another cloud", _dev(nodes=_static(0, location="fsn1")), "nodes[0].location",
     "not a key of a static node"),
    ("region on a hcloud node", _dev(nodes=_node(0, region="eu-west-1")), "nodes[0].region",
     "not a key of a hcloud node"),
    ("unknown Hetzner location", _dev(nodes=_node(0, location="fra1")), "nodes[0].location",
     "Hetzner"),
    ("location missing", _dev(nodes=_node(0, location=DROP)), "nodes[0].location", "missing"),
    ("malformed AWS region",
     _dev(nodes=_node(1, cloud="aws", region="europe-1", location=DROP)), "nodes[1].region",
     "not an AWS region"),
    ("size with a shell command", _dev(nodes=_node(0, size="cx32; reboot")), "nodes[0].size",
     "not a server type"),
    ("meshIndex missing", _dev(nodes=_node(0, meshIndex=DROP)), "nodes[0].meshIndex", "missing"),
    ("meshIndex twice", _dev(nodes=_node(1, meshIndex=1)), "nodes[1].meshIndex", "also node fsn"),
    ("meshIndex zero", _dev(nodes=_node(0, meshIndex=0)), "nodes[0].meshIndex", "out of range"),
    ("meshIndex negative", _dev(nodes=_node(0, meshIndex=-3)), "nodes[0].meshIndex",
     "out of range"),
    ("meshIndex outside meshCidr", _dev(nodes=_node(2, meshIndex=255)), "nodes[2].meshIndex",
     "outside meshCidr"),
    ("meshIndex as text", _dev(nodes=_node(0, meshIndex="one")), "nodes[0].meshIndex",
     "whole number"),
    ("meshIndex a boolean", _dev(nodes=_node(0, meshIndex=True)), "nodes[0].meshIndex",
     "whole number"),
    # --- static nodes: what lands in SSH, wg0.conf and firewall rules ------------------------
    ("static without host key", _dev(nodes=_static(0, hostKey=DROP)), "nodes[0].hostKey",
     "missing"),
    ("host key of another type", _dev(nodes=_static(0, hostKey="ssh-rsa AAAAB3NzaC1yc2E=")),
     "nodes[0].hostKey", "not an ssh-ed25519 public key"),
    ("host key cut short", _dev(nodes=_static(0, hostKey=HOST_KEY[:40])), "nodes[0].hostKey",
     "not an ssh-ed25519 public key"),
    ("host key not base64", _dev(nodes=_static(0, hostKey="ssh-ed25519 !!!")),
     "nodes[0].hostKey", "not an ssh-ed25519 public key"),
    ("cloud host key bad", _dev(nodes=_node(0, hostKey="AAAA")), "nodes[0].hostKey",
     "not an ssh-ed25519 public key"),
    ("static without host", _dev(nodes=_static(0, host=DROP)), "nodes[0].host", "missing"),
    ("host empty", _dev(nodes=_static(0, host="")), "nodes[0].host", "empty"),
    ("host injects a wg0.conf hook",
     _dev(nodes=_static(0, host="203.0.113.9\n[Interface]\nPostUp = touch /tmp/pwned")),
     "nodes[0].host", "newline"),
    ("host not a host", _dev(nodes=_static(0, host="not a host!!")), "nodes[0].host",
     "neither an IP address nor a DNS name"),
    ("host a list", _dev(nodes=_static(0, host=["203.0.113.9"])), "nodes[0].host",
     "found a list"),
    ("host with a command", _dev(nodes=_static(0, host="$(reboot)")), "nodes[0].host",
     "neither"),
    ("host 10.0.0.300", _dev(nodes=_static(0, host="10.0.0.300")), "nodes[0].host", "neither"),
    ("host IPv6", _dev(nodes=_static(0, host="2001:db8::7")), "nodes[0].host", "IPv6"),
    ("host loopback", _dev(nodes=_static(0, host="127.0.0.1")), "nodes[0].host",
     "other nodes can reach"),
    ("host 0.0.0.0", _dev(nodes=_static(0, host="0.0.0.0")), "nodes[0].host",
     "other nodes can reach"),
    ("duplicate static hosts",
     _local(nodes=_local_nodes(1, host="172.31.77.11")), "nodes[1].host", "also node node-a"),
    ("duplicate static DNS names",
     _local(nodes=[*_local_nodes(0, host="db.example.com")[:2],
                   {**_local_nodes(0)[2], "host": "DB.example.com"}]),
     "nodes[2].host", "also node node-a"),
    ("port 0", _dev(nodes=_static(0, port=0)), "nodes[0].port", "out of range"),
    ("port 70000", _dev(nodes=_static(0, port=70000)), "nodes[0].port", "out of range"),
    ("port as text", _dev(nodes=_static(0, port="ssh")), "nodes[0].port", "whole number"),
    ("port a boolean", _dev(nodes=_static(0, port=True)), "nodes[0].port", "whole number"),
    ("user empty", _dev(nodes=_static(0, user="")), "nodes[0].user", "not a plain login"),
    ("user with a command", _dev(nodes=_static(0, user="root; id")), "nodes[0].user",
     "not a plain login"),
    ("user upper-case", _dev(nodes=_static(0, user="Admin")), "nodes[0].user",
     "not a plain login"),
    ("user a number", _dev(nodes=_static(0, user=0)), "nodes[0].user", "found the number 0"),
    # --- networks --------------------------------------------------------------------------
    ("meshCidr not a CIDR", _dev(meshCidr="10.42.0.0/33"), "meshCidr", "not a network"),
    ("meshCidr with host bits", _dev(meshCidr="10.42.0.1/24"), "meshCidr", "not a network"),
    ("meshCidr public", _dev(meshCidr="8.8.8.0/24"), "meshCidr", "private"),
    ("meshCidr IPv6", _dev(meshCidr="fd00::/64"), "meshCidr", "private IPv4"),
    ("meshCidr too small", _dev(meshCidr="10.42.0.0/31"), "meshCidr", "room for"),
    ("meshCidr overlaps a node",
     _dev(nodes=_static(0, host="10.42.0.7"), meshCidr="10.42.0.0/24"), "meshCidr", "overlaps"),
    ("awsVpcCidr overlaps meshCidr",
     _dev(nodes=_node(0, cloud="aws", region="eu-west-1", location=DROP),
          awsVpcCidr="10.42.0.0/16"), "awsVpcCidr", "overlaps"),
    ("awsVpcCidr a /8", _dev(awsVpcCidr="10.0.0.0/8"), "awsVpcCidr", "/16 to /24"),
    ("awsVpcCidr a /28", _dev(awsVpcCidr="10.80.0.0/28"), "awsVpcCidr", "/16 to /24"),
    # --- SSH ---------------------------------------------------------------------------------
    ("adminCidrs entry not a CIDR", _dev(adminCidrs=["10.0.0.300/32"]), "adminCidrs",
     "not a CIDR"),
    ("adminCidrs entry a number", _dev(adminCidrs=[5]), "adminCidrs[0]", "found the number 5"),
    ("adminCidrs empty", _dev(adminCidrs=[]), "adminCidrs", "empty"),
    ("adminCidrs missing", _dev(adminCidrs=DROP), "adminCidrs", "missing"),
    ("adminCidrs a number", _dev(adminCidrs=5), "adminCidrs", "expected a list of CIDRs"),
    ("adminCidrs as text", _dev(adminCidrs="203.0.113.0/24"), "adminCidrs",
     "expected a list of CIDRs"),
    ("SSH from anywhere", _dev(adminCidrs=["0.0.0.0/0"]), "adminCidrs", "allowSshFromAnywhere"),
    ("SSH from anywhere, IPv6", _dev(adminCidrs=["203.0.113.0/24", "::/0"]), "adminCidrs",
     "allowSshFromAnywhere"),
    ("SSH from half the internet", _dev(adminCidrs=["0.0.0.0/1", "128.0.0.0/1"]), "adminCidrs",
     "internet"),
    ("allowSshFromAnywhere not a bool", _dev(allowSshFromAnywhere="maybe"),
     "allowSshFromAnywhere", "true or false"),
    ("sshPublicKey missing", _dev(sshPublicKey=DROP), "sshPublicKey", "missing"),
    ("sshPublicKey not a key", _dev(sshPublicKey="my key"), "sshPublicKey",
     "not an OpenSSH public key"),
    ("sshPublicKey two lines", _dev(sshPublicKey="ssh-ed25519 AAAA a\nssh-rsa AAAA b"),
     "sshPublicKey", "newline"),
    ("sshPrivateKey missing", _dev(sshPrivateKey=DROP), "sshPrivateKey", "missing"),
    ("sshPrivateKey in PEM", _dev(sshPrivateKey=PEM_KEY), "sshPrivateKey", "OpenSSH's format"),
    ("sshPrivateKey damaged", _dev(sshPrivateKey=DAMAGED_KEY), "sshPrivateKey",
     "cannot be read (it ends early)"),
    ("sshPrivateKey not base64", _dev(sshPrivateKey=NOT_BASE64_KEY), "sshPrivateKey",
     "not base64"),
    ("sshExtraPublicKeys as text", _dev(sshExtraPublicKeys=EXTRA_KEY), "sshExtraPublicKeys",
     "expected a list of OpenSSH public keys"),
    ("sshExtraPublicKeys entry not a key", _dev(sshExtraPublicKeys=[EXTRA_KEY, "my key"]),
     "sshExtraPublicKeys[1]", "not an OpenSSH public key"),
    ("sshExtraPublicKeys entry two lines", _dev(sshExtraPublicKeys=[EXTRA_KEY + "\n" + EXTRA_KEY]),
     "sshExtraPublicKeys[0]", "newline"),
    ("protectServers not a bool", _dev(protectServers="always"), "protectServers",
     "true or false"),
    ("typo: protectServer", _dev(protectServer=True), "protectServer",
     "did you mean protectServers?"),
    # --- versions and tuning -------------------------------------------------------------------
    ("Airflow 2", _dev(airflowVersion="2.10.5"), "airflowVersion", "not an Airflow 3"),
    ("Airflow version unpinned", _dev(airflowVersion="3"), "airflowVersion", "not an Airflow 3"),
    ("Airflow version a number", _dev(airflowVersion=3.3), "airflowVersion", "Airflow version"),
    ("PostgreSQL 15", _dev(postgresVersion=15), "postgresVersion", "Debian 13"),
    ("PostgreSQL as text", _dev(postgresVersion="seventeen"), "postgresVersion", "whole number"),
    ("ttl below 20", _dev(patroni={"ttl": 15, "loopWait": 3, "retryTimeout": 3}), "patroni.ttl",
     "from 20"),
    ("timings too tight", _dev(patroni={"ttl": 20, "loopWait": 10, "retryTimeout": 10}),
     "patroni", "exceeds ttl"),
    ("loopWait zero", _dev(patroni={"ttl": 30, "loopWait": 0, "retryTimeout": 10}),
     "patroni.loopWait", "from 1"),
    ("retryTimeout tiny", _dev(patroni={"ttl": 30, "loopWait": 10, "retryTimeout": 2}),
     "patroni.retryTimeout", "from 3"),
    ("ttl not a number", _dev(patroni={"ttl": "soon"}), "patroni.ttl", "whole number"),
    ("synchronousMode not a bool", _dev(patroni={"synchronousMode": "maybe"}),
     "patroni.synchronousMode", "true or false"),
    ("maximumLagOnFailover negative", _dev(patroni={"maximumLagOnFailover": -1}),
     "patroni.maximumLagOnFailover", "out of range"),
    ("typo: patroni.loopwait", _dev(patroni={"loopwait": 5}), "patroni.loopwait",
     "did you mean loopWait?"),
    ("patroni unknown key", _dev(patroni={"ttl": 30, "leaderTtl": 30}), "patroni.leaderTtl",
     "not a key of patroni"),
    ("patroni a list", _dev(patroni=[20, 5, 5]), "patroni", "expected a mapping, found a list"),
    ("patroni a number", _dev(patroni="20"), "patroni", "expected a mapping"),
    ("unknown dagSync", _dev(dagSync="rsync"), "dagSync", "not a known mode"),
    ("consumer timeout too short", _dev(rabbitmqConsumerTimeoutMs=1000),
     "rabbitmqConsumerTimeoutMs", "long tasks"),
    ("net ticktime too short", _dev(rabbitmqNetTicktimeS=1),
     "rabbitmqNetTicktimeS", "from 5 to 120"),
    ("consumer timeout as words", _dev(rabbitmqConsumerTimeoutMs="1 day"),
     "rabbitmqConsumerTimeoutMs", "whole number"),
    ("worker concurrency zero", _dev(celeryWorkerConcurrency=0), "celeryWorkerConcurrency",
     "out of range"),
    ("worker concurrency as text", _dev(celeryWorkerConcurrency="many"),
     "celeryWorkerConcurrency", "whole number"),
    ("publicUi not a bool", _dev(publicUi="yes"), "publicUi", "true or false"),
    # --- the admin user: lands in migrate.sh and airflow.cfg --------------------------------
    ("admin user injection", _dev(airflowAdminUser=INJECTION), "airflowAdminUser",
     "not a plain user name"),
    ("admin user empty", _dev(airflowAdminUser=""), "airflowAdminUser", "not a plain user name"),
    ("admin user with a colon", _dev(airflowAdminUser="a:b"), "airflowAdminUser",
     "not a plain user name"),
    ("admin user a list", _dev(airflowAdminUser=["admin"]), "airflowAdminUser", "found a list"),
    # --- unknown keys --------------------------------------------------------------------------
    ("typo: publicUI", _dev(publicUI=True), "publicUI", "did you mean publicUi?"),
    ("typo: adminCidr", _dev(adminCidr=["203.0.113.0/24"]), "adminCidr",
     "did you mean adminCidrs?"),
    ("unknown key", _dev(flavour="vanilla"), "flavour", "use one of nodes"),
]


def _ids(cases: list[tuple]) -> list[str]:
    return [case[0] for case in cases]


def test_the_table_is_large_and_unique() -> None:
    assert len(BAD_CONFIGS) >= 60
    assert len(set(_ids(BAD_CONFIGS))) == len(BAD_CONFIGS)


@pytest.mark.parametrize(
    ("values", "key", "words"), [case[1:] for case in BAD_CONFIGS], ids=_ids(BAD_CONFIGS)
)
def test_bad_config_is_refused_naming_the_key(values: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(values)
    message = str(caught.value)
    assert caught.value.key == key
    assert message.startswith(f"airflow-ha:{key}: ")
    assert words in message
    assert "Fix: " in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("values", "key", "words"), [case[1:] for case in BAD_CONFIGS], ids=_ids(BAD_CONFIGS)
)
def test_bad_config_stops_the_program_before_any_resource(
    values: dict, key: str, words: str
) -> None:
    """Through the SDK's config (values as pulumi stores them: JSON text): the same key."""
    engine = Engine()
    with pytest.raises(ConfigError) as caught:
        run_program(values, engine, "dev", placeholders=False)
    assert caught.value.key == key
    assert engine.resources == []


def test_a_bad_stack_name_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^stack name 'a b': "):
        parse_config(_dev(), stack="a b")


def _render(tmp_path: Path, text: str, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    stack_file = tmp_path / "Pulumi.bad.yaml"
    stack_file.write_text(text)
    code = render.main(["--stack-file", str(stack_file), "--out", str(tmp_path / "out")])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("config:\n  airflow-ha:nodes: [\n", "is not valid YAML at line"),
        ("config:\n\tairflow-ha:nodes: []\n", "is not valid YAML"),
        ("config:\n  airflow-ha:adminCidrs: [a\n  b: c\n", "is not valid YAML"),
        ("- config\n", "not a mapping"),
        ("config: [1, 2]\n", "config: expected a mapping"),
        (DEV + "  airflow-ha:patroni: [20, 5, 5]\n", "airflow-ha:patroni: expected a mapping"),
        (DEV + '  airflow-ha:patroni: "20"\n', "airflow-ha:patroni: expected a mapping"),
        (DEV.replace("airflow-ha:nodes:", "airflow-ha:nodes: fsn\n  x-airflow-ha:nodes:"),
         "airflow-ha:nodes: expected a list of nodes, found the text 'fsn'"),
        (DEV + "  airflow-ha:publicUI: true\n", "did you mean publicUi?"),
        (DEV + "  airflow-ha:adminCidrs: 5\n", "expected a list of CIDRs, found the number 5"),
        (DEV + "  airflow-ha:airflowVersion: 2024-01-01\n", "airflow-ha:airflowVersion: "),
    ],
)
def test_render_exits_2_with_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, words: str
) -> None:
    code, err = _render(tmp_path, text, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert words in err and "Traceback" not in err


def test_deploy_exits_2_on_a_broken_stack_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tools import deploy

    stack_file = tmp_path / "Pulumi.bad.yaml"
    stack_file.write_text("config:\n  airflow-ha:nodes: [\n")
    assert deploy.main(["--stack", "bad", "--stack-file", str(stack_file)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "local"])
def test_committed_stacks_are_valid(stack: str) -> None:
    cfg = parse_config(stack_values(stack), stack=stack)
    assert len(cfg.nodes) == 3
    assert len({n.mesh_address for n in cfg.nodes}) == 3
    p = cfg.patroni
    assert p.ttl >= 20 and p.loop_wait + 2 * p.retry_timeout <= p.ttl


def test_committed_stacks_keep_todays_mesh_addresses() -> None:
    """meshIndex was introduced with each node's address of the time: nothing moved."""
    local = parse_config(stack_values("local"), stack="local")
    assert {n.name: n.mesh_address for n in local.nodes} == {
        "node-a": "10.42.0.1",
        "node-b": "10.42.0.2",
        "node-c": "10.42.0.3",
    }
    for stack in ("dev", "staging", "prod"):
        cfg = parse_config(stack_values(stack), stack=stack)
        listed = [n["name"] for n in stack_values(stack)["nodes"]]
        assert [n.mesh_index for n in sorted(cfg.nodes, key=lambda n: listed.index(n.name))] == [
            1, 2, 3,
        ]


def test_stacks_cover_the_promised_clouds() -> None:
    clouds = {
        s: [n.cloud for n in parse_config(stack_values(s)).nodes]
        for s in ("dev", "staging", "prod", "local")
    }
    assert clouds["dev"] == ["hcloud"] * 3
    assert sorted(clouds["staging"]) == ["aws", "hcloud", "hcloud"]
    assert len(set(clouds["prod"])) == 1 and clouds["prod"][0] in ("aws", "hcloud")
    assert clouds["local"] == ["static"] * 3
    places = [n.place for n in parse_config(stack_values("dev")).nodes]
    assert places == ["fsn1", "nbg1", "hel1"]


def test_defaults_and_mesh_addresses() -> None:
    values = _dev(meshCidr=DROP, patroni=DROP, dagSync=DROP)
    cfg = parse_config(values)
    assert cfg.mesh_cidr == "10.42.0.0/24"
    assert [n.mesh_address for n in cfg.nodes] == ["10.42.0.1", "10.42.0.2", "10.42.0.3"]
    assert cfg.patroni.ttl == 30 and cfg.patroni.synchronous_mode is True
    assert cfg.dag_sync == "csync2"
    assert cfg.public_ui is False
    assert cfg.allow_ssh_from_anywhere is False
    assert cfg.airflow_admin_user == "admin" and cfg.celery_worker_concurrency == 8


def test_mesh_address_follows_mesh_index_not_position() -> None:
    nodes = _nodes(n0={"meshIndex": 7}, n1={"meshIndex": 3}, n2={"meshIndex": 12})
    cfg = parse_config(_dev(nodes=nodes))
    assert [(n.name, n.mesh_address) for n in cfg.nodes] == [
        ("nbg", "10.42.0.3"),
        ("fsn", "10.42.0.7"),
        ("hel", "10.42.0.12"),
    ]


def test_ssh_from_anywhere_needs_the_explicit_flag() -> None:
    cfg = parse_config(_dev(adminCidrs=["0.0.0.0/0", "::/0"], allowSshFromAnywhere=True))
    assert cfg.admin_cidrs == ("0.0.0.0/0", "::/0")
    # A private range as wide as a /8 is an admin network, not the internet.
    assert parse_config(_dev(adminCidrs=["10.0.0.0/8"])).admin_cidrs == ("10.0.0.0/8",)


def test_static_only_stack_needs_no_public_key() -> None:
    values = copy.deepcopy(stack_values("local"))
    values.pop("sshPublicKey")
    assert parse_config(values).ssh_public_key is None


def test_static_fields_and_dns_hosts() -> None:
    nodes = _local_nodes(0, host="Node-A.Example.com", user="deploy", port="2222")
    cfg = parse_config(_local(nodes=nodes))
    node = cfg.node("node-a")
    assert (node.host, node.user, node.port) == ("node-a.example.com", "deploy", 2222)


def test_values_as_pulumi_stores_them() -> None:
    """`pulumi config set` keeps numbers and booleans as text."""
    cfg = parse_config(_dev(postgresVersion="17", publicUi="true", celeryWorkerConcurrency="4"))
    assert (cfg.postgres_version, cfg.public_ui, cfg.celery_worker_concurrency) == (17, True, 4)


@pytest.mark.parametrize("count", [5, 7])
def test_five_and_seven_nodes_are_accepted(count: int) -> None:
    nodes = [
        {"name": f"n{i}", "meshIndex": i + 1, "cloud": "aws", "region": "eu-west-1"}
        for i in range(count)
    ]
    cfg = parse_config(_dev(nodes=nodes))
    assert len(cfg.nodes) == count
    assert {n.user for n in cfg.nodes} == {"admin"}
    engine = Engine()
    outputs = run_program(_dev(nodes=nodes), engine, "dev")
    assert len(outputs["nodes"]) == count


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_the_deploy_key_is_read_from_a_real_private_key(kind: str, tmp_path: Path) -> None:
    """What ssh-keygen writes, with and without a passphrase (the public half is in clear)."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("no ssh-keygen here")
    for passphrase in ("", "secret words"):
        key = tmp_path / f"{kind}-{len(passphrase)}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", "me@here", "-f", str(key)],
            check=True,
        )
        public = Path(f"{key}.pub").read_text().strip()
        cfg = parse_config(_dev(sshPrivateKey=key.read_text()))
        assert cfg.deploy_public_key == " ".join(public.split()[:2])


def test_every_node_authorizes_the_stacks_keys_and_always_the_deploys_own() -> None:
    deploy = fake_ssh_public_key("deploy")
    cfg = parse_config(
        _dev(
            sshPublicKey=deploy,
            sshPrivateKey=fake_ssh_private_key(deploy),
            sshExtraPublicKeys=[EXTRA_KEY, deploy, EXTRA_KEY],
        )
    )
    assert cfg.authorized_keys == (deploy, EXTRA_KEY)  # each key once
    # Mid-rotation: the new public key set, the old private key still in use; both accepted.
    new = fake_ssh_public_key("new")
    cfg = parse_config(_dev(sshPublicKey=new, sshPrivateKey=fake_ssh_private_key(deploy)))
    assert cfg.authorized_keys == (new, f"{deploy.rsplit(' ', 1)[0]} {DEPLOY_COMMENT}")
    assert parse_config(_local()).ssh_extra_public_keys == ()


def test_a_private_key_error_never_shows_the_key() -> None:
    body = "MIIEpAIBAAKCAQEAsecretpart"
    for text in (PEM_KEY.replace("MIIEpAIBAAKCAQEA", body), DAMAGED_KEY, NOT_BASE64_KEY):
        with pytest.raises(ConfigError) as caught:
            parse_config(_dev(sshPrivateKey=text))
        for line in text.splitlines()[1:-1]:
            assert line not in str(caught.value)


def test_servers_are_protected_unless_the_stack_says_otherwise() -> None:
    assert parse_config(_dev(protectServers=DROP)).protect_servers is True
    assert parse_config(_dev(protectServers="false")).protect_servers is False
    assert parse_config(stack_values("prod"), stack="prod").protect_servers is True
    assert parse_config(stack_values("staging"), stack="staging").protect_servers is True


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"Shared Buffers": "1GB"}, "postgresParameters.Shared Buffers: 'Shared Buffers' is not a "
         "PostgreSQL setting's name"),
        ({"work_mem": "64MB; DROP"}, "postgresParameters.work_mem: the text '64MB; DROP' is not "
         "a plain PostgreSQL value. Fix: write a number"),
        ({"port": 5433}, "postgresParameters.port: is set by Patroni or the program itself. "
         "Fix: remove it"),
        ("shared_buffers=1GB", "postgresParameters: expected a mapping"),
    ],
)
def test_postgres_parameters_refuse_names_and_values_that_are_not_plain(
    parameters: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_dev(postgresParameters=parameters), stack="dev")
    assert message in str(err.value)


def test_postgres_parameters_are_parsed_to_plain_values() -> None:
    cfg = parse_config(
        _dev(postgresParameters={"shared_buffers": "512MB", "max_connections": "400",
                                 "jit": False, "auto_explain.log_min_duration": "250ms"}),
        stack="dev",
    )
    assert cfg.postgres_parameters == {"shared_buffers": "512MB", "max_connections": 400,
                                       "jit": "off", "auto_explain.log_min_duration": "250ms"}


def test_object_storage_takes_a_multi_line_pem_ca_certificate() -> None:
    """caCertificate is a PEM text: its lines pass, anything but a certificate does not."""
    from tools.engine import RENDER_CA_CERTIFICATE

    storage = {"endpoint": "172.31.77.1", "port": 9000, "region": "us-east-1",
               "bucket": "airflow-ha-local", "uriStyle": "path"}
    keys = {"objectStorageAccessKey": "a", "objectStorageSecretKey": "s"}
    chain = RENDER_CA_CERTIFICATE.replace("\n", "\r\n") * 2
    for pem in (RENDER_CA_CERTIFICATE, chain):
        config = parse_config(_dev(objectStorage={**storage, "caCertificate": pem}, **keys))
        assert config.object_storage.ca_certificate == pem.strip() + "\n"
    for bad in ("not a certificate", RENDER_CA_CERTIFICATE.replace("-----END", "\x07-----END"),
                ["-----BEGIN CERTIFICATE-----"]):
        with pytest.raises(ConfigError, match=r"objectStorage\.caCertificate: "):
            parse_config(_dev(objectStorage={**storage, "caCertificate": bad}, **keys))


def _with_storage(**storage: Any) -> dict[str, Any]:
    fields = {"endpoint": "fsn1.your-objectstorage.com", "region": "fsn1", "bucket": "acme-logs"}
    return _dev(objectStorage={**fields, **storage}, objectStorageAccessKey="AKIAEXAMPLE",
                objectStorageSecretKey="secret/example+key")


def test_object_storage_takes_its_ca_certificate_as_pem_lines(ca_certificate: str) -> None:
    storage = parse_config(_with_storage(caCertificate=ca_certificate)).object_storage
    assert storage.ca_certificate == ca_certificate.strip() + "\n"
    assert storage.url == "https://fsn1.your-objectstorage.com:443"
    assert (storage.uri_style, storage.access_key) == ("host", "AKIAEXAMPLE")
    for bad in (ca_certificate.replace("\n", "\n\x07", 1), "not a certificate"):
        with pytest.raises(ConfigError, match="is not a PEM certificate"):
            parse_config(_with_storage(caCertificate=bad))
