"""Cluster tests: the `local` stack deployed by the real program onto three local machines.

`make test-cluster` brings the machines up (tools.localcloud) and deploys (tools.deploy) before
pytest; the `cluster` fixture does both again idempotently (seconds when nothing changed), so a
single test file can also be run alone: `.venv/bin/pytest -m cluster tests/cluster/test_x.py`.
Set AIRFLOW_HA_NO_DEPLOY=1 to test what is deployed without deploying.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tools.localcloud.machines import MACHINES, by_name, ssh_command

REPO = Path(__file__).resolve().parents[2]
NODES = [m.name for m in MACHINES]
# Files run in this order: the foundation first, each tier after the ones it needs, then the
# idempotence check, then the drills that stop machines.
ORDER = [
    "test_localcloud",
    "test_foundation",
    "test_database",
    "test_broker",
    "test_airflow",
    "test_idempotence",
    "test_drills",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        stem = Path(str(item.fspath)).stem
        return ORDER.index(stem) if stem in ORDER else len(ORDER)

    items.sort(key=rank)


def run_tool(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """Run `python -m <args>` from the repo root, echoing its output into the test log."""
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    print(result.stdout)
    print(result.stderr, file=sys.stderr)
    return result


def ssh(
    node: str, command: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a shell command as root on a node; with check, fail the test with its stderr."""
    result = subprocess.run(
        ssh_command(by_name(node), command), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"on {node}: {command!r} exited {result.returncode}:\n{result.stderr}{result.stdout}"
        )
    return result


@pytest.fixture(scope="session")
def cluster() -> Callable[..., subprocess.CompletedProcess[str]]:
    """The machines up and the local stack deployed; returns the `ssh` helper."""
    if os.geteuid() != 0:
        pytest.fail("cluster tests need root (they run systemd-nspawn machines)")
    up = run_tool("tools.localcloud", "up", timeout=900)
    assert up.returncode == 0, f"tools.localcloud up failed:\n{up.stderr}"
    if os.environ.get("AIRFLOW_HA_NO_DEPLOY") != "1":
        deployed = run_tool("tools.deploy", "--stack", "local")
        assert deployed.returncode == 0, f"deploy failed:\n{deployed.stderr}"
    return ssh
