"""The typed, validated stack config: the only module that reads `pulumi.Config`.

`parse_config` takes plain values (as `pulumi config` stores them) and either returns a
`ClusterConfig` or raises `ConfigError` with one message naming the key, what was found and the
fix. It runs before any resource is created. Every key, its type, default and validator is
declared once, in components/config_schema.py; unknown keys are refused at every level.

Node identity: a node's mesh address is host `meshIndex` of `meshCidr`, fixed by the node and not
by its place in the list, and `ClusterConfig.nodes` is ordered by meshIndex, so reordering the
stack file's `nodes` changes nothing on any node.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi

from . import config_schema as schema
from .config_schema import NAMESPACE, ConfigError

__all__ = [
    "NAMESPACE",
    "AlertReceiver",
    "BackupSettings",
    "ClusterConfig",
    "ConfigError",
    "NodeSpec",
    "ObjectStorage",
    "PatroniSettings",
]

AlertReceiver = schema.AlertReceiver

# Login users of the cloud images (not configurable: the images decide).
CLOUD_USERS = {"hcloud": "root", "aws": "admin"}
CLOUD_SSH_PORT = 22
# Pulumi stack names allow letters, digits, '-', '_' and '.'; the name lands in the RabbitMQ
# cluster name, Patroni's scope, etcd's token and cloud labels.
STACK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,49}$")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    cloud: str
    mesh_index: int
    mesh_address: str
    size: str | None  # hcloud, aws
    location: str | None  # hcloud
    region: str | None  # aws
    host: str | None  # static
    user: str
    port: int
    # The ssh-ed25519 host key from the stack config: a static node's, or an older cloud
    # server's; None: the program generates the server's (components/nodes.py).
    host_key: str | None = None

    @property
    def place(self) -> str:
        """Where the node runs, for outputs and labels."""
        return self.location or self.region or self.host or ""


@dataclass(frozen=True)
class PatroniSettings:
    ttl: int
    loop_wait: int
    retry_timeout: int
    synchronous_mode: bool
    maximum_lag_on_failover: int
    failsafe_mode: bool


@dataclass(frozen=True)
class ObjectStorage:
    """The S3-compatible bucket of the backups (pgBackRest) and the task logs (Airflow)."""

    endpoint: str
    port: int
    region: str
    bucket: str
    uri_style: str  # host or path
    ca_certificate: str | None  # PEM; None: the system's CAs
    # The backups' key: str or a secret pulumi.Output[str]. With create, None until the cluster
    # has made the bucket's keys (components/bucket.py) and put them here.
    access_key: Any
    secret_key: Any
    create: bool = False  # the program makes the bucket and its two keys
    # The task logs' own key (taskLogAccessKey, or the one create makes); None: the backups'.
    task_log_access_key: Any = None
    task_log_secret_key: Any = None

    @property
    def url(self) -> str:
        """The endpoint as an https URL (what boto3 takes)."""
        return f"https://{self.endpoint}:{self.port}"

    @property
    def task_log_keys(self) -> tuple[Any, Any]:
        """The key pair of Airflow's task-log connection: its own, else the backups'."""
        if self.task_log_access_key is None:
            return self.access_key, self.secret_key
        return self.task_log_access_key, self.task_log_secret_key


@dataclass(frozen=True)
class BackupSettings:
    full_schedule: str
    diff_schedule: str
    retention_full: int
    archive_timeout: int
    alert_after_hours: int = 49


@dataclass(frozen=True)
class ClusterConfig:
    stack: str
    nodes: tuple[NodeSpec, ...]  # ordered by mesh_index
    admin_cidrs: tuple[str, ...]
    allow_ssh_from_anywhere: bool
    ssh_public_key: str | None
    ssh_private_key: Any  # str or a secret pulumi.Output[str]
    # The public half of ssh_private_key; None only for the offline render's placeholder.
    deploy_public_key: str | None
    ssh_extra_public_keys: tuple[str, ...]
    protect_servers: bool
    mesh_cidr: str
    aws_vpc_cidr: str
    airflow_version: str
    postgres_version: int
    patroni: PatroniSettings
    postgres_parameters: dict[str, str | int]
    dag_sync: str
    public_ui: bool
    rabbitmq_consumer_timeout_ms: int
    rabbitmq_net_ticktime_s: int
    airflow_admin_user: str
    celery_worker_concurrency: int
    alert_receivers: tuple[schema.AlertReceiver, ...] = ()
    # A JSON mapping receiver name -> secret part: str, a secret pulumi.Output[str], or None.
    alert_receiver_secrets: Any = None
    alert_runbook_url: str = "docs/operations.md"
    # None: no backups, and task logs stay on the node that ran the task.
    object_storage: ObjectStorage | None = None
    backup: BackupSettings = BackupSettings("Sun *-*-* 01:00:00", "Mon..Sat *-*-* 01:00:00", 2, 60)

    @property
    def mesh_prefix_len(self) -> int:
        return ipaddress.ip_network(self.mesh_cidr).prefixlen

    def node(self, name: str) -> NodeSpec:
        return next(n for n in self.nodes if n.name == name)

    @property
    def authorized_keys(self) -> tuple[str, ...]:
        """What every node's login user accepts, each key once: sshPublicKey,
        sshExtraPublicKeys and always the deploy's own key (the public half of sshPrivateKey:
        the step that writes the file logs in with it)."""
        deploy = self.deploy_public_key
        keys: list[str] = []
        for key in (
            self.ssh_public_key,
            *self.ssh_extra_public_keys,
            f"{deploy} airflow-ha deploy key (sshPrivateKey)" if deploy else None,
        ):
            if key is not None and not any(schema.same_ssh_key(key, k) for k in keys):
                keys.append(key)
        return tuple(keys)


def _node_count(raw_nodes: list[Any]) -> None:
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
    if count > schema.MAX_NODES:
        # Every etcd write and every quorum-queue message waits for a majority, and each node
        # adds a WireGuard peer, an etcd/Raft member and a RabbitMQ member to every other: past
        # 7 the cost grows and no more failures are survived than the region count allows.
        raise ConfigError(
            "nodes",
            f"{count} nodes: more than {schema.MAX_NODES} only slows etcd's and RabbitMQ's "
            "quorum writes",
            f"use 3, 5 or {schema.MAX_NODES} nodes",
        )


def _parse_node(item: Any, key: str) -> dict[str, Any]:
    item = schema.as_mapping(item, key, "write {name: ..., cloud: ..., meshIndex: ..., ...}")
    cloud_name = schema.cloud(item.get("cloud"), f"{key}.cloud")
    keys = schema.NODE_KEYS[cloud_name]
    schema.refuse_unknown(item, schema.names(keys), key, f"a {cloud_name} node")
    return {k.name: k.parse(item, f"{key}.{k.name}") for k in keys}


def _mesh_room(mesh: ipaddress.IPv4Network, count: int) -> int:
    """How many node addresses meshCidr has; a ConfigError when fewer than `count`."""
    # The last address is the broadcast address of networks with one.
    room = max(mesh.num_addresses - 2, 0) if mesh.prefixlen < 31 else mesh.num_addresses
    if room < count:
        raise ConfigError(
            "meshCidr",
            f"has room for {room} addresses but there are {count} nodes",
            "choose a larger meshCidr (e.g. a /24)",
        )
    return room


@dataclass
class _Taken:
    """What the nodes before this one in the list hold: no other node may have it too."""

    names: set[str] = field(default_factory=set)
    indexes: dict[int, str] = field(default_factory=dict)  # meshIndex -> node
    hosts: dict[str, str] = field(default_factory=dict)  # static host -> node


def _claim(held: dict[Any, str], value: Any, name: str, key: str, what: str, fix: str) -> None:
    """Node `name` takes `value`; a ConfigError when an earlier node holds it."""
    if value in held:
        raise ConfigError(key, f"{value} is also node {held[value]}'s{what}", fix)
    held[value] = name


def _check_identity(
    fields: dict[str, Any], key: str, mesh: ipaddress.IPv4Network, room: int, taken: _Taken
) -> None:
    """A name of its own, and a meshIndex of its own inside meshCidr."""
    name, index = fields["name"], fields["meshIndex"]
    if name in taken.names:
        raise ConfigError(f"{key}.name", f"{name!r} is used twice", "give every node its own name")
    taken.names.add(name)
    if index > room:
        raise ConfigError(
            f"{key}.meshIndex",
            f"{index} is outside meshCidr {mesh} (hosts 1 to {room})",
            f"use a free number from 1 to {room}, or a larger meshCidr",
        )
    _claim(
        taken.indexes, index, name, f"{key}.meshIndex", "",
        "give every node its own meshIndex (never reuse a removed node's)",
    )


def _check_host(
    host: str, name: str, key: str, mesh: ipaddress.IPv4Network, taken: _Taken
) -> None:
    """A static node's server of its own, whose address is not inside the mesh."""
    fix = "give every static node its own server"
    _claim(taken.hosts, host, name, f"{key}.host", " address", fix)
    try:
        inside = ipaddress.ip_address(host) in mesh
    except ValueError:
        inside = False  # a DNS name
    if inside:
        raise ConfigError(
            "meshCidr",
            f"{mesh} overlaps node {name}'s address {host}",
            "pick a meshCidr that no node address falls in",
        )


def _node_spec(fields: dict[str, Any], mesh: ipaddress.IPv4Network) -> NodeSpec:
    cloud, index = fields["cloud"], fields["meshIndex"]
    return NodeSpec(
        name=fields["name"],
        cloud=cloud,
        mesh_index=index,
        mesh_address=str(mesh.network_address + index),
        size=fields.get("size"),
        location=fields.get("location"),
        region=fields.get("region"),
        host=fields.get("host"),
        user=fields.get("user", CLOUD_USERS.get(cloud)),
        port=fields.get("port", CLOUD_SSH_PORT),
        host_key=fields.get("hostKey"),
    )


def _parse_nodes(raw_nodes: Any, mesh: ipaddress.IPv4Network) -> tuple[NodeSpec, ...]:
    if raw_nodes is None:
        raise ConfigError("nodes", "is missing", "list the nodes as {name, cloud, meshIndex, ...}")
    raw_nodes = schema.as_list(
        raw_nodes, "nodes", "nodes", "list the nodes as {name, cloud, meshIndex, ...}"
    )
    _node_count(raw_nodes)
    room = _mesh_room(mesh, len(raw_nodes))
    taken = _Taken()
    nodes = []
    for position, item in enumerate(raw_nodes):
        key = f"nodes[{position}]"
        fields = _parse_node(item, key)
        _check_identity(fields, key, mesh, room, taken)
        if fields.get("host") is not None:
            _check_host(fields["host"], fields["name"], key, mesh, taken)
        nodes.append(_node_spec(fields, mesh))
    # Ordered by identity, not by list position: peer lists, first-node roles and every file
    # stay the same when the stack file's list is reordered.
    return tuple(sorted(nodes, key=lambda n: n.mesh_index))


def _fields(raw: Any, name: str, keys: tuple[schema.Key, ...], example: str) -> dict[str, Any]:
    """A mapping key's fields, each parsed by its declaration; unknown fields refused."""
    raw = schema.as_mapping(raw, name, example)
    schema.refuse_unknown(raw, schema.names(keys), name, name)
    return {k.name: k.parse(raw, f"{name}.{k.name}") for k in keys}


def _parse_patroni(raw: Any) -> PatroniSettings:
    v = _fields(raw, "patroni", schema.PATRONI_KEYS, "write patroni: {ttl: 30, loopWait: 10, ...}")
    ttl, loop_wait, retry = v["ttl"], v["loopWait"], v["retryTimeout"]
    if loop_wait + 2 * retry > ttl:
        raise ConfigError(
            "patroni",
            f"loopWait + 2*retryTimeout = {loop_wait + 2 * retry} exceeds ttl = {ttl}",
            "raise ttl or lower loopWait/retryTimeout so that loopWait + 2*retryTimeout <= ttl",
        )
    return PatroniSettings(
        ttl=ttl,
        loop_wait=loop_wait,
        retry_timeout=retry,
        synchronous_mode=v["synchronousMode"],
        maximum_lag_on_failover=v["maximumLagOnFailover"],
        failsafe_mode=v["failsafeMode"],
    )


# objectStorage.create's IAM users (components/bucket.py): one for the backups, one for the
# task logs. IAM takes a user name of at most 64 characters.
CREATED_USER_ROLES = ("backup", "task-logs")
IAM_USER_NAME_MAX = 64


def created_user_name(stack: str, role: str) -> str:
    return f"airflow-ha-{stack}-{role}"


STORAGE_KEYS = ("objectStorageAccessKey", "objectStorageSecretKey")
TASK_LOG_KEYS = ("taskLogAccessKey", "taskLogSecretKey")


def _set(value: Any) -> bool:
    """A config value that is there (a secret Output, or text that is not blank)."""
    return value is not None and not (isinstance(value, str) and not value.strip())


def _parse_object_storage(
    get: Callable[[str], Any], stack: str, nodes: tuple[NodeSpec, ...]
) -> dict[str, Any]:
    """ClusterConfig's object_storage and backup."""
    raw_backup = get("backup")
    b = _fields(raw_backup, "backup", schema.BACKUP_KEYS, "write backup: {retentionFull: 2}")
    backup = BackupSettings(
        full_schedule=b["fullSchedule"],
        diff_schedule=b["diffSchedule"],
        retention_full=b["retentionFull"],
        archive_timeout=b["archiveTimeout"],
        alert_after_hours=b["alertAfterHours"],
    )
    raw = get("objectStorage")
    if raw is None:
        _refuse_keys(get, "is set, but objectStorage is not",
                     "add objectStorage: {endpoint, region, bucket}, or remove {name}")
        if raw_backup:
            raise ConfigError("backup", "is set, but objectStorage is not: backups need a "
                              "bucket", "add objectStorage: {endpoint, region, bucket}")
        return {"object_storage": None, "backup": backup}
    o = _fields(raw, "objectStorage", schema.OBJECT_STORAGE_KEYS,
                "write objectStorage: {endpoint: ..., region: ..., bucket: ...}")
    if o["create"]:
        _check_created(o, stack, nodes)
    storage = ObjectStorage(
        endpoint=o["endpoint"],
        port=o["port"],
        region=o["region"],
        bucket=o["bucket"],
        uri_style=o["uriStyle"],
        ca_certificate=o["caCertificate"],
        create=o["create"],
        **_storage_keys(get, o["create"]),
    )
    return {"object_storage": storage, "backup": backup}


def _refuse_keys(get: Callable[[str], Any], problem: str, fix: str) -> None:
    """One ConfigError for the first object storage key set where none may be ({name} in fix:
    the key's name)."""
    for name in (*STORAGE_KEYS, *TASK_LOG_KEYS):
        if get(name) is not None:
            raise ConfigError(name, problem, fix.replace("{name}", name))


def _storage_keys(get: Callable[[str], Any], create: bool) -> dict[str, Any]:
    """ObjectStorage's keys from the stack config: the backups' pair (required), the task logs'
    pair (optional, both or neither); with create the program makes them and none may be set."""
    if create:
        _refuse_keys(get, "is set, but objectStorage.create makes the bucket's keys (one for "
                     "the backups, one for the task logs)", "remove it: pulumi config rm {name}")
        return {"access_key": None, "secret_key": None}
    access, secret = (get(name) for name in STORAGE_KEYS)
    for name, value in zip(STORAGE_KEYS, (access, secret), strict=True):
        if not _set(value):
            raise ConfigError(name, "is missing: objectStorage needs its credentials",
                              f"pulumi config set --secret {name} <value>")
    logs = {name: get(name) for name in TASK_LOG_KEYS}
    given = [name for name in TASK_LOG_KEYS if _set(logs[name])]
    if len(given) == 1:
        (missing,) = set(TASK_LOG_KEYS) - set(given)
        raise ConfigError(missing, f"is missing: {given[0]} is set, and the task logs' key "
                          "needs both halves",
                          f"pulumi config set --secret {missing} <value>, or remove {given[0]}")
    return {
        "access_key": access,
        "secret_key": secret,
        "task_log_access_key": logs["taskLogAccessKey"] if given else None,
        "task_log_secret_key": logs["taskLogSecretKey"] if given else None,
    }


def _check_created(o: Mapping[str, Any], stack: str, nodes: tuple[NodeSpec, ...]) -> None:
    """create: the program makes the bucket through AWS's API, with the credentials the
    stack's AWS nodes are made with, where its endpoint says it is."""
    if not any(n.cloud == "aws" for n in nodes):
        raise ConfigError(
            "objectStorage.create",
            "is true, but no node runs on AWS: the program makes buckets on AWS S3 only, "
            "with the AWS credentials of a stack's aws nodes",
            "make the bucket yourself (Hetzner: in its Console) and remove create",
        )
    region = schema.aws_region(o["region"], "objectStorage.region")
    endpoint = f"s3.{region}.amazonaws.com"
    if o["endpoint"] != endpoint:
        raise ConfigError(
            "objectStorage.endpoint",
            f"{o['endpoint']!r} is not AWS S3's endpoint in {region}, where create makes the "
            "bucket",
            f"set endpoint: {endpoint} (or remove create and give your own bucket)",
        )
    if o["port"] != 443:
        raise ConfigError("objectStorage.port", f"{o['port']} is not AWS S3's port",
                          "remove port (AWS S3 answers on 443)")
    longest = max((created_user_name(stack, role) for role in CREATED_USER_ROLES), key=len)
    if len(longest) > IAM_USER_NAME_MAX:
        raise ConfigError(
            "objectStorage.create",
            f"the stack name {stack!r} makes the IAM user name {longest!r}, longer than IAM's "
            f"{IAM_USER_NAME_MAX} characters",
            "use a shorter stack name, or make the bucket and its keys yourself",
        )


def _check_stack_name(stack: str) -> None:
    if not STACK_NAME_RE.match(stack):
        raise ConfigError(
            f"stack name {stack!r}",
            "is not letters, digits, '-', '_' and '.' (at most 50)",
            "name the stack like dev or prod-eu",
            prefix="",
        )


def _parse_access(
    raw: Mapping[str, Any],
    get: Callable[[str], Any],
    nodes: tuple[NodeSpec, ...],
    private_key_text: str | None,
) -> dict[str, Any]:
    """Who may reach SSH and the keys: ClusterConfig's admin_cidrs, allow_ssh_from_anywhere,
    ssh_public_key, ssh_private_key, deploy_public_key and ssh_extra_public_keys."""
    admin_cidrs = get("adminCidrs")
    allow_anywhere = get("allowSshFromAnywhere")
    wide = [c for c in admin_cidrs if schema.internet_wide(c)]
    if wide and not allow_anywhere:
        raise ConfigError(
            "adminCidrs",
            f"{wide[0]} opens SSH to (a large part of) the internet",
            "list your admins' networks; if you really mean it, also set "
            "allowSshFromAnywhere: true (the policy pack still refuses it where it runs)",
        )
    public_key = get("sshPublicKey")
    if public_key is None and any(n.cloud != "static" for n in nodes):
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
    private_key = get("sshPrivateKey")
    if isinstance(private_key, str):
        private_key_text = private_key
    return {
        "admin_cidrs": admin_cidrs,
        "allow_ssh_from_anywhere": allow_anywhere,
        "ssh_public_key": public_key,
        "ssh_private_key": private_key,
        "deploy_public_key": schema.deploy_public_key(private_key_text, "sshPrivateKey"),
        "ssh_extra_public_keys": get("sshExtraPublicKeys"),
    }


def _parse_alerting(
    get: Callable[[str], Any], secrets_text: str | None
) -> dict[str, Any]:
    """ClusterConfig's alert_receivers, alert_receiver_secrets and alert_runbook_url."""
    receivers = get("alertReceivers")
    secrets = get("alertReceiverSecrets")
    if isinstance(secrets, str):
        secrets_text = secrets
    parsed = schema.receiver_secrets_text(secrets_text, "alertReceiverSecrets")
    if parsed is None and secrets is None:
        parsed = {}  # not set: then no receiver may need a URL
    schema.check_receiver_secrets(receivers, parsed, "alertReceiverSecrets")
    return {
        "alert_receivers": receivers,
        "alert_receiver_secrets": secrets,
        "alert_runbook_url": get("alertRunbookUrl"),
    }


def parse_config(
    raw: Mapping[str, Any],
    stack: str = "dev",
    private_key_text: str | None = None,
    receiver_secrets_text: str | None = None,
) -> ClusterConfig:
    """Validate plain stack config values; raise ConfigError on the first problem.

    `private_key_text` is sshPrivateKey's text when `raw` holds it as a secret Output: its
    public half is read from it (and only that leaves this function).
    `receiver_secrets_text` is alertReceiverSecrets' text likewise, for its checks only."""
    _check_stack_name(stack)
    schema.refuse_unknown(raw, schema.names(schema.TOP_KEYS), "", NAMESPACE)

    def get(name: str) -> Any:
        return schema.top_key(name).parse(raw, name)

    mesh: ipaddress.IPv4Network = get("meshCidr")
    nodes = _parse_nodes(raw.get("nodes"), mesh)
    access = _parse_access(raw, get, nodes, private_key_text)
    aws_vpc: ipaddress.IPv4Network = get("awsVpcCidr")
    if any(n.cloud == "aws" for n in nodes) and aws_vpc.overlaps(mesh):
        raise ConfigError(
            "awsVpcCidr",
            f"{aws_vpc} overlaps meshCidr {mesh}",
            "pick two ranges that do not overlap (defaults: 10.80.0.0/16 and 10.42.0.0/24)",
        )
    return ClusterConfig(
        stack=stack,
        nodes=nodes,
        **access,
        mesh_cidr=str(mesh),
        aws_vpc_cidr=str(aws_vpc),
        airflow_version=get("airflowVersion"),
        postgres_version=get("postgresVersion"),
        patroni=_parse_patroni(get("patroni")),
        postgres_parameters=get("postgresParameters"),
        dag_sync=get("dagSync"),
        public_ui=get("publicUi"),
        rabbitmq_consumer_timeout_ms=get("rabbitmqConsumerTimeoutMs"),
        rabbitmq_net_ticktime_s=get("rabbitmqNetTicktimeS"),
        airflow_admin_user=get("airflowAdminUser"),
        celery_worker_concurrency=get("celeryWorkerConcurrency"),
        protect_servers=get("protectServers"),
        **_parse_alerting(get, receiver_secrets_text),
        **_parse_object_storage(get, stack, nodes),
    )


def _stored_keys() -> list[str]:
    """Every `airflow-ha:` key the stack sets. pulumi.Config reads one named key at a time and
    cannot list them, so the SDK's config map is read here (set by the engine or PULUMI_CONFIG):
    without the list an unknown key could not be refused."""
    from pulumi.runtime import config as runtime_config

    stored = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    prefix = f"{NAMESPACE}:"
    return sorted(k.removeprefix(prefix) for k in stored if k.startswith(prefix))


def _decode(key: schema.Key, text: str) -> Any:
    """Pulumi stores lists and mappings as JSON text, everything else as plain text."""
    if key.kind in ("list", "mapping") or text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text  # plain text where a list or mapping belongs: the validator says so
    return text


def load_config() -> ClusterConfig:
    """Read the stack's `airflow-ha:*` config and validate it."""
    cfg = pulumi.Config(NAMESPACE)
    declared = {k.name: k for k in schema.TOP_KEYS}
    raw: dict[str, Any] = {}
    texts: dict[str, str | None] = {}
    for name in _stored_keys():
        key = declared.get(name)
        if key is None:
            raw[name] = cfg.get(name)  # refused by parse_config, with a did-you-mean
        elif key.kind == "secret":
            raw[name] = cfg.get_secret(name)
            # Read at once for its checks (sshPrivateKey: its public half); what the nodes
            # and the connections get is the secret Output.
            texts[name] = cfg.get(name)
        else:
            text = cfg.get(name)
            if text is not None:
                raw[name] = _decode(key, text)
    parsed = parse_config(
        raw,
        stack=pulumi.get_stack(),
        private_key_text=texts.get("sshPrivateKey"),
        receiver_secrets_text=texts.get("alertReceiverSecrets"),
    )
    _warn_mid_rotation(parsed)
    return parsed


def _warn_mid_rotation(cfg: ClusterConfig) -> None:
    """sshPublicKey is not sshPrivateKey's public half: right between the two deploys of a key
    rotation (docs/operations.md), wrong anywhere else, since a server created now would accept
    only sshPublicKey and the deploy could not log in to it."""
    public, deploy = cfg.ssh_public_key, cfg.deploy_public_key
    if public is None or deploy is None or schema.same_ssh_key(public, deploy):
        return
    pulumi.log.warn(
        f"{NAMESPACE}:sshPublicKey is not the public half of sshPrivateKey: every node "
        "accepts both, which is the middle of a key rotation; a server created now would not "
        "let the deploy in. Finish the rotation: set sshPrivateKey to sshPublicKey's private key"
    )
