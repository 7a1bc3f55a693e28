"""The offline render: every node's steps and files, in order, secrets as placeholders."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.render", *args], cwd=REPO, capture_output=True, text=True
    )


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "local"])
def test_render_writes_every_node_in_step_order(stack: str, tmp_path: Path) -> None:
    started = time.monotonic()
    result = _render("--stack", stack, "--out", str(tmp_path))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    print(f"render {stack}: {elapsed:.2f}s; {result.stdout.strip()}")  # a figure, not an assertion
    nodes = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert len(nodes) == 3
    for node in nodes:
        scripts = sorted((tmp_path / node).glob("*.sh"))
        steps = [re.sub(r"^\d\d-", "", s.stem) for s in scripts]
        assert steps[:4] == ["base", "wireguard-keys", "wireguard-mesh", "wireguard-check"]
        assert [s.name[:2] for s in scripts] == [f"{i:02d}" for i in range(1, len(scripts) + 1)]
        for script in scripts:
            assert f"on node {node}" in script.read_text().splitlines()[1]
            subprocess.run(["bash", "-n", str(script)], check=True)
    wg0 = tmp_path / nodes[0] / "03-wireguard-mesh" / "etc" / "wireguard" / "wg0.conf"
    assert wg0.read_text().count("[Peer]") == 2
    tree = (tmp_path / "resources.txt").read_text()
    assert tree.splitlines()[0].startswith(
        f"airflow-ha-{stack}  [airflow-ha:cluster:AirflowHaCluster]"
    )
    assert "  nodes  [airflow-ha:nodes:Nodes]" in tree


def test_render_never_writes_secret_values(tmp_path: Path) -> None:
    assert _render("--stack", "dev", "--out", str(tmp_path)).returncode == 0
    text = "\n".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert "BEGIN OPENSSH PRIVATE KEY" not in text
    assert "test-" not in text  # the unit-test engine's fake secrets
    # Generated secrets (passwords, cookies, keys), when tiers use them, appear as placeholders.
    for placeholder in re.findall(r"<secret:[^>]+>", text):
        assert re.fullmatch(r"<secret:[\w.-]+>", placeholder)


def test_render_refuses_a_bad_stack_naming_the_key(tmp_path: Path) -> None:
    stack = tmp_path / "Pulumi.bad.yaml"
    stack.write_text(
        "config:\n"
        "  airflow-ha:nodes:\n"
        "    - {name: a, cloud: hcloud, location: fsn1}\n"
        "    - {name: b, cloud: hcloud, location: nbg1}\n"
        "  airflow-ha:adminCidrs: [203.0.113.0/24]\n"
        "  airflow-ha:sshPublicKey: ssh-ed25519 AAAA x\n"
    )
    result = _render("--stack", "bad", "--stack-file", str(stack), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: airflow-ha:nodes: 2 node(s) given")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
