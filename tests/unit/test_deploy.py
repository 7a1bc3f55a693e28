"""tools.deploy decides which steps run as `pulumi up` with pulumi-command would.

The ssh runner (`DeployEngine._ssh`) is replaced by a fake that records what would have run on
which node and prints the `key=value` lines each step declares; everything else is the real
program under the real DeployEngine, with its state file in a temporary directory.
"""

from __future__ import annotations

import functools
import inspect
import json
import subprocess
from pathlib import Path
from typing import Any

import pulumi_command
import pytest
import yaml

from components import remote
from tests.conftest import LOCAL_PUBLIC_KEY, stack_values
from tools import deploy
from tools.engine import (
    Engine,
    fake_host_keys,
    fake_ssh_private_key,
    fake_ssh_public_key,
    parse_step,
    stack_path,
    with_host_keys,
)

STACK = "local"
# Another private key text with the committed key's public half: only the connection changes.
NEW_KEY = fake_ssh_private_key(LOCAL_PUBLIC_KEY, salt="rotated")
# A new key pair, as a rotation brings (docs/operations.md, section 4).
ROTATED_PUBLIC_KEY = fake_ssh_public_key("rotated")
ROTATED_PRIVATE_KEY = fake_ssh_private_key(ROTATED_PUBLIC_KEY)


class FakeSsh:
    """Stands in for ssh: remembers each call, answers like a step that succeeded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict, str]] = []  # step name, connection, remote command

    def __call__(self, engine, conn: dict, remote_command: str, script: str):
        step = parse_step(script)
        name = f"{step.node}-{step.step}"
        self.calls.append((name, conn, remote_command))
        stdout = Engine.run_command(engine, name, {"stdin": script})["stdout"]
        return subprocess.CompletedProcess([], 0, stdout, "")

    @property
    def names(self) -> set[str]:
        return {name for name, _, _ in self.calls}


def _fake_ssh(monkeypatch: pytest.MonkeyPatch) -> FakeSsh:
    fake = FakeSsh()
    # A function, so that it binds as a method and sees the engine.
    monkeypatch.setattr(deploy.DeployEngine, "_ssh", lambda engine, *args: fake(engine, *args))
    return fake


@pytest.fixture
def ssh(monkeypatch) -> FakeSsh:
    return _fake_ssh(monkeypatch)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> str:
    """The state file after one whole deploy of the committed local stack (made once)."""
    path = tmp_path_factory.mktemp("deployed") / "state.json"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _fake_ssh(monkeypatch)
        state = deploy.DeployState(path)
        engine = deploy.DeployEngine(state, False, None, path.parent / "logs", verbose=False)
        deploy.run(engine, stack_values(STACK), STACK)
    return path.read_text()


@pytest.fixture
def up(tmp_path: Path, ssh: FakeSsh, deployed: str, monkeypatch):
    """up(values, targets=..., dependents=..., force=...): one tools.deploy run; the engine.
    up.deployed(): start from the state of a whole deploy of the committed stack."""
    state_path = tmp_path / "state.json"
    # The resource graph does not depend on the values these tests change: plan it once.
    monkeypatch.setattr(deploy, "plan_resources", lambda values, stack: _plan())

    def run(
        values: dict[str, Any],
        targets: tuple[str, ...] = (),
        dependents: bool = False,
        force: bool = False,
    ) -> deploy.DeployEngine:
        ssh.calls.clear()
        state = deploy.DeployState(state_path)
        selected = deploy.select(values, STACK, state, list(targets), dependents)
        engine = deploy.DeployEngine(state, force, selected, tmp_path / "logs", verbose=False)
        deploy.run(engine, values, STACK)
        return engine

    run.state_path = state_path
    run.deployed = lambda: state_path.write_text(deployed)
    return run


def _changes(engine: deploy.DeployEngine) -> dict[str, deploy.Change]:
    return dict(engine.ran)


@functools.cache
def _plan(plan=deploy.plan_resources) -> dict[deploy.Key, deploy.Planned]:
    return plan(stack_values(STACK), STACK)


def _all_steps() -> set[str]:
    return {name for typ, name in _plan() if typ == deploy.COMMAND}


def test_an_unchanged_stack_re_runs_nothing(values, up, ssh) -> None:
    first = up(values(STACK))
    assert {c.kind for c in _changes(first).values()} == {"create"}
    assert ssh.names == _all_steps()
    second = up(values(STACK))
    assert second.ran == [] and ssh.calls == []
    assert set(second.skipped) == _all_steps()
    assert deploy.summary(second).startswith("0 steps run, ")
    forced = up(values(STACK), force=True)  # as `pulumi up --replace` of every step
    assert set(_changes(forced).values()) == {deploy.Change("replace", ("--force",))}
    assert set(_changes(forced)) == _all_steps()


def test_a_rotated_key_re_runs_every_step_on_that_connection_as_an_update(values, up, ssh) -> None:
    up.deployed()
    rotated = up(values(STACK, sshPrivateKey=NEW_KEY))
    # The connection is no replaceOnChanges input: an update, which runs `create` again.
    assert set(_changes(rotated)) == _all_steps()
    assert set(_changes(rotated).values()) == {deploy.Change("update", ("connection",))}
    assert {conn["privateKey"] for _, conn, _ in ssh.calls} == {NEW_KEY}
    assert {command for _, _, command in ssh.calls} == {remote.RUN_SCRIPT}
    saved = json.loads(up.state_path.read_text())
    assert {s["change"] for s in saved["steps"].values()} == {"update"}
    kept = up.state_path.read_text()  # only digests of the key
    assert not [line for line in NEW_KEY.splitlines()[1:-1] if line in kept]
    assert up(values(STACK, sshPrivateKey=NEW_KEY)).ran == []


def test_a_key_rotation_rewrites_authorized_keys_and_never_drops_the_key_in_use(
    values, up, ssh
) -> None:
    """The runbook's two deploys: the new public key first (only the base steps run, the old
    key still logs in and stays authorized), then the new private key (every step, the base
    steps now without the old key)."""
    up.deployed()
    first = values(STACK, sshPublicKey=ROTATED_PUBLIC_KEY)
    added = up(first)
    bases = {name for name in _all_steps() if name.endswith("-base")}
    assert set(_changes(added)) == bases
    assert {c.kind for c in _changes(added).values()} == {"replace"}  # a changed script
    for _, conn, _ in ssh.calls:
        assert conn["privateKey"] == stack_values(STACK)["sshPrivateKey"]
    scripts = _base_scripts(added)
    assert all(ROTATED_PUBLIC_KEY in s and LOCAL_PUBLIC_KEY.split()[1] in s for s in scripts)
    switched = up({**first, "sshPrivateKey": ROTATED_PRIVATE_KEY})
    assert set(_changes(switched)) == _all_steps()
    assert {_changes(switched)[name].kind for name in bases} == {"replace"}
    assert {conn["privateKey"] for _, conn, _ in ssh.calls} == {ROTATED_PRIVATE_KEY}
    scripts = _base_scripts(switched)
    assert all(ROTATED_PUBLIC_KEY in s and LOCAL_PUBLIC_KEY.split()[1] not in s for s in scripts)


def _base_scripts(engine: deploy.DeployEngine) -> list[str]:
    return [r.inputs["stdin"] for r in engine.of_type(deploy.COMMAND) if r.name.endswith("-base")]


def test_a_changed_trigger_is_recorded_as_a_replace(values, up) -> None:
    up.deployed()
    changed = up(values(STACK, celeryWorkerConcurrency=2))
    changes = _changes(changed)
    start = {f"node-{n}-airflow-start" for n in "abc"}
    assert start <= set(changes)
    assert all(changes[name] == deploy.Change("replace", ("stdin", "triggers")) for name in start)
    assert {c.kind for c in changes.values()} == {"replace"}  # only steps whose script changed
    saved = json.loads(up.state_path.read_text())["steps"]
    assert all(saved[name]["change"] == "replace" for name in start)
    assert saved["node-a-base"]["change"] == "create"
    assert "replace" in deploy.summary(changed)


def test_a_changed_create_command_is_an_update(values, up, ssh, monkeypatch) -> None:
    up.deployed()
    monkeypatch.setattr(remote, "RUN_SCRIPT", remote.RUN_SCRIPT + " # v2")
    changed = up(values(STACK))
    assert set(_changes(changed).values()) == {deploy.Change("update", ("create",))}
    assert {command for _, _, command in ssh.calls} == {remote.RUN_SCRIPT}


def test_an_update_runs_update_when_set_and_a_replace_runs_create(tmp_path, ssh) -> None:
    state = deploy.DeployState(tmp_path / "state.json")
    engine = deploy.DeployEngine(state, False, None, tmp_path / "logs", verbose=False)
    inputs = {
        "connection": {"host": "192.0.2.1", "user": "root", "port": 22, "privateKey": "k"},
        "create": "create-it",
        "update": "update-it",
        "stdin": '# airflow-ha step "demo" on node n1\n',
        "triggers": ["1"],
    }
    engine.run_command("n1-demo", inputs)
    engine.run_command("n1-demo", inputs | {"stdin": inputs["stdin"] + "echo 2\n"})
    engine.run_command("n1-demo", inputs | {"triggers": ["2"]})
    assert [command for _, _, command in ssh.calls] == ["create-it", "update-it", "create-it"]
    assert [c.kind for _, c in engine.ran] == ["create", "update", "replace"]


def test_state_from_the_old_digest_is_migrated_without_re_running(values, up) -> None:
    up.deployed()
    saved = json.loads(up.state_path.read_text())
    recorded = deploy.DeployEngine(deploy.DeployState(up.state_path), False, None, Path(), False)
    deploy.run_program(values(STACK), recorded, STACK, placeholders=False)
    for cmd in recorded.of_type(deploy.COMMAND):
        step = saved["steps"][cmd.name]
        del step["inputs"]
        step["hash"] = deploy.legacy_digest(cmd.inputs)
    saved["steps"]["node-b-etcd"]["hash"] = "0" * 64  # its inputs changed since
    up.state_path.write_text(json.dumps(saved))
    migrated = up(values(STACK))
    assert [name for name, _ in migrated.ran] == ["node-b-etcd"]
    steps = json.loads(up.state_path.read_text())["steps"]
    assert all("inputs" in s and "hash" not in s for s in steps.values())
    assert up(values(STACK)).ran == []


def test_target_runs_exactly_the_targets_and_with_dependents_what_follows(values, up) -> None:
    up.deployed()
    rotated = values(STACK, sshPrivateKey=NEW_KEY)  # every step has a pending update
    only = up(rotated, targets=("node-a-airflow-install",))
    assert [name for name, _ in only.ran] == ["node-a-airflow-install"]
    with_dependents = up(rotated, targets=("node-a-airflow-install",), dependents=True)
    assert {name for name, _ in with_dependents.ran} == {
        "node-a-airflow-config",
        "node-a-airflow-db-migrate",
        "node-a-airflow-start",
        "node-b-airflow-start",
        "node-c-airflow-start",
        # The monitoring tier waits for each node's Airflow (it scrapes what runs there).
        *(
            f"{n}-{step}"
            for n in ("node-a", "node-b", "node-c")
            for step in ("monitoring-packages", "monitoring", "monitoring-check")
        ),
    }  # node-a-airflow-install ran in the previous run: unchanged now
    several = up(
        rotated,
        targets=(
            "node-b-rabbitmq-*",
            "urn:pulumi:local::airflow-ha::airflow-ha:cluster:AirflowHaCluster$"
            "airflow-ha:dag_sync:DagSync$command:remote:Command::node-c-dag-sync",
            "urn:pulumi:local::airflow-ha::**::node-a-base",
        ),
    )
    assert {name for name, _ in several.ran} == {
        "node-b-rabbitmq-install",
        "node-b-rabbitmq-cluster",
        "node-b-rabbitmq-restart",
        "node-b-rabbitmq-check",
        "node-c-dag-sync",
        "node-a-base",
    }
    # Untargeted steps kept their old inputs: the next whole-stack run updates just those.
    targeted = {name for run in (only, with_dependents, several) for name, _ in run.ran}
    assert set(dict(up(rotated).ran)) == _all_steps() - targeted


def test_a_target_on_a_fresh_stack_creates_nothing_untargeted(values, up) -> None:
    first = up(values(STACK), targets=("node-a-base",))
    assert [name for name, _ in first.ran] == ["node-a-base"]
    assert set(json.loads(up.state_path.read_text())["steps"]) == {"node-a-base"}
    # The random passwords were not generated either (skipped creates, as pulumi up's).
    assert json.loads(up.state_path.read_text())["secrets"] == {}
    with pytest.raises(
        deploy.TargetError, match="node-b-wireguard-keys needs node-b-base, never created"
    ):
        up(values(STACK), targets=("node-b-wireguard-keys",))


def test_a_component_target_runs_its_children_only_with_dependents(values, up) -> None:
    up.deployed()
    rotated = values(STACK, sshPrivateKey=NEW_KEY)
    assert up(rotated, targets=("node-a",)).ran == []  # the Node component itself: no step
    children = up(rotated, targets=("node-a",), dependents=True)
    assert "node-a-base" in dict(children.ran)
    assert "node-b-base" not in dict(children.ran)


def test_a_step_gone_from_the_program_leaves_the_state_only_on_a_whole_run(values, up) -> None:
    up.deployed()
    saved = json.loads(up.state_path.read_text())
    saved["steps"]["node-d-base"] = saved["steps"]["node-a-base"]
    up.state_path.write_text(json.dumps(saved))
    up(values(STACK), targets=("node-a-base",))
    assert "node-d-base" in json.loads(up.state_path.read_text())["steps"]
    assert up(values(STACK)).ran == []
    assert "node-d-base" not in json.loads(up.state_path.read_text())["steps"]


def _stack_file(tmp_path: Path) -> Path:
    data = yaml.safe_load(stack_path(STACK).read_text())
    data["config"]["airflow-ha:sshPrivateKey"] = fake_ssh_private_key(LOCAL_PUBLIC_KEY)
    data["config"]["airflow-ha:sshPublicKey"] = LOCAL_PUBLIC_KEY
    data["config"]["airflow-ha:objectStorageAccessKey"] = "test-access-key"
    data["config"]["airflow-ha:objectStorageSecretKey"] = "test-secret-key"
    nodes = {"nodes": data["config"]["airflow-ha:nodes"]}
    data["config"]["airflow-ha:nodes"] = with_host_keys(nodes, fake_host_keys(nodes))["nodes"]
    path = tmp_path / "Pulumi.t.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_target_matching_nothing_is_one_clear_error(tmp_path, ssh, capsys) -> None:
    state = tmp_path / "state.json"
    argv = ["--stack", "t", "--stack-file", str(_stack_file(tmp_path)), "--state", str(state)]
    assert deploy.main([*argv, "--target", "node-a-base", "--target", "node-a-airflow-strat"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --target 'node-a-airflow-strat' ") and err.count("\n") == 1
    assert "did you mean node-a-airflow-start" in err and "Traceback" not in err
    assert ssh.calls == [] and not state.exists()


def test_the_replace_on_changes_list_matches_the_installed_sdk() -> None:
    # A pulumi-command upgrade that replaced on other inputs would change what re-runs how.
    source = inspect.getsource(pulumi_command.remote.Command._internal_init)
    assert 'replace_on_changes=["triggers[*]"]' in source
    assert source.count("replace_on_changes=") == 1
    assert set(deploy.REPLACE_ON_CHANGES) == {"triggers"}


@pytest.mark.parametrize(
    ("pattern", "hit"),
    [
        ("urn:pulumi:s::p::a:b:C$command:remote:Command::n-1", True),
        ("urn:pulumi:s::p::*::n-1", False),  # `*` stays within one segment
        ("urn:pulumi:s::p::**::n-1", True),
        ("urn:pulumi:s::p::**::n-*", True),
        ("urn:pulumi:s::p::**::n-2", False),
        ("n-1", True),
        ("n-?", True),
        ("n", False),
    ],
)
def test_target_patterns(pattern: str, hit: bool) -> None:
    urn = "urn:pulumi:s::p::a:b:C$command:remote:Command::n-1"
    assert deploy.target_matches(pattern, "n-1", urn) is hit


def test_state_and_step_logs_are_private_whatever_the_umask(values, tmp_path, ssh) -> None:
    """The state holds every generated secret, a log what a step printed: 0600 in 0700
    folders, a folder made before tightened, an older wider file narrowed."""
    import os

    top = tmp_path / "deploy-state"
    top.mkdir(mode=0o755)
    top.chmod(0o755)
    (top / "local.json").write_text('{"secrets": {}, "steps": {}}')
    (top / "local.json").chmod(0o644)
    old = os.umask(0o022)
    try:
        state = deploy.DeployState(top / "local.json")
        logs = top / "local" / "logs"
        engine = deploy.DeployEngine(state, False, None, logs, verbose=False)
        deploy.run(engine, values(STACK), STACK)
    finally:
        os.umask(old)
    written = [top / "local.json", *logs.iterdir()]
    assert len(written) > 10 and state.data["secrets"]  # the secrets and every step's log
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o600, path
    for folder in (top, top / "local", logs):
        assert folder.stat().st_mode & 0o777 == 0o700, folder


def test_ssh_checks_the_pinned_host_key_strictly(tmp_path, monkeypatch) -> None:
    """tools.deploy's ssh: StrictHostKeyChecking=yes against a known_hosts file (0600, beside
    the state) holding each connection's hostKey, which ssh-keygen finds for that host."""
    import shutil

    seen: list[list[str]] = []
    real_run = subprocess.run

    def fake_run(command, **kwargs):
        seen.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(deploy.subprocess, "run", fake_run)
    state = deploy.DeployState(tmp_path / "state" / "local.json")
    engine = deploy.DeployEngine(state, False, None, tmp_path / "logs", verbose=False)
    key = fake_ssh_public_key("host-node-a").rsplit(" ", 1)[0]
    for port in (22, 2222):
        conn = {"host": "172.31.77.11", "port": port, "user": "root", "privateKey": "K",
                "hostKey": key}
        engine._ssh(conn, "bash", "script")
    options = [seen[0][i + 1] for i, arg in enumerate(seen[0]) if arg == "-o"]
    known = tmp_path / "state" / "local.known_hosts"
    assert "StrictHostKeyChecking=yes" in options and f"UserKnownHostsFile={known}" in options
    assert "StrictHostKeyChecking=no" not in options
    assert known.stat().st_mode & 0o777 == 0o600
    assert known.read_text() == f"172.31.77.11 {key}\n[172.31.77.11]:2222 {key}\n"
    if shutil.which("ssh-keygen"):
        found = real_run(
            ["ssh-keygen", "-F", "172.31.77.11", "-f", str(known)], capture_output=True, text=True
        )
        assert found.returncode == 0 and key.split()[1] in found.stdout
    with pytest.raises(RuntimeError, match="hostKey"):
        engine._ssh({"host": "203.0.113.9", "privateKey": "K"}, "bash", "script")


def test_the_local_stack_takes_the_machines_host_keys(tmp_path, monkeypatch) -> None:
    """The keys the local cloud generated into the disks become the nodes' hostKey."""
    import shutil

    from tools.localcloud import machines

    if shutil.which("ssh-keygen") is None:
        pytest.skip("no ssh-keygen here")
    for machine in machines.MACHINES:
        upper = tmp_path / machine.name / "upper"
        (upper / "etc" / "ssh").mkdir(parents=True)
        subprocess.run(["ssh-keygen", "-q", "-A", "-f", str(upper)], check=True)
    keys = machines.host_keys(tmp_path)
    assert len(set(keys.values())) == 3
    assert all(k.startswith("ssh-ed25519 AAAA") and len(k.split()) == 2 for k in keys.values())
    machines.write_known_hosts(tmp_path / "known_hosts", tmp_path)
    text = (tmp_path / "known_hosts").read_text()
    assert text.count("\n") == 3 and (tmp_path / "known_hosts").stat().st_mode & 0o777 == 0o600
    key_file = tmp_path / "id"
    key_file.write_text("k")
    (tmp_path / "id.pub").write_text(LOCAL_PUBLIC_KEY)
    monkeypatch.setattr(machines, "SSH_KEY_PATH", key_file)
    monkeypatch.setattr(deploy, "host_keys", lambda: keys)
    values = deploy.local_stack_values(stack_values(STACK) | {"nodes": _committed_nodes()})
    assert {n["name"]: n["hostKey"] for n in values["nodes"]} == keys


def test_the_local_stack_takes_the_s3_endpoints_ca_and_credentials(tmp_path, monkeypatch) -> None:
    """objectStorage of the committed local stack gets the CA tools.localcloud made and the
    endpoint's fixed credentials, which the config then accepts; no CA yet: a clear stop."""
    from components.config import parse_config
    from tools.engine import RENDER_CA_CERTIFICATE, load_stack_file
    from tools.localcloud import machines

    key_file = tmp_path / "id"
    key_file.write_text(fake_ssh_private_key(LOCAL_PUBLIC_KEY))
    (tmp_path / "id.pub").write_text(LOCAL_PUBLIC_KEY)
    monkeypatch.setattr(machines, "SSH_KEY_PATH", key_file)
    monkeypatch.setattr(machines, "S3_CA", tmp_path / "s3" / "ca.pem")
    monkeypatch.setattr(deploy, "host_keys", lambda: fake_host_keys(stack_values(STACK)))
    with pytest.raises(SystemExit, match="no S3 endpoint CA"):
        deploy.local_stack_values(load_stack_file(stack_path(STACK)))
    (tmp_path / "s3").mkdir()
    (tmp_path / "s3" / "ca.pem").write_text(RENDER_CA_CERTIFICATE)
    values = deploy.local_stack_values(load_stack_file(stack_path(STACK)))
    assert values["objectStorage"]["caCertificate"] == RENDER_CA_CERTIFICATE
    assert values["objectStorageAccessKey"] == machines.S3_ACCESS_KEY
    assert values["objectStorageSecretKey"] == machines.S3_SECRET_KEY
    storage = parse_config(values, stack=STACK).object_storage
    assert (storage.endpoint, storage.port, storage.bucket) == (
        machines.GATEWAY, machines.S3_PORT, machines.S3_BUCKET,
    )
    assert (storage.region, storage.uri_style) == (machines.S3_REGION, "path")
    assert storage.ca_certificate == RENDER_CA_CERTIFICATE


def _committed_nodes() -> list[dict]:
    return yaml.safe_load(stack_path(STACK).read_text())["config"]["airflow-ha:nodes"]
