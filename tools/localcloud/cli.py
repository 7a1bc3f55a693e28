"""Command line: python3 -m tools.localcloud up|down|status|stop|start|partition|heal|ssh|s3."""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from . import base, net, runtime, s3
from .machines import (
    BASE_DIR,
    BRIDGE,
    MACHINES,
    NFT_TABLE,
    PARTITION_TABLE,
    SSH_KEY_PATH,
    STATE_DIR,
    Machine,
    by_name,
    ssh_command,
)
from .util import LocalCloudError, log, require_commands, require_root, run, warn

LOCK_PATH = "/run/airflow-ha-localcloud.lock"
PROG = "python3 -m tools.localcloud"


@contextmanager
def locked() -> Iterator[None]:
    """One state-changing command at a time."""
    with open(LOCK_PATH, "w", encoding="ascii") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another localcloud command to finish ({LOCK_PATH})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def parallel(function: Callable[[Machine], object], machines: list[Machine]) -> list[object]:
    """Run ``function`` for every machine at once; re-raise the first failure after all end."""
    if not machines:
        return []
    with ThreadPoolExecutor(max_workers=len(machines)) as pool:
        futures = [pool.submit(function, m) for m in machines]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        for error in errors[1:]:
            warn(str(error))
        raise errors[0]  # type: ignore[misc]
    return [f.result() for f in futures]


# ---------------------------------------------------------------- building blocks


def ensure_base() -> float | None:
    """Build the base image unless the cached one matches the recipe; return build seconds."""
    recipe = base.current_recipe()
    have = base.installed_recipe()
    if have == recipe.ident:
        log(f"base image {have} cached at {BASE_DIR}")
        return None
    reason = "missing" if have is None else f"recipe changed ({have} -> {recipe.ident})"
    if runtime.our_mounts():
        raise LocalCloudError(
            f"the base image must be rebuilt ({reason}) but machines are using it: "
            f"run `{PROG} down`"
        )
    stale = [m.name for m in MACHINES if runtime.has_disk(m)]
    if stale:
        raise LocalCloudError(
            f"the base image must be rebuilt ({reason}); the disks of {', '.join(stale)} were "
            f"made on the old one: run `{PROG} down --purge` first"
        )
    log(f"base image {reason}")
    return base.build(recipe)


def ensure_ssh_key() -> None:
    if SSH_KEY_PATH.exists() and SSH_KEY_PATH.with_suffix(".pub").exists():
        return
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(STATE_DIR, 0o700)
    SSH_KEY_PATH.unlink(missing_ok=True)
    SSH_KEY_PATH.with_suffix(".pub").unlink(missing_ok=True)
    run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "airflow-ha-localcloud",
            "-f",
            str(SSH_KEY_PATH),
        ]
    )
    log(f"generated ssh key {SSH_KEY_PATH}")


def ensure_network() -> None:
    net.bridge_up()
    net.forwarding_on()
    net.firewall_up()


def boot(machines: list[Machine]) -> dict[str, float]:
    """Start the given stopped machines together and wait for them; return seconds per machine."""
    started: dict[str, float] = {}
    for machine in machines:
        started[machine.name] = time.monotonic()
        runtime.start(machine)

    def wait(machine: Machine) -> float:
        state = runtime.wait_booted(machine, started[machine.name])
        seconds = time.monotonic() - started[machine.name]
        log(f"{machine.name}: up in {seconds:.1f}s (ssh ok, systemd {state})")
        return seconds

    results = parallel(wait, machines)
    return {m.name: float(s) for m, s in zip(machines, results, strict=True)}  # type: ignore[arg-type]


def prepare_host() -> None:
    require_root()
    require_commands()


# ---------------------------------------------------------------- commands


def cmd_up(_: argparse.Namespace) -> int:
    prepare_host()
    total = time.monotonic()
    with locked():
        built = ensure_base()
        ensure_ssh_key()
        ensure_network()
        log(f"network: bridge {BRIDGE}, nft table inet {NFT_TABLE}, ip_forward=1")
        s3.up()  # on the bridge's address, which now exists
        to_start = []
        for machine in MACHINES:
            if runtime.is_running(machine):
                log(f"{machine.name}: already running ({machine.address})")
            else:
                to_start.append(machine)
        timings = boot(to_start)
    summary = [f"base built in {built:.0f}s" if built is not None else "base cached"]
    summary += [f"{name} {seconds:.1f}s" for name, seconds in timings.items()]
    log(f"up in {time.monotonic() - total:.1f}s: " + ", ".join(summary))
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    prepare_host()
    machine = by_name(args.name)
    with locked():
        if runtime.is_running(machine):
            log(f"{machine.name}: already running")
            return 0
        if base.installed_recipe() is None:
            raise LocalCloudError(f"no base image yet: run `{PROG} up`")
        ensure_ssh_key()
        ensure_network()
        boot([machine])
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    prepare_host()
    machine = by_name(args.name)
    with locked():
        if not runtime.is_running(machine):
            runtime.cleanup(machine)
            log(f"{machine.name}: already stopped")
            return 0
        began = time.monotonic()
        runtime.power_off(machine, kill=args.kill)
        runtime.cleanup(machine)
        how = "killed (power cut)" if args.kill else "powered off"
        log(f"{machine.name}: {how} in {time.monotonic() - began:.1f}s; disk kept")
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    """Machines lost with their disks, as in a data centre's fire; the network and the S3
    endpoint (the cloud's object storage, which outlives the servers) stay. `up` makes fresh
    machines in their place (new disks, new host keys)."""
    prepare_host()
    machines = [by_name(name) for name in args.names]
    with locked():
        for machine in machines:
            if runtime.is_running(machine):
                runtime.power_off(machine, kill=True)
            runtime.cleanup(machine)  # unmounts the disk, or fails saying why
            disk = runtime.Paths(machine).dir
            if disk.exists():
                shutil.rmtree(disk)
            log(f"{machine.name}: destroyed (killed, disk deleted); S3 and the network kept")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    prepare_host()
    with locked():
        running = [m for m in MACHINES if runtime.is_running(m)]
        parallel(lambda m: runtime.power_off(m, kill=False), running)
        for machine in MACHINES:
            runtime.cleanup(machine)
        for machine in running:
            log(f"{machine.name}: powered off")
        s3.down()
        net.partitions_down()
        net.firewall_down()
        net.bridge_down()
        old = net.forwarding_restore()
        runtime.remove_cgroup_tops()
        runtime.remove_nspawn_run_dirs()
        leftovers = runtime.our_mounts()
        if leftovers:
            raise LocalCloudError(f"still mounted: {', '.join(map(str, leftovers))}")
        log(
            f"removed bridge {BRIDGE}, nft tables {NFT_TABLE} and {PARTITION_TABLE}"
            + (f"; ip_forward restored to {old}" if old is not None else "")
        )
        if args.purge:
            if STATE_DIR.exists():
                shutil.rmtree(STATE_DIR)
            log(
                f"purged {STATE_DIR} (machine disks, ssh key, the S3 endpoint's CA); "
                f"base cache kept at {BASE_DIR}"
            )
        else:
            log(f"disks kept in {runtime.MACHINES_DIR}; base cache at {BASE_DIR}")
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    require_root()
    running = {m.name: runtime.is_running(m) for m in MACHINES}
    ssh_results = parallel(lambda m: running[m.name] and runtime.ssh_ok(m), list(MACHINES))
    ssh = {m.name: bool(ok) for m, ok in zip(MACHINES, ssh_results, strict=True)}
    cut = net.partitioned()
    for machine in MACHINES:
        state = "running" if running[machine.name] else "stopped"
        disk = "disk" if runtime.has_disk(machine) else "no disk"
        ssh_text = "ssh ok" if ssh[machine.name] else "ssh FAILED"
        if not running[machine.name]:
            ssh_text = "ssh -"
        extra = "  PARTITIONED" if machine.veth in cut else ""
        log(f"{machine.name:8} {machine.address:14} {state:8} {ssh_text:11} {disk}{extra}")

    def yes(flag: bool) -> str:
        return "present" if flag else "absent"

    log(
        f"bridge {BRIDGE}: {yes(net.link_exists(BRIDGE))}; "
        f"nft inet {NFT_TABLE}: {yes(net.nft_table_exists('inet', NFT_TABLE))}; "
        f"nft bridge {PARTITION_TABLE}: {yes(net.nft_table_exists('bridge', PARTITION_TABLE))}"
    )
    log(f"base image: {base.installed_recipe() or 'none'} ({BASE_DIR})")
    log(s3.status())
    return 0


def cmd_s3(_: argparse.Namespace) -> int:
    require_root()
    log(s3.status())
    return 0


def _ping(source: Machine, target: Machine) -> bool:
    result = runtime.ssh_output(source, f"ping -c 2 -i 0.3 -W 1 -q {target.address}", timeout=20)
    return result.returncode == 0


def _witness(target: Machine) -> Machine | None:
    """A running machine other than ``target`` to check connectivity from (node-b preferred)."""
    others = sorted((m for m in MACHINES if m != target), key=lambda m: m.name != "node-b")
    return next(
        (m for m in others if runtime.is_running(m) and m.veth not in net.partitioned()), None
    )


def cmd_partition(args: argparse.Namespace) -> int:
    prepare_host()
    machine = by_name(args.name)
    with locked():
        net.partition(machine)
    log(f"{machine.name}: partitioned (all its frames dropped at bridge {BRIDGE})")
    witness = _witness(machine)
    if args.no_verify or witness is None or not runtime.is_running(machine):
        return 0
    if _ping(witness, machine):
        raise LocalCloudError(f"{witness.name} still reaches {machine.name} after partition")
    log(f"verified: {witness.name} cannot ping {machine.name}")
    return 0


def cmd_heal(args: argparse.Namespace) -> int:
    prepare_host()
    machine = by_name(args.name)
    with locked():
        net.heal(machine)
    log(f"{machine.name}: healed")
    witness = _witness(machine)
    if args.no_verify or witness is None or not runtime.is_running(machine):
        return 0
    for _ in range(5):
        if _ping(witness, machine):
            log(f"verified: {witness.name} pings {machine.name}")
            return 0
    raise LocalCloudError(f"{witness.name} still cannot reach {machine.name} after heal")


def cmd_ssh(args: argparse.Namespace) -> int:
    machine = by_name(args.name)
    if not SSH_KEY_PATH.exists():
        raise LocalCloudError(f"no ssh key at {SSH_KEY_PATH}: run `{PROG} up`")
    argv = ssh_command(machine, *args.command)
    if not args.command and sys.stdin.isatty():
        argv.insert(1, "-t")
    sys.stdout.flush()
    os.execvp(argv[0], argv)
    return 1  # not reached


def build_parser() -> argparse.ArgumentParser:
    names = [m.name for m in MACHINES]
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Three local Debian 13 machines (systemd-nspawn) and an S3 endpoint.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "up", help="build/reuse the base image, start the S3 endpoint and all machines"
    ).set_defaults(func=cmd_up)
    down = sub.add_parser(
        "down", help="stop everything (the S3 endpoint: its buckets are lost), clean the host"
    )
    down.add_argument("--purge", action="store_true", help="also delete disks, ssh key, S3 CA")
    down.set_defaults(func=cmd_down)
    destroy = sub.add_parser(
        "destroy", help="kill machines and delete their disks; keep the network and S3"
    )
    destroy.add_argument("names", nargs="+", choices=names, metavar="NAME")
    destroy.set_defaults(func=cmd_destroy)
    sub.add_parser("status", help="one line per machine").set_defaults(func=cmd_status)
    stop = sub.add_parser("stop", help="power off one machine, keep its disk")
    stop.add_argument("name", choices=names)
    stop.add_argument("--kill", action="store_true", help="SIGKILL: die like a power cut")
    stop.set_defaults(func=cmd_stop)
    start = sub.add_parser("start", help="boot one machine again with its disk")
    start.add_argument("name", choices=names)
    start.set_defaults(func=cmd_start)
    for name, func, text in (
        ("partition", cmd_partition, "cut a machine off the bridge (both directions)"),
        ("heal", cmd_heal, "undo partition"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("name", choices=names)
        cmd.add_argument("--no-verify", action="store_true", help="skip the ping check")
        cmd.set_defaults(func=func)
    ssh = sub.add_parser("ssh", help="ssh into a machine as root with the tool's key")
    ssh.add_argument("name", choices=names)
    ssh.add_argument("command", nargs=argparse.REMAINDER, help="command to run (default: shell)")
    ssh.set_defaults(func=cmd_ssh)
    sub.add_parser(
        "s3", help="the S3 endpoint (object storage stand-in): state, bucket, CA"
    ).set_defaults(func=cmd_s3)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LocalCloudError as exc:
        print(f"localcloud: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("localcloud: interrupted", file=sys.stderr)
        return 130
