"""The local machines (tools.localcloud) behave like three small cloud VMs.

Runs against machines already started with `python3 -m tools.localcloud up` (as root):
    pytest -m cluster tests/cluster/test_localcloud.py
It stops/starts node-c and partitions it briefly; everything is back as found at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tools.localcloud.machines import MACHINES, Machine, by_name, ssh_command

REPO = Path(__file__).resolve().parents[2]
VICTIM = by_name("node-c")
WITNESS = by_name("node-b")

pytestmark = pytest.mark.cluster


def _machines_up() -> bool:
    if os.geteuid() != 0:
        return False
    from tools.localcloud.runtime import is_running

    return all(is_running(m) for m in MACHINES)


if not _machines_up():
    pytest.fail(
        "needs root and the machines running (python3 -m tools.localcloud up)", pytrace=False
    )


def ssh(machine: Machine, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ssh_command(machine, command, connect_timeout=3),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def localcloud(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "tools.localcloud", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def on_all(command: str) -> dict[str, subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(len(MACHINES)) as pool:
        results = pool.map(lambda m: ssh(m, command), MACHINES)
    return {m.name: r for m, r in zip(MACHINES, results, strict=True)}


def test_every_machine_answers_ssh_with_its_own_name_and_a_booted_systemd() -> None:
    for name, result in on_all("hostname; systemctl is-system-running").items():
        assert result.returncode in (0, 1), result.stderr  # 1 = degraded, still booted
        hostname, state = result.stdout.split()
        assert hostname == name
        assert state in ("running", "degraded")


def test_each_machine_reaches_the_others_by_bridge_address() -> None:
    for source in MACHINES:
        targets = " ".join(m.address for m in MACHINES if m != source)
        script = f"for a in {targets}; do ping -c 1 -W 2 -q $a >/dev/null || echo FAIL $a; done"
        result = ssh(source, script)
        assert result.returncode == 0 and "FAIL" not in result.stdout, (source.name, result)


def test_tun_device_is_usable_for_wireguard_go() -> None:
    for name, result in on_all(
        "ip tuntap add mode tun dev tuntest && ip tuntap del mode tun dev tuntest && echo ok"
    ).items():
        assert result.stdout.strip() == "ok", (name, result.stderr)


# CI runs the machine-stop drill instead: a power cut, the disk kept, every part back.
@pytest.mark.full
def test_a_power_cut_and_restart_keep_the_disk() -> None:
    marker = uuid.uuid4().hex
    assert ssh(VICTIM, f"echo {marker} > /root/localcloud-marker && sync").returncode == 0

    localcloud("stop", "--kill", VICTIM.name)
    assert ssh(VICTIM, "true", timeout=15).returncode != 0
    localcloud("start", VICTIM.name)

    assert ssh(VICTIM, "cat /root/localcloud-marker").stdout.strip() == marker
    ssh(VICTIM, "rm -f /root/localcloud-marker")


def test_partition_cuts_a_machine_off_and_heal_restores_it() -> None:
    ping = f"ping -c 2 -i 0.3 -W 1 -q {VICTIM.address}"
    assert ssh(WITNESS, ping).returncode == 0
    try:
        localcloud("partition", VICTIM.name)
        assert ssh(WITNESS, ping).returncode != 0
    finally:
        localcloud("heal", VICTIM.name)
    assert ssh(WITNESS, ping).returncode == 0
