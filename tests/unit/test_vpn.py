"""The WireGuard mesh: keys stay on nodes, every wg0.conf lists exactly the other nodes."""

from __future__ import annotations

import configparser
import shutil
import subprocess

import pytest

from tools.engine import fake_public_key


def _wg0(step) -> str:
    (content,) = [c for path, _, _, c in step.files if path == "/etc/wireguard/wg0.conf"]
    return content


def _peers(conf: str) -> list[dict[str, str]]:
    peers, current = [], None
    for line in conf.splitlines():
        line = line.strip()
        if line == "[Peer]":
            current = {}
            peers.append(current)
        elif current is not None and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return peers


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "local"])
def test_each_wg0_lists_exactly_the_other_nodes(values, deploy, stack) -> None:
    engine, outputs = deploy(values(stack), stack=stack)
    mesh = [s for s in engine.steps() if s.step == "wireguard-mesh"]
    nodes = outputs["nodes"]
    assert sorted(s.node for s in mesh) == sorted(nodes)
    for step in mesh:
        conf = _wg0(step)
        others = {name: n for name, n in nodes.items() if name != step.node}
        peers = _peers(conf)
        assert sorted(p["PublicKey"] for p in peers) == sorted(
            fake_public_key(f"{name}/wgPublicKey") for name in others
        )
        assert sorted(p["AllowedIPs"] for p in peers) == sorted(
            f"{n['meshAddress']}/32" for n in others.values()
        )
        assert sorted(p["Endpoint"] for p in peers) == sorted(
            f"{n['publicAddress']}:51820" for n in others.values()
        )
        assert all(p["PersistentKeepalive"] == "25" for p in peers)
        assert f"Address = {nodes[step.node]['meshAddress']}/24" in conf
        # The private key never enters the program: wg0.conf points at the node's key file.
        assert "PrivateKey" not in conf
        assert "PostUp = wg set %i private-key /etc/wireguard/wg0.key" in conf
        mode = next(m for p, m, _, _ in step.files if p == "/etc/wireguard/wg0.conf")
        assert mode == "0600"


def test_keys_steps_print_only_the_public_key(values, deploy) -> None:
    engine, _ = deploy(values("dev"))
    keys = [s for s in engine.steps() if s.step == "wireguard-keys"]
    assert len(keys) == 3
    for step in keys:
        assert step.prints == ["wgPublicKey"]
        # How the key is made on the node (wg genkey; wireguard-go where the kernel has no
        # module) is in the render snapshots.


def test_wg0_parses_as_wireguard_config(values, deploy, tmp_path) -> None:
    engine, _ = deploy(values("local"), stack="local")
    step = next(s for s in engine.steps() if s.step == "wireguard-mesh")
    conf = _wg0(step)
    parser = configparser.ConfigParser(strict=False)
    parser.read_string(conf.replace("[Peer]", "[Peer-x]", 1))
    assert parser["Interface"]["ListenPort"] == "51820"
    if shutil.which("wg-quick"):
        path = tmp_path / "wg0.conf"
        path.write_text(conf)
        stripped = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True, text=True)
        assert stripped.returncode == 0, stripped.stderr
        assert stripped.stdout.count("[Peer]") == 2


def test_hosts_name_every_node_by_mesh_address(values, deploy) -> None:
    engine, outputs = deploy(values("local"), stack="local")
    for step in (s for s in engine.steps() if s.step == "wireguard-mesh"):
        (hosts,) = [c for p, _, _, c in step.files if p == "/etc/airflow-ha/mesh-hosts"]
        lines = [line.split() for line in hosts.splitlines() if not line.startswith("#")]
        assert {name: addr for addr, name in lines} == {
            name: n["meshAddress"] for name, n in outputs["nodes"].items()
        }


def test_check_step_waits_for_every_peer(values, deploy) -> None:
    engine, outputs = deploy(values("local"), stack="local")
    for step in (s for s in engine.steps() if s.step == "wireguard-check"):
        for name, node in outputs["nodes"].items():
            pinged = f"ping -c 1 -W 1 {node['meshAddress']}" in step.script
            assert pinged == (name != step.node)


def test_mesh_scripts_pass_shellcheck(values, deploy, tmp_path) -> None:
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is missing: apt-get install shellcheck (the README's setup does)")
    engine, _ = deploy(values("dev"))
    for step in engine.steps():
        if step.node != "fsn":
            continue
        path = tmp_path / f"{step.step}.sh"
        path.write_text(step.script)
        result = subprocess.run(
            ["shellcheck", "-S", "warning", str(path)], capture_output=True, text=True
        )
        assert result.returncode == 0, f"{step.step}:\n{result.stdout}"
