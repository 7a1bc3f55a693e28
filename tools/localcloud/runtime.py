"""Machine lifecycle: disks (overlays), cgroups, the systemd-nspawn supervisor, stop and start."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import stat
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .base import installed_recipe
from .machines import (
    BASE_DIR,
    BRIDGE,
    GATEWAY,
    MACHINES_DIR,
    PREFIX_LENGTH,
    SSH_KEY_PATH,
    STATE_DIR,
    Machine,
    ssh_command,
)
from .net import delete_link
from .util import LocalCloudError, log, run, wait_until, warn

CGROUP_NAME = "airflow-ha-localcloud"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# systemd-nspawn keeps a lock file per image and a mount-propagation directory per machine here;
# on hosts where /run is not a tmpfs they outlive the machine unless removed.
NSPAWN_RUN = Path("/run/systemd/nspawn")
# A booted machine starts the whole cluster tier by tier; with the host's two cores busy (the
# other two machines catching up, tests beside them) that took over 180 s once.
BOOT_TIMEOUT = 300.0
STOP_TIMEOUT = 60.0


def _cgroup_roots() -> tuple[Path, Path | None]:
    """(cgroup2 mount, name=systemd v1 mount or None) of the host."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return CGROUP_ROOT, None  # pure unified hierarchy
    unified = CGROUP_ROOT / "unified"
    if not (unified / "cgroup.controllers").exists():
        raise LocalCloudError(
            "no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified; "
            "Debian 13's systemd needs the unified hierarchy"
        )
    legacy = CGROUP_ROOT / "systemd"
    return unified, legacy if (legacy / "cgroup.procs").exists() else None


def cgroup_tops() -> list[Path]:
    """The tool's top cgroup directories (one per hierarchy it uses)."""
    unified, legacy = _cgroup_roots()
    return [root / CGROUP_NAME for root in (unified, legacy) if root is not None]


@dataclass(frozen=True)
class Paths:
    """Where one machine's disk and runtime files live."""

    machine: Machine

    @property
    def dir(self) -> Path:
        return MACHINES_DIR / self.machine.name

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def disk_marker(self) -> Path:
        return self.dir / "disk-base"

    @property
    def wrapper_pid(self) -> Path:
        return self.dir / "supervisor.pid"

    @property
    def nspawn_pid(self) -> Path:
        return self.dir / "nspawn.pid"

    @property
    def lock_record(self) -> Path:
        return self.dir / "nspawn-lock"

    @property
    def local_lock(self) -> Path:
        return self.dir / ".#root.lck"

    @property
    def propagate_dir(self) -> Path:
        return NSPAWN_RUN / "propagate" / self.machine.name

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def supervisor(self) -> Path:
        return self.dir / "supervisor.sh"

    @property
    def cgroups(self) -> list[Path]:
        return [top / self.machine.name for top in cgroup_tops()]

    @property
    def unified_cgroup(self) -> Path:
        return self.cgroups[0]


# ---------------------------------------------------------------- state queries


def mount_points() -> list[Path]:
    points: list[Path] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            field = line.split()[4]
            points.append(Path(field.encode().decode("unicode_escape")))
    return points


def is_mounted(path: Path) -> bool:
    return path in mount_points()


def our_mounts() -> list[Path]:
    return [p for p in mount_points() if p == STATE_DIR or STATE_DIR in p.parents]


def is_running(machine: Machine) -> bool:
    events = Paths(machine).unified_cgroup / "cgroup.events"
    try:
        return "populated 1" in events.read_text(encoding="ascii")
    except OSError:
        return False


def ssh_ok(machine: Machine, timeout: int = 3) -> bool:
    if not SSH_KEY_PATH.exists():
        return False
    argv = ssh_command(machine, "true", connect_timeout=timeout)
    return run(argv, check=False, timeout=timeout + 5).returncode == 0


def ssh_output(
    machine: Machine, command: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return run(ssh_command(machine, command), check=False, timeout=timeout)


def has_disk(machine: Machine) -> bool:
    return Paths(machine).disk_marker.exists()


# ---------------------------------------------------------------- disk


def _mkdir_like_base(upper: Path, relative: str, default_mode: int = 0o755) -> Path:
    """Create ``upper/relative`` with each level's mode and owner copied from the base.

    An overlay shows the upper directory's attributes, so a directory made here with the
    wrong mode (say /root as 0755) would change the machine's view of it.
    """
    current_upper, current_base = upper, BASE_DIR
    for part in Path(relative).parts:
        current_upper, current_base = current_upper / part, current_base / part
        if current_upper.is_dir():
            continue
        if current_base.is_dir():
            info = current_base.stat()
            current_upper.mkdir()
            os.chown(current_upper, info.st_uid, info.st_gid)
            os.chmod(current_upper, stat.S_IMODE(info.st_mode))
        else:
            current_upper.mkdir(mode=default_mode)
            os.chmod(current_upper, default_mode)
    return current_upper


def _seed(upper: Path, relative: str, content: str, mode: int = 0o644) -> None:
    parent = str(Path(relative).parent)
    _mkdir_like_base(upper, parent, 0o700 if parent.startswith("root") else 0o755)
    path = upper / relative
    path.write_text(content, encoding="utf-8")
    os.chmod(path, mode)


def network_unit(machine: Machine) -> str:
    return (
        "# airflow-ha localcloud: static address on the host bridge "
        f"{BRIDGE}\n"
        "[Match]\nName=host0\n\n"
        f"[Network]\nAddress={machine.address}/{PREFIX_LENGTH}\nGateway={GATEWAY}\n"
        "IPv6AcceptRA=no\nLinkLocalAddressing=no\n"
    )


def hosts_file(machine: Machine) -> str:
    return (
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{machine.name}\n\n"
        "::1\t\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n"
    )


def create_disk(machine: Machine, base_ident: str) -> None:
    """Make the machine's empty upper dir and seed its own files (before any mount)."""
    paths = Paths(machine)
    if is_mounted(paths.root):
        raise LocalCloudError(f"{machine.name}: refusing to seed a mounted disk ({paths.root})")
    for directory in (paths.upper, paths.work, paths.root):
        directory.mkdir(parents=True, exist_ok=True)
    upper = paths.upper
    public_key = SSH_KEY_PATH.with_suffix(".pub").read_text(encoding="utf-8")
    _seed(upper, "etc/hostname", f"{machine.name}\n")
    _seed(upper, "etc/hosts", hosts_file(machine))
    _seed(upper, "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    _seed(upper, "etc/systemd/network/10-host0.network", network_unit(machine))
    _seed(upper, "root/.ssh/authorized_keys", public_key, 0o600)
    _mkdir_like_base(upper, "etc/ssh")
    run(["ssh-keygen", "-q", "-A", "-f", str(upper)])
    paths.disk_marker.write_text(base_ident + "\n", encoding="utf-8")


def check_disk_base(machine: Machine, base_ident: str) -> None:
    made_on = Paths(machine).disk_marker.read_text(encoding="utf-8").strip()
    if made_on != base_ident:
        raise LocalCloudError(
            f"{machine.name}: its disk was made on base {made_on} but the base image is now "
            f"{base_ident}; remove the disks with `python3 -m tools.localcloud down --purge`"
        )


# ---------------------------------------------------------------- start


def _supervisor_script(machine: Machine) -> str:
    paths = Paths(machine)
    q = shlex.quote
    nspawn = [
        "systemd-nspawn",
        "--boot",
        f"--directory={paths.root}",
        f"--machine={machine.name}",
        f"--hostname={machine.name}",
        "--register=no",
        "--keep-unit",
        f"--network-bridge={BRIDGE}",
        "--console=passive",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
    ]
    joins = "\n".join(f"echo $$ > {q(str(cg / 'cgroup.procs'))} || exit 90" for cg in paths.cgroups)
    return f"""#!/bin/sh
# Supervisor of machine {machine.name}, written by tools.localcloud on every start.
# It runs in the machine's own cgroups so systemd-nspawn --keep-unit gives the machine those.
set -u
{joins}
echo $$ > {q(str(paths.wrapper_pid))}
export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
rc=0
while :; do
    {" ".join(q(a) for a in nspawn)} &
    echo $! > {q(str(paths.nspawn_pid))}
    wait $!
    rc=$?
    echo "localcloud: systemd-nspawn exited with status $rc at $(date -u +%FT%TZ)"
    # 133: the machine rebooted itself; boot it again.
    [ "$rc" -eq 133 ] || break
done
rm -f {q(str(paths.nspawn_pid))} {q(str(paths.wrapper_pid))}
exit "$rc"
"""


def launch(machine: Machine) -> None:
    """Mount the machine's disk and start its supervisor, detached from this process."""
    paths = Paths(machine)
    cleanup(machine)  # leftovers of a machine that powered itself off
    if not is_mounted(paths.root):
        options = f"lowerdir={BASE_DIR},upperdir={paths.upper},workdir={paths.work}"
        run(["mount", "-t", "overlay", "overlay", "-o", options, str(paths.root)])
    info = paths.root.stat()  # systemd-nspawn names its image lock after the root's inode
    paths.lock_record.write_text(f"inode-{info.st_dev}:{info.st_ino}\n", encoding="ascii")
    for cgroup in paths.cgroups:
        cgroup.mkdir(parents=True, exist_ok=True)
    paths.supervisor.write_text(_supervisor_script(machine), encoding="utf-8")
    paths.nspawn_pid.unlink(missing_ok=True)
    with open(paths.console_log, "w", encoding="utf-8") as console:
        subprocess.Popen(
            ["sh", str(paths.supervisor)],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )


def _console_tail(machine: Machine, lines: int = 15) -> str:
    try:
        text = Paths(machine).console_log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no console log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_booted(machine: Machine, started: float, timeout: float = BOOT_TIMEOUT) -> str:
    """Wait for sshd to take the key and systemd to finish booting; return the system state."""
    deadline = started + timeout
    if not wait_until(lambda: is_running(machine), 10):
        raise LocalCloudError(
            f"{machine.name}: systemd-nspawn did not start; console log:\n{_console_tail(machine)}"
        )
    while not ssh_ok(machine, timeout=2):
        if not is_running(machine):
            raise LocalCloudError(
                f"{machine.name}: the machine stopped while booting; console log:\n"
                + _console_tail(machine)
            )
        if time.monotonic() > deadline:
            raise LocalCloudError(f"{machine.name}: no ssh after {timeout:.0f}s")
        time.sleep(0.5)
    remaining = max(10.0, deadline - time.monotonic())
    result = ssh_output(machine, "systemctl is-system-running --wait", timeout=remaining)
    state = result.stdout.strip()
    if state not in ("running", "degraded"):
        raise LocalCloudError(f"{machine.name}: systemd reports {state or result.stderr.strip()!r}")
    if state == "degraded":
        failed = ssh_output(machine, "systemctl --failed --no-legend --plain", timeout=20)
        warn(f"{machine.name}: degraded; failed units:\n{failed.stdout.rstrip()}")
    return state


# ---------------------------------------------------------------- stop


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def _kill_cgroup(cgroup: Path) -> None:
    kill_file = cgroup / "cgroup.kill"
    if kill_file.exists():
        kill_file.write_text("1", encoding="ascii")
        return
    for procs in cgroup.rglob("cgroup.procs"):  # kernels before 5.14
        for pid in procs.read_text(encoding="ascii").split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def power_off(machine: Machine, kill: bool, timeout: float = STOP_TIMEOUT) -> None:
    """Ask the machine to shut down (SIGTERM to nspawn) or cut its power (SIGKILL everything)."""
    if not is_running(machine):
        return
    paths = Paths(machine)
    nspawn_pid = _read_pid(paths.nspawn_pid)
    if kill or nspawn_pid is None:
        _kill_cgroup(paths.unified_cgroup)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(nspawn_pid, signal.SIGTERM)
        if not wait_until(lambda: not is_running(machine), timeout):
            warn(f"{machine.name}: no clean poweroff within {timeout:.0f}s; killing it")
            _kill_cgroup(paths.unified_cgroup)
    if not wait_until(lambda: not is_running(machine), 20, 0.2):
        raise LocalCloudError(f"{machine.name}: processes remain in {paths.unified_cgroup}")


def _remove_cgroup_tree(top: Path) -> None:
    if not top.is_dir():
        return
    children = [p for p in top.rglob("*") if p.is_dir()]
    for directory in sorted(children, key=lambda p: len(p.parts), reverse=True):
        directory.rmdir()  # depth-first: systemd inside leaves nested cgroups behind
    top.rmdir()


def cleanup(machine: Machine) -> None:
    """Undo a stopped machine's runtime traces: overlay mount, cgroups, veth, pid files."""
    if is_running(machine):
        raise LocalCloudError(f"{machine.name}: still running, cannot clean up")
    paths = Paths(machine)
    if is_mounted(paths.root):
        for _ in range(10):
            if run(["umount", str(paths.root)], check=False).returncode == 0:
                break
            time.sleep(0.5)
        else:
            run(["umount", str(paths.root)])
    for cgroup in paths.cgroups:
        try:
            _remove_cgroup_tree(cgroup)
        except OSError as exc:
            raise LocalCloudError(f"{machine.name}: cannot remove cgroup {cgroup}: {exc}") from exc
    delete_link(machine.veth)
    paths.wrapper_pid.unlink(missing_ok=True)
    paths.nspawn_pid.unlink(missing_ok=True)
    _remove_nspawn_leftovers(paths)


def _remove_nspawn_leftovers(paths: Paths) -> None:
    """Lock files and the propagation directory a killed systemd-nspawn leaves behind."""
    try:
        lock_name = paths.lock_record.read_text(encoding="ascii").strip()
    except OSError:
        lock_name = ""
    if lock_name.startswith("inode-"):
        (NSPAWN_RUN / "locks" / lock_name).unlink(missing_ok=True)
    paths.lock_record.unlink(missing_ok=True)
    paths.local_lock.unlink(missing_ok=True)
    if paths.propagate_dir.is_dir():
        inside = [p for p in mount_points() if paths.propagate_dir in p.parents]
        if inside:
            warn(f"not removing {paths.propagate_dir}: mounts inside ({inside[0]})")
        else:
            shutil.rmtree(paths.propagate_dir)


def remove_nspawn_run_dirs() -> None:
    """Remove systemd-nspawn's runtime directories once nothing is left in them."""
    for directory in (NSPAWN_RUN / "locks", NSPAWN_RUN / "propagate", NSPAWN_RUN):
        with contextlib.suppress(OSError):
            directory.rmdir()


def remove_cgroup_tops() -> None:
    for top in cgroup_tops():
        _remove_cgroup_tree(top)


def current_base_ident() -> str:
    ident = installed_recipe()
    if ident is None:
        raise LocalCloudError(f"no base image at {BASE_DIR}; run `python3 -m tools.localcloud up`")
    return ident


def start(machine: Machine) -> None:
    """Prepare (first time: create the disk) and launch one stopped machine; does not wait."""
    base_ident = current_base_ident()
    if has_disk(machine):
        check_disk_base(machine, base_ident)
    else:
        create_disk(machine, base_ident)
    launch(machine)
    log(f"{machine.name}: starting ({machine.address})")
