"""The idle footprint benchmark: CPU and memory per node and per unit, with nothing running.

    python -m drills.footprint [--seconds 120] [--out DIR]

Waits until the cluster is healthy, lets it settle, then samples every node at once for
`seconds` (drills/agents/footprint.py: each systemd unit's cgroup CPU time and its
processes' Pss). Prints a table per node and writes <time>-footprint-<host>.json to DIR
(default drills/results). CPU is in % of one core. On these machines wireguard-go (the
`system-wg\\x2dquick.slice`, userspace WireGuard) is an artefact: cloud nodes run WireGuard in
the kernel, where it costs no process at all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from drills import common, failover
from drills.common import Agent
from drills.nodes import NODES, RESULTS, say, ssh

TIERS = {
    "airflow": ("airflow-",),
    "database": ("patroni", "etcd", "haproxy"),
    "broker": ("rabbitmq-server", "epmd"),
    "mesh (userspace here)": ("system-wg",),
}


def tier_of(unit: str) -> str:
    for tier, prefixes in TIERS.items():
        if unit.startswith(prefixes):
            return tier
    return "system"


def sample(seconds: float) -> dict[str, Any]:
    agents = {node: Agent(node, "footprint.py", args=(str(seconds),)) for node in NODES}
    time.sleep(seconds + 2)
    result = {}
    for node, agent in agents.items():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = ssh(node, f"cat {agent.log} 2>/dev/null || true").stdout
            if text.strip():
                result[node] = json.loads(text)
                break
            time.sleep(2)
        agent.stop()
    return result


def summarise(samples: dict[str, Any]) -> dict[str, Any]:
    nodes = {}
    for node, doc in samples.items():
        tiers: dict[str, dict[str, float]] = {}
        for unit, figures in doc["units"].items():
            tier = tiers.setdefault(tier_of(unit), {"cpu_percent": 0.0, "pss_mib": 0.0})
            tier["cpu_percent"] = round(tier["cpu_percent"] + figures["cpu_percent"], 2)
            tier["pss_mib"] = round(tier["pss_mib"] + figures["pss_mib"], 1)
        nodes[node] = {
            "cpu_percent": round(sum(u["cpu_percent"] for u in doc["units"].values()), 1),
            "pss_mib": round(sum(u["pss_mib"] for u in doc["units"].values()), 1),
            "tiers": tiers,
            "units": doc["units"],
        }
    return nodes


def text_table(nodes: dict[str, Any]) -> str:
    units = sorted({u for n in nodes.values() for u in n["units"]})
    units = [u for u in units if any(n["units"].get(u, {}).get("pss_mib", 0) >= 5 for n in
                                     nodes.values())]
    head = "| unit | " + " | ".join(f"{n} CPU % / MiB" for n in nodes) + " |"
    lines = [head, "|---" * (len(nodes) + 1) + "|"]
    for unit in units:
        cells = []
        for node in nodes.values():
            f = node["units"].get(unit)
            cells.append(f"{f['cpu_percent']:.1f} / {f['pss_mib']:.0f}" if f else "-")
        lines.append(f"| {unit} | " + " | ".join(cells) + " |")
    lines.append(
        "| **node total** | "
        + " | ".join(f"**{n['cpu_percent']:.1f} / {n['pss_mib']:.0f}**" for n in nodes.values())
        + " |"
    )
    return "\n".join(lines)


def run(seconds: float, settle: float) -> dict[str, Any]:
    with common.lock():
        common.wait_healthy(common.mesh_addresses(), failover.db_password(), timeout=900)
        say(f"healthy; settling {settle:.0f} s, then sampling {seconds:.0f} s on every node")
        time.sleep(settle)
        samples = sample(seconds)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": common.host_machine(),
        "seconds": seconds,
        "nodes": summarise(samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drills.footprint", description=__doc__)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--settle", type=float, default=60)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--label", default="", help="added to the result file's name")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (it reaches the local machines)")
    doc = run(args.seconds, args.settle)
    print(text_table(doc["nodes"]))
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    label = f"-{args.label}" if args.label else ""
    path = args.out / f"{stamp}-footprint{label}-{os.uname().nodename}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
