"""The base step's authorized_keys, run under stubbed commands: a cloud server's file becomes
exactly the stack's keys (the bootstrap key and hand-added ones go), a static server's keeps
its owner's lines around the program's block, a re-run changes nothing, and a script whose
deploy key is unknown (an offline render) leaves the file alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import stack_values
from tests.unit.stepharness import Answer, Node, Ran, local_stack, rendered_step
from tools.engine import Engine, Step, fake_ssh_public_key, run_program

HOME = "/srv/home/deploy"  # the login user's home, below the scratch root
KEYS = f"{HOME}/.ssh/authorized_keys"
BEGIN = "# BEGIN airflow-ha keys"
END = "# END airflow-ha keys"
BOOTSTRAP = fake_ssh_public_key("bootstrap")
BY_HAND = fake_ssh_public_key("added-by-hand")
ALICE = fake_ssh_public_key("alice")


def _stubs(node: str) -> dict:
    return {
        "hostname": Answer(stdout=f"{node}\n"),
        "hostnamectl": Answer(),
        "apt-get": Answer(),
        "dpkg-query": Answer(stdout="install ok installed"),
        "systemctl": Answer(),
        "sshd": Answer(),
        # The login user (root on Hetzner and here, admin on AWS) lives in HOME; its group is
        # its name.
        "getent": Answer("passwd *", run=f'echo "$2:x:1000:1000::$ROOT{HOME}:/bin/bash"'),
        "id": Answer("-gn *", run='echo "$2"'),
    }


def _base(stack: str, node: str, **changes) -> Step:
    values = {**stack_values(stack), **changes}
    engine = Engine()
    run_program(values, engine, stack, placeholders=False)
    return rendered_step("base", node, engine)


def _run(node: Node, step: Step) -> Ran:
    ran = node.run(step.script, _stubs(step.node))
    assert ran.returncode == 0, ran.stderr
    return ran


def _keys(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize(
    ("stack", "name", "user"), [("dev", "fsn", "root"), ("prod", "fra", "admin")]
)
def test_a_cloud_servers_file_becomes_exactly_the_stacks_keys(
    tmp_path: Path, stack: str, name: str, user: str
) -> None:
    node = Node(tmp_path)
    node.dir(f"{HOME}/.ssh").chmod(0o700)
    node.file(KEYS, f"{BOOTSTRAP}\n{BY_HAND}\n", 0o600)
    step = _base(stack, name, sshExtraPublicKeys=[ALICE])
    ran = _run(node, step)
    written = node.path(KEYS).read_text()
    stack_key = stack_values(stack)["sshPublicKey"]
    # The deploy key is sshPublicKey's (the fixtures' private key matches it): listed once.
    assert _keys(written) == [stack_key, ALICE]
    assert node.path(KEYS).stat().st_mode & 0o777 == 0o600
    assert ran.of("getent") == [f"getent passwd {user}"]
    (chown,) = ran.of("chown")
    assert chown.startswith(f"chown {user}:{user} {HOME}/.ssh/.authorized_keys.")
    assert f"wrote {KEYS}: 2 key(s)" in ran.stdout
    assert not list(node.path(f"{HOME}/.ssh").glob(".authorized_keys.*"))
    again = _run(node, step)  # a re-run (a connection change re-runs every step)
    assert "wrote" not in again.stdout.replace("wrote /etc/", "")
    assert node.path(KEYS).read_text() == written


def test_a_static_servers_own_lines_stay_around_the_programs_block(tmp_path: Path) -> None:
    node = Node(tmp_path)
    owners = f"# the owner's\n{BY_HAND}\n"
    node.file(KEYS, owners, 0o600)
    _run(node, _base("local", "node-a", sshExtraPublicKeys=[ALICE]))
    first = node.path(KEYS).read_text()
    assert first.startswith(owners)
    assert first.count(BEGIN) == 1 and first.rstrip().endswith(END)
    assert ALICE in first
    # The next deploy drops ALICE: only the block changes.
    _run(node, _base("local", "node-a"))
    second = node.path(KEYS).read_text()
    assert second.startswith(owners) and second.count(BEGIN) == 1
    assert ALICE not in second
    assert _keys(second) == [BY_HAND, stack_values("local")["sshPublicKey"]]


def test_a_missing_ssh_directory_is_made_private(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.dir(HOME)
    ran = _run(node, rendered_step("base", "node-a", local_stack()))
    assert f"install -d -m 0700 -o root -g root {HOME}/.ssh" in ran.of("install")
    assert _keys(node.path(KEYS).read_text()) == [stack_values("local")["sshPublicKey"]]


@pytest.mark.parametrize("problem", ["placeholder", "no home"])
def test_the_file_is_left_alone_when_the_step_cannot_be_sure(tmp_path, problem: str) -> None:
    node = Node(tmp_path)
    node.file(KEYS, f"{BOOTSTRAP}\n", 0o600)
    if problem == "placeholder":
        # What tools.render shows: sshPrivateKey unknown, so its public half is too.
        step = _base("dev", "fsn", sshPrivateKey="<secret:sshPrivateKey>")
        stubs = _stubs("fsn")
    else:
        step = _base("dev", "fsn")
        stubs = {**_stubs("fsn"), "getent": Answer(status=2)}
    ran = node.run(step.script, stubs)
    assert ran.returncode == 1
    assert "error: " in ran.stderr
    assert node.path(KEYS).read_text() == f"{BOOTSTRAP}\n"
    assert ran.of("apt-get", "systemctl") == []  # it stopped before the rest of the step
