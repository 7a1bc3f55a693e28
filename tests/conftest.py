"""Shared fixtures: the real program run under the engine double (tools.engine)."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from tools.engine import (
    OBJECT_STORAGE_SECRETS,
    RENDER_CA_CERTIFICATE,
    TASK_LOG_SECRETS,
    Engine,
    fake_host_keys,
    fake_ssh_private_key,
    fake_ssh_public_key,
    load_stack_file,
    run_program,
    stack_path,
    with_ca_certificate,
    with_host_keys,
)

LOCAL_PUBLIC_KEY = fake_ssh_public_key("local")
# AWS's documentation example keys: the form real ones have.
FAKE_ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
FAKE_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def stack_values(stack: str) -> dict[str, Any]:
    """The committed stack file's values, with a placeholder private key (the local stack: and
    what tools.localcloud makes, as the offline render stands it in)."""
    values = load_stack_file(stack_path(stack))
    if stack == "local":
        values.setdefault("sshPublicKey", LOCAL_PUBLIC_KEY)
        values = with_host_keys(values, fake_host_keys(values))
        values = with_ca_certificate(values, RENDER_CA_CERTIFICATE)
        for key in OBJECT_STORAGE_SECRETS:  # as the offline render has them
            values.setdefault(key, f"<secret:{key}>")
    # A private key whose public half is sshPublicKey's, as in a stack between rotations.
    values.setdefault("sshPrivateKey", fake_ssh_private_key(values["sshPublicKey"]))
    # The bucket's keys, set with `pulumi config set --secret` like sshPrivateKey (with create
    # the program makes them).
    if "objectStorage" in values and not values["objectStorage"].get("create"):
        values.setdefault("objectStorageAccessKey", FAKE_ACCESS_KEY)
        values.setdefault("objectStorageSecretKey", FAKE_SECRET_KEY)
    return values


def without_object_storage(values: dict[str, Any]) -> dict[str, Any]:
    """A stack's values as if it had no objectStorage (the committed local stack has the local
    cloud's): no backups, task logs on the workers."""
    for key in ("objectStorage", *OBJECT_STORAGE_SECRETS, *TASK_LOG_SECRETS):
        values.pop(key, None)
    return values


@pytest.fixture
def values() -> Callable[..., dict[str, Any]]:
    """values(stack, **overrides): a mutable copy of a committed stack's config."""

    def make(stack: str = "dev", **overrides: Any) -> dict[str, Any]:
        result = copy.deepcopy(stack_values(stack))
        result.update(overrides)
        return result

    return make


@pytest.fixture
def deploy() -> Callable[..., tuple[Engine, dict[str, Any]]]:
    """deploy(values, stack): run the program under a recording engine; (engine, outputs)."""

    def run(config: dict[str, Any], stack: str = "dev", engine: Engine | None = None):
        engine = engine or Engine()
        outputs = run_program(config, engine, stack)
        return engine, outputs

    return run


@pytest.fixture(scope="session")
def ca_certificate(tmp_path_factory) -> str:
    """A real CA certificate (PEM), as objectStorage.caCertificate takes one."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is missing: apt-get install openssl (tools/setup.sh does)")
    folder = tmp_path_factory.mktemp("ca")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=airflow-ha test CA", "-keyout", str(folder / "ca.key"),
         "-out", str(folder / "ca.pem"), "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True,
    )
    return (folder / "ca.pem").read_text()
