"""The declared schema of the stack config: every `airflow-ha:` key and every node field.

Each `Key` has its type, default, one-line doc and validator; components/config.py parses
through these declarations and nothing else declares a default. The README's key table is
generated from them (`python -m tools.config_doc --write`).

A validator takes the raw value and its key path and returns the parsed value or raises
`ConfigError` naming the key, what was found and the fix. Values that land in shell scripts
or config files on the nodes (names, hosts, users) are held to conservative patterns; the
templates shell-quote them as well (components/remote.py, the `sh` filter).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NAMESPACE = "airflow-ha"


class ConfigError(ValueError):
    """A stack config that cannot be deployed; the message names the key and the fix."""

    def __init__(self, key: str, problem: str, fix: str, prefix: str = f"{NAMESPACE}:") -> None:
        self.key = key
        super().__init__(f"{prefix}{key}: {problem}. Fix: {fix}")


# --- describing what was found -------------------------------------------------------------


def describe(value: Any) -> str:
    """A short, safe description of a raw value for an error message."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"the text {shown!r}"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def did_you_mean(key: str, known: Sequence[str]) -> str | None:
    """The known key `key` is most likely a typo of (case first, then spelling)."""
    by_lower = {k.lower(): k for k in known}
    if key.lower() in by_lower:
        return by_lower[key.lower()]
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def refuse_unknown(raw: Mapping[Any, Any], known: Sequence[str], path: str, what: str) -> None:
    """Refuse every key of `raw` that is not declared; `path` prefixes it in the message."""
    for key in raw:
        if key in known:
            continue
        name = str(key)
        full = f"{path}.{name}" if path else name
        guess = did_you_mean(name, known)
        if guess is None:
            raise ConfigError(full, f"is not a key of {what}", f"use one of {', '.join(known)}")
        case_only = guess.lower() == name.lower()
        raise ConfigError(
            full,
            f"is not a key of {what}" + (" (keys are case-sensitive)" if case_only else ""),
            f"did you mean {guess}?",
        )


# --- basic types -----------------------------------------------------------------------------

# One line, no control characters: what any string that reaches a node may hold at most.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def as_str(value: Any, key: str, what: str = "text") -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected {what}, found {describe(value)}", f"write {what}")
    if _CONTROL.search(value):
        raise ConfigError(
            key,
            f"{value!r} holds a newline or another control character",
            "write it on one line",
        )
    return value


def as_int(value: Any, key: str, low: int, high: int | None = None, unit: str = "") -> int:
    """A whole number (pulumi stores numbers as text: "17" is 17) in [low, high]."""
    wanted = f"a whole number{unit}"
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(key, f"expected {wanted}, found {describe(value)}", f"write {wanted}")
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value.strip()):
        value = int(value)
    if not isinstance(value, int | float):
        raise ConfigError(key, f"expected {wanted}, found {describe(value)}", f"write {wanted}")
    number = int(value)
    if number < low or (high is not None and number > high):
        span = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise ConfigError(key, f"{number} is out of range", f"use a number {span}")
    return number


def as_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(key, f"{describe(value)} is not true or false", "write true or false")


def as_list(value: Any, key: str, what: str, example: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of {what}, found {describe(value)}", example)
    return value


def as_mapping(value: Any, key: str, example: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping, found {describe(value)}", example)
    return value


# --- the patterns of values that reach the nodes -------------------------------------------

DNS_LABEL_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
# An RFC 1123 host name; the last label not all digits, so that 10.0.0.300 is not a name.
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)
# A login (useradd's default NAME_REGEX, without the trailing '$' of machine accounts).
LOGIN_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# The Airflow admin: also the local part of its e-mail and Flower's `user:password`.
ADMIN_USER_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
SIZE_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
AWS_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
AIRFLOW_VERSION_RE = re.compile(r"^3\.\d+\.\d+$")
SSH_PUBLIC_KEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\x00-\x1f\x7f]*)?$"
)
# Names a node may not take: they already mean something in every /etc/hosts.
RESERVED_NAMES = frozenset(
    {
        "localhost",
        "localhost4",
        "localhost6",
        "localdomain",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
    }
)
HCLOUD_LOCATIONS = ("fsn1", "nbg1", "hel1", "ash", "hil", "sin")
CLOUDS = ("hcloud", "aws", "static")
SUPPORTED_POSTGRES = (17,)  # what Debian 13 ships
DAG_SYNC_MODES = ("csync2",)
MAX_NODES = 7


def node_name(value: Any, key: str) -> str:
    name = as_str(value, key, "a DNS label")
    if not DNS_LABEL_RE.match(name):
        raise ConfigError(
            key,
            f"{name!r} is not a DNS label",
            "use lower-case letters, digits and '-', starting with a letter, at most 63",
        )
    if name in RESERVED_NAMES:
        raise ConfigError(
            key, f"{name!r} is a reserved host name", "pick another name, e.g. the region"
        )
    return name


def host(value: Any, key: str) -> str:
    """A public IPv4 address or a DNS name: it lands in wg0.conf, SSH and firewall rules."""
    text = as_str(value, key, "an IPv4 address or a DNS name").strip()
    if not text:
        raise ConfigError(
            key,
            "is empty: a static node needs the address of the existing server",
            "set host to its public (reachable) address",
        )
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if HOSTNAME_RE.match(text):
            return text.lower()
        raise ConfigError(
            key,
            f"{text!r} is neither an IP address nor a DNS name",
            "write the server's address, e.g. 203.0.113.7 or db1.example.com",
        ) from None
    if address.version == 6:
        raise ConfigError(
            key,
            f"{text} is an IPv6 address: the mesh endpoints and firewall rules are IPv4",
            "give the server's IPv4 address or a DNS name with an A record",
        )
    if address.is_unspecified or address.is_loopback or address.is_multicast:
        raise ConfigError(
            key,
            f"{text} is not an address other nodes can reach",
            "give the server's reachable IPv4 address",
        )
    return str(address)


def matching(
    value: Any, key: str, expected: str, pattern: re.Pattern[str], problem: str, fix: str
) -> str:
    """A string that `pattern` matches; else one error naming the key, the value and the fix."""
    text = as_str(value, key, expected)
    if not pattern.match(text):
        raise ConfigError(key, f"{text!r} {problem}", fix)
    return text


def matcher(
    expected: str, pattern: re.Pattern[str], problem: str, fix: str
) -> Callable[[Any, str], str]:
    """The validator of a key whose value is a string `pattern` matches (see matching)."""

    def check(value: Any, key: str) -> str:
        return matching(value, key, expected, pattern, problem, fix)

    return check


login_user = matcher(
    "a user name", LOGIN_USER_RE, "is not a plain login name",
    "use lower-case letters, digits, '_' and '-', starting with a letter or '_', at most 32",
)
admin_user = matcher(
    "a user name", ADMIN_USER_RE, "is not a plain user name",
    "use lower-case letters, digits, '_' and '-', starting with a letter, at most 32",
)


def port(value: Any, key: str) -> int:
    return as_int(value, key, 1, 65535)


def one_of(choices: Sequence[Any], what: str) -> Callable[[Any, str], Any]:
    def check(value: Any, key: str) -> Any:
        if isinstance(value, bool) or value not in choices:
            raise ConfigError(
                key,
                f"{describe(value)} is not {what}",
                f"use one of {', '.join(str(c) for c in choices)}",
            )
        return value

    return check


def cloud(value: Any, key: str) -> str:
    return one_of(CLOUDS, "a known cloud")(value, key)


def hcloud_location(value: Any, key: str) -> str:
    return one_of(HCLOUD_LOCATIONS, "a Hetzner Cloud location")(value, key)


aws_region = matcher(
    "an AWS region code", AWS_REGION_RE, "is not an AWS region",
    "use a region code such as eu-central-1",
)
size = matcher(
    "a server type", SIZE_RE, "is not a server type", "write one such as cx32 or m6i.xlarge"
)


def mesh_index(value: Any, key: str) -> int:
    # The upper bound depends on meshCidr: components/config.py checks it.
    return as_int(value, key, 1)


def private_ipv4_network(value: Any, key: str) -> ipaddress.IPv4Network:
    text = as_str(value, key, "a network CIDR")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise ConfigError(
            key, f"{text!r} is not a network CIDR", "write it like 10.42.0.0/24"
        ) from None
    if not isinstance(network, ipaddress.IPv4Network) or not network.is_private:
        raise ConfigError(
            key, f"{text} is not a private IPv4 network", "use a range from 10.0.0.0/8"
        )
    return network


def aws_vpc_network(value: Any, key: str) -> ipaddress.IPv4Network:
    network = private_ipv4_network(value, key)
    # AWS takes /16 to /28; the node's subnet is the VPC's first /24 (components/nodes.py).
    if not 16 <= network.prefixlen <= 24:
        raise ConfigError(
            key,
            f"{network} is a /{network.prefixlen}: the VPC must hold the node's /24 subnet",
            "use a /16 to /24, e.g. 10.80.0.0/16",
        )
    return network


def cidr_list(value: Any, key: str) -> tuple[str, ...]:
    example = "list the networks of your admins, e.g. [203.0.113.0/24]"
    items = as_list(value, key, "CIDRs", example)
    if not items:
        raise ConfigError(key, "is empty: nobody could reach SSH", example)
    cidrs = []
    for index, item in enumerate(items):
        text = as_str(item, f"{key}[{index}]", "a CIDR")
        try:
            cidrs.append(str(ipaddress.ip_network(text.strip(), strict=True)))
        except ValueError:
            raise ConfigError(
                key, f"{text!r} is not a CIDR", "write each entry like 203.0.113.7/32"
            ) from None
    return tuple(cidrs)


def internet_wide(cidr: str) -> bool:
    """0.0.0.0/0, ::/0, or a public range as wide as a /8 (IPv4) or a /16 (IPv6): the same
    rule as the policy pack's ssh-not-from-internet (policy/airflow_ha_policies.py)."""
    network = ipaddress.ip_network(cidr)
    if network.prefixlen == 0:
        return True
    widest = 8 if network.version == 4 else 16
    return network.prefixlen <= widest and not network.is_private


def ssh_public_key(
    value: Any,
    key: str,
    fix: str = 'pulumi config set sshPublicKey "$(cat ~/.ssh/id_ed25519.pub)"',
) -> str:
    text = as_str(value, key, "an OpenSSH public key").strip()
    if not SSH_PUBLIC_KEY_RE.match(text):
        raise ConfigError(key, f"{describe(text)} is not an OpenSSH public key", fix)
    return text


def host_key(value: Any, key: str) -> str:
    """A server's Ed25519 SSH host key, `ssh-ed25519 AAAA...` (the comment dropped)."""
    fix = (
        "copy the server's /etc/ssh/ssh_host_ed25519_key.pub, read on its console or over a "
        "connection you already trust (not from ssh-keyscan over the network)"
    )
    text = as_str(value, key, "an ssh-ed25519 public key").strip()
    parts = text.split()
    try:
        blob = base64.b64decode(parts[1], validate=True) if len(parts) >= 2 else b""
    except (binascii.Error, ValueError):
        blob = b""
    expected = len(b"ssh-ed25519").to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big")
    if parts[:1] != ["ssh-ed25519"] or len(blob) != len(expected) + 32 or not blob.startswith(
        expected
    ):
        raise ConfigError(key, f"{describe(text)} is not an ssh-ed25519 public key", fix)
    return " ".join(parts[:2])


def ssh_public_keys(value: Any, key: str) -> tuple[str, ...]:
    fix = "list each key as the one line of its .pub file, e.g. [\"ssh-ed25519 AAAA... alice\"]"
    items = as_list(value, key, "OpenSSH public keys", fix)
    return tuple(ssh_public_key(item, f"{key}[{i}]", fix) for i, item in enumerate(items))


def same_ssh_key(a: str, b: str) -> bool:
    """Two authorized_keys lines of one key (type and key; the comment aside)."""
    return a.split()[:2] == b.split()[:2]


# The offline render's stand-in for a secret it cannot read (tools/engine.py).
SECRET_PLACEHOLDER_RE = re.compile(r"^<secret:[A-Za-z0-9_.-]+>$")
OPENSSH_PRIVATE_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
OPENSSH_PRIVATE_END = "-----END OPENSSH PRIVATE KEY-----"
OPENSSH_PRIVATE_MAGIC = b"openssh-key-v1\x00"


def _ssh_string(data: bytes, at: int) -> tuple[bytes, int]:
    """One SSH wire-format string (uint32 length, bytes) at `at`; it and the next offset."""
    if at + 4 > len(data):
        raise ValueError("it ends early")
    length = int.from_bytes(data[at : at + 4], "big")
    end = at + 4 + length
    if end > len(data):
        raise ValueError("it ends early")
    return data[at + 4 : end], end


def openssh_public_half(text: str) -> str:
    """The authorized_keys line of an OpenSSH-format private key's public half.

    The format (OpenSSH's PROTOCOL.key) keeps the public key in the clear ahead of the private
    part, even when a passphrase encrypts that part: no cryptography is needed to read it.
    Raises ValueError saying what is wrong; the message never holds the key's content.
    """
    lines = [line.strip() for line in text.strip().splitlines()]
    if not lines or lines[0] != OPENSSH_PRIVATE_BEGIN or lines[-1] != OPENSSH_PRIVATE_END:
        raise ValueError("not in OpenSSH's format")
    try:
        data = base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error:
        raise ValueError("its body is not base64") from None
    if not data.startswith(OPENSSH_PRIVATE_MAGIC):
        raise ValueError("its body does not start with openssh-key-v1")
    at = len(OPENSSH_PRIVATE_MAGIC)
    for _ in ("cipher", "kdf", "kdf options"):
        _, at = _ssh_string(data, at)
    if data[at : at + 4] != (1).to_bytes(4, "big"):
        raise ValueError("it does not hold exactly one key")
    blob, _ = _ssh_string(data, at + 4)
    kind, _ = _ssh_string(blob, 0)
    line = f"{kind.decode('ascii', 'replace')} {base64.b64encode(blob).decode()}"
    if not SSH_PUBLIC_KEY_RE.match(line):
        raise ValueError("its public key is of no type sshd takes")
    return line


def deploy_public_key(text: str | None, key: str) -> str | None:
    """The public half of the sshPrivateKey text (None: the offline render's placeholder).

    Every node keeps it authorized (templates/base/authorized-keys.sh.j2): the deploy's own key
    is the one no config change may drop, so it has to be known."""
    if text is None or SECRET_PLACEHOLDER_RE.match(text.strip()):
        return None
    try:
        return openssh_public_half(text)
    except ValueError as exc:
        # Never the value itself in the message: it is the secret key.
        raise ConfigError(
            key,
            f"its public half cannot be read ({exc}); every node keeps that key authorized, "
            "so that no change of the keys can lock the deploy out",
            "give the key in OpenSSH's format (-----BEGIN OPENSSH PRIVATE KEY-----); "
            "ssh-keygen -p -f <file> rewrites a PEM key so, the key staying the same",
        ) from None


def secret(value: Any, key: str) -> Any:
    # A pulumi secret Output (or plain text in tests): its content is unknown when parsing.
    if isinstance(value, str) and not value.strip():
        raise ConfigError(
            key, "is empty", "pulumi config set --secret sshPrivateKey < ~/.ssh/id_ed25519"
        )
    return value


airflow_version = matcher(
    "an Airflow version", AIRFLOW_VERSION_RE, "is not an Airflow 3.x.y version",
    "pin an Airflow 3 release, e.g. 3.3.2",
)


def postgres_version(value: Any, key: str) -> int:
    number = as_int(value, key, 1)
    if number not in SUPPORTED_POSTGRES:
        raise ConfigError(
            key, f"{number} is not packaged by Debian 13", f"use one of {SUPPORTED_POSTGRES}"
        )
    return number


def consumer_timeout(value: Any, key: str) -> int:
    number = as_int(value, key, 0, unit=" of milliseconds")
    if number < 60_000:
        raise ConfigError(
            key,
            f"{number} ms would kill long tasks' channels",
            "use at least 60000 (1 min); the default is one day",
        )
    return number


def boolean(value: Any, key: str) -> bool:
    return as_bool(value, key)


def seconds(low: int, high: int = 3600) -> Callable[[Any, str], int]:
    def check(value: Any, key: str) -> int:
        return as_int(value, key, low, high, unit=" of seconds")

    return check


def byte_count(value: Any, key: str) -> int:
    return as_int(value, key, 0, unit=" of bytes")


def concurrency(value: Any, key: str) -> int:
    return as_int(value, key, 1, 256)


# --- alerting (the monitoring tier) ---------------------------------------------------------

RECEIVER_KINDS = ("webhook", "email", "slack")
# Per kind: the receiver's own fields (besides name and kind) and which of them are required.
# The secret part (webhook and Slack URL, SMTP password) is never here: alertReceiverSecrets.
RECEIVER_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "webhook": ((), ()),
    "slack": (("channel",), ()),
    "email": (("to", "from", "smarthost", "authUsername"), ("to", "from", "smarthost")),
}
# Which kinds need an entry in alertReceiverSecrets (email without SMTP auth needs none).
RECEIVER_SECRET_REQUIRED = ("webhook", "slack")
EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
SMARTHOST_RE = re.compile(r"^[A-Za-z0-9.-]+:\d{1,5}$")
SLACK_CHANNEL_RE = re.compile(r"^[#@]?[a-z0-9._-]{1,80}$")
URL_RE = re.compile(r"^https?://[^\s\"'<>\\]+$")
# A runbook base: an http(s) URL, or a path inside this repository (links readable as text).
RUNBOOK_RE = re.compile(r"^(https?://[^\s\"'<>\\#]+|[A-Za-z0-9._/-]+\.md)$")


@dataclass(frozen=True)
class AlertReceiver:
    """One Alertmanager receiver from the stack config (its secret part: alertReceiverSecrets)."""

    name: str
    kind: str
    fields: tuple[tuple[str, str], ...]  # (field, value) of RECEIVER_FIELDS[kind], as given

    def field(self, name: str) -> str | None:
        return dict(self.fields).get(name)


_RECEIVER_FIELD_CHECKS: dict[str, tuple[re.Pattern[str], str]] = {
    "to": (EMAIL_RE, "an e-mail address"),
    "from": (EMAIL_RE, "an e-mail address"),
    "smarthost": (SMARTHOST_RE, "host:port of the SMTP server"),
    "authUsername": (LOGIN_USER_RE, "a plain user name"),
    "channel": (SLACK_CHANNEL_RE, "a Slack channel such as #alerts"),
}


def _receiver(item: Any, key: str) -> AlertReceiver:
    example = "e.g. {name: ops, kind: webhook}"
    entry = as_mapping(item, key, example)
    kind = one_of(RECEIVER_KINDS, "a receiver kind")(entry.get("kind"), f"{key}.kind")
    optional, required = RECEIVER_FIELDS[kind]
    refuse_unknown(entry, ["name", "kind", *optional], key, f"a {kind} receiver")
    fields = []
    for name in optional:
        if entry.get(name) is None:
            if name in required:
                raise ConfigError(f"{key}.{name}", "is missing", f"set {name} of the receiver")
            continue
        pattern, what = _RECEIVER_FIELD_CHECKS[name]
        fields.append((name, matching(entry[name], f"{key}.{name}", what, pattern,
                                      f"is not {what}", f"write {what}")))
    return AlertReceiver(node_name(entry.get("name"), f"{key}.name"), kind, tuple(fields))


def alert_receivers(value: Any, key: str) -> tuple[AlertReceiver, ...]:
    items = as_list(value, key, "receivers", "e.g. [{name: ops, kind: webhook}]")
    receivers = tuple(_receiver(item, f"{key}[{i}]") for i, item in enumerate(items))
    names = [r.name for r in receivers]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(key, f"the receiver name {name!r} is used twice", "name each once")
    return receivers


def receiver_secrets_text(text: str | None, key: str) -> dict[str, str] | None:
    """alertReceiverSecrets' plain text as a mapping (None: not set, or the offline render's
    placeholder). The message never holds a value."""
    if text is None or SECRET_PLACEHOLDER_RE.match(text.strip()):
        return None
    fix = "pulumi config set --secret alertReceiverSecrets '{\"ops\": \"https://...\"}'"
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(key, "is not a JSON mapping", fix) from None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v and not _CONTROL.search(v)
        for k, v in parsed.items()
    ):
        raise ConfigError(key, "is not a mapping of receiver names to one-line texts", fix)
    return parsed


def check_receiver_secrets(
    receivers: Sequence[AlertReceiver], secrets: Mapping[str, str] | None, key: str
) -> None:
    """Every webhook and Slack receiver has its URL; no secret names an unknown receiver."""
    if secrets is None:
        return
    kinds = {r.name: r.kind for r in receivers}
    for name in secrets:
        if name not in kinds:
            raise ConfigError(key, f"names {name!r}, which is no receiver", "drop it or add it")
        if kinds[name] != "email" and not URL_RE.match(secrets[name]):
            raise ConfigError(key, f"the value for {name!r} is not an http(s) URL", "give the URL")
    for receiver in receivers:
        if receiver.kind in RECEIVER_SECRET_REQUIRED and receiver.name not in secrets:
            raise ConfigError(
                key, f"has no URL for the {receiver.kind} receiver {receiver.name!r}",
                f"add \"{receiver.name}\": \"https://...\" to the secret mapping",
            )


def optional_secret(value: Any, key: str) -> Any:
    """A Pulumi secret Output (or plain text in tests), checked by its key's own rules."""
    return value


runbook_url = matcher(
    "a URL or a .md path", RUNBOOK_RE, "is neither an http(s) URL nor a path to a .md file",
    "give the web address of docs/operations.md, e.g. https://git.example.com/airflow-ha/"
    "blob/main/docs/operations.md",
)


# A PostgreSQL setting's name (a custom one has a dot: auto_explain.log_min_duration) and a
# value of a safe form: a number, a word, a size or a duration ("256MB", "5min", "on").
PG_PARAMETER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?$")
PG_VALUE_RE = re.compile(r"^-?[A-Za-z0-9_.]{1,64}$")
# What Patroni sets itself (its own settings win) or what the cluster's wiring depends on.
PG_OWNED = frozenset({
    "listen_addresses", "port", "cluster_name", "data_directory", "hba_file", "ident_file",
    "config_file", "hot_standby", "wal_level", "primary_conninfo", "primary_slot_name",
    "recovery_target_timeline", "synchronous_standby_names", "unix_socket_directories",
    # WAL archiving: the backup tier's (backup.archiveTimeout for the timeout).
    "archive_mode", "archive_command", "archive_timeout", "restore_command",
})


def postgres_parameters(value: Any, key: str) -> dict[str, str | int]:
    """postgresParameters: PostgreSQL setting -> value, applied through Patroni's dynamic
    config (a setting that needs a restart rolls node by node)."""
    raw = as_mapping(value, key, "write postgresParameters: {shared_buffers: 512MB}")
    parsed: dict[str, str | int] = {}
    for name, setting in raw.items():
        path = f"{key}.{name}"
        if not isinstance(name, str) or not PG_PARAMETER_RE.fullmatch(name):
            raise ConfigError(path, f"{name!r} is not a PostgreSQL setting's name",
                              "use the setting's name as postgresql.conf spells it, in "
                              "lower case (work_mem, shared_buffers)")
        if name in PG_OWNED:
            raise ConfigError(path, "is set by Patroni or the program itself",
                              "remove it from postgresParameters")
        if isinstance(setting, bool):
            parsed[name] = "on" if setting else "off"
        elif isinstance(setting, int) or (isinstance(setting, str) and setting.isdigit()):
            parsed[name] = int(setting)
        elif isinstance(setting, str | float) and PG_VALUE_RE.fullmatch(str(setting)):
            parsed[name] = str(setting)
        else:
            raise ConfigError(path, f"{describe(setting)} is not a plain PostgreSQL value",
                              "write a number, a word or a size or time with its unit "
                              "(64MB, 5min, on)")
    return parsed


# --- object storage (backups and task logs) -------------------------------------------------

S3_REGION_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
# S3's bucket naming rules (the DNS-compatible form: it also works in host-style URLs).
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# A systemd OnCalendar expression of plain characters (systemd-analyze calendar checks the rest
# in the tests): "Sun *-*-* 01:00:00", "daily", "Mon..Sat 02:30".
ON_CALENDAR_RE = re.compile(r"^[A-Za-z0-9*:,./~ +-]{1,64}$")
PEM_CERT_RE = re.compile(
    r"^\s*(-----BEGIN CERTIFICATE-----\s+[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----\s*)+$"
)
URI_STYLES = ("host", "path")

s3_region = matcher(
    "an S3 region", S3_REGION_RE, "is not an S3 region name",
    "write the region the endpoint signs for, e.g. eu-central-1 (AWS) or fsn1 (Hetzner)",
)
bucket_name = matcher(
    "a bucket name", BUCKET_RE, "is not an S3 bucket name",
    "use 3-63 lower-case letters, digits, '.' and '-', starting and ending with a letter or digit",
)
on_calendar = matcher(
    "a systemd calendar expression", ON_CALENDAR_RE, "is not a plain OnCalendar expression",
    'write it as systemd.time(7) does, e.g. "Sun *-*-* 01:00:00" or "Mon..Sat 01:00"',
)


def pem_certificate(value: Any, key: str) -> str:
    # Not as_str: a PEM certificate is the one text here that spans lines (the pattern lets
    # whitespace and base64 through, nothing else).
    if not isinstance(value, str):
        raise ConfigError(
            key, f"expected a PEM certificate, found {describe(value)}", "write a PEM certificate"
        )
    text = value
    if not PEM_CERT_RE.match(text):
        raise ConfigError(
            key, "is not a PEM certificate",
            "give the CA certificate's text, -----BEGIN CERTIFICATE----- to its END line",
        )
    return value.strip() + "\n"


def hours(value: Any, key: str) -> int:
    return as_int(value, key, 1, 24 * 31, unit=" of hours")


def retention(value: Any, key: str) -> int:
    return as_int(value, key, 1, 99)


# --- the declarations ------------------------------------------------------------------------

REQUIRED = object()  # marks a key without a default


@dataclass(frozen=True)
class Key:
    """One stack config key (or node / patroni field)."""

    name: str
    kind: str  # as the README shows it: text, number, true/false, list, mapping, secret
    doc: str
    check: Callable[[Any, str], Any]
    default: Any = REQUIRED
    shown_default: str | None = None  # the README's form of the default, when not the value

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def parse(self, raw: Mapping[str, Any], path: str) -> Any:
        """The key's parsed value from `raw` (None counts as not set)."""
        value = raw.get(self.name)
        if value is None:
            if self.required:
                raise ConfigError(path, "is missing", f"set {self.name}: {self.doc}")
            if self.default is None:
                return None
            value = self.default  # defaults go through the same validator
        return self.check(value, path)

    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.required:
            return "required"
        if isinstance(self.default, bool):
            return f"`{str(self.default).lower()}`"
        return f"`{self.default}`"


PATRONI_KEYS: tuple[Key, ...] = (
    Key("ttl", "number", "leader lock lifetime in seconds (at least 20, Patroni's minimum)",
        seconds(20), 30),
    Key("loopWait", "number", "seconds between Patroni's HA loops", seconds(1), 10),
    Key("retryTimeout", "number", "seconds an etcd or PostgreSQL call may take before demotion",
        seconds(3), 10),
    Key("synchronousMode", "true/false",
        "commit only once a standby has the WAL: a failover loses no acknowledged commit",
        boolean, True),
    Key("maximumLagOnFailover", "number",
        "bytes a replica may lag and still be promoted", byte_count, 1048576),
    Key("failsafeMode", "true/false",
        "keep the primary while every member answers even if etcd is down", boolean, True),
)

OBJECT_STORAGE_KEYS: tuple[Key, ...] = (
    Key("endpoint", "text",
        "the S3 API's host name or IPv4 address, without https:// (s3.eu-central-1.amazonaws.com, "
        "fsn1.your-objectstorage.com)", host),
    Key("port", "number", "its HTTPS port (pgBackRest speaks only HTTPS to S3)", port, 443),
    Key("region", "text", "the region the endpoint signs requests for", s3_region),
    Key("bucket", "text",
        "the bucket (an existing one, or the one create makes): backups go to "
        "/<stack>/pgbackrest, task logs to /<stack>/task-logs", bucket_name),
    Key("uriStyle", "text", "host (bucket.endpoint, AWS and Hetzner) or path (endpoint/bucket)",
        one_of(URI_STYLES, "an S3 URI style"), "host"),
    Key("caCertificate", "text",
        "the PEM CA certificate of the endpoint's TLS certificate, when no public CA signs it",
        pem_certificate, None, "the system's CAs"),
    Key("create", "true/false",
        "the program makes the bucket (AWS S3 only: an aws node's stack, an s3.<region>."
        "amazonaws.com endpoint) and two keys, one per prefix, for the backups and the task logs",
        boolean, False),
)

BACKUP_KEYS: tuple[Key, ...] = (
    Key("fullSchedule", "text", "when a full backup runs (systemd OnCalendar, UTC)",
        on_calendar, "Sun *-*-* 01:00:00"),
    Key("diffSchedule", "text", "when a differential backup runs (systemd OnCalendar, UTC)",
        on_calendar, "Mon..Sat *-*-* 01:00:00"),
    Key("retentionFull", "number",
        "full backups kept; an older one expires with its differentials and WAL", retention, 2),
    Key("archiveTimeout", "number",
        "seconds at most before a WAL segment is archived even if not full: the bound on the "
        "writes lost when every node is lost (RPO)", seconds(10, 3600), 60),
    Key("alertAfterHours", "number",
        "hours without a finished backup before BackupTooOld fires: above the schedules' "
        "longest gap plus a backup's duration", hours, 49),
)

NODES_DOC = (
    f"the nodes, an odd count from 3 to {MAX_NODES}: each a mapping of the node fields below"
)

TOP_KEYS: tuple[Key, ...] = (
    Key("nodes", "list", NODES_DOC, lambda value, key: value),  # parsed by config._parse_nodes
    Key("adminCidrs", "list", "networks that may reach SSH (22/tcp)", cidr_list),
    Key("allowSshFromAnywhere", "true/false",
        "let adminCidrs hold 0.0.0.0/0, ::/0 or a public range as wide as a /8 (/16 for IPv6)",
        boolean, False),
    Key("sshPublicKey", "text",
        "the deploy's OpenSSH public key: new servers are created with it, and every node's "
        "authorized_keys holds it",
        ssh_public_key, None, "required with hcloud or aws nodes"),
    Key("sshPrivateKey", "secret",
        "the private key the deploy steps log in with (OpenSSH format); every node keeps its "
        "public half authorized", secret),
    Key("sshExtraPublicKeys", "list",
        "more OpenSSH public keys every node's login user accepts (admins; the next deploy key "
        "during a rotation)", ssh_public_keys, [], "`[]`"),
    Key("protectServers", "true/false",
        "mark cloud servers, their disks and public addresses `protect`ed: no `pulumi up` or "
        "`destroy` deletes or replaces one until it is unprotected",
        boolean, True),
    Key("meshCidr", "text",
        "private IPv4 network of the WireGuard mesh; a node's address is host meshIndex of it",
        private_ipv4_network, "10.42.0.0/24"),
    Key("awsVpcCidr", "text", "the VPC of AWS nodes (must not overlap meshCidr)",
        aws_vpc_network, "10.80.0.0/16"),
    Key("airflowVersion", "text",
        "the Airflow release; installed from its committed lock file in templates/airflow/",
        airflow_version, "3.3.2"),
    Key("postgresVersion", "number", "the PostgreSQL major version (Debian 13's)",
        postgres_version, 17),
    Key("patroni", "mapping", "Patroni timings and modes: the patroni fields below",
        lambda value, key: value, {}, "see below"),  # parsed by config._parse_patroni
    Key("postgresParameters", "mapping",
        "PostgreSQL settings (name: value) over the program's, in Patroni's dynamic config; "
        "one that needs a restart restarts the replicas one by one, then the primary after a "
        "switchover", postgres_parameters, {}, "`{}`"),
    Key("publicUi", "true/false", "open 443/tcp to the Airflow UI (https) on every node",
        boolean, False),
    Key("rabbitmqConsumerTimeoutMs", "number",
        "longest a worker may hold a task's message, in ms (at least 60000)",
        consumer_timeout, 86_400_000, "`86400000` (one day)"),
    Key("rabbitmqNetTicktimeS", "number",
        "seconds until RabbitMQ declares a silent peer (a machine lost) down (5-120)",
        # Below 5 s a short loss on a WAN link would already split the cluster.
        seconds(5, 120), 10, "`10` (Erlang's default is 60)"),
    Key("celeryWorkerConcurrency", "number", "task slots of each node's Celery worker (1-256)",
        concurrency, 8),
    Key("airflowAdminUser", "text", "the Airflow (and Flower) admin's user name",
        admin_user, "admin"),
    Key("dagSync", "text", "how DAG files reach every node", one_of(DAG_SYNC_MODES, "a known mode"),
        "csync2"),
    Key("objectStorage", "mapping",
        "the S3-compatible object storage of the backups and the task logs: the objectStorage "
        "fields below; none: no backups, and task logs stay on the node that ran the task",
        lambda value, key: value, None, "none"),  # parsed by config._parse_object_storage
    Key("objectStorageAccessKey", "secret",
        "the object storage's access key ID (the backups', and the task logs' without "
        "taskLogAccessKey)", optional_secret, None,
        "required with objectStorage, refused with create"),
    Key("objectStorageSecretKey", "secret", "the object storage's secret access key",
        optional_secret, None, "required with objectStorage, refused with create"),
    Key("taskLogAccessKey", "secret",
        "a key ID of the task logs' own: every task can read the task logs' key, so give them "
        "one that cannot reach /<stack>/pgbackrest (runbook section 11)", optional_secret, None,
        "the backups' key; refused with create"),
    Key("taskLogSecretKey", "secret", "its secret access key (set both or neither)",
        optional_secret, None, "the backups' key; refused with create"),
    Key("backup", "mapping", "pgBackRest's schedule and retention: the backup fields below",
        lambda value, key: value, {}, "see below"),  # parsed by config._parse_object_storage
    Key("alertReceivers", "list",
        "where Alertmanager sends alerts: each {name, kind: webhook|email|slack, ...} (email: "
        "to, from, smarthost, authUsername; slack: channel); none: alerts stay in its UI",
        alert_receivers, [], "`[]`"),
    Key("alertReceiverSecrets", "secret",
        "JSON mapping of receiver name to its secret part: the webhook or Slack URL, the SMTP "
        "password", optional_secret, None, "none"),
    Key("alertRunbookUrl", "text",
        "base of the alerts' runbook links (each alert adds #its-name): the web address of "
        "docs/operations.md", runbook_url, "docs/operations.md"),
)

_CLOUD_HOST_KEY = Key(
    "hostKey", "text",
    "the server's ssh-ed25519 host key, only for a server made before the program generated "
    "host keys (a new server gets one from the program)", host_key, None, "generated",
)

_COMMON_NODE_KEYS: tuple[Key, ...] = (
    Key("name", "text", "a DNS label, unique; the host name and every tier's member name",
        node_name),
    Key("cloud", "text", f"where it runs: {', '.join(CLOUDS)}", cloud),
    Key("meshIndex", "number",
        "the node's mesh address is host meshIndex of meshCidr; unique, never reused",
        mesh_index),
)

NODE_KEYS: dict[str, tuple[Key, ...]] = {
    "hcloud": (
        *_COMMON_NODE_KEYS,
        Key("location", "text", f"Hetzner location: {', '.join(HCLOUD_LOCATIONS)}",
            hcloud_location),
        Key("size", "text", "Hetzner server type", size, "cx22"),
        _CLOUD_HOST_KEY,
    ),
    "aws": (
        *_COMMON_NODE_KEYS,
        Key("region", "text", "AWS region code, e.g. eu-central-1", aws_region),
        Key("size", "text", "EC2 instance type", size, "t3.medium"),
        _CLOUD_HOST_KEY,
    ),
    "static": (
        *_COMMON_NODE_KEYS,
        Key("host", "text", "the existing server's public IPv4 address or DNS name", host),
        Key("user", "text", "SSH login (root, or a user with passwordless sudo)",
            login_user, "root"),
        Key("port", "number", "SSH port (1-65535)", port, 22),
        Key("hostKey", "text",
            "the server's ssh-ed25519 host key (its /etc/ssh/ssh_host_ed25519_key.pub): every "
            "connection checks it", host_key),
    ),
}


def names(keys: Iterable[Key]) -> list[str]:
    return [k.name for k in keys]


def top_key(name: str) -> Key:
    return next(k for k in TOP_KEYS if k.name == name)
