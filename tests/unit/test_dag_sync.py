"""DAG sync with csync2: one group of all nodes on the mesh, a secret key, nossl said and
explained, newer file wins, a cron run every minute that skips a peer that is down."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from components import dag_sync
from tests.unit.stepharness import Answer, Node


def _steps(engine):
    return {s.node: s for s in engine.steps() if s.step == "dag-sync"}


def _file(step, path) -> str:
    (content,) = [c for p, _, _, c in step.files if p == path]
    return content


@pytest.fixture
def local(values, deploy):
    return deploy(values("local"), stack="local")


def test_csync2_cfg_one_group_of_all_nodes(local) -> None:
    engine, outputs = local
    steps = _steps(engine)
    assert sorted(steps) == sorted(outputs["nodes"])
    configs = {_file(step, dag_sync.CSYNC2_CFG) for step in steps.values()}
    assert len(configs) == 1, "csync2.cfg must be the same on every node"
    cfg = configs.pop()
    lines = [line.strip() for line in cfg.splitlines()]
    assert "nossl * *;" in lines
    # The choice is explained where it is made.
    assert "LINBIT/csync2#38" in cfg and "WireGuard" in cfg
    assert f"host {' '.join(outputs['nodes'])};" in lines
    assert "key /etc/csync2.key_airflow_dags;" in lines
    assert "include /opt/airflow/dags;" in lines
    assert "auto younger;" in lines
    # csync2 reads '#' as a comment anywhere: no pattern may hold one.
    assert not any("#" in line for line in lines if line.startswith("exclude"))


def test_csync2_accepts_the_config(local, tmp_path) -> None:
    if not shutil.which("csync2"):
        pytest.fail("csync2 is missing: apt-get install --no-install-recommends csync2")
    engine, _ = local
    step = _steps(engine)["node-a"]
    key = tmp_path / "key"
    # The engine double's fake password has '-', which csync2 refuses in a key; the real one is
    # letters and digits (RandomPassword special=False).
    key.write_text("k" * 64 + "\n")
    cfg = _file(step, dag_sync.CSYNC2_CFG).replace(dag_sync.KEY_FILE, str(key))
    (tmp_path / "csync2.cfg").write_text(cfg)
    (tmp_path / "db").mkdir()
    result = subprocess.run(
        ["csync2", "-D", str(tmp_path / "db"), "-N", "node-a", "-M"],
        env={**os.environ, "CSYNC2_SYSTEM_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    # -M lists dirty files: 2 means "none", which needs a config csync2 could parse.
    assert result.returncode == 2, result.stderr
    assert "error" not in result.stderr.lower()


def test_key_is_secret_and_private(local) -> None:
    engine, _ = local
    keys = set()
    for step in _steps(engine).values():
        (mode,) = [m for p, m, _, _ in step.files if p == dag_sync.KEY_FILE]
        assert mode == "0600"
        keys.add(_file(step, dag_sync.KEY_FILE).strip())
    assert len(keys) == 1
    key = keys.pop()
    assert key.startswith("test-csync2-key-")  # the engine double's RandomPassword
    assert "csync2-key" in {r.name for r in engine.resources if r.type.startswith("random:")}


def test_server_listens_on_the_mesh_address_only(local) -> None:
    engine, outputs = local
    for node, step in _steps(engine).items():
        mesh = outputs["nodes"][node]["meshAddress"]
        dropin = _file(step, dag_sync.SOCKET_DROPIN)
        assert "ListenStream=\n" in dropin  # the package's ListenStream=30865 (all addresses) goes
        assert f"ListenStream={mesh}:30865" in dropin
        assert "systemctl enable csync2.socket" in step.script
        assert "update-inetd --disable csync2" in step.script


def test_cron_runs_the_sync_every_minute_towards_the_other_nodes(local) -> None:
    engine, outputs = local
    for node, step in _steps(engine).items():
        cron = _file(step, dag_sync.CRON_FILE)
        assert f"* * * * * root {dag_sync.SYNC_SCRIPT}" in cron
        script = _file(step, dag_sync.SYNC_SCRIPT)
        others = [n for n in outputs["nodes"] if n != node]
        assert f"for peer in {' '.join(others)} ;" in script


def _run_sync(script: str, tmp_path, down: set[str]) -> list[str]:
    """Run the sync script with stand-ins for ping and csync2; return csync2's arguments."""
    ping = [Answer(f"* {peer}", status=1) for peer in sorted(down)] + [Answer()]
    ran = Node(tmp_path).run(script, {"ping": ping, "csync2": Answer()})
    assert ran.returncode == 0, ran.stderr
    return [" ".join(call.args) for call in ran.calls if call.name == "csync2"]


def test_a_peer_that_is_down_does_not_hold_up_the_others(local, tmp_path) -> None:
    engine, _ = local
    script = _file(_steps(engine)["node-a"], dag_sync.SYNC_SCRIPT)
    assert _run_sync(script, tmp_path / "all", set()) == ["-x -P node-b,node-c"]
    assert _run_sync(script, tmp_path / "b-down", {"node-b"}) == ["-x -P node-c"]
    # Nobody answers: local changes are still recorded as dirty for later.
    assert _run_sync(script, tmp_path / "alone", {"node-b", "node-c"}) == ["-cr /opt/airflow/dags"]


def test_scripts_pass_shellcheck(local, tmp_path) -> None:
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is missing: apt-get install shellcheck (tools/setup.sh does)")
    engine, _ = local
    step = _steps(engine)["node-a"]
    for name, text in (("step.sh", step.script), ("sync.sh", _file(step, dag_sync.SYNC_SCRIPT))):
        path = tmp_path / name
        path.write_text(text)
        subprocess.run(["bash", "-n", str(path)], check=True)
        result = subprocess.run(
            ["shellcheck", "-S", "warning", str(path)], capture_output=True, text=True
        )
        assert result.returncode == 0, f"{name}:\n{result.stdout}"
