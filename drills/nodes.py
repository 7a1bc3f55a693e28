"""Reaching the local machines from the host: their names, SSH, the folder the drills use on
them, tools.localcloud's commands, and the secrets the local deploy generated.

Every other module of drills/ builds on this one. It needs only tools.localcloud and the
host's python3 (the standalone drills, `python3 -m drills.failover` and the like, run there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tools.localcloud.machines import MACHINES, by_name, ssh_command

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
AGENTS = HERE / "agents"  # the scripts the drills copy to a node and run there
RESULTS = HERE / "results"  # the committed figures (docs/ renders its tables from them)
STATE_FILE = REPO / ".deploy-state" / "local.json"  # tools.deploy's state of the local stack
DRILL_DIR = "/run/airflow-ha-drill"  # on the nodes (tmpfs): agents, their logs
NODES = [m.name for m in MACHINES]
# How long a standalone drill waits for the cluster lock (another drill or a deploy has it).
DRILL_LOCK_TIMEOUT_S = 1800

Log = Callable[[str], None]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def ssh(
    node: str, command: str, timeout: float = 120, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a shell command as root on a node; with check, raise RuntimeError with its stderr."""
    result = subprocess.run(
        ssh_command(by_name(node), command),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"on {node}: {command!r} exited {result.returncode}: "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result


def deploy_secret(key: str, env_var: str, what: str) -> str:
    """A secret of the local deploy: $env_var if set, else tools.deploy's state file (`key` is
    its name there, e.g. "airflow-db-password/password"); exits saying how to get one."""
    if os.environ.get(env_var):
        return os.environ[env_var]
    try:
        return json.loads(STATE_FILE.read_text())["secrets"][key]
    except (OSError, KeyError, ValueError) as exc:
        raise SystemExit(
            f"no {what}: deploy the local stack first (python3 -m tools.deploy --stack local)"
            f" or set {env_var} ({type(exc).__name__}: {exc})"
        ) from None


def localcloud(*args: str, timeout: float = 600) -> None:
    """`python3 -m tools.localcloud ARGS` (stop, start, partition, heal, destroy machines)."""
    subprocess.run(
        [sys.executable, "-m", "tools.localcloud", *args], cwd=REPO, check=True, timeout=timeout
    )
