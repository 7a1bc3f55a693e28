"""Where every secret lands (issue 13, point 4): each generated password, key and cookie,
the deploy's private key and the nodes' host keys, followed through the rendered output of
every committed stack (the real program under the engine double, as tools.render sees it).

A file that holds one must be readable by no other user (no `o` bits) and by a group only
where the service that reads it runs as that group (the table below); a step's command lines
(outside the files it writes and the here-documents it feeds) carry it only to a shell builtin
or an assignment (printf into a pipe, `VAR=... command`, `name=...`): never as an argument of a
program, which `ps` shows every user.
"""

from __future__ import annotations

import re

import pytest

from components.airflow import fernet_key
from tools.engine import (
    ACCESS_KEY,
    FILE_BLOCK,
    OBJECT_STORAGE_SECRETS,
    TASK_LOG_SECRETS,
    Engine,
    Step,
    run_program,
    unwrap_secrets,
)

STACKS = ["dev", "staging", "prod", "local"]
# The files that hold a secret, their mode and owner: group-readable only for the service's
# own group (Airflow runs as the airflow group and reads its config).
EXPECTED = {
    "/etc/csync2.key_airflow_dags": ("0600", "root:root"),
    "/etc/patroni/config.yml": ("0600", "postgres:postgres"),
    "/etc/airflow/airflow.cfg": ("0640", "root:airflow"),
}
# With objectStorage the env file holds the bucket's keys (the task logs' connection), and
# pgBackRest's config them and the repository's passphrase (archive-push runs as postgres).
WITH_OBJECT_STORAGE = {
    "/etc/airflow/airflow.env": ("0640", "root:airflow"),
    "/etc/pgbackrest/pgbackrest.conf": ("0640", "root:postgres"),
    # The node's key for pgBackRest's TLS server and client (components/certs.py).
    "/etc/pgbackrest/tls/node.key": ("0600", "postgres:postgres"),
}
BUILTINS = {"printf", "echo", "local", "export", "readonly", "declare", "[", "test", "if", "elif"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
HEREDOC = re.compile(r"<<-?\s*'?\"?([A-Za-z_][A-Za-z0-9_]*)")


def generated_secrets(engine: Engine, values: dict) -> dict[str, str]:
    """Every secret's text, by where it comes from."""
    found: dict[str, str] = {}
    for r in engine.resources:
        for output in ("result", "base64"):
            if r.outputs.get(output) is not None:
                found[r.name] = unwrap_secrets(r.outputs[output])[0]
        if r.type == ACCESS_KEY:  # objectStorage.create's keys: the secret and the key ID
            found[r.name] = unwrap_secrets(r.outputs["secret"])[0]
            found[f"{r.name}-id"] = engine.secret_value(f"{r.name}-id", "password", {"length": 16})
    found["airflow-fernet-key (derived)"] = fernet_key(found["airflow-fernet-key"])
    found["sshPrivateKey"] = values["sshPrivateKey"]
    for key in (*OBJECT_STORAGE_SECRETS, *TASK_LOG_SECRETS):
        if key in values:
            found[key] = values[key]
    return found


def _command_lines(step: Step) -> list[str]:
    """The step's shell, without the files it writes and the here-documents it feeds."""
    lines, end = [], None
    for line in FILE_BLOCK.sub("", step.script).splitlines():
        if end is not None:
            end = None if line.strip() == end else end
            continue
        lines.append(line)
        opened = HEREDOC.search(line)
        if opened and not line.lstrip().startswith("#"):
            end = opened.group(1)
    return lines


def _argv_exposure(line: str, secret: str) -> bool:
    """Whether `secret` is an argument of a program on this shell line."""
    for command in re.split(r"\|\||&&|[|;]|\$\(|`", line):
        words = command.strip().split()
        while words and ASSIGNMENT.match(words[0]):  # VAR=value prefixes: the environment
            words = words[1:]
        if not words or words[0].startswith("#") or words[0] in BUILTINS:
            continue
        if any(secret in w for w in words):
            return True
    return False


@pytest.mark.parametrize("stack", STACKS)
def test_every_secret_lands_only_in_private_files_and_never_in_argv(values, stack) -> None:
    stack_values = values(stack)
    engine = Engine()
    run_program(stack_values, engine, stack)
    secrets = {k: v for k, v in generated_secrets(engine, stack_values).items() if len(v) >= 8}
    assert len(secrets) >= 14  # not vacuous: every tier's secrets were found
    expected = {**EXPECTED, **(WITH_OBJECT_STORAGE if "objectStorage" in stack_values else {})}
    landed: dict[str, set[str]] = {}
    for step in engine.steps():
        for path, mode, owner, content in step.files:
            held = {name for name, text in secrets.items() if text in content}
            if "PRIVATE KEY-----" in content:
                held.add("a private key")
            if held:
                landed.setdefault(path, set()).update(held)
                assert int(mode, 8) & 0o007 == 0, f"{path} ({mode}) is readable by every user"
                assert expected.get(path) == (mode, owner), f"{path} {mode} {owner}: {held}"
        for line in _command_lines(step):
            for name, text in secrets.items():
                assert not _argv_exposure(line, text), f"{step.step}: {name} in argv: {line}"
    assert set(landed) == set(expected), landed
    for command in engine.of_type("command:remote:Command"):
        assert not any(text in command.inputs["create"] for text in secrets.values())
        assert "stdin" in command.secret_inputs or not any(
            text in command.inputs["stdin"] for text in secrets.values()
        )


def test_a_password_as_an_argument_is_caught() -> None:
    """The check itself: the admin password on `users create`, as migrate.sh had it."""
    line = "if ! out=$(airflow users create --username admin --password s3cretvalue --role Admin"
    assert _argv_exposure(line, "s3cretvalue")
    assert not _argv_exposure("printf '%s\\n' s3cretvalue | rabbitmqctl add_user u", "s3cretvalue")
    assert not _argv_exposure("PGPASSWORD=s3cretvalue psql -c 'SELECT 1'", "s3cretvalue")
    assert not _argv_exposure("cookie=s3cretvalue", "s3cretvalue")
