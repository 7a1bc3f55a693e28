"""DAG sync with csync2: one group of all nodes on the mesh, a secret key, nossl said and
explained, newer file wins, a cron run every minute that skips a peer that is down."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from components import dag_sync
from tests.unit.stepharness import Answer, Node, rendered_step


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
    # What the step does with it: test_dag_sync_step_serves_csync2_from_its_socket_only.


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


def _csync2_stubs(listeners: list[str], socket_active: bool = True) -> dict:
    ss = "".join(f"LISTEN 0 5 {address} 0.0.0.0:*\n" for address in listeners)
    mine = "".join(f"LISTEN 0 5 {a} 0.0.0.0:*\n" for a in listeners if a.endswith(":30865"))
    return {
        "dpkg-query": Answer(stdout="install ok installed"),
        "getent": Answer(),
        "id": Answer(stdout="50000\n"),
        "update-inetd": Answer(),
        "systemctl": [Answer("is-active --quiet csync2.socket", status=0 if socket_active else 3),
                      Answer()],
        "ss": [Answer("-Hltn sport = :30865", stdout=mine), Answer("-Hltn", stdout=ss)],
        "csync2": Answer(),
    }


@pytest.mark.parametrize("first_run", [True, False])
def test_dag_sync_step_serves_csync2_from_its_socket_only(tmp_path, first_run: bool) -> None:
    node = Node(tmp_path)
    if first_run:  # the package's inetd entry serves csync2 on every address
        node.file("/etc/inetd.conf", "csync2\tstream\ttcp\tnowait\troot\t/usr/sbin/csync2\n")
    ran = node.run(rendered_step("dag-sync").script,
                   _csync2_stubs(["10.42.0.1:30865", "0.0.0.0:22"], socket_active=not first_run),
                   present=not first_run)
    assert ran.returncode == 0, ran.stderr
    if first_run:
        assert ran.of("update-inetd") == ["update-inetd --disable csync2"]
        assert ran.of("systemctl")[:4] == [
            "systemctl try-restart inetd.service openbsd-inetd.service",
            "systemctl daemon-reload",
            "systemctl enable csync2.socket",
            "systemctl restart csync2.socket",
        ]
    else:  # a re-run on a node that serves it already: nothing restarts
        assert ran.of("update-inetd") == []
        assert not [c for c in ran.of("systemctl") if "restart" in c or "daemon-reload" in c]
    assert ran.of("csync2") == ["csync2 -cr /opt/airflow/dags"]
    assert "systemctl enable --now cron.service" in ran.of("systemctl")
    assert node.path("/opt/airflow/dags").is_dir()


def test_dag_sync_step_refuses_csync2_beyond_the_mesh(tmp_path) -> None:
    stubs = _csync2_stubs(["10.42.0.1:30865", "0.0.0.0:30865"])
    ran = Node(tmp_path).run(rendered_step("dag-sync").script, stubs)
    assert ran.returncode == 1
    assert "csync2 listens beyond the mesh: 0.0.0.0:30865" in ran.stderr
    assert ran.of("csync2") == []


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
