"""The stack config: every committed stack loads, every bad input is refused with one message."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from components.config import ConfigError, parse_config
from tests.conftest import stack_values
from tools.engine import Engine, run_program


def _dev(**changes: Any) -> dict[str, Any]:
    values = copy.deepcopy(stack_values("dev"))
    for key, value in changes.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    return values


def _node(index: int, **changes: Any) -> list[dict]:
    nodes = copy.deepcopy(stack_values("dev")["nodes"])
    nodes[index].update(changes)
    return nodes


HCLOUD = {"cloud": "hcloud", "location": "fsn1", "size": "cx22"}

# (case, values, key named in the message, words of the problem)
BAD_CONFIGS = [
    ("two nodes", _dev(nodes=_node(0)[:2]), "nodes", "at least 3"),
    ("one node", _dev(nodes=_node(0)[:1]), "nodes", "at least 3"),
    ("no nodes", _dev(nodes=None), "nodes", "missing"),
    ("even count", _dev(nodes=[*_node(0), {"name": "x4", **HCLOUD}]), "nodes", "even"),
    ("duplicate name", _dev(nodes=_node(1, name="fsn")), "nodes[1].name", "used twice"),
    ("not a DNS label", _dev(nodes=_node(0, name="Node_A")), "nodes[0].name", "DNS label"),
    ("name too long", _dev(nodes=_node(0, name="a" * 64)), "nodes[0].name", "DNS label"),
    ("unknown cloud", _dev(nodes=_node(2, cloud="gcp")), "nodes[2].cloud", "not a known cloud"),
    (
        "unknown Hetzner location",
        _dev(nodes=_node(0, location="fra1")),
        "nodes[0].location",
        "Hetzner",
    ),
    (
        "malformed AWS region",
        _dev(nodes=_node(1, cloud="aws", region="europe-1")),
        "nodes[1].region",
        "not an AWS region",
    ),
    ("static without host", _dev(nodes=_node(0, cloud="static")), "nodes[0].host", "address"),
    ("meshCidr not a CIDR", _dev(meshCidr="10.42.0.0/33"), "meshCidr", "not a network"),
    ("meshCidr with host bits", _dev(meshCidr="10.42.0.1/24"), "meshCidr", "not a network"),
    ("meshCidr public", _dev(meshCidr="8.8.8.0/24"), "meshCidr", "private"),
    ("meshCidr too small", _dev(meshCidr="10.42.0.0/31"), "meshCidr", "room for"),
    (
        "meshCidr overlaps a node",
        _dev(nodes=_node(0, cloud="static", host="10.42.0.7"), meshCidr="10.42.0.0/24"),
        "meshCidr",
        "overlaps",
    ),
    (
        "awsVpcCidr overlaps meshCidr",
        _dev(nodes=_node(0, cloud="aws", region="eu-west-1"), awsVpcCidr="10.42.0.0/16"),
        "awsVpcCidr",
        "overlaps",
    ),
    ("adminCidrs entry not a CIDR", _dev(adminCidrs=["10.0.0.300/32"]), "adminCidrs", "not a CIDR"),
    ("adminCidrs empty", _dev(adminCidrs=[]), "adminCidrs", "empty"),
    ("adminCidrs missing", _dev(adminCidrs=None), "adminCidrs", "empty"),
    ("sshPublicKey missing", _dev(sshPublicKey=None), "sshPublicKey", "missing"),
    ("sshPrivateKey missing", _dev(sshPrivateKey=None), "sshPrivateKey", "missing"),
    ("Airflow 2", _dev(airflowVersion="2.10.5"), "airflowVersion", "not an Airflow 3"),
    ("Airflow version unpinned", _dev(airflowVersion="3"), "airflowVersion", "not an Airflow 3"),
    ("PostgreSQL 15", _dev(postgresVersion=15), "postgresVersion", "Debian 13"),
    (
        "ttl below 20",
        _dev(patroni={"ttl": 15, "loopWait": 3, "retryTimeout": 3}),
        "patroni.ttl",
        "below 20",
    ),
    (
        "timings too tight",
        _dev(patroni={"ttl": 20, "loopWait": 10, "retryTimeout": 10}),
        "patroni",
        "exceeds ttl",
    ),
    (
        "loopWait zero",
        _dev(patroni={"ttl": 30, "loopWait": 0, "retryTimeout": 10}),
        "patroni.loopWait",
        "below 1",
    ),
    (
        "retryTimeout tiny",
        _dev(patroni={"ttl": 30, "loopWait": 10, "retryTimeout": 2}),
        "patroni.retryTimeout",
        "below 3",
    ),
    ("ttl not a number", _dev(patroni={"ttl": "soon"}), "patroni.ttl", "whole number"),
    (
        "synchronousMode not a bool",
        _dev(patroni={"synchronousMode": "maybe"}),
        "patroni.synchronousMode",
        "true or false",
    ),
    ("unknown dagSync", _dev(dagSync="rsync"), "dagSync", "not a known mode"),
    (
        "consumer timeout too short",
        _dev(rabbitmqConsumerTimeoutMs=1000),
        "rabbitmqConsumerTimeoutMs",
        "long tasks",
    ),
]


@pytest.mark.parametrize(
    ("values", "key", "problem"),
    [case[1:] for case in BAD_CONFIGS],
    ids=[case[0] for case in BAD_CONFIGS],
)
def test_bad_config_is_refused_naming_the_key(values: dict, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(values)
    message = str(caught.value)
    assert caught.value.key == key
    assert message.startswith(f"airflow-ha:{key}: ")
    assert problem in message
    assert "Fix: " in message


@pytest.mark.parametrize("case", BAD_CONFIGS[:3] + BAD_CONFIGS[-3:], ids=lambda c: c[0])
def test_bad_config_stops_the_program_before_any_resource(case: tuple) -> None:
    engine = Engine()
    with pytest.raises(ConfigError):
        run_program(case[1], engine, "dev")
    assert engine.resources == []


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "local"])
def test_committed_stacks_are_valid(stack: str) -> None:
    cfg = parse_config(stack_values(stack), stack=stack)
    assert len(cfg.nodes) == 3
    assert len({n.mesh_address for n in cfg.nodes}) == 3
    p = cfg.patroni
    assert p.ttl >= 20 and p.loop_wait + 2 * p.retry_timeout <= p.ttl


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
    values = _dev(meshCidr=None, patroni=None, dagSync=None)
    cfg = parse_config(values)
    assert cfg.mesh_cidr == "10.42.0.0/24"
    assert [n.mesh_address for n in cfg.nodes] == ["10.42.0.1", "10.42.0.2", "10.42.0.3"]
    assert cfg.patroni.ttl == 30 and cfg.patroni.synchronous_mode is True
    assert cfg.dag_sync == "csync2"
    assert cfg.public_ui is False


def test_static_only_stack_needs_no_public_key() -> None:
    values = copy.deepcopy(stack_values("local"))
    values.pop("sshPublicKey")
    assert parse_config(values).ssh_public_key is None


def test_five_nodes_and_aws_user() -> None:
    nodes = [{"name": f"n{i}", "cloud": "aws", "region": "eu-west-1"} for i in range(5)]
    cfg = parse_config(_dev(nodes=nodes))
    assert len(cfg.nodes) == 5
    assert {n.user for n in cfg.nodes} == {"admin"}
