"""Deploy a stack of `static` nodes without the Pulumi CLI: `python -m tools.deploy --stack local`.

The real program runs under an engine double (tools.engine) whose `command:remote:Command` really
runs the step over SSH and returns its stdout, so values such as WireGuard public keys flow
between steps as under `pulumi up`, in the order the program's dependencies impose and in
parallel where they allow. Like Pulumi's state, a small state file per stack keeps the values
generated once (random passwords and keys) and each step's last script hash and output: a step
whose script is unchanged is skipped, as the engine would skip it. `--force` re-runs every step
(to prove them idempotent); `--target GLOB` runs only the matching steps that changed.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import os
import secrets
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from components.config import ConfigError
from tools.engine import REPO, Engine, load_stack_file, parse_step, run_program, stack_path
from tools.localcloud.lock import ClusterLock

STATE_DIR = REPO / ".deploy-state"
CLOUD_TYPES = ("hcloud:", "aws:")
STEP_TIMEOUT_S = 45 * 60
PASSWORD_ALPHABET = string.ascii_letters + string.digits


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump(self.data, f, indent=1, sort_keys=True)
        tmp.replace(self.path)

    def secret(self, key: str, make) -> str:
        with self.lock:
            if key not in self.data["secrets"]:
                self.data["secrets"][key] = make()
                self.save()
            return self.data["secrets"][key]


class DeployEngine(Engine):
    def __init__(
        self, state: DeployState, force: bool, target: str | None, log_dir: Path, verbose: bool
    ) -> None:
        super().__init__()
        self.state = state
        self.force = force
        self.target = target
        self.log_dir = log_dir
        self.verbose = verbose
        self.failed: StepFailed | None = None
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.print_lock = threading.Lock()

    def say(self, text: str) -> None:
        with self.print_lock:
            print(text, flush=True)

    def new_resource(self, args):
        if args.typ.startswith(CLOUD_TYPES):
            raise RuntimeError(
                f"{args.typ} {args.name}: tools.deploy deploys `static` nodes only; "
                "use `pulumi up` for hcloud and aws nodes"
            )
        return super().new_resource(args)

    def secret_value(self, name: str, kind: str, inputs: dict) -> str:
        length = int(inputs.get("length", 32))
        if kind == "bytes":
            return self.state.secret(
                f"{name}/bytes", lambda: base64.b64encode(os.urandom(length)).decode()
            )
        return self.state.secret(
            f"{name}/password",
            lambda: "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length)),
        )

    def run_command(self, name: str, inputs: dict) -> dict:
        script = inputs["stdin"]
        step = parse_step(script)
        conn = inputs["connection"]
        digest = hashlib.sha256(
            f"{conn['host']}|{conn.get('user')}|{conn.get('port')}|{inputs['create']}|{script}".encode()
        ).hexdigest()
        saved = self.state.data["steps"].get(name)
        unchanged = saved is not None and saved["hash"] == digest
        off_target = self.target is not None and not fnmatch.fnmatch(name, self.target)
        if saved is not None and ((unchanged and not self.force) or off_target):
            self.skipped.append(name)
            self.say(
                f"  skip   {name}" + (" (not targeted)" if off_target and not unchanged else "")
            )
            return {"stdout": saved["stdout"], "stderr": saved["stderr"]}
        if self.failed is not None:
            raise RuntimeError(f"{name} not run: {self.failed.name} failed")
        self.say(f"  start  {name}")
        started = time.monotonic()
        result = self._ssh(conn, inputs["create"], script)
        seconds = time.monotonic() - started
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / f"{name}.log").write_text(
            f"# exit {result.returncode} after {seconds:.1f}s\n"
            f"# stdout\n{result.stdout}\n# stderr\n{result.stderr}"
        )
        if result.returncode != 0:
            failure = StepFailed(name, step.node, result.returncode, result.stderr or result.stdout)
            self.failed = self.failed or failure
            self.say(f"  FAIL   {name} ({seconds:.1f}s)")
            raise failure
        self.say(f"  done   {name} ({seconds:.1f}s)")
        if self.verbose and result.stdout.strip():
            self.say("\n".join(f"         | {line}" for line in result.stdout.strip().splitlines()))
        self.ran.append(name)
        with self.state.lock:
            self.state.data["steps"][name] = {
                "hash": digest,
                "stdout": result.stdout,
                "stderr": result.stderr[-4000:],
                "seconds": round(seconds, 1),
            }
            self.state.save()
        return {"stdout": result.stdout, "stderr": result.stderr}

    def _ssh(self, conn: dict, remote_command: str, script: str) -> subprocess.CompletedProcess:
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
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
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
    """The local stack logs in with the key tools.localcloud generated (never committed)."""
    from tools.localcloud.machines import SSH_KEY_PATH

    key_path = Path(SSH_KEY_PATH)
    if not key_path.exists():
        raise SystemExit(f"no SSH key at {key_path}: run `python3 -m tools.localcloud up` first")
    values.setdefault("sshPrivateKey", key_path.read_text())
    values.setdefault("sshPublicKey", Path(f"{key_path}.pub").read_text().strip())
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.deploy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stack", default="local")
    parser.add_argument("--stack-file", type=Path, help="a Pulumi.<stack>.yaml elsewhere")
    parser.add_argument(
        "--force", action="store_true", help="re-run every step (idempotence check)"
    )
    parser.add_argument("--target", help="only run changed steps whose name matches this glob")
    parser.add_argument(
        "--state", type=Path, help="state file (default .deploy-state/<stack>.json)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print each step's stdout")
    args = parser.parse_args(argv)

    try:
        values = load_stack_file(args.stack_file or stack_path(args.stack))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.stack == "local":
        values = local_stack_values(values)
    state = DeployState(args.state or STATE_DIR / f"{args.stack}.json")
    engine = DeployEngine(
        state, args.force, args.target, STATE_DIR / args.stack / "logs", args.verbose
    )
    with ClusterLock():  # deploys and drills take turns on the machines
        started = time.monotonic()
        print(
            f"deploying stack {args.stack}" + (" (every step forced)" if args.force else ""),
            flush=True,
        )
        try:
            outputs = run_program(values, engine, args.stack, placeholders=False)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            print(f"deploy failed: {engine.failed or exc}", file=sys.stderr)
            return 1
    seconds = time.monotonic() - started
    print(
        f"deployed stack {args.stack} in {seconds:.1f}s: {len(engine.ran)} steps run, "
        f"{len(engine.skipped)} skipped (unchanged)",
        flush=True,
    )
    shown = {k: "[secret]" if k in engine.secret_outputs else v for k, v in outputs.items()}
    (STATE_DIR / f"{args.stack}.outputs.json").write_text(json.dumps(shown, indent=1))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The SDK's event loop may still hold threads of steps that were stopped by a failure.
    os._exit(code)
