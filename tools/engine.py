"""A stand-in for the Pulumi engine: runs the real program under `pulumi.runtime.set_mocks`.

Used by the unit tests, the offline render (tools.render) and the local deploy (tools.deploy).
`Engine.new_resource` is called by the SDK from a thread pool only once a resource's dependencies
have resolved, so a subclass that really runs a step keeps the engine's order and parallelism.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc

from components.config import NAMESPACE, ConfigError
from components.config_schema import describe

REPO = Path(__file__).resolve().parent.parent
STACKS_DIR = REPO / "stacks"
# The secrets an offline render stands in for when the stack file holds none; the object
# storage's credentials only with objectStorage (without it they are refused) and without its
# create (the program makes them then, and refuses them set).
ALWAYS_NEEDED_SECRETS = ("sshPrivateKey",)
OBJECT_STORAGE_SECRETS = ("objectStorageAccessKey", "objectStorageSecretKey")
TASK_LOG_SECRETS = ("taskLogAccessKey", "taskLogSecretKey")  # optional: no placeholders
SECRET_CONFIG_KEYS = ("sshPrivateKey", *OBJECT_STORAGE_SECRETS, *TASK_LOG_SECRETS)
COMMAND = "command:remote:Command"  # a step
ACCESS_KEY = "aws:iam/accessKey:AccessKey"  # its id and `secret`: the key the program makes
STEP_HEADER = re.compile(r'^# airflow-ha step "(?P<step>[^"]+)" on node (?P<node>\S+)', re.M)
PRINTS = re.compile(r"^# prints: (?P<keys>.+?) \(as key=value lines\)$", re.M)
FILE_BLOCK = re.compile(
    r"^put_file (?P<path>\S+) (?P<mode>\S+) (?P<owner>\S+) <<'__AIRFLOW_HA_FILE__'\n"
    r"(?P<content>.*?)^__AIRFLOW_HA_FILE__$",
    re.M | re.S,
)


@dataclass
class Registered:
    """One resource the program registered, in registration order.

    `inputs` are plain values; `secret_inputs` the dotted paths of those that were secrets.
    """

    type: str
    name: str
    inputs: dict
    outputs: dict
    order: int
    secret_inputs: set[str] = field(default_factory=set)


def unwrap_secrets(
    value: Any, path: str = "", found: set[str] | None = None
) -> tuple[Any, set[str]]:
    """Plain values from the SDK's wire form, and where its secrets were."""
    found = set() if found is None else found
    if rpc.is_rpc_secret(value):
        found.add(path)
        return unwrap_secrets(rpc.unwrap_rpc_secret(value), path, found)[0], found
    if isinstance(value, dict):
        return {
            k: unwrap_secrets(v, f"{path}.{k}" if path else k, found)[0] for k, v in value.items()
        }, found
    if isinstance(value, list):
        return [unwrap_secrets(v, f"{path}[{i}]", found)[0] for i, v in enumerate(value)], found
    return value, found


@dataclass(frozen=True)
class Options:
    """The resource options the engine acts on when it diffs a resource: what the program
    asked for, as the SDK sent it (ignore_changes names already the provider's)."""

    protect: bool = False
    ignore_changes: tuple[str, ...] = ()
    replace_on_changes: tuple[str, ...] = ()
    provider: str = ""  # "type::name" of an explicit provider; "": the default one


@dataclass
class Step:
    """A parsed remote step: what lands on a node and what runs there."""

    node: str
    step: str
    script: str
    files: list[tuple[str, str, str, str]] = field(default_factory=list)  # path, mode, owner, text
    prints: list[str] = field(default_factory=list)


def parse_step(script: str) -> Step:
    header = STEP_HEADER.search(script)
    if header is None:
        raise ValueError("not an airflow-ha step script")
    prints = PRINTS.search(script)
    return Step(
        node=header["node"],
        step=header["step"],
        script=script,
        files=[
            (m["path"], m["mode"], m["owner"], m["content"]) for m in FILE_BLOCK.finditer(script)
        ],
        prints=prints["keys"].split() if prints else [],
    )


def load_stack_file(path: Path) -> dict[str, Any]:
    """The `airflow-ha:*` values of a Pulumi.<stack>.yaml, keys without the namespace.

    Values kept encrypted by the CLI (`secure:`) come back as the marker {"secure": ...}.
    A file that is not YAML, or not shaped like a stack file, raises ConfigError naming it.
    """
    shown = _shown_path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(shown, f"cannot be read ({exc.strerror})", "check the path", "") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(
            shown,
            f"is not valid YAML{where}: {problem}",
            "check the indentation and quoting there (a value with ': ' or '#' needs quotes)",
            "",
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            shown, f"holds {describe(data)}, not a mapping", "start it with config:", ""
        )
    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(
            f"{shown}: config",
            f"expected a mapping of keys, found {describe(config)}",
            "write config: followed by indented airflow-ha:<key>: <value> lines",
            "",
        )
    values = {}
    for key, value in config.items():
        namespace, _, name = str(key).partition(":")
        if namespace == NAMESPACE and name:
            values[name] = value
    return values


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def stack_path(stack: str) -> Path:
    return STACKS_DIR / f"Pulumi.{stack}.yaml"


def fake_public_key(name: str) -> str:
    """A well-formed WireGuard public key (32 bytes, base64) derived from a name."""
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def fake_ssh_private_key(public_key: str, salt: str = "") -> str:
    """An unencrypted OpenSSH-format private key text whose public half is `public_key` (an
    authorized_keys line); another `salt`, another text with the same half. Only the public
    half is real: it stands in for sshPrivateKey where the program reads that half
    (components/config_schema.py) and never logs in with it."""
    kind, body = public_key.split()[:2]
    blob = base64.b64decode(body)
    check = hashlib.sha256(blob + salt.encode()).digest()[:4]
    private = check + check + _ssh_string(kind.encode()) + _ssh_string(b"not a real key")
    private += bytes(range(1, 8 - len(private) % 8 + 1)) if len(private) % 8 else b""
    data = (
        b"openssh-key-v1\x00"
        + _ssh_string(b"none") + _ssh_string(b"none") + _ssh_string(b"")
        + (1).to_bytes(4, "big") + _ssh_string(blob) + _ssh_string(private)
    )
    text = base64.b64encode(data).decode()
    lines = [text[i : i + 70] for i in range(0, len(text), 70)]
    return "\n".join(
        ["-----BEGIN OPENSSH PRIVATE KEY-----", *lines, "-----END OPENSSH PRIVATE KEY-----", ""]
    )


def fake_ssh_public_key(name: str) -> str:
    """A well-formed ed25519 authorized_keys line derived from a name (not a usable key)."""
    blob = _ssh_string(b"ssh-ed25519") + _ssh_string(hashlib.sha256(name.encode()).digest())
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {name}"


def with_host_keys(values: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """The stack's values with each node's hostKey from `keys` (by node name) where the stack
    file sets none: the local stack's machines are made by tools.localcloud, which records their
    keys (tools.deploy), and the offline render stands in fake ones."""
    nodes = values.get("nodes")
    if isinstance(nodes, list):
        values["nodes"] = [
            {**node, "hostKey": keys[node["name"]]}
            if isinstance(node, dict) and "hostKey" not in node and node.get("name") in keys
            else node
            for node in nodes
        ]
    return values


# A real self-signed CA certificate whose key was thrown away when it was made: the offline
# render's stand-in for the local cloud's S3 CA (tools/localcloud/s3.py makes the real one).
RENDER_CA_CERTIFICATE = """\
-----BEGIN CERTIFICATE-----
MIIB5zCCAY2gAwIBAgIUbA21aEtExXgBNe1k2XNlFoKf6VwwCgYIKoZIzj0EAwIw
QDE+MDwGA1UEAww1YWlyZmxvdy1oYSBvZmZsaW5lIHJlbmRlciBzdGFuZC1pbiBD
QSAoa2V5IGRpc2NhcmRlZCkwIBcNMjYxMjAyMjIxODU2WhgPMjEyNjExMDgyMjE4
NTZaMEAxPjA8BgNVBAMMNWFpcmZsb3ctaGEgb2ZmbGluZSByZW5kZXIgc3RhbmQt
aW4gQ0EgKGtleSBkaXNjYXJkZWQpMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
w9otC8s9r52J70cg+QIBXn1Plj2589IB4ox9DW7iHrBOonlWLmZgvJEmmE+jA7xh
Uao7fwgZZrNhZiULB8ff8KNjMGEwHQYDVR0OBBYEFBNi9G3DQJpDvxMWaKnYW9Od
vHEIMB8GA1UdIwQYMBaAFBNi9G3DQJpDvxMWaKnYW9OdvHEIMA8GA1UdEwEB/wQF
MAMBAf8wDgYDVR0PAQH/BAQDAgEGMAoGCCqGSM49BAMCA0gAMEUCIQDk2BgKFr7p
EfBTc7b5JgBEwDL0iR9sb0ajdWHWiZbcoQIgVkOrJqAOmzfYszLjlnVrkSLIaBwf
EAan1cG5vnW8kT4=
-----END CERTIFICATE-----
"""


def with_ca_certificate(values: dict[str, Any], pem: str) -> dict[str, Any]:
    """The stack's values with `pem` as objectStorage.caCertificate where the stack has
    objectStorage without one: the local stack's endpoint has a CA tools.localcloud made
    (tools.deploy reads it), which the offline render stands in for."""
    storage = values.get("objectStorage")
    if isinstance(storage, dict) and "caCertificate" not in storage:
        values["objectStorage"] = {**storage, "caCertificate": pem}
    return values


def fake_host_keys(values: dict[str, Any]) -> dict[str, str]:
    """A well-formed ssh-ed25519 host key per node name of the stack (not a usable key)."""
    nodes = values.get("nodes") if isinstance(values.get("nodes"), list) else []
    names = [n.get("name") for n in nodes if isinstance(n, dict)]
    return {name: fake_ssh_public_key(f"host-{name}") for name in names if isinstance(name, str)}


def hcloud_id(typ: str, name: str) -> str:
    """A Hetzner id (a number) derived from the resource, not from the registration order
    (which the SDK's parallelism varies): the same program makes the same inputs."""
    return str(int(hashlib.sha256(f"{typ}::{name}".encode()).hexdigest()[:8], 16))


def _host_byte(name: str) -> int:
    """A stable last address byte per resource name (documentation ranges only)."""
    return hashlib.sha256(name.encode()).digest()[0] % 250 + 1


def _key(urn: str) -> str:
    """"type::name" of a URN (its last type, without the parents' types before "$")."""
    qualified_type, name = urn.split("::")[-2:]
    return f"{qualified_type.split('$')[-1]}::{name}"


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, remembering each resource's parent (for the resource tree) and
    what it waits for (so that tests and the offline render can state the order)."""

    def RegisterResource(self, request):
        if request.type != "pulumi:pulumi:Stack":
            parent_key = _key(request.parent) if request.parent else ""
            if parent_key.startswith("pulumi:pulumi:Stack::"):
                parent_key = ""
            key = (request.type, request.name)
            with self.mocks.lock:
                self.mocks.parents[key] = parent_key
                # The SDK sends depends_on and the resources the inputs' Outputs come from as
                # one list: both are what the engine waits for before creating the resource.
                self.mocks.dependencies[key] = frozenset(_key(u) for u in request.dependencies)
                self.mocks.options[key] = Options(
                    protect=bool(request.protect),
                    ignore_changes=tuple(request.ignoreChanges),
                    replace_on_changes=tuple(request.replaceOnChanges),
                    # A provider reference is "<urn>::<id>".
                    provider=_key(request.provider.rsplit("::", 1)[0]) if request.provider
                    else "",
                )
        return super().RegisterResource(request)


class Engine(pulumi_mocks.Mocks):
    """Records every resource; answers with plausible outputs. Subclasses change the answers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.resources: list[Registered] = []
        self.parents: dict[tuple[str, str], str] = {}  # (type, name) -> "parent-type::name"
        # (type, name) -> {"type::name", ...}: its depends_on and its inputs' resources.
        self.dependencies: dict[tuple[str, str], frozenset[str]] = {}
        self.options: dict[tuple[str, str], Options] = {}  # (type, name) -> its options
        self.secret_outputs: set[str] = set()  # stack outputs that are secrets
        self._counter = 0

    # -- answers per resource type ---------------------------------------------------------
    def secret_value(self, name: str, kind: str, inputs: dict) -> str:
        if kind == "bytes":
            return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()
        return (
            f"test-{name}-"
            + hashlib.sha256(name.encode()).hexdigest()[: int(inputs.get("length", 24))]
        )

    def run_command(self, name: str, inputs: dict) -> dict:
        step = parse_step(inputs.get("stdin", ""))
        lines = []
        for key in step.prints:
            value = fake_public_key(f"{step.node}/{key}") if key == "wgPublicKey" else f"<{key}>"
            lines.append(f"{key}={value}")
        return {"stdout": "\n".join(lines) + "\n", "stderr": ""}

    # -- Mocks interface --------------------------------------------------------------------
    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str, dict]:
        with self.lock:
            self._counter += 1
            number = self._counter
        outputs = dict(args.inputs)  # secrets stay wrapped, so outputs stay secret
        inputs, secret_paths = unwrap_secrets(dict(args.inputs))
        typ = args.typ
        if typ == COMMAND:
            outputs.update(self.run_command(args.name, inputs))
        elif typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = rpc.wrap_rpc_secret(
                self.secret_value(args.name, "password", inputs)
            )
        elif typ == "random:index/randomBytes:RandomBytes":
            outputs["base64"] = rpc.wrap_rpc_secret(self.secret_value(args.name, "bytes", inputs))
        elif typ == "hcloud:index/primaryIp:PrimaryIp":
            outputs["ipAddress"] = f"203.0.113.{_host_byte(args.name)}"
        elif typ == "aws:ec2/eip:Eip":
            outputs["publicIp"] = f"198.51.100.{_host_byte(args.name)}"
            outputs["allocationId"] = f"eipalloc-{number}"
        elif typ == "aws:ec2/keyPair:KeyPair":
            outputs["keyName"] = args.name
        elif typ == ACCESS_KEY:
            outputs["secret"] = rpc.wrap_rpc_secret(
                self.secret_value(args.name, "password", inputs)
            )
        with self.lock:
            self.resources.append(Registered(typ, args.name, inputs, outputs, number, secret_paths))
        resource_id = hcloud_id(typ, args.name) if typ.startswith("hcloud:") else f"{args.name}-id"
        if typ == ACCESS_KEY:  # its id is the access key ID: a secret of the program's
            resource_id = self.secret_value(f"{args.name}-id", "password", {"length": 16})
        return resource_id, outputs

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list]:
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0debian13", "name": "debian-13-amd64-20260101-0000"}, []
        return {}, []

    # -- views ------------------------------------------------------------------------------
    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in sorted(self.resources, key=lambda r: r.order) if r.type == typ]

    def steps(self) -> list[Step]:
        return [parse_step(r.inputs["stdin"]) for r in self.of_type(COMMAND)]

    def options_of(self, r: Registered) -> Options:
        return self.options.get((r.type, r.name), Options())

    def waits_for(self, name: str, typ: str = COMMAND) -> set[str]:
        """The names of the steps a resource (a step unless `typ` says otherwise) waits for
        directly: those in its depends_on and those whose outputs its inputs read."""
        prefix = f"{COMMAND}::"
        return {
            key.removeprefix(prefix)
            for key in self.dependencies[(typ, name)]
            if key.startswith(prefix)
        }


def config_for_engine(
    values: dict[str, Any], placeholders: bool = True
) -> tuple[dict[str, str], list[str]]:
    """Turn stack values into the SDK's config map (objects as JSON) and its secret keys.

    `secure:` values cannot be decrypted without the CLI: they become placeholders, and so do
    the secrets the program needs that the file does not hold (sshPrivateKey; with
    objectStorage its credentials), so that an offline render needs no credentials.
    """
    config: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in values.items():
        full = f"{NAMESPACE}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            value = f"<secret:{key}>"
            secret_keys.append(full)
        # default=str: YAML dates and the like reach the validators as text, not a TypeError.
        config[full] = value if isinstance(value, str) else json.dumps(value, default=str)
    if placeholders:
        needed = ALWAYS_NEEDED_SECRETS
        storage = values.get("objectStorage")
        creates = isinstance(storage, dict) and str(storage.get("create")).lower() == "true"
        if storage is not None and not creates:
            needed += OBJECT_STORAGE_SECRETS
        for key in needed:
            full = f"{NAMESPACE}:{key}"
            if full not in config:
                config[full] = f"<secret:{key}>"
                secret_keys.append(full)
    for key in SECRET_CONFIG_KEYS:
        full = f"{NAMESPACE}:{key}"
        if full in config and full not in secret_keys:
            secret_keys.append(full)
    return config, secret_keys


def run_program(
    values: dict[str, Any], engine: Engine, stack: str, placeholders: bool = True
) -> dict[str, Any]:
    """Run the real program (what __main__.py does) under `engine`; return its stack outputs.

    Raises components.config.ConfigError for a bad stack config before any resource exists.
    """
    from components.cluster import AirflowHaCluster
    from components.config import load_config

    config, secret_keys = config_for_engine(values, placeholders)
    pulumi.runtime.set_all_config(config, secret_keys)
    pulumi.runtime.set_mocks(
        engine,
        project=NAMESPACE,
        stack=stack,
        preview=False,
        monitor=_RecordingMonitor(engine),
    )
    outputs: dict[str, Any] = {}
    engine.secret_outputs = set()

    async def collect(cluster: AirflowHaCluster) -> None:
        for key, value in cluster.outputs.items():
            output = pulumi.Output.from_input(value)
            outputs[key] = await output.future()
            if await output.is_secret():
                engine.secret_outputs.add(key)

    def program() -> Any:
        return asyncio.ensure_future(collect(AirflowHaCluster(load_config())))

    pulumi.runtime.test(program)()
    return outputs
