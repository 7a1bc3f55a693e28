"""The runbook's commands that the drills and the cluster tests run themselves.

docs/operations.md marks each block of such commands with `<!-- runnable -->`; every command
in those blocks is one of COMMANDS, word for word, and every one of COMMANDS is in such a block
and is run somewhere in drills/ or tests/ (tests/unit/test_runbook.py). So what an operator is
told to type on a node is what the drills and tests exercise; where they need more (JSON output,
an environment variable) they add it to the runbook's command, never retype it.

Placeholders are written as in the runbook, `<current leader>`; command() fills them.
"""

from __future__ import annotations

import re

PATRONICTL = "patronictl -c /etc/patroni/config.yml"
# The six Airflow units of every node, in the order the deploy's start step stops and starts
# them.
AIRFLOW_UNITS = (
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-flower",
)

COMMANDS: dict[str, str] = {
    # 1. Reading the health of each tier
    "wg-handshakes": "wg show wg0 latest-handshakes",
    "etcd-health": "etcdctl --endpoints=http://127.0.0.1:2379 endpoint health --cluster",
    "patroni-list": f"{PATRONICTL} list",
    "patroni-show-config": f"{PATRONICTL} show-config",
    "airflow-units-active": "systemctl is-active " + " ".join(AIRFLOW_UNITS),
    "schedulers-alive": "airflow jobs check --job-type SchedulerJob --allow-multiple --limit 100",
    # 5. Planned switchover of the PostgreSQL primary
    "patroni-switchover": (
        f"{PATRONICTL} switchover --leader <current leader> --candidate <sync standby> --force"
    ),
}

PLACEHOLDER = re.compile(r"<([a-z][a-z ]*)>")


def command(name: str, **values: str) -> str:
    """The command `name` with its placeholders filled: <current leader> from current_leader=.
    Raises KeyError for a value the command has no placeholder for, ValueError for one left."""
    text = COMMANDS[name]
    for key, value in values.items():
        placeholder = f"<{key.replace('_', ' ')}>"
        if placeholder not in text:
            raise KeyError(f"{name!r} has no placeholder {placeholder}: {text}")
        text = text.replace(placeholder, value)
    left = PLACEHOLDER.findall(text)
    if left:
        raise ValueError(f"{name!r}: no value for {', '.join(f'<{p}>' for p in left)}")
    return text
