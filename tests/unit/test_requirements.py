"""requirements.lock covers what the requirements files ask for; the Pulumi packages are pinned."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
FILES = ("requirements.txt", "requirements-dev.txt", "policy/requirements.txt")
# The SDK and the providers: exact pins, because the provider packages also fix the plugins
# `pulumi up` runs and tools.deploy copies pulumi-command's behaviour.
PULUMI = (
    "pulumi",
    "pulumi-command",
    "pulumi-hcloud",
    "pulumi-aws",
    "pulumi-random",
    "pulumi-policy",
)


def _requirements(path: Path) -> list[Requirement]:
    found = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            found.append(Requirement(line))
    return found


def _lock() -> dict[str, str]:
    pins = {}
    for requirement in _requirements(REPO / "requirements.lock"):
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"requirements.lock: {requirement} is not an exact pin"
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


@pytest.mark.parametrize("name", FILES)
def test_the_lock_pins_every_requirement_within_its_range(name: str) -> None:
    lock = _lock()
    for requirement in _requirements(REPO / name):
        pinned = lock.get(canonicalize_name(requirement.name))
        assert pinned is not None, f"{name}: {requirement.name} is not in requirements.lock"
        assert requirement.specifier.contains(pinned, prereleases=True), (
            f"{name}: {requirement} but requirements.lock has {pinned}: run `make lock`"
        )


def test_the_pulumi_sdk_and_providers_are_exact_pins_and_installed() -> None:
    lock = _lock()
    pins = {
        canonicalize_name(r.name): r
        for name in FILES
        for r in _requirements(REPO / name)
        if canonicalize_name(r.name) in PULUMI
    }
    assert set(pins) == set(PULUMI)
    for package, requirement in pins.items():
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{requirement}: pin it exactly"
        # A venv that is not the locked one would test other versions than CI deploys with.
        assert metadata.version(package) == lock[package], f"{package}: run `make setup`"
