"""The airflow-ha policy pack's rules (pulumi-policy, Python). `__main__.py` serves them.

What the pack refuses, on every resource the program registers:
- public-ingress-allowlist: an ingress rule (Hetzner firewall rule `direction: in`, AWS security
  group ingress in any of its three resource shapes, a VPC's default security group) that opens
  anything but 22/tcp (admins), 51820/udp (WireGuard) and, when the policy config sets
  `allowPublicUi`, 443/tcp, from any source.
- ssh-not-from-internet: 22/tcp open to 0.0.0.0/0, ::/0 or any public range as wide as a /8
  (IPv4) or /16 (IPv6), so that splitting 0.0.0.0/0 into halves does not get around it.
- cluster-ports-mesh-only: an ingress rule, from any source, covering a port of the cluster's
  services (etcd, PostgreSQL, Patroni, HAProxy and its stats, RabbitMQ with its CLI tools'
  distribution ports, epmd, Flower, Airflow, csync2; tests/unit/test_policy.py checks the list
  holds every port constant of components/): those
  are reached over the WireGuard mesh only and never through the cloud firewall.
- server-has-firewall: a Hetzner server without firewallIds, an EC2 instance without
  vpcSecurityGroupIds (or securityGroups) and without network interfaces of its own (an
  interface's groups are its own input: a network interface without securityGroups is refused).
- secret-inputs-encrypted: an input of a command resource whose name looks secret (password,
  cookie, secret, private key, token) holding a plain string.
- secret-values-encrypted: a plain string in any input of any resource (a Command's stdin or
  create, a server's user data, EC2's userDataBase64 decoded) that holds secret text: the value
  of one of the same resource's secret inputs, a private key (PEM, OpenSSH, cloud-init's
  `ed25519_private:`), or a secret-named setting given a literal (`password: hunter22...`).
  The pack sees one resource's inputs at a time: a generated password (a RandomPassword's
  output) copied in plain into another resource is recognised only by its shape; the program's
  unit tests (tests/unit/test_secrets.py) follow every generated secret to every input.
- no-secret-on-command-line: a Command's create/update/delete holding the connection's key or
  password, an environment value, or secret text as above: a command line is visible in `ps`
  to every user of the node, secret input or not (a mandatory validation).

Secretness and the SDK: pulumi-policy hands validations (`Analyze`, `AnalyzeStack`) the inputs with
Pulumi secrets already decrypted and unmarked (pulumi_policy/policy.py deserialises them without
`proxy_secrets`; pulumi/pulumi-policy#241 is the open request to expose it), so a validation
cannot tell a secret from a plain string. Only the remediation path (`Remediate`) keeps the
engine's secret markers. secret-inputs-encrypted is therefore a remediation: at enforcement level
`remediate` it wraps every plain secret-looking input in `Secret(...)` before the engine stores it
(the preview lists each remediation), and the program's own unit tests (tests/unit/test_policy.py)
refuse the plain case outright by running this remediation over every stack's resources and
requiring that it has nothing to do.

Unknown values (a firewall id or an address during a first preview) are never treated as a
violation: the same policies run again at `pulumi up`, when the values are known.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Secret,
)
from pulumi_policy.proxy import UnknownValueError

try:  # the proxy the SDK wraps a remediation's inputs in (it keeps the secret markers)
    from pulumi_policy.secret import _DictSecretsProxy
except ImportError:  # pragma: no cover - a future SDK; the remediation then does nothing
    _DictSecretsProxy = None  # type: ignore[assignment,misc]

PACK_NAME = "airflow-ha"

HCLOUD_FIREWALL = "hcloud:index/firewall:Firewall"
HCLOUD_SERVER = "hcloud:index/server:Server"
AWS_SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
# A VPC's default group: a resource that manages it replaces its rules with the ones it lists.
AWS_DEFAULT_SECURITY_GROUP = "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"
AWS_SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
AWS_INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
AWS_INSTANCE = "aws:ec2/instance:Instance"
AWS_NETWORK_INTERFACE = "aws:ec2/networkInterface:NetworkInterface"
COMMAND_TYPES = ("command:remote:Command", "command:local:Command")

SSH = ("tcp", 22)
WIREGUARD = ("udp", 51820)
PUBLIC_UI = ("tcp", 443)

# Every port a cluster service listens on (on the mesh address or 127.0.0.1, never in a firewall).
CLUSTER_PORTS: dict[int, str] = {
    2379: "etcd client",
    2380: "etcd peer",
    5432: "PostgreSQL",
    5000: "HAProxy (primary)",
    5001: "HAProxy (replicas)",
    8008: "Patroni REST API",
    8432: "pgBackRest TLS server",
    5672: "RabbitMQ AMQP",
    15672: "RabbitMQ management",
    25672: "RabbitMQ Erlang distribution",
    **{port: "RabbitMQ CLI distribution" for port in range(35672, 35683)},
    4369: "epmd",
    7000: "HAProxy stats",
    8405: "HAProxy Prometheus exporter",
    15692: "RabbitMQ Prometheus",
    9090: "Prometheus",
    9093: "Alertmanager",
    9094: "Alertmanager cluster",
    9100: "node exporter",
    9187: "postgres exporter",
    5555: "Flower",
    8080: "Airflow api-server",
    8793: "Airflow worker log server",
    8794: "Airflow triggerer log server",
    8974: "Airflow scheduler health",
    30865: "csync2",
}

SECRET_NAME = re.compile(r"password|passwd|cookie|secret|private_?key|token", re.IGNORECASE)

ALLOW_PUBLIC_UI = "allowPublicUi"


class _Unknown:
    """A value the engine does not know yet (preview)."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = _Unknown()
_UNKNOWN_SENTINELS = frozenset(
    {
        "1c4a061d-8072-4f0a-a4cb-0ff528b18fe7",  # boolean
        "3eeb2bf0-c639-47a8-9e75-3b44932eb421",  # number
        "04da6b54-80e4-46f7-96ec-b56ff0331ba9",  # string
        "6a19a0b0-7e62-4c92-b797-7f8e31da9cc2",  # array
        "030794c1-ac77-496b-92df-f27374a8bd58",  # asset
        "e48ece36-62e2-4504-bad9-02848725956a",  # archive
        "dd056dcd-154b-4c76-9bd3-c8f88648b5ff",  # object
    }
)


def plain(value: Any) -> Any:
    """The SDK's proxies turned into dicts and lists, unknown values into UNKNOWN."""
    if isinstance(value, str):
        return UNKNOWN if value in _UNKNOWN_SENTINELS else value
    if isinstance(value, Mapping):
        out = {}
        for key in value:
            try:
                out[key] = plain(value[key])
            except UnknownValueError:
                out[key] = UNKNOWN
        return out
    if isinstance(value, Sequence):
        items = []
        for index in range(len(value)):
            try:
                items.append(plain(value[index]))
            except UnknownValueError:
                items.append(UNKNOWN)
        return items
    return value


# --- ingress rules, cloud-neutral ---------------------------------------------------------------


@dataclass(frozen=True)
class Ingress:
    """One ingress rule: protocol ('tcp', 'udp', 'icmp', 'all', or the raw value), an inclusive
    port range (None when the protocol has no ports), the sources, and where it sits."""

    protocol: Any
    ports: tuple[int, int] | _Unknown | None
    sources: tuple[Any, ...]
    where: str

    def covers(self, protocol: str, port: int) -> bool:
        if self.protocol == "all":
            return True
        if self.protocol != protocol or not isinstance(self.ports, tuple):
            return False
        return self.ports[0] <= port <= self.ports[1]

    def describe(self) -> str:
        if self.protocol == "all":
            what = "every protocol and port"
        elif self.ports is None:
            what = str(self.protocol)
        elif isinstance(self.ports, tuple) and self.ports[0] == self.ports[1]:
            what = f"{self.ports[0]}/{self.protocol}"
        elif isinstance(self.ports, tuple):
            what = f"{self.ports[0]}-{self.ports[1]}/{self.protocol}"
        else:
            what = f"unknown ports/{self.protocol}"
        sources = ", ".join(str(s) for s in self.sources) or "no source"
        return f"{self.where} opens {what} to {sources}"


_PROTOCOL_NUMBERS = {"6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6", "-1": "all"}
_NO_PORTS = ("icmp", "icmpv6", "gre", "esp")


def _protocol(value: Any) -> Any:
    if value is UNKNOWN or value is None:
        return value
    text = str(value).strip().lower()
    text = _PROTOCOL_NUMBERS.get(text, text)
    return "all" if text in ("all", "any") else text


def _port_range(protocol: Any, low: Any, high: Any) -> tuple[int, int] | _Unknown | None:
    if protocol in _NO_PORTS:
        return None
    if protocol == "all":
        return (0, 65535)
    if low is UNKNOWN or high is UNKNOWN:
        return UNKNOWN
    if low is None and high is None:
        return (0, 65535)
    low = int(low if low is not None else high)
    high = int(high if high is not None else low)
    if low <= 0 and high in (0, 65535):  # AWS writes "every port" as 0-0 or 0-65535
        return (0, 65535)
    return (low, high)


def _hcloud_port(protocol: Any, port: Any) -> tuple[int, int] | _Unknown | None:
    if protocol in _NO_PORTS:
        return None
    if port is UNKNOWN:
        return UNKNOWN
    text = "" if port is None else str(port).strip().lower()
    if text in ("", "any"):
        return (0, 65535)
    low, _, high = text.partition("-")
    return _port_range(protocol, int(low), int(high or low))


def _list(value: Any) -> list:
    if value is None:
        return []
    if value is UNKNOWN:
        return [UNKNOWN]
    return list(value) if isinstance(value, list) else [value]


def _aws_sources(rule: Mapping[str, Any], *keys: str) -> tuple[Any, ...]:
    sources: list[Any] = []
    for key in keys:
        sources.extend(_list(rule.get(key)))
    if rule.get("self") is True:
        sources.append("this security group")
    return tuple(sources)


def ingress_rules(resource_type: str, props: Mapping[str, Any]) -> list[Ingress]:
    """The ingress rules a resource opens, or [] for any other kind of resource."""
    props = plain(props)
    rules: list[Ingress] = []
    if resource_type == HCLOUD_FIREWALL:
        for index, rule in enumerate(_list(props.get("rules"))):
            if rule is UNKNOWN or rule.get("direction") != "in":
                continue
            protocol = _protocol(rule.get("protocol"))
            rules.append(
                Ingress(
                    protocol,
                    _hcloud_port(protocol, rule.get("port")),
                    tuple(_list(rule.get("sourceIps"))),
                    f"rules[{index}]",
                )
            )
    elif resource_type in (AWS_SECURITY_GROUP, AWS_DEFAULT_SECURITY_GROUP):
        for index, rule in enumerate(_list(props.get("ingress"))):
            if rule is UNKNOWN:
                continue
            protocol = _protocol(rule.get("protocol"))
            rules.append(
                Ingress(
                    protocol,
                    _port_range(protocol, rule.get("fromPort"), rule.get("toPort")),
                    _aws_sources(
                        rule, "cidrBlocks", "ipv6CidrBlocks", "prefixListIds", "securityGroups"
                    ),
                    f"ingress[{index}]",
                )
            )
    elif resource_type == AWS_SECURITY_GROUP_RULE:
        if props.get("type") == "ingress":
            protocol = _protocol(props.get("protocol"))
            rules.append(
                Ingress(
                    protocol,
                    _port_range(protocol, props.get("fromPort"), props.get("toPort")),
                    _aws_sources(
                        props, "cidrBlocks", "ipv6CidrBlocks", "prefixListIds",
                        "sourceSecurityGroupId",
                    ),
                    "the rule",
                )
            )
    elif resource_type == AWS_INGRESS_RULE:
        protocol = _protocol(props.get("ipProtocol"))
        rules.append(
            Ingress(
                protocol,
                _port_range(protocol, props.get("fromPort"), props.get("toPort")),
                _aws_sources(
                    props, "cidrIpv4", "cidrIpv6", "prefixListId", "referencedSecurityGroupId"
                ),
                "the rule",
            )
        )
    return rules


def internet_wide(source: Any) -> bool:
    """0.0.0.0/0, ::/0, or a public range as wide as a /8 (IPv4) or a /16 (IPv6)."""
    if not isinstance(source, str):
        return False
    try:
        network = ipaddress.ip_network(source.strip(), strict=False)
    except ValueError:
        return False  # a security group or prefix list id
    if network.prefixlen == 0:
        return True
    widest = 8 if network.version == 4 else 16
    return network.prefixlen <= widest and not network.is_private


def _config_flag(args: ResourceValidationArgs, name: str) -> bool:
    value = (args.get_config() or {}).get(name, False)
    return value is True or str(value).lower() == "true"


# --- the policies --------------------------------------------------------------------------------


def validate_public_ingress(args: ResourceValidationArgs, report: ReportViolation) -> None:
    allowed = {SSH, WIREGUARD}
    if _config_flag(args, ALLOW_PUBLIC_UI):
        allowed.add(PUBLIC_UI)
    for rule in ingress_rules(args.resource_type, args.props):
        if rule.protocol is UNKNOWN or rule.ports is UNKNOWN:
            continue
        if rule.protocol in ("icmp", "icmpv6"):
            continue
        ports = rule.ports
        single = isinstance(ports, tuple) and ports[0] == ports[1]
        if single and (rule.protocol, ports[0]) in allowed:
            continue
        hint = " Everything else is reached over the WireGuard mesh."
        if single and (rule.protocol, ports[0]) == PUBLIC_UI:
            hint = (
                f" 443/tcp needs '{ALLOW_PUBLIC_UI}: true' in policy/config/<stack>.json, for a "
                "stack whose config sets publicUi."
            )
        report(f"{rule.describe()}.{hint}", None)


def validate_ssh_source(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for rule in ingress_rules(args.resource_type, args.props):
        if not rule.covers(*SSH):
            continue
        wide = [s for s in rule.sources if internet_wide(s)]
        if wide:
            report(
                f"{rule.describe()}: SSH from {', '.join(wide)} is open to the internet. "
                "Allow only the admins' networks (stack config adminCidrs).",
                None,
            )


def _port_groups(ports: list[tuple[int, str]]) -> list[str]:
    """ "5000 (HAProxy (primary))", consecutive ports of one service as one range."""
    groups: list[list[Any]] = []
    for port, name in ports:
        if groups and groups[-1][2] == name and groups[-1][1] == port - 1:
            groups[-1][1] = port
        else:
            groups.append([port, port, name])
    return [f"{lo} ({name})" if lo == hi else f"{lo}-{hi} ({name})" for lo, hi, name in groups]


def validate_cluster_ports(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for rule in ingress_rules(args.resource_type, args.props):
        if rule.protocol not in ("tcp", "all") or not isinstance(rule.ports, tuple):
            continue
        reached = [(p, n) for p, n in sorted(CLUSTER_PORTS.items()) if rule.covers("tcp", p)]
        hit = _port_groups(reached)
        if hit:
            report(
                f"{rule.describe()}, which reaches {', '.join(hit)}. Cluster services listen on "
                "the mesh address or 127.0.0.1 and must not be reachable from outside the mesh, "
                "from any source.",
                None,
            )


def _has_items(props: Mapping[str, Any], key: str) -> bool:
    value = plain(props).get(key)
    if value is UNKNOWN:
        return True  # computed during preview: it will hold what the program passed
    return bool(value)


def validate_server_firewall(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == HCLOUD_SERVER and not _has_items(args.props, "firewallIds"):
        report(
            f"Hetzner server '{args.name}' has no firewallIds: it would take traffic on every "
            "port. Attach the node's firewall (components/nodes.py creates one per node).",
            None,
        )
    elif args.resource_type == AWS_INSTANCE and not _instance_has_groups(args.props):
        report(
            f"EC2 instance '{args.name}' has no vpcSecurityGroupIds and no network interface: it "
            "would get the VPC's default security group. Attach the node's security group.",
            None,
        )
    elif args.resource_type == AWS_NETWORK_INTERFACE and not _has_items(
        args.props, "securityGroups"
    ):
        report(
            f"Network interface '{args.name}' has no securityGroups: it would get the VPC's "
            "default security group. Attach the node's security group.",
            None,
        )


def _instance_has_groups(props: Mapping[str, Any]) -> bool:
    """Security groups on the instance, or on the network interfaces it is given (those
    carry their own groups, and the instance then takes none: the interface's are checked
    on the aws:ec2/networkInterface resource)."""
    if _has_items(props, "vpcSecurityGroupIds") or _has_items(props, "securityGroups"):
        return True
    values = plain(props)
    attached = values.get("primaryNetworkInterface")
    return _has_items(props, "networkInterfaces") or (
        attached is UNKNOWN or (isinstance(attached, dict) and bool(attached))
    )


def _unproxy(value: Any) -> Any:
    """A remediation's nested objects arrive as secret-keeping proxies: their raw dict."""
    if _DictSecretsProxy is not None and isinstance(value, _DictSecretsProxy):
        return value["__target"]
    return value


def _wrap_plain_secrets(value: Any, name: str) -> tuple[Any, list[str]]:
    """(value with plain secret-looking entries wrapped in Secret, their paths)."""
    value = _unproxy(value)
    if isinstance(value, Secret):
        return value, []
    if isinstance(value, str) and value in _UNKNOWN_SENTINELS:
        return value, []
    if name and SECRET_NAME.search(name) and _holds_plain_text(value):
        return Secret(value), [name]
    if isinstance(value, dict):
        out, found = {}, []
        for key, item in value.items():
            out[key], paths = _wrap_plain_secrets(item, str(key))
            found.extend(f"{name}.{p}" if name else p for p in paths)
        return out, found
    if isinstance(value, list):
        items, found = [], []
        for index, item in enumerate(value):
            wrapped, paths = _wrap_plain_secrets(item, "")
            items.append(wrapped)
            found.extend(f"{name}[{index}]{'.' + p if p else ''}" for p in paths)
        return items, found
    return value, []


def _holds_plain_text(value: Any) -> bool:
    value = _unproxy(value)
    if isinstance(value, str):
        return value != "" and value not in _UNKNOWN_SENTINELS
    if isinstance(value, dict):
        return any(_holds_plain_text(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_plain_text(v) for v in value)
    return False  # a Secret, a number, a boolean


def plain_secret_inputs(props: Any) -> tuple[dict | None, list[str]]:
    """For a remediation's inputs (secret markers kept): the inputs with every plain
    secret-looking value wrapped as a secret, and the paths that needed it.

    Returns (None, []) when the inputs carry no secret markers (a validation's inputs, or an SDK
    that changed its proxies): secretness cannot be judged there.
    """
    if _DictSecretsProxy is None or not isinstance(props, _DictSecretsProxy):
        return None, []
    wrapped, paths = _wrap_plain_secrets(props, "")
    return wrapped, paths


def remediate_plain_secrets(args: ResourceValidationArgs) -> dict | None:
    if args.resource_type not in COMMAND_TYPES:
        return None
    wrapped, paths = plain_secret_inputs(args.props)
    return wrapped if paths else None


# Secret text in a plain value: a private key (PEM, OpenSSH, cloud-init's ssh_keys), or a
# secret-named setting given a literal (not a $variable, a placeholder or a file reference).
SECRET_TEXT = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"
    r"|\b(?:ed25519|rsa|ecdsa)_private\s*:"
    r"|(?i:--(?:password|passwd|secret|token|cookie)(?:\s+|=)"
    r"|\b(?:password|passwd|secret|token|cookie)[\"']?\s*[:=]\s*)"
    r"[\"']?(?![$<{%@/(\\])[^\s\"']{8,}"
)
MIN_SECRET_LENGTH = 8  # shorter secret inputs ("root", a port) would match everywhere


def _secret_strings(value: Any, inside: bool = False) -> Iterator[str]:
    """The text of every secret in a remediation's raw inputs (nested too)."""
    value = _unproxy(value)
    if isinstance(value, Secret):
        yield from _secret_strings(value.value, True)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secret_strings(item, inside)
    elif isinstance(value, list):
        for item in value:
            yield from _secret_strings(item, inside)
    elif inside and isinstance(value, str) and value not in _UNKNOWN_SENTINELS:
        yield value


def _decoded(name: str, text: str) -> str:
    """What a `...Base64` input (EC2's userDataBase64) holds; other inputs as they are."""
    if not name.lower().endswith("base64"):
        return text
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", "replace")
    except (ValueError, binascii.Error):
        return text


def secret_text_in(name: str, text: str, secrets: set[str]) -> str | None:
    """Why a plain string holds secret text, or None."""
    text = _decoded(name, text)
    if any(secret in text for secret in secrets):
        return "the value of one of the resource's secret inputs"
    found = SECRET_TEXT.search(text)
    return f"secret text ({found.group(0)[:24]}...)" if found else None


def _wrap_secret_text(value: Any, name: str, secrets: set[str]) -> tuple[Any, list[str]]:
    """(value with every plain string holding secret text wrapped in Secret, their paths)."""
    value = _unproxy(value)
    if isinstance(value, Secret):
        return value, []
    if isinstance(value, str):
        if value in _UNKNOWN_SENTINELS or secret_text_in(name, value, secrets) is None:
            return value, []
        return Secret(value), [name]
    if isinstance(value, dict):
        out, found = {}, []
        for key, item in value.items():
            out[key], paths = _wrap_secret_text(item, str(key), secrets)
            found.extend(f"{name}.{p}" if name else p for p in paths)
        return out, found
    if isinstance(value, list):
        items, found = [], []
        for index, item in enumerate(value):
            wrapped, paths = _wrap_secret_text(item, name, secrets)
            items.append(wrapped)
            found.extend(f"{name}[{index}]" for _ in paths)
        return items, found
    return value, []


def plain_secret_values(props: Any) -> tuple[dict | None, list[str]]:
    """For a remediation's inputs (any resource type): the inputs with every plain string that
    holds secret text (another input's secret value, a private key, a literal password)
    wrapped as a secret, and the paths that needed it; (None, []) without secret markers."""
    if _DictSecretsProxy is None or not isinstance(props, _DictSecretsProxy):
        return None, []
    target = props["__target"]
    secrets = {s for s in _secret_strings(target) if len(s) >= MIN_SECRET_LENGTH}
    return _wrap_secret_text(target, "", secrets)


def remediate_plain_secret_values(args: ResourceValidationArgs) -> dict | None:
    wrapped, paths = plain_secret_values(args.props)
    return wrapped if paths else None


COMMAND_LINES = ("create", "update", "delete")


def validate_command_lines(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """A command line is visible to every user of the machine that runs it (ps, /proc): no
    secret belongs there, secret input or not. The secrets a command has (the connection's
    key and password, its environment) are compared with its command lines as text."""
    if args.resource_type not in COMMAND_TYPES:
        return
    props = plain(args.props)
    connection = props.get("connection") if isinstance(props.get("connection"), dict) else {}
    environment = props.get("environment") if isinstance(props.get("environment"), dict) else {}
    known = {
        v
        for v in (connection.get("privateKey"), connection.get("password"), *environment.values())
        if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH and v is not UNKNOWN
    }
    for key in COMMAND_LINES:
        line = props.get(key)
        if not isinstance(line, str):
            continue
        why = secret_text_in(key, line, known)
        if why:
            report(
                f"'{key}' of {args.name} holds {why}: a command line is readable by every user "
                "of the machine (ps). Send secrets on stdin or in a mode-0600 file.",
                None,
            )


def secret_like_inputs(props: Mapping[str, Any]) -> Iterator[str]:
    """Dotted paths of inputs whose names look secret (for reports and tests)."""

    def walk(value: Any, path: str) -> Iterator[str]:
        if isinstance(value, Mapping):
            for key, item in value.items():
                sub = f"{path}.{key}" if path else str(key)
                if SECRET_NAME.search(str(key)):
                    yield sub
                else:
                    yield from walk(item, sub)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                yield from walk(item, f"{path}[{index}]")

    yield from walk(plain(props), "")


# --- the pack's policies -------------------------------------------------------------------------

PUBLIC_INGRESS = ResourceValidationPolicy(
    name="public-ingress-allowlist",
    description=(
        "Firewall and security-group ingress opens only 22/tcp, 51820/udp and, with "
        "allowPublicUi, 443/tcp."
    ),
    validate=validate_public_ingress,
    config_schema=PolicyConfigSchema(
        properties={
            ALLOW_PUBLIC_UI: {
                "type": "boolean",
                "default": False,
                "description": "The stack serves the Airflow UI publicly on 443/tcp (publicUi).",
            }
        }
    ),
)

SSH_NOT_FROM_INTERNET = ResourceValidationPolicy(
    name="ssh-not-from-internet",
    description="SSH (22/tcp) is open only to the admins' networks, never to 0.0.0.0/0 or ::/0.",
    validate=validate_ssh_source,
)

CLUSTER_PORTS_MESH_ONLY = ResourceValidationPolicy(
    name="cluster-ports-mesh-only",
    description=(
        "No ingress rule reaches etcd, PostgreSQL, Patroni, HAProxy, RabbitMQ, epmd, Flower, "
        "Airflow or csync2 ports: they are reached over the WireGuard mesh only."
    ),
    validate=validate_cluster_ports,
)

SERVER_HAS_FIREWALL = ResourceValidationPolicy(
    name="server-has-firewall",
    description="Every Hetzner server has a firewall; every EC2 instance a VPC security group.",
    validate=validate_server_firewall,
)

SECRET_INPUTS_ENCRYPTED = ResourceValidationPolicy(
    name="secret-inputs-encrypted",
    description=(
        "A command's secret-looking inputs (password, cookie, secret, private key, token) are "
        "Pulumi secrets; a plain one is wrapped as a secret before it is stored."
    ),
    remediate=remediate_plain_secrets,
    enforcement_level=EnforcementLevel.REMEDIATE,
)

SECRET_VALUES_ENCRYPTED = ResourceValidationPolicy(
    name="secret-values-encrypted",
    description=(
        "No input of any resource holds secret text in plain (a secret input's value again, a "
        "private key, a literal password: a Command's stdin or create, a server's user data); "
        "such a value is wrapped as a secret before it is stored."
    ),
    remediate=remediate_plain_secret_values,
    enforcement_level=EnforcementLevel.REMEDIATE,
)

NO_SECRET_ON_COMMAND_LINE = ResourceValidationPolicy(
    name="no-secret-on-command-line",
    description="A command's create/update/delete holds no secret (they are argv on the node).",
    validate=validate_command_lines,
)

POLICIES = [
    PUBLIC_INGRESS,
    SSH_NOT_FROM_INTERNET,
    CLUSTER_PORTS_MESH_ONLY,
    SERVER_HAS_FIREWALL,
    SECRET_INPUTS_ENCRYPTED,
    SECRET_VALUES_ENCRYPTED,
    NO_SECRET_ON_COMMAND_LINE,
]
