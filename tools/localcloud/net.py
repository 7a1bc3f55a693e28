"""Host networking: the bridge, IPv4 forwarding, the NAT/filter table and partitions."""

from __future__ import annotations

import json
from pathlib import Path

from .machines import (
    BRIDGE,
    GATEWAY,
    NFT_TABLE,
    PARTITION_TABLE,
    PREFIX_LENGTH,
    STATE_DIR,
    SUBNET,
    Machine,
)
from .util import LocalCloudError, run

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
IP_FORWARD_SAVED = STATE_DIR / "ip_forward.orig"

# Machines may reach each other and the bridge address (where the S3 endpoint listens,
# GATEWAY:S3_PORT); towards anything else only DNS and HTTP(S) leave (masqueraded), and only
# replies come back. The host's other addresses are closed.
NAT_RULESET = f"""\
table inet {NFT_TABLE}
delete table inet {NFT_TABLE}
table inet {NFT_TABLE} {{
    chain forward {{
        type filter hook forward priority filter - 5; policy accept;
        iifname "{BRIDGE}" oifname "{BRIDGE}" accept
        oifname "{BRIDGE}" ct state established,related accept
        oifname "{BRIDGE}" drop
        iifname "{BRIDGE}" ct state established,related accept
        iifname "{BRIDGE}" meta nfproto ipv4 udp dport 53 accept
        iifname "{BRIDGE}" meta nfproto ipv4 tcp dport {{ 53, 80, 443 }} accept
        iifname "{BRIDGE}" drop
    }}
    chain input {{
        type filter hook input priority filter - 5; policy accept;
        iifname "{BRIDGE}" meta nfproto ipv6 drop
        iifname "{BRIDGE}" fib daddr type local ip daddr != {GATEWAY} drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {SUBNET} ip daddr != {SUBNET} masquerade
    }}
}}
"""

# Frames from or to a partitioned machine's veth are dropped at the bridge, whatever they carry
# (ARP, ICMP, TCP, WireGuard's UDP 51820): to the other machines and to the host alike.
PARTITION_RULESET = f"""\
table bridge {PARTITION_TABLE} {{
    set cut {{
        type ifname
    }}
    chain forward {{
        type filter hook forward priority -200; policy accept;
        iifname @cut drop
        oifname @cut drop
    }}
    chain input {{
        type filter hook input priority -200; policy accept;
        iifname @cut drop
    }}
    chain output {{
        type filter hook output priority -200; policy accept;
        oifname @cut drop
    }}
}}
"""


def nft(script: str) -> None:
    run(["nft", "-f", "-"], input_text=script)


def nft_table_exists(family: str, table: str) -> bool:
    return run(["nft", "list", "table", family, table], check=False).returncode == 0


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def bridge_up() -> None:
    if not link_exists(BRIDGE):
        run(["ip", "link", "add", "name", BRIDGE, "type", "bridge"])
    addresses = json.loads(run(["ip", "-j", "-4", "addr", "show", "dev", BRIDGE]).stdout or "[]")
    have = {
        (a.get("local"), a.get("prefixlen"))
        for link in addresses
        for a in link.get("addr_info", [])
    }
    if (GATEWAY, PREFIX_LENGTH) not in have:
        run(["ip", "addr", "add", f"{GATEWAY}/{PREFIX_LENGTH}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def bridge_down() -> None:
    if link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE])


def delete_link(name: str) -> None:
    if link_exists(name):
        run(["ip", "link", "del", name], check=False)


def forwarding_on() -> None:
    current = IP_FORWARD.read_text(encoding="ascii").strip()
    if not IP_FORWARD_SAVED.exists():
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        IP_FORWARD_SAVED.write_text(current + "\n", encoding="ascii")
    if current != "1":
        IP_FORWARD.write_text("1\n", encoding="ascii")


def forwarding_restore() -> str | None:
    """Put back the ip_forward value seen before ``up``; return it (None if nothing saved)."""
    if not IP_FORWARD_SAVED.exists():
        return None
    old = IP_FORWARD_SAVED.read_text(encoding="ascii").strip()
    if old not in ("0", "1"):
        raise LocalCloudError(f"unexpected saved ip_forward value {old!r} in {IP_FORWARD_SAVED}")
    IP_FORWARD.write_text(old + "\n", encoding="ascii")
    IP_FORWARD_SAVED.unlink()
    return old


def firewall_up() -> None:
    nft(NAT_RULESET)


def firewall_down() -> None:
    if nft_table_exists("inet", NFT_TABLE):
        run(["nft", "delete", "table", "inet", NFT_TABLE])


def partitioned() -> list[str]:
    """Host-side veth names currently cut off."""
    result = run(["nft", "-j", "list", "set", "bridge", PARTITION_TABLE, "cut"], check=False)
    if result.returncode != 0:
        return []
    names: list[str] = []
    for item in json.loads(result.stdout).get("nftables", []):
        elements = item.get("set", {}).get("elem", [])
        names += [e for e in elements if isinstance(e, str)]
    return names


def partition(machine: Machine) -> None:
    if not nft_table_exists("bridge", PARTITION_TABLE):
        nft(PARTITION_RULESET)
    if machine.veth not in partitioned():
        run(["nft", "add", "element", "bridge", PARTITION_TABLE, "cut", f'{{ "{machine.veth}" }}'])


def heal(machine: Machine) -> None:
    if machine.veth in partitioned():
        element = f'{{ "{machine.veth}" }}'
        run(["nft", "delete", "element", "bridge", PARTITION_TABLE, "cut", element])
    if nft_table_exists("bridge", PARTITION_TABLE) and not partitioned():
        partitions_down()


def partitions_down() -> None:
    if nft_table_exists("bridge", PARTITION_TABLE):
        run(["nft", "delete", "table", "bridge", PARTITION_TABLE])
