"""The fixed shape of the local cloud: machine names, addresses, paths.

Other code (tests, the deploy's local stack) imports these constants instead of repeating them.
"""

from __future__ import annotations

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

SSH_USER = "root"
SSH_OPTIONS: tuple[str, ...] = (
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
)


def by_name(name: str) -> Machine:
    """Return the machine called ``name`` or raise KeyError naming the valid ones."""
    for machine in MACHINES:
        if machine.name == name:
            return machine
    valid = ", ".join(m.name for m in MACHINES)
    raise KeyError(f"unknown machine {name!r} (known: {valid})")


def ssh_command(machine: Machine, *command: str, connect_timeout: int = 5) -> list[str]:
    """The ssh argv that runs ``command`` as root on ``machine`` with the tool's key."""
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
