"""No ordinary `pulumi up` replaces a server (issue 12, part 1).

The program runs twice under the engine double, the way two `pulumi up`s a month apart would:
the second time the AMI lookup answers a newer image and the stack has a rotated sshPublicKey,
and the key resources come back as new ones (a new hcloud SshKey id, a new KeyPair name), as
a replaced resource does. What the engine would then replace is a server input that differs
and is not in that server's ignore_changes: there must be none. The rotation instead changes
each node's base step, which writes authorized_keys; the servers, their disks and public
addresses are `protect`ed where the stack says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from pulumi.runtime import mocks as pulumi_mocks

from components.nodes import AWS_INSTANCE_IGNORED, HCLOUD_SERVER_IGNORED
from tools.engine import Engine, Registered, fake_ssh_private_key, fake_ssh_public_key

HCLOUD_SERVER = "hcloud:index/server:Server"
AWS_INSTANCE = "aws:ec2/instance:Instance"
SERVERS = (HCLOUD_SERVER, AWS_INSTANCE)
# What holds a node's data or its identity: protected with protectServers.
KEPT = (*SERVERS, "hcloud:index/primaryIp:PrimaryIp", "aws:ec2/eip:Eip")
# What holds the backups: the bucket objectStorage.create makes, protected with protectServers.
BUCKET = "aws:s3/bucket:Bucket"
SSH_KEY = "hcloud:index/sshKey:SshKey"
KEY_PAIR = "aws:ec2/keyPair:KeyPair"
COMMAND = "command:remote:Command"
# The inputs a newer image or another key reach on each kind of server (the SDK's names).
REACHED = {HCLOUD_SERVER: {"sshKeys"}, AWS_INSTANCE: {"ami", "keyName"}}
CLOUD_STACKS = ["dev", "staging", "prod"]
ROTATED = fake_ssh_public_key("rotated")

Key = tuple[str, str]


class LaterEngine(Engine):
    """The engine double answering as providers would later: the AMI lookup the newest image
    `ami`, and a key resource a new identity when its public key (or `salt`) is another, as a
    replaced SshKey gets a new id and an auto-named KeyPair a new name."""

    def __init__(self, ami: str = "ami-0debian13", salt: str = "") -> None:
        super().__init__()
        self.ami, self.salt = ami, salt

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list]:
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": self.ami, "name": f"debian-13-amd64-{self.ami}"}, []
        return super().call(args)

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str, dict]:
        resource_id, outputs = super().new_resource(args)
        if args.typ in (SSH_KEY, KEY_PAIR):
            seed = f"{args.inputs.get('publicKey')}{self.salt}".encode()
            digest = hashlib.sha256(seed).hexdigest()[:8]
            if args.typ == SSH_KEY:
                resource_id = str(int(digest, 16))
            else:
                outputs["keyName"] = f"{args.name}-{digest}"
                resource_id = outputs["keyName"]
        return resource_id, outputs


def _by_key(engine: Engine, types: tuple[str, ...] | None = None) -> dict[Key, Registered]:
    return {
        (r.type, r.name): r for r in engine.resources if types is None or r.type in types
    }


def _changed(before: Registered, after: Registered) -> set[str]:
    keys = before.inputs.keys() | after.inputs.keys()
    return {k for k in keys if before.inputs.get(k) != after.inputs.get(k)}


def _replaced_servers(before: Engine, after: Engine) -> dict[Key, set[str]]:
    """Per server, the inputs that differ and are not ignored: what would replace it."""
    old, new = _by_key(before, SERVERS), _by_key(after, SERVERS)
    assert old.keys() == new.keys() and old
    return {
        key: _changed(old[key], server) - set(after.options_of(server).ignore_changes)
        for key, server in new.items()
    }


@pytest.fixture
def twice(values, deploy) -> Callable[..., tuple[Engine, Engine]]:
    """twice(stack, **later): the committed stack, then the same with `later` config changes
    under an engine answering a newer AMI."""

    def run(stack: str, **later: Any) -> tuple[Engine, Engine]:
        before, _ = deploy(values(stack), stack=stack, engine=LaterEngine("ami-0debian13-old"))
        after, _ = deploy(
            values(stack, **later), stack=stack, engine=LaterEngine("ami-0debian13-new")
        )
        return before, after

    return run


@pytest.mark.parametrize("stack", CLOUD_STACKS)
def test_a_newer_image_and_a_rotated_key_replace_no_server(twice, stack: str) -> None:
    before, after = twice(stack, sshPublicKey=ROTATED)
    assert _replaced_servers(before, after) == {key: set() for key in _by_key(after, SERVERS)}
    # What ignore_changes holds back did change: without it every server would be replaced.
    old = _by_key(before, SERVERS)
    for key, server in _by_key(after, SERVERS).items():
        assert _changed(old[key], server) == REACHED[server.type], key


@pytest.mark.parametrize("stack", CLOUD_STACKS)
def test_a_rotated_key_changes_only_the_key_resources_and_each_base_step(
    twice, values, stack: str
) -> None:
    before, after = twice(stack, sshPublicKey=ROTATED)
    old = _by_key(before)
    differ = {key for key, r in _by_key(after).items() if _changed(old[key], r)}
    servers = set(_by_key(after, SERVERS))
    keys = set(_by_key(after, (SSH_KEY, KEY_PAIR)))
    bases = {(COMMAND, f"{name}-base") for _, name in _by_key(after, SERVERS)}
    assert keys and differ == keys | servers | bases
    # The base steps write the new key, and keep the one the deploy still logs in with (the
    # private key is unchanged: its public half is the old sshPublicKey).
    in_use = values(stack)["sshPublicKey"].split()[1]
    for engine, keys in ((before, {in_use}), (after, {in_use, ROTATED})):
        bases = [s.script for s in engine.steps() if s.step == "base"]
        assert len(bases) == 3
        assert all(k in script for script in bases for k in keys)
    assert not [s for s in before.steps() if ROTATED in s.script]


@pytest.mark.parametrize("stack", CLOUD_STACKS)
def test_a_new_key_resource_does_not_reach_server_inputs_that_are_not_ignored(
    values, deploy, stack: str
) -> None:
    """Same config, but the SshKey / KeyPair come back with another identity (replaced,
    recreated by hand): the servers see it only in their ignored key inputs."""
    before, _ = deploy(values(stack), stack=stack, engine=LaterEngine(salt="first"))
    after, _ = deploy(values(stack), stack=stack, engine=LaterEngine(salt="second"))
    assert _replaced_servers(before, after) == {key: set() for key in _by_key(after, SERVERS)}
    old = _by_key(before, SERVERS)
    for key, server in _by_key(after, SERVERS).items():
        key_input = {HCLOUD_SERVER: {"sshKeys"}, AWS_INSTANCE: {"keyName"}}[server.type]
        assert _changed(old[key], server) == key_input


@pytest.mark.parametrize("stack", CLOUD_STACKS)
def test_what_is_ignored_is_a_real_input_of_the_server(values, deploy, stack: str) -> None:
    """An ignore_changes entry that names no input (a typo, a provider rename) ignores
    nothing, silently."""
    engine, _ = deploy(values(stack), stack=stack)
    expected = {
        HCLOUD_SERVER: {"image", "sshKeys", "userData"},
        AWS_INSTANCE: {"ami", "keyName", "userData"},
    }
    assert len(HCLOUD_SERVER_IGNORED) == len(AWS_INSTANCE_IGNORED) == 3
    for server in _by_key(engine, SERVERS).values():
        ignored = set(engine.options_of(server).ignore_changes)
        assert ignored == expected[server.type]
        assert ignored <= set(server.inputs), server.name


@pytest.mark.parametrize("stack", CLOUD_STACKS)
def test_a_server_made_before_host_keys_replaces_nothing(values, deploy, stack: str) -> None:
    """The first `pulumi up` after host keys came: an existing server's state has no user
    data, the program now passes one; only ignored inputs differ, so no server is replaced."""
    engine, _ = deploy(values(stack), stack=stack)
    for server in _by_key(engine, SERVERS).values():
        before = Registered(server.type, server.name, dict(server.inputs), {}, 0)
        del before.inputs["userData"]
        changed = _changed(before, server)
        assert changed == {"userData"}
        assert changed <= set(engine.options_of(server).ignore_changes)
        assert "userData" in server.secret_inputs  # the private host key inside


@pytest.mark.parametrize("stack", CLOUD_STACKS)
def test_servers_disks_and_addresses_are_protected_in_the_committed_stacks(
    values, deploy, stack: str
) -> None:
    engine, _ = deploy(values(stack), stack=stack)
    protected = {(r.type, r.name) for r in engine.resources if engine.options_of(r).protect}
    assert protected == set(_by_key(engine, (*KEPT, BUCKET)))
    # Three nodes: a server and a public address each. The AWS root disk is the instance's.
    # With objectStorage.create (prod), the bucket too.
    created = values(stack).get("objectStorage", {}).get("create", False)
    assert len(protected) == 6 + (1 if created else 0)
    for instance in _by_key(engine, (AWS_INSTANCE,)).values():
        assert instance.inputs["rootBlockDevice"]["encrypted"] is True


def test_protect_servers_false_protects_nothing(values, deploy) -> None:
    engine, _ = deploy(values("staging", protectServers=False), stack="staging")
    assert not [r.name for r in engine.resources if engine.options_of(r).protect]


def test_the_static_stack_has_nothing_to_protect(values, deploy) -> None:
    engine, _ = deploy(values("local"), stack="local")
    assert not [r.name for r in engine.resources if engine.options_of(r).protect]
    assert not [r.name for r in engine.resources if engine.options_of(r).ignore_changes]


@pytest.mark.parametrize("stack", [*CLOUD_STACKS, "local"])
def test_the_rotation_drops_the_old_key_only_once_the_deploy_logs_in_with_the_new(
    values, deploy, stack: str
) -> None:
    """The runbook's two deploys: the new public key (both accepted), then the new private
    key (the old one goes). At no point is the key the deploy logs in with left out."""
    old = values(stack)["sshPublicKey"]
    old_key = old.split()[1]
    middle = values(stack, sshPublicKey=ROTATED)
    finished = {**middle, "sshPrivateKey": fake_ssh_private_key(ROTATED)}
    for config, accepted, gone in ((middle, {old_key, ROTATED}, set()),
                                   (finished, {ROTATED}, {old_key})):
        engine, _ = deploy(config, stack=stack)
        bases = [s for s in engine.steps() if s.step == "base"]
        assert len(bases) == 3
        for step in bases:
            assert all(k in step.script for k in accepted)
            assert not [k for k in gone if k in step.script]
        # Every step logs in with the private key whose public half the base step keeps.
        deploy_key = config["sshPrivateKey"]
        for cmd in engine.of_type(COMMAND):
            assert cmd.inputs["connection"]["privateKey"] == deploy_key
