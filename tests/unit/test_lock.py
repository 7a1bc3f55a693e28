"""The one cluster lock (tools/localcloud/lock.py) that deploys, drills and cluster tests share."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.localcloud.lock import ClusterLock

REPO = Path(__file__).resolve().parents[2]


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
    probe = [
        sys.executable,
        "-c",
        "import sys; from pathlib import Path; from tools.localcloud.lock import ClusterLock\n"
        "with ClusterLock(timeout=2, path=Path(sys.argv[1])) as lock:\n"
        "    print('ancestor' if lock.handle is None else 'took it')",
        str(path),
    ]
    command = ["sh", "-c", '"$@"; true', "sh", *probe] if through_a_shell else probe
    out = subprocess.run(
        ["flock", str(path), *command], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ancestor"
