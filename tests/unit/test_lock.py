"""The one cluster lock (tools/localcloud/lock.py) that deploys, drills and cluster tests share."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.localcloud.lock import HOLDER_ENV, ClusterLock

REPO = Path(__file__).resolve().parents[2]


def _probe(path: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from pathlib import Path; from tools.localcloud.lock import ClusterLock\n"
        "with ClusterLock(timeout=2, path=Path(sys.argv[1])) as lock:\n"
        "    print('ancestor' if lock.handle is None else 'took it')",
        str(path),
    ]


def test_a_second_holder_waits_then_times_out_and_gets_it_once_released(tmp_path) -> None:
    path = tmp_path / "cluster.lock"
    with ClusterLock(path=path):
        started = time.monotonic()
        with pytest.raises(TimeoutError), ClusterLock(timeout=1, path=path):
            pass
        assert time.monotonic() - started >= 1
    with ClusterLock(timeout=1, path=path) as lock:
        assert lock.handle is not None
    assert lock.handle is None


@pytest.mark.skipif(shutil.which("flock") is None, reason="no flock(1) here")
@pytest.mark.parametrize("through_a_shell", [False, True])
def test_under_flock_of_the_same_file_it_does_not_wait_for_itself(
    tmp_path, through_a_shell
) -> None:
    """`flock LOCK make ...`: the deploy or drill below (a grandchild too) goes straight on."""
    path = tmp_path / "cluster.lock"
    probe = _probe(path)
    command = ["sh", "-c", '"$@"; true', "sh", *probe] if through_a_shell else probe
    out = subprocess.run(
        ["flock", str(path), *command], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ancestor"


def test_a_deploy_started_by_a_holder_does_not_wait_for_it(tmp_path) -> None:
    """A drill holds the lock and runs tools.deploy (the total-loss drill): no deadlock."""
    path = tmp_path / "cluster.lock"
    with ClusterLock(path=path):
        out = subprocess.run(_probe(path), cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ancestor"


def test_an_inherited_holder_that_is_no_ancestor_does_not_count(tmp_path) -> None:
    """A stale value (the holder is gone, or another lock file) makes nobody skip the lock."""
    path = tmp_path / "cluster.lock"
    other = tmp_path / "other.lock"
    with ClusterLock(path=path):
        for value in ("1 " + str(path), f"{os.getpid()} {other}"):
            out = subprocess.run(_probe(path), cwd=REPO, capture_output=True, text=True,
                                 timeout=30, env={**os.environ, HOLDER_ENV: value})
            assert out.returncode == 1 and "TimeoutError" in out.stderr, (value, out)
    assert HOLDER_ENV not in os.environ  # released: a later child is no longer covered
