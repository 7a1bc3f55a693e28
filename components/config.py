"""The typed, validated stack config: the only module that reads `pulumi.Config`.

`parse_config` takes plain values (as `pulumi config` stores them) and either returns a
`ClusterConfig` or raises `ConfigError` with one message naming the key and the fix. It runs
before any resource is created.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

NAMESPACE = "airflow-ha"

HCLOUD_LOCATIONS = ("fsn1", "nbg1", "hel1", "ash", "hil", "sin")
AWS_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
DNS_LABEL_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
AIRFLOW_VERSION_RE = re.compile(r"^3\.\d+\.\d+$")
SUPPORTED_POSTGRES = (17,)  # what Debian 13 ships
CLOUDS = ("hcloud", "aws", "static")
DAG_SYNC_MODES = ("csync2",)

DEFAULT_MESH_CIDR = "10.42.0.0/24"
DEFAULT_AWS_VPC_CIDR = "10.80.0.0/16"


class ConfigError(ValueError):
    """A stack config that cannot be deployed; the message names the key and the fix."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        self.key = key
        super().__init__(f"{NAMESPACE}:{key}: {problem}. Fix: {fix}")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    cloud: str
    mesh_address: str
    size: str | None = None
    location: str | None = None  # hcloud
    region: str | None = None  # aws
    host: str | None = None  # static
    user: str = "root"
    port: int = 22

    @property
    def place(self) -> str:
        """Where the node runs, for outputs and labels."""
        return self.location or self.region or self.host or ""


@dataclass(frozen=True)
class PatroniSettings:
    ttl: int = 30
    loop_wait: int = 10
    retry_timeout: int = 10
    synchronous_mode: bool = True
    maximum_lag_on_failover: int = 1048576
    failsafe_mode: bool = True


@dataclass(frozen=True)
class ClusterConfig:
    stack: str
    nodes: tuple[NodeSpec, ...]
    admin_cidrs: tuple[str, ...]
    ssh_public_key: str | None
    ssh_private_key: Any  # str or a secret pulumi.Output[str]
    mesh_cidr: str
    aws_vpc_cidr: str
    airflow_version: str
    postgres_version: int
    patroni: PatroniSettings
    dag_sync: str
    public_ui: bool
    wireguard_port: int = 51820
    rabbitmq_consumer_timeout_ms: int = 86_400_000
    airflow_admin_user: str = "admin"
    celery_worker_concurrency: int = 8

    @property
    def mesh_prefix_len(self) -> int:
        return ipaddress.ip_network(self.mesh_cidr).prefixlen

    def node(self, name: str) -> NodeSpec:
        return next(n for n in self.nodes if n.name == name)


def _get(raw: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = raw.get(key, default)
    return default if value is None else value


def _as_int(value: Any, key: str, fix: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(key, f"{value!r} is not a whole number", fix)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"{value!r} is not a whole number", fix) from None


def _as_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise ConfigError(key, f"{value!r} is not true or false", "write true or false")


def _parse_nodes(raw_nodes: Any, mesh_hosts: list[str]) -> tuple[NodeSpec, ...]:
    if not isinstance(raw_nodes, list):
        raise ConfigError("nodes", "missing or not a list", "list the nodes as {name, cloud, ...}")
    count = len(raw_nodes)
    if count < 3:
        raise ConfigError(
            "nodes",
            f"{count} node(s) given, at least 3 are needed for a quorum",
            "list three nodes (or five) in three regions",
        )
    if count % 2 == 0:
        raise ConfigError(
            "nodes",
            f"{count} nodes is an even count: a split leaves no majority",
            "use an odd number of nodes (3 or 5)",
        )
    if len(mesh_hosts) < count:
        raise ConfigError(
            "meshCidr",
            f"has room for {len(mesh_hosts)} addresses but there are {count} nodes",
            "choose a larger meshCidr (e.g. a /24)",
        )
    seen: set[str] = set()
    nodes = []
    for index, item in enumerate(raw_nodes):
        key = f"nodes[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(key, "is not a mapping", "write {name: ..., cloud: ..., ...}")
        name = str(_get(item, "name", ""))
        if not DNS_LABEL_RE.match(name):
            raise ConfigError(
                f"{key}.name",
                f"{name!r} is not a DNS label",
                "use lower-case letters, digits and '-', starting with a letter, at most 63",
            )
        if name in seen:
            raise ConfigError(
                f"{key}.name", f"{name!r} is used twice", "give every node its own name"
            )
        seen.add(name)
        cloud = _get(item, "cloud", "")
        common = {"name": name, "cloud": cloud, "mesh_address": mesh_hosts[index]}
        if cloud == "hcloud":
            location = _get(item, "location", "")
            if location not in HCLOUD_LOCATIONS:
                raise ConfigError(
                    f"{key}.location",
                    f"{location!r} is not a Hetzner Cloud location",
                    f"use one of {', '.join(HCLOUD_LOCATIONS)}",
                )
            nodes.append(NodeSpec(**common, location=location, size=_get(item, "size", "cx22")))
        elif cloud == "aws":
            region = _get(item, "region", "")
            if not AWS_REGION_RE.match(str(region)):
                raise ConfigError(
                    f"{key}.region",
                    f"{region!r} is not an AWS region",
                    "use a region code such as eu-central-1",
                )
            nodes.append(
                NodeSpec(
                    **common, region=region, size=_get(item, "size", "t3.medium"), user="admin"
                )
            )
        elif cloud == "static":
            host = _get(item, "host", "")
            if not host:
                raise ConfigError(
                    f"{key}.host",
                    "a static node needs the address of the existing server",
                    "set host to its public (reachable) address",
                )
            port = _as_int(_get(item, "port", 22), f"{key}.port", "give the SSH port as a number")
            user = str(_get(item, "user", "root"))
            nodes.append(NodeSpec(**common, host=str(host), user=user, port=port))
        else:
            raise ConfigError(
                f"{key}.cloud", f"{cloud!r} is not a known cloud", f"use one of {', '.join(CLOUDS)}"
            )
    return tuple(nodes)


def _parse_network(raw: Mapping[str, Any], key: str, default: str) -> ipaddress.IPv4Network:
    value = str(_get(raw, key, default))
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise ConfigError(
            key, f"{value!r} is not a network CIDR", "write it like 10.42.0.0/24"
        ) from None
    if not isinstance(network, ipaddress.IPv4Network) or not network.is_private:
        raise ConfigError(
            key, f"{value} is not a private IPv4 network", "use a range from 10.0.0.0/8"
        )
    return network


def _parse_patroni(raw: Any) -> PatroniSettings:
    raw = raw or {}
    defaults = PatroniSettings()
    fix = "give a whole number of seconds"
    ttl = _as_int(_get(raw, "ttl", defaults.ttl), "patroni.ttl", fix)
    loop_wait = _as_int(_get(raw, "loopWait", defaults.loop_wait), "patroni.loopWait", fix)
    retry = _as_int(_get(raw, "retryTimeout", defaults.retry_timeout), "patroni.retryTimeout", fix)
    if ttl < 20:
        raise ConfigError(
            "patroni.ttl",
            f"{ttl} is below 20, which Patroni 4 raises to 20",
            "set ttl to 20 or more",
        )
    if loop_wait < 1:
        raise ConfigError(
            "patroni.loopWait", f"{loop_wait} is below 1", "set loopWait to 1 or more"
        )
    if retry < 3:
        raise ConfigError(
            "patroni.retryTimeout", f"{retry} is below 3", "set retryTimeout to 3 or more"
        )
    if loop_wait + 2 * retry > ttl:
        raise ConfigError(
            "patroni",
            f"loopWait + 2*retryTimeout = {loop_wait + 2 * retry} exceeds ttl = {ttl}",
            "raise ttl or lower loopWait/retryTimeout so that loopWait + 2*retryTimeout <= ttl",
        )
    lag = _as_int(
        _get(raw, "maximumLagOnFailover", defaults.maximum_lag_on_failover),
        "patroni.maximumLagOnFailover",
        "give a number of bytes",
    )
    return PatroniSettings(
        ttl=ttl,
        loop_wait=loop_wait,
        retry_timeout=retry,
        synchronous_mode=_as_bool(_get(raw, "synchronousMode", True), "patroni.synchronousMode"),
        maximum_lag_on_failover=lag,
        failsafe_mode=_as_bool(_get(raw, "failsafeMode", True), "patroni.failsafeMode"),
    )


def parse_config(raw: Mapping[str, Any], stack: str = "dev") -> ClusterConfig:
    """Validate plain stack config values; raise ConfigError on the first problem."""
    mesh = _parse_network(raw, "meshCidr", DEFAULT_MESH_CIDR)
    nodes = _parse_nodes(raw.get("nodes"), [str(h) for h in mesh.hosts()])

    admin_cidrs = raw.get("adminCidrs")
    if not admin_cidrs or not isinstance(admin_cidrs, list):
        raise ConfigError(
            "adminCidrs",
            "is empty: nobody could reach SSH",
            "list the networks of your admins, e.g. [203.0.113.0/24]",
        )
    for cidr in admin_cidrs:
        try:
            ipaddress.ip_network(str(cidr), strict=True)
        except ValueError:
            raise ConfigError(
                "adminCidrs",
                f"{cidr!r} is not a CIDR",
                "write each entry like 203.0.113.7/32",
            ) from None

    cloud_nodes = [n for n in nodes if n.cloud != "static"]
    public_key = raw.get("sshPublicKey")
    if cloud_nodes and not public_key:
        raise ConfigError(
            "sshPublicKey",
            "is missing: new servers would accept no key",
            'pulumi config set sshPublicKey "$(cat ~/.ssh/id_ed25519.pub)"',
        )
    if raw.get("sshPrivateKey") is None:
        raise ConfigError(
            "sshPrivateKey",
            "is missing: the deploy steps log in with it",
            "pulumi config set --secret sshPrivateKey < ~/.ssh/id_ed25519",
        )

    aws_vpc = _parse_network(raw, "awsVpcCidr", DEFAULT_AWS_VPC_CIDR)
    if any(n.cloud == "aws" for n in nodes) and aws_vpc.overlaps(mesh):
        raise ConfigError(
            "awsVpcCidr",
            f"{aws_vpc} overlaps meshCidr {mesh}",
            "pick two ranges that do not overlap (defaults: 10.80.0.0/16 and 10.42.0.0/24)",
        )
    for node in nodes:
        if node.host:
            try:
                inside = ipaddress.ip_address(node.host) in mesh
            except ValueError:
                inside = False  # a DNS name
            if inside:
                raise ConfigError(
                    "meshCidr",
                    f"{mesh} overlaps node {node.name}'s address {node.host}",
                    "pick a meshCidr that no node address falls in",
                )

    airflow_version = str(_get(raw, "airflowVersion", "3.3.2"))
    if not AIRFLOW_VERSION_RE.match(airflow_version):
        raise ConfigError(
            "airflowVersion",
            f"{airflow_version!r} is not an Airflow 3.x.y version",
            "pin an Airflow 3 release, e.g. 3.3.2",
        )
    postgres_version = _as_int(_get(raw, "postgresVersion", 17), "postgresVersion", "use 17")
    if postgres_version not in SUPPORTED_POSTGRES:
        raise ConfigError(
            "postgresVersion",
            f"{postgres_version} is not packaged by Debian 13",
            f"use one of {SUPPORTED_POSTGRES}",
        )
    dag_sync = str(_get(raw, "dagSync", "csync2"))
    if dag_sync not in DAG_SYNC_MODES:
        raise ConfigError(
            "dagSync", f"{dag_sync!r} is not a known mode", f"use one of {DAG_SYNC_MODES}"
        )
    consumer_timeout = _as_int(
        _get(raw, "rabbitmqConsumerTimeoutMs", 86_400_000),
        "rabbitmqConsumerTimeoutMs",
        "give milliseconds, longer than your longest task",
    )
    if consumer_timeout < 60_000:
        raise ConfigError(
            "rabbitmqConsumerTimeoutMs",
            f"{consumer_timeout} ms would kill long tasks' channels",
            "use at least 60000 (1 min); the default is one day",
        )
    concurrency = _as_int(
        _get(raw, "celeryWorkerConcurrency", 8), "celeryWorkerConcurrency", "give a number"
    )
    if concurrency < 1:
        raise ConfigError("celeryWorkerConcurrency", f"{concurrency} is below 1", "use 1 or more")

    return ClusterConfig(
        stack=stack,
        nodes=nodes,
        admin_cidrs=tuple(str(c) for c in admin_cidrs),
        ssh_public_key=str(public_key) if public_key else None,
        ssh_private_key=raw["sshPrivateKey"],
        mesh_cidr=str(mesh),
        aws_vpc_cidr=str(aws_vpc),
        airflow_version=airflow_version,
        postgres_version=postgres_version,
        patroni=_parse_patroni(raw.get("patroni")),
        dag_sync=dag_sync,
        public_ui=_as_bool(_get(raw, "publicUi", False), "publicUi"),
        rabbitmq_consumer_timeout_ms=consumer_timeout,
        airflow_admin_user=str(_get(raw, "airflowAdminUser", "admin")),
        celery_worker_concurrency=concurrency,
    )


# Keys whose values are objects (pulumi stores them as JSON strings).
_OBJECT_KEYS = ("nodes", "adminCidrs", "patroni")
_PLAIN_KEYS = (
    "meshCidr",
    "awsVpcCidr",
    "sshPublicKey",
    "airflowVersion",
    "postgresVersion",
    "dagSync",
    "publicUi",
    "rabbitmqConsumerTimeoutMs",
    "airflowAdminUser",
    "celeryWorkerConcurrency",
)


def load_config() -> ClusterConfig:
    """Read the stack's `airflow-ha:*` config and validate it."""
    cfg = pulumi.Config(NAMESPACE)
    raw: dict[str, Any] = {}
    for key in _OBJECT_KEYS:
        text = cfg.get(key)
        if text is not None:
            try:
                raw[key] = json.loads(text)
            except json.JSONDecodeError:
                raise ConfigError(key, "is not valid YAML/JSON", "check its indentation") from None
    for key in _PLAIN_KEYS:
        value = cfg.get(key)
        if value is not None:
            raw[key] = value
    raw["sshPrivateKey"] = cfg.get_secret("sshPrivateKey")
    return parse_config(raw, stack=pulumi.get_stack())
