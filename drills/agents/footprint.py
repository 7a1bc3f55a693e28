"""The idle footprint of one node, by systemd unit; runs ON a node (standard library only).

    python3 footprint.py SECONDS LOG

Reads every unit's cgroup under system.slice twice, SECONDS apart: CPU is the cgroup's
usage_usec difference (as a share of one core), memory the sum of the proportional set size
(Pss, /proc/PID/smaps_rollup) of the unit's processes at the end (the local machines' cgroups
have no memory controller, so memory.current is not there). Writes one JSON document to LOG.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

SLICE = Path("/sys/fs/cgroup/system.slice")


def cpu_usec(unit: Path) -> int:
    for line in (unit / "cpu.stat").read_text().splitlines():
        key, value = line.split()
        if key == "usage_usec":
            return int(value)
    return 0


def pids(unit: Path) -> list[int]:
    found = []
    for root, _, files in os.walk(unit):
        if "cgroup.procs" in files:
            text = (Path(root) / "cgroup.procs").read_text()
            found += [int(p) for p in text.split()]
    return found


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:  # the process ended meanwhile
        pass
    return 0


def units() -> list[Path]:
    return sorted(p for p in SLICE.iterdir() if p.is_dir() and (p / "cpu.stat").exists())


def main() -> int:
    seconds = float(sys.argv[1])
    before = {u.name: cpu_usec(u) for u in units()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    result = {}
    for unit in units():
        procs = pids(unit)
        if not procs:
            continue
        used = cpu_usec(unit) - before.get(unit.name, cpu_usec(unit))
        result[unit.name.removesuffix(".service")] = {
            "cpu_percent": round(used / 1e6 / elapsed * 100, 2),
            "pss_mib": round(sum(pss_kib(p) for p in procs) / 1024, 1),
            "processes": len(procs),
        }
    with open(sys.argv[2], "w") as log:
        json.dump({"seconds": round(elapsed, 1), "units": result}, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
