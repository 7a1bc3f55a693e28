"""The cluster lock: one deploy or one drill at a time on the local machines.

Deploys (tools.deploy), drills (drills/) and the cluster tests all take this one flock on
/run/airflow-ha-cluster.lock, so that a drill never stops a machine under a deploy's step and
two drills never disturb the cluster at once. A process whose ancestor already holds the lock
goes ahead: taking it again would wait for itself. That ancestor is `flock LOCK cmd`, or a
ClusterLock holder (a drill that runs tools.deploy): it names itself in HOLDER_ENV, which its
children inherit.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO

LOCK_PATH = Path("/run/airflow-ha-cluster.lock")
HOLDER_ENV = "AIRFLOW_HA_CLUSTER_LOCK_HOLDER"  # "<pid> <lock path>" of the holding process


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        chain.append(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return chain


def held_by_ancestor(path: Path = LOCK_PATH, pid: int | None = None) -> bool:
    """Whether a process above this one holds `path`: `flock` on it (its command line names
    both), or a ClusterLock holder named in HOLDER_ENV (an inherited, stale value does not
    count: that process must be an ancestor)."""
    ancestors = _ancestors(os.getppid() if pid is None else pid)
    holder, _, held = os.environ.get(HOLDER_ENV, "").partition(" ")
    if holder.isdigit() and int(holder) in ancestors and held == str(path):
        return True
    for ancestor in ancestors:
        try:
            cmdline = Path(f"/proc/{ancestor}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # the process is gone: nobody above holds it for us
            return False
        if b"flock" in cmdline and str(path).encode() in cmdline:
            return True
    return False


class ClusterLock:
    """`with ClusterLock():` holds the lock; waits `timeout` seconds for it (None: for ever)
    and then raises TimeoutError. Says once that it waits, and who might hold it."""

    def __init__(self, timeout: float | None = None, path: Path = LOCK_PATH) -> None:
        self.timeout = timeout
        self.path = path
        self.handle: IO[str] | None = None

    def __enter__(self) -> ClusterLock:
        if held_by_ancestor(self.path):
            return self
        handle = open(self.path, "a")
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.handle = handle
                os.environ[HOLDER_ENV] = f"{os.getpid()} {self.path}"  # for its children
                return self
            except BlockingIOError:
                if not announced:
                    print(f"waiting for {self.path} (a deploy or a drill holds it)", flush=True)
                    announced = True
                if deadline is not None and time.monotonic() > deadline:
                    handle.close()
                    raise TimeoutError(
                        f"{self.path} still held after {self.timeout:.0f}s"
                    ) from None
                time.sleep(1)

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
            os.environ.pop(HOLDER_ENV, None)
