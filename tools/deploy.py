"""Deploy a stack of `static` nodes without the Pulumi CLI: `python -m tools.deploy --stack local`.

The real program runs under an engine double (tools.engine) whose `command:remote:Command` really
runs the step over SSH and returns its stdout, so values such as WireGuard public keys flow
between steps as under `pulumi up`, in the order the program's dependencies impose and in
parallel where they allow. Like Pulumi's state, a small state file per stack keeps the values
generated once (random passwords and keys) and, per step, a digest of each of its inputs and its
last output. A step re-runs as pulumi-command's provider would re-run it: when any input changed
(the whole connection with its key, create, update, delete, stdin, environment, triggers); a
changed `triggers` is a replace, anything else an update. `--force` re-runs every step (to prove
them idempotent); `--target NAME|URN` (repeatable, globs allowed) with `--target-dependents`
narrows the run as `pulumi up --target` does.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import fnmatch
import hashlib
import json
import os
import re
import secrets
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import NAMESPACE, ConfigError
from tools.engine import (
    REPO,
    Engine,
    load_stack_file,
    parse_step,
    run_program,
    stack_path,
    with_ca_certificate,
    with_host_keys,
)
from tools.localcloud.lock import ClusterLock
from tools.localcloud.machines import SSH_CHECK_OPTIONS, host_keys, known_hosts_lines

STATE_DIR = REPO / ".deploy-state"
CLOUD_TYPES = ("hcloud:", "aws:")
STEP_TIMEOUT_S = 45 * 60
PASSWORD_ALPHABET = string.ascii_letters + string.digits
COMMAND = "command:remote:Command"
RANDOM_TYPES = {
    "password": "random:index/randomPassword:RandomPassword",
    "bytes": "random:index/randomBytes:RandomBytes",
}
# pulumi-command's SDK registers every Command with replace_on_changes=["triggers[*]"]
# (pulumi_command/remote/command.py); every other input is an in-place update, which runs
# `update`, or `create` again when `update` is unset (provider/pkg/provider/remote/
# commandController.go). tests/unit/test_deploy.py checks the installed SDK still says so.
REPLACE_ON_CHANGES = frozenset({"triggers"})

Key = tuple[str, str]  # (type, name): unique per stack, as the URN is


# -- which steps run: the provider's diff --------------------------------------------------
def _plain(value: Any) -> Any:
    """Numbers as the engine compares them (22 and 22.0 are one property value)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def input_digests(inputs: dict[str, Any]) -> dict[str, str]:
    """One sha256 per top-level input, as the provider's diff keys them. Secrets (the private
    key, passwords in stdin) count like any input but only their digest reaches the state.
    `__`-prefixed inputs are the SDK's own and ignored by the provider's diff, so here too."""
    return {
        key: hashlib.sha256(canonical_json(value).encode()).hexdigest()
        for key, value in sorted(inputs.items())
        if value is not None and not key.startswith("__")
    }


def legacy_digest(inputs: dict[str, Any]) -> str:
    """The one hash an older tools.deploy saved per step (host, user, port, create, script)."""
    conn = inputs.get("connection") or {}
    text = f"{conn.get('host')}|{conn.get('user')}|{conn.get('port')}|{inputs.get('create')}|"
    return hashlib.sha256((text + inputs.get("stdin", "")).encode()).hexdigest()


@dataclass(frozen=True)
class Change:
    """What the engine would do with a step: same, create, update or replace, and why."""

    kind: str
    changed: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.kind}: {', '.join(self.changed)}" if self.changed else self.kind


def diff_step(saved: dict[str, Any] | None, digests: dict[str, str], legacy: str) -> Change:
    if saved is None:
        return Change("create")
    old = saved.get("inputs")
    if old is None:
        # State from before per-input digests: unchanged if the old formula still matches
        # (the caller then rewrites it). A key rotated before the upgrade goes unseen then.
        if saved.get("hash") == legacy:
            return Change("same")
        return Change("update", ("inputs (state saved by an older tools.deploy)",))
    changed = tuple(sorted(k for k in old.keys() | digests.keys() if old.get(k) != digests.get(k)))
    if not changed:
        return Change("same")
    return Change("replace" if REPLACE_ON_CHANGES & set(changed) else "update", changed)


# -- --target: Pulumi's URNs, globs and dependents -----------------------------------------
class TargetError(ValueError):
    """A --target that selects nothing, or a targeted step that needs an untargeted new one."""


def urn_glob(pattern: str) -> re.Pattern[str]:
    """Pulumi's URN wildcards: `*` within one `::`-separated segment, `**` across them."""
    parts = [r"[^:]*".join(map(re.escape, p.split("*"))) for p in pattern.split("**")]
    return re.compile("^" + ".*".join(parts) + "$")


def target_matches(pattern: str, name: str, urn: str) -> bool:
    """A URN (literal or with Pulumi's wildcards), or - a tools.deploy convenience that
    `pulumi up` does not accept - a resource name or a shell glob of names."""
    if pattern.startswith("urn:"):
        return pattern == urn or ("*" in pattern and urn_glob(pattern).match(urn) is not None)
    return fnmatch.fnmatchcase(name, pattern)


@dataclass
class Planned:
    """One resource of the program as `pulumi up` would see it."""

    key: Key
    urn: str
    parent: Key | None
    dependencies: set[Key]


def _split(type_and_name: str) -> Key:
    """The engine double's "type::name" as a key."""
    resource_type, _, name = type_and_name.partition("::")
    return resource_type, name


def plan_resources(values: dict[str, Any], stack: str) -> dict[Key, Planned]:
    """Run the program once without touching a node (as `pulumi preview` would before `up`)
    for its resources' real URNs, parents and dependencies."""
    engine = Engine()
    run_program(values, engine, stack, placeholders=False)
    parents = {key: _split(parent) if parent else None for key, parent in engine.parents.items()}

    def qualified(key: Key) -> str:
        # The engine's URN carries the whole chain of parent types (the root stack left out).
        parent = parents.get(key)
        return key[0] if parent is None else f"{qualified(parent)}${key[0]}"

    return {
        key: Planned(
            key,
            f"urn:pulumi:{stack}::{NAMESPACE}::{qualified(key)}::{key[1]}",
            parents.get(key),
            {_split(dep) for dep in engine.dependencies.get(key, frozenset())},
        )
        for key in ((r.type, r.name) for r in engine.resources)
    }


def select_targets(
    planned: dict[Key, Planned], targets: Iterable[str], dependents: bool
) -> set[Key]:
    """The resources `pulumi up --target ... [--target-dependents]` operates on. Like the
    engine (step_generator.go, isTargetedForUpdate) a dependent is a resource whose parent or
    any dependency is targeted, transitively."""
    selected: set[Key] = set()
    unmatched = []
    for target in targets:
        hits = {k for k, p in planned.items() if target_matches(target, k[1], p.urn)}
        if not hits:
            unmatched.append(target)
        selected |= hits
    if unmatched:
        raise TargetError(_unmatched_message(planned, unmatched))
    grew = dependents
    while grew:
        more = {
            k
            for k, p in planned.items()
            if k not in selected and (p.parent in selected or p.dependencies & selected)
        }
        selected |= more
        grew = bool(more)
    return selected


def _unmatched_message(planned: dict[Key, Planned], unmatched: list[str]) -> str:
    names = sorted({k[1] for k in planned})
    hints = []
    for target in unmatched:
        close = difflib.get_close_matches(target.split("::")[-1], names, n=3)
        hints.append(f"'{target}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    example = next(p.urn for k, p in planned.items() if k[0] == COMMAND)
    return (
        f"--target {' and '.join(hints)} matches no resource of this stack; give a resource "
        f"name (a glob such as 'node-a-*' is fine) or a URN such as {example}"
    )


def check_skipped_creates(planned: dict[Key, Planned], selected: set[Key], has_state: Any) -> None:
    """`pulumi up --target` creates no untargeted resource, and refuses a targeted one that
    depends on such a skipped create: say so before anything runs, not halfway."""
    missing = sorted(
        {
            dep
            for key in selected
            for dep in planned[key].dependencies - selected
            if dep in planned and not has_state(dep)
        }
    )
    if missing:
        names = [name for _, name in missing]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        needing = sorted(key[1] for key in selected if planned[key].dependencies & set(missing))
        raise TargetError(
            f"{', '.join(needing[:5])} need{'s' if len(needing) == 1 else ''} {shown}, never "
            "created and not targeted (pulumi up --target refuses this too): add "
            f"--target {names[0]}, or deploy the whole stack first"
        )


def private_dir(path: Path) -> Path:
    """`path` (and missing parents) as a folder only its owner may enter: 0700 whatever the
    umask, an existing one tightened too (step logs and state hold what the steps print)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):  # mkdir(parents=True) would make the parents 0755
        folder.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write `path` as mode 0600 in a 0700 folder, atomically (no moment of a wider mode)."""
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # an older file of that name kept its mode through O_CREAT
    tmp.replace(path)


class StepFailed(RuntimeError):
    def __init__(self, name: str, node: str, returncode: int, stderr: str) -> None:
        tail = "\n".join(stderr.strip().splitlines()[-25:])
        super().__init__(f"step {name} on node {node} failed (exit {returncode}):\n{tail}")
        self.name = name


class DeployState:
    """Values generated once and the last run of each step, saved after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {"secrets": {}, "steps": {}}
        if path.exists():
            self.data = json.loads(path.read_text())

    def save(self) -> None:
        write_private(self.path, json.dumps(self.data, indent=1, sort_keys=True))

    def has(self, key: Key) -> bool:
        """Whether the resource exists in the state (a Command that ran, a saved secret);
        other resources (components) hold nothing here."""
        if key[0] == COMMAND:
            return key[1] in self.data["steps"]
        for kind, typ in RANDOM_TYPES.items():
            if key[0] == typ:
                return f"{key[1]}/{kind}" in self.data["secrets"]
        return True

    def secret(self, key: str, make) -> str:
        with self.lock:
            if key not in self.data["secrets"]:
                self.data["secrets"][key] = make()
                self.save()
            return self.data["secrets"][key]


class DeployEngine(Engine):
    def __init__(
        self,
        state: DeployState,
        force: bool,
        selected: set[Key] | None,
        log_dir: Path,
        verbose: bool,
    ) -> None:
        super().__init__()
        self.state = state
        self.force = force
        self.selected = selected  # None: the whole stack
        self.log_dir = log_dir
        self.verbose = verbose
        self.failed: StepFailed | None = None
        # Every connection's pinned host key, written as ssh's known_hosts beside the state.
        self.known_hosts: dict[tuple[str, int], str] = {}
        self.known_hosts_path = state.path.with_name(state.path.stem + ".known_hosts")
        self.ran: list[tuple[str, Change]] = []
        self.skipped: list[str] = []
        self.print_lock = threading.Lock()

    def say(self, text: str) -> None:
        with self.print_lock:
            print(text, flush=True)

    def targeted(self, key: Key) -> bool:
        return self.selected is None or key in self.selected

    def new_resource(self, args):
        if args.typ.startswith(CLOUD_TYPES):
            raise RuntimeError(
                f"{args.typ} {args.name}: tools.deploy deploys `static` nodes only; "
                "use `pulumi up` for hcloud and aws nodes"
            )
        return super().new_resource(args)

    def secret_value(self, name: str, kind: str, inputs: dict) -> str:
        key = f"{name}/{kind}"
        if not self.targeted((RANDOM_TYPES[kind], name)) and key not in self.state.data["secrets"]:
            # A skipped create: nothing generated or saved; only untargeted steps see this.
            return super().secret_value(name, kind, inputs)
        length = int(inputs.get("length", 32))
        if kind == "bytes":
            return self.state.secret(key, lambda: base64.b64encode(os.urandom(length)).decode())
        return self.state.secret(
            key, lambda: "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))
        )

    def run_command(self, name: str, inputs: dict) -> dict:
        script = inputs["stdin"]
        step = parse_step(script)
        for unsupported in ("environment", "delete"):
            if inputs.get(unsupported):
                raise RuntimeError(
                    f"step {name} sets `{unsupported}`, which tools.deploy does not carry out "
                    "(see the README's list of differences from pulumi up)"
                )
        digests = input_digests(inputs)
        with self.state.lock:
            saved = self.state.data["steps"].get(name)
            change = diff_step(saved, digests, legacy_digest(inputs))
            if change.kind == "same" and saved is not None and "inputs" not in saved:
                # One-time migration: the old digest matched, keep the step as it is.
                saved = {k: v for k, v in saved.items() if k != "hash"} | {"inputs": digests}
                self.state.data["steps"][name] = saved
                self.state.save()
        if not self.targeted((COMMAND, name)):
            # As under `pulumi up --target`: left as it is, its last outputs used; a step that
            # never ran is not created (select_targets made sure no targeted step needs it).
            self.skipped.append(name)
            if saved is None:
                self.say(f"  skip   {name} (not targeted, not created yet)")
                return super().run_command(name, inputs)
            pending = "" if change.kind == "same" else f", pending {change.describe()}"
            self.say(f"  skip   {name} (not targeted{pending})")
            return {"stdout": saved["stdout"], "stderr": saved["stderr"]}
        if change.kind == "same":
            if not self.force:
                self.skipped.append(name)
                self.say(f"  skip   {name}")
                return {"stdout": saved["stdout"], "stderr": saved["stderr"]}
            change = Change("replace", ("--force",))  # as `pulumi up --replace <urn>`
        if self.failed is not None:
            raise RuntimeError(f"{name} not run: {self.failed.name} failed")
        # The provider's Update runs `update`, or `create` again when `update` is unset.
        remote_command = inputs.get("update") if change.kind == "update" else None
        remote_command = remote_command or inputs.get("create")
        self.say(f"  start  {name} ({change.describe()})")
        started = time.monotonic()
        if remote_command is None:  # the provider runs nothing then, and records the inputs
            result = subprocess.CompletedProcess([], 0, "", "")
        else:
            result = self._ssh(inputs["connection"], remote_command, script)
        seconds = time.monotonic() - started
        write_private(
            self.log_dir / f"{name}.log",
            f"# {change.describe()}: exit {result.returncode} after {seconds:.1f}s\n"
            f"# stdout\n{result.stdout}\n# stderr\n{result.stderr}",
        )
        if result.returncode != 0:
            failure = StepFailed(name, step.node, result.returncode, result.stderr or result.stdout)
            self.failed = self.failed or failure
            self.say(f"  FAIL   {name} ({seconds:.1f}s)")
            raise failure
        self.say(f"  done   {name} ({seconds:.1f}s)")
        if self.verbose and result.stdout.strip():
            self.say("\n".join(f"         | {line}" for line in result.stdout.strip().splitlines()))
        self.ran.append((name, change))
        with self.state.lock:
            self.state.data["steps"][name] = {
                "inputs": digests,
                "change": change.kind,
                "changed": list(change.changed),
                "stdout": result.stdout,
                "stderr": result.stderr[-4000:],
                "seconds": round(seconds, 1),
            }
            self.state.save()
        return {"stdout": result.stdout, "stderr": result.stderr}

    def forget_removed_steps(self) -> list[str]:
        """After a whole-stack run: steps the program no longer has leave the state, as
        `pulumi up` deletes them (running nothing on the node: no step has `delete`)."""
        registered = {r.name for r in self.of_type(COMMAND)}
        with self.state.lock:
            gone = sorted(set(self.state.data["steps"]) - registered)
            for name in gone:
                del self.state.data["steps"][name]
            if gone:
                self.state.save()
        for name in gone:
            self.say(f"  delete {name} (no longer in the program)")
        return gone

    def pin_host_key(self, conn: dict) -> Path:
        """The known_hosts file holding `conn`'s host key (0600, beside the state)."""
        if not conn.get("hostKey"):
            raise RuntimeError(
                f"{conn.get('host')}: the connection has no hostKey; tools.deploy checks every "
                "host key (StrictHostKeyChecking=yes): set the node's hostKey"
            )
        with self.state.lock:
            self.known_hosts[(conn["host"], int(conn.get("port", 22)))] = conn["hostKey"]
            write_private(self.known_hosts_path, known_hosts_lines(self.known_hosts))
        return self.known_hosts_path

    def _ssh(self, conn: dict, remote_command: str, script: str) -> subprocess.CompletedProcess:
        known_hosts = self.pin_host_key(conn)
        with tempfile.NamedTemporaryFile("w", delete=False, prefix="airflow-ha-key-") as key:
            key.write(conn["privateKey"].rstrip("\n") + "\n")
        os.chmod(key.name, 0o600)
        try:
            command = [
                "ssh",
                "-i",
                key.name,
                "-p",
                str(int(conn.get("port", 22))),
                # As pulumi-command with a host_key: that key, of that type, or no connection.
                *SSH_CHECK_OPTIONS,
                "-o",
                f"UserKnownHostsFile={known_hosts}",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "ServerAliveInterval=15",
                f"{conn.get('user', 'root')}@{conn['host']}",
                remote_command,
            ]
            try:
                return subprocess.run(
                    command, input=script, capture_output=True, text=True, timeout=STEP_TIMEOUT_S
                )
            except subprocess.TimeoutExpired as exc:
                return subprocess.CompletedProcess(
                    command, 124, exc.stdout or "", f"timed out\n{exc.stderr or ''}"
                )
        finally:
            os.unlink(key.name)


def local_stack_values(values: dict[str, Any]) -> dict[str, Any]:
    """The local stack logs in with the key tools.localcloud generated (never committed),
    checks the machines' host keys, which the local cloud generated into their disks, and
    gives the nodes its S3 endpoint's CA and the endpoint's fixed test credentials."""
    from tools.localcloud.machines import S3_ACCESS_KEY, S3_CA, S3_SECRET_KEY, SSH_KEY_PATH

    storage = values.get("objectStorage")
    if isinstance(storage, dict):
        ca_path = Path(S3_CA)
        if "caCertificate" not in storage and not ca_path.exists():
            raise SystemExit(
                f"no S3 endpoint CA at {ca_path}: run `python3 -m tools.localcloud up` first"
            )
        if "caCertificate" not in storage:
            values = with_ca_certificate(values, ca_path.read_text())
        values.setdefault("objectStorageAccessKey", S3_ACCESS_KEY)
        values.setdefault("objectStorageSecretKey", S3_SECRET_KEY)
    key_path = Path(SSH_KEY_PATH)
    if not key_path.exists():
        raise SystemExit(f"no SSH key at {key_path}: run `python3 -m tools.localcloud up` first")
    values.setdefault("sshPrivateKey", key_path.read_text())
    values.setdefault("sshPublicKey", Path(f"{key_path}.pub").read_text().strip())
    keys = host_keys()
    if not keys:
        raise SystemExit("no machine disks with host keys: run `python3 -m tools.localcloud up`")
    return with_host_keys(values, keys)


def select(
    values: dict[str, Any], stack: str, state: DeployState, targets: list[str], dependents: bool
) -> set[Key] | None:
    """The resources a targeted run operates on (None: all), checked before anything runs."""
    if not targets:
        return None
    planned = plan_resources(values, stack)
    selected = select_targets(planned, targets, dependents)
    check_skipped_creates(planned, selected, state.has)
    return selected


def run(engine: DeployEngine, values: dict[str, Any], stack: str) -> dict[str, Any]:
    """The deploy itself: the program under `engine`; its stack outputs."""
    outputs = run_program(values, engine, stack, placeholders=False)
    if engine.selected is None:
        engine.forget_removed_steps()
    return outputs


def summary(engine: DeployEngine) -> str:
    kinds = [c.kind for _, c in engine.ran]
    counts = ", ".join(
        f"{kinds.count(k)} {k}" for k in ("create", "update", "replace") if k in kinds
    )
    return (
        f"{len(engine.ran)} steps run"
        + (f" ({counts})" if counts else "")
        + f", {len(engine.skipped)} skipped (unchanged"
        + (" or not targeted)" if engine.selected is not None else ")")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.deploy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stack", default="local")
    parser.add_argument("--stack-file", type=Path, help="a Pulumi.<stack>.yaml elsewhere")
    parser.add_argument(
        "--force", action="store_true", help="re-run every step (idempotence check)"
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME|URN",
        help="operate only on this resource (a name, a URN, or a glob of either; repeatable); "
        "the others keep their last state and outputs, as with pulumi up --target",
    )
    parser.add_argument(
        "--target-dependents",
        action="store_true",
        help="also the resources that depend on a target (children included), transitively",
    )
    parser.add_argument(
        "--state", type=Path, help="state file (default .deploy-state/<stack>.json)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print each step's stdout")
    args = parser.parse_args(argv)
    if args.target_dependents and not args.target:
        parser.error("--target-dependents needs a --target")

    try:
        values = load_stack_file(args.stack_file or stack_path(args.stack))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.stack == "local":
        values = local_stack_values(values)
    state = DeployState(args.state or STATE_DIR / f"{args.stack}.json")
    try:
        selected = select(values, args.stack, state, args.target, args.target_dependents)
    except (ConfigError, TargetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if selected is not None and not any(k[0] == COMMAND for k in selected):
        print("note: the targets hold no step (--target-dependents adds those under them)")
    engine = DeployEngine(
        state, args.force, selected, STATE_DIR / args.stack / "logs", args.verbose
    )
    with ClusterLock():  # deploys and drills take turns on the machines
        started = time.monotonic()
        print(
            f"deploying stack {args.stack}" + (" (every step forced)" if args.force else ""),
            flush=True,
        )
        try:
            outputs = run(engine, values, args.stack)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            print(f"deploy failed: {engine.failed or exc}", file=sys.stderr)
            return 1
    seconds = time.monotonic() - started
    print(f"deployed stack {args.stack} in {seconds:.1f}s: {summary(engine)}", flush=True)
    shown = {k: "[secret]" if k in engine.secret_outputs else v for k, v in outputs.items()}
    write_private(STATE_DIR / f"{args.stack}.outputs.json", json.dumps(shown, indent=1))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The SDK's event loop may still hold threads of steps that were stopped by a failure.
    os._exit(code)
