"""Shared fixtures: the real program run under the engine double (tools.engine)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tools.engine import (
    OBJECT_STORAGE_SECRETS,
    RENDER_CA_CERTIFICATE,
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
