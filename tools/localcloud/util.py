"""Small helpers shared by the localcloud modules: running commands, checks, output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

REQUIRED_COMMANDS: dict[str, str] = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "nft": "nftables",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "setsid": "util-linux",
    "mount": "mount",
    "openssl": "openssl",  # the S3 endpoint's CA and certificate
}


class LocalCloudError(Exception):
    """A failure the CLI reports as one clear line and a non-zero exit."""


def log(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"localcloud: warning: {message}", file=sys.stderr, flush=True)


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input_text: str | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``, capture its output; raise LocalCloudError on failure when ``check``."""
    try:
        result = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except FileNotFoundError as exc:
        raise LocalCloudError(f"command not found: {argv[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        if check:
            raise LocalCloudError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
        return subprocess.CompletedProcess(list(argv), 124, "", "timeout")
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise LocalCloudError(
            f"`{' '.join(argv)}` failed with exit code {result.returncode}: {detail}"
        )
    return result


def require_root() -> None:
    if os.geteuid() != 0:
        raise LocalCloudError("must run as root (it manages containers, mounts, nftables)")


def require_commands() -> None:
    missing = sorted({pkg for cmd, pkg in REQUIRED_COMMANDS.items() if shutil.which(cmd) is None})
    if missing:
        raise LocalCloudError(
            "missing host packages; install them with: apt-get install -y " + " ".join(missing)
        )
    with open("/proc/filesystems", encoding="ascii") as handle:
        if "overlay" not in handle.read():
            raise LocalCloudError("the kernel has no overlayfs (try: modprobe overlay)")


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.5) -> bool:
    """Call ``predicate`` until it returns true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
