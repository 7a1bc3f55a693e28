"""The fixed shape of the local cloud: machine names, addresses, paths.

Other code (tests, the deploy's local stack) imports these constants instead of repeating them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Machine:
    """One local Debian 13 machine (a systemd-nspawn container booted with systemd)."""

    name: str
    address: str

    @property
    def veth(self) -> str:
        """Host side of the machine's veth pair, as systemd-nspawn names it."""
        return f"vb-{self.name}"


MACHINES: tuple[Machine, ...] = (
    Machine("node-a", "172.31.77.11"),
    Machine("node-b", "172.31.77.12"),
    Machine("node-c", "172.31.77.13"),
)

BRIDGE = "afha0"
GATEWAY = "172.31.77.1"
PREFIX_LENGTH = 24
SUBNET = "172.31.77.0/24"

NFT_TABLE = "airflow_ha_localcloud"  # family inet: NAT + forward filter
PARTITION_TABLE = "airflow_ha_partition"  # family bridge: partition/heal

STATE_DIR = Path("/var/lib/airflow-ha/localcloud")
SSH_KEY_PATH = STATE_DIR / "id_ed25519"
CACHE_DIR = Path("/var/cache/airflow-ha")
BASE_DIR = CACHE_DIR / "trixie-base"

MACHINES_DIR = STATE_DIR / "machines"
# The machines' host keys, as ssh checks them (written from their disks by write_known_hosts).
KNOWN_HOSTS = STATE_DIR / "known_hosts"
HOST_KEY_FILE = "etc/ssh/ssh_host_ed25519_key.pub"

# The S3 endpoint (tools/localcloud/s3.py) that stands in for the cloud's object storage: moto's
# S3 over HTTPS on the bridge address, its certificate signed by a CA of its own. moto takes any
# credentials; these fixed ones are what the local stack gives the nodes (tools.deploy).
S3_DIR = STATE_DIR / "s3"
S3_CA = S3_DIR / "ca.pem"
S3_PORT = 9000
S3_BUCKET = "airflow-ha-local"
S3_REGION = "us-east-1"
S3_ACCESS_KEY = "AFHALOCALTESTACCESS"
S3_SECRET_KEY = "airflow-ha-local-test-secret-not-a-secret"

SSH_USER = "root"
# Every host key is checked (tools.deploy adds its own known_hosts file to these; ssh takes the
# first value of an option, so the file is not part of them).
SSH_CHECK_OPTIONS: tuple[str, ...] = (
    "-o",
    "StrictHostKeyChecking=yes",
    "-o",
    "HostKeyAlgorithms=ssh-ed25519",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
)
# The machines' own: the disk's key, made before the first boot.
SSH_OPTIONS = (*SSH_CHECK_OPTIONS, "-o", f"UserKnownHostsFile={KNOWN_HOSTS}")


def host_keys(machines_dir: Path = MACHINES_DIR) -> dict[str, str]:
    """Each machine's ed25519 host key (`ssh-ed25519 AAAA...`), read from its disk, where
    the disk's creation generated it before the first boot (runtime.create_disk); a machine
    without a disk is left out."""
    keys = {}
    for machine in MACHINES:
        path = machines_dir / machine.name / "upper" / HOST_KEY_FILE
        if path.exists():
            keys[machine.name] = " ".join(path.read_text(encoding="utf-8").split()[:2])
    return keys


def known_hosts_lines(hosts: Mapping[tuple[str, int], str]) -> str:
    """known_hosts text: one `host key` line per (host, port) (`[host]:port` off port 22)."""
    return "".join(
        f"{host if port == 22 else f'[{host}]:{port}'} {key}\n"
        for (host, port), key in sorted(hosts.items())
    )


def write_known_hosts(path: Path = KNOWN_HOSTS, machines_dir: Path = MACHINES_DIR) -> None:
    """(Re)write the local cloud's known_hosts from the disks (0600); no disks: nothing."""
    keys = host_keys(machines_dir)
    if not keys:
        return
    text = known_hosts_lines({(m.address, 22): keys[m.name] for m in MACHINES if m.name in keys})
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)
    tmp.replace(path)


def by_name(name: str) -> Machine:
    """Return the machine called ``name`` or raise KeyError naming the valid ones."""
    for machine in MACHINES:
        if machine.name == name:
            return machine
    valid = ", ".join(m.name for m in MACHINES)
    raise KeyError(f"unknown machine {name!r} (known: {valid})")


def ssh_command(machine: Machine, *command: str, connect_timeout: int = 5) -> list[str]:
    """The ssh argv that runs ``command`` as root on ``machine`` with the tool's key, checking
    the machine's host key (known_hosts refreshed from the disks, cheap: three small files)."""
    with contextlib.suppress(OSError):  # not root: ssh then says the host key is unknown
        write_known_hosts()
    return [
        "ssh",
        "-i",
        str(SSH_KEY_PATH),
        *SSH_OPTIONS,
        "-o",
        f"ConnectTimeout={connect_timeout}",
        f"{SSH_USER}@{machine.address}",
        *command,
    ]
