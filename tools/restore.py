"""Restore a stack's PostgreSQL cluster from its pgBackRest repository (docs/operations.md).

    python -m tools.restore --stack local --to "2026-12-02 22:10:00"   # point in time (UTC)
    python -m tools.restore --stack local --latest        # every archived WAL (all nodes lost)
    python -m tools.restore --stack prod --to ... --host fra=203.0.113.7 --host ...  # cloud nodes

It runs each node's `airflow-ha-restore` (templates/backup/restore.sh.j2) over SSH, in order:
`plan` on the restore node (nothing is stopped when the repository has no backup old enough),
then `stop` on every node (each keeps its data directory aside), `forget` (the cluster's state
in etcd), `restore` on the restore node (the lowest meshIndex, or --on), `rejoin` on the others
(they clone it), and a full backup of the new timeline. Airflow has no database from `stop` to
the restored primary: that is the downtime it prints. Afterwards run the deploy once (the
dynamic config and roles are checked again), as docs/operations.md says.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tools.engine import load_stack_file, stack_path

SCRIPT = "/usr/local/sbin/airflow-ha-restore"  # components/backup.py RESTORE_SCRIPT
BACKUP_SCRIPT = "/usr/local/sbin/airflow-ha-backup"


class RestoreError(SystemExit):
    """A step failed: the message says which node, which step and what it printed."""


@dataclass(frozen=True)
class Target:
    name: str
    mesh_index: int
    ssh: tuple[str, ...]


def targets(stack: str, hosts: dict[str, str]) -> list[Target]:
    """Every node of the stack and the ssh command to it (static nodes from the stack file,
    cloud nodes from --host), ordered by meshIndex."""
    values = load_stack_file(stack_path(stack))
    found = []
    for node in values["nodes"]:
        host = hosts.get(node["name"]) or node.get("host")
        if host is None:
            raise SystemExit(
                f"{node['name']} is a cloud node: give its public address with "
                f"--host {node['name']}=ADDRESS (pulumi stack output nodes)"
            )
        user = node.get("user", "admin" if node["cloud"] == "aws" else "root")
        ssh = ["ssh", "-p", str(node.get("port", 22))]
        if stack == "local":
            from tools.localcloud.machines import SSH_KEY_PATH, SSH_OPTIONS

            ssh += ["-i", str(SSH_KEY_PATH), *SSH_OPTIONS]
        ssh.append(f"{user}@{host}")
        if user != "root":
            ssh += ["sudo", "-n"]
        found.append(Target(node["name"], int(node["meshIndex"]), tuple(ssh)))
    return sorted(found, key=lambda t: t.mesh_index)


def utc_target(text: str) -> str:
    """--to as pgBackRest and PostgreSQL read it: UTC, microseconds, an explicit offset."""
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise SystemExit(
            f"--to {text!r} is not a time: write it as 2026-12-02 22:10:00 (UTC) or with an "
            "offset, 2026-12-02T23:10:00+01:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")


Run = Callable[[Target, Sequence[str]], str]


def ssh_run(target: Target, command: Sequence[str]) -> str:
    """Run a command on the node; its output is printed as it comes and returned."""
    # One shell word per argument on the node (ssh joins its arguments with spaces).
    proc = subprocess.Popen(
        [*target.ssh, shlex.join(command)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        print(f"  [{target.name}] {line}", end="", flush=True)
        lines.append(line)
    if proc.wait() != 0:
        raise RestoreError(
            f"{target.name}: {' '.join(command)} failed (exit status {proc.returncode}); "
            "see its output above and docs/operations.md (Restore) for the way back"
        )
    return "".join(lines)


def restore(nodes: list[Target], on: Target, target: str, run: Run = ssh_run,
            say: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole restore; the timings (s) it measured."""
    started = time.monotonic()
    say(f"== plan on {on.name}: restore to {target}")
    plan = run(on, [SCRIPT, "plan", target]).strip()
    say("== stop every node (from now on Airflow has no database)")
    down = time.monotonic()
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda n: run(n, [SCRIPT, "stop"]), nodes))
    run(on, [SCRIPT, "forget"])
    say(f"== restore on {on.name} (pgBackRest, then PostgreSQL replays the WAL)")
    run(on, [SCRIPT, "restore", target])
    primary_back = time.monotonic()
    others = [n for n in nodes if n != on]
    say(f"== rejoin {', '.join(n.name for n in others)} (each clones the restored primary)")
    with ThreadPoolExecutor(max(1, len(others))) as pool:
        list(pool.map(lambda n: run(n, [SCRIPT, "rejoin"]), others))
    replicas_back = time.monotonic()
    say("== a full backup of the restored cluster (its new timeline)")
    run(on, [BACKUP_SCRIPT, "full"])
    finished = time.monotonic()
    return {
        "target": target,
        "restored_on": on.name,
        "from_backup": plan,
        "downtime_s": round(primary_back - down, 1),
        "replicas_back_s": round(replicas_back - down, 1),
        "total_s": round(finished - started, 1),
    }


def _hosts(pairs: list[str]) -> dict[str, str]:
    hosts = {}
    for pair in pairs:
        name, sep, address = pair.partition("=")
        if not sep or not address:
            raise SystemExit(f"--host {pair!r}: write NODE=ADDRESS")
        hosts[name] = address
    return hosts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.restore",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--stack", default="local")
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--to", help="restore to this time (UTC unless it has an offset)")
    when.add_argument("--latest", action="store_true", help="replay every archived WAL")
    parser.add_argument("--on", help="the node that restores (default: the lowest meshIndex)")
    parser.add_argument("--host", action="append", default=[], help="NODE=ADDRESS (cloud)")
    parser.add_argument("--yes", action="store_true", help="do not ask before stopping")
    parser.add_argument("--json", help="also write the timings to this file")
    args = parser.parse_args(argv)
    target = "latest" if args.latest else utc_target(args.to)
    nodes = targets(args.stack, _hosts(args.host))
    on = next((n for n in nodes if n.name == args.on), None) if args.on else nodes[0]
    if on is None:
        raise SystemExit(f"--on {args.on}: not a node of {args.stack}")
    if not args.yes:
        answer = input(f"Stop PostgreSQL on every node of {args.stack} and restore to {target}? "
                       "Type the stack name: ")
        if answer.strip() != args.stack:
            print("nothing done")
            return 1
    result = restore(nodes, on, target)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
    print(f"next: python -m tools.deploy --stack {args.stack} (or pulumi up): the deploy checks "
          "the restored cluster's roles and dynamic config")
    return 0


if __name__ == "__main__":
    sys.exit(main())
