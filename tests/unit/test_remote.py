"""Remote steps: triggers follow exactly what a step renders; scripts write files idempotently."""

from __future__ import annotations

import shutil
import subprocess

import jinja2
import pytest

from components import remote
from tools.engine import Engine, hcloud_id, parse_step


def _triggers(engine: Engine) -> dict[str, str]:
    return {c.name: c.inputs["triggers"][0] for c in engine.of_type("command:remote:Command")}


def test_triggers_are_stable_when_nothing_changes(values, deploy) -> None:
    first, _ = deploy(values("dev"))
    second, _ = deploy(values("dev"))
    assert _triggers(first) == _triggers(second)
    assert len(set(_triggers(first).values())) == len(_triggers(first))


def test_a_changed_template_changes_only_the_steps_that_render_it(
    values, deploy, tmp_path, monkeypatch
) -> None:
    before, _ = deploy(values("dev"))
    copy = tmp_path / "templates"
    shutil.copytree(remote.TEMPLATES_DIR, copy)
    check = copy / "vpn" / "check.sh.j2"
    check.write_text(check.read_text() + "echo checked\n")
    monkeypatch.setattr(remote._jinja, "loader", jinja2.FileSystemLoader(str(copy)))
    after, _ = deploy(values("dev"))
    changed = {name for name, t in _triggers(after).items() if _triggers(before)[name] != t}
    assert changed == {"fsn-wireguard-check", "nbg-wireguard-check", "hel-wireguard-check"}


def test_a_firewall_change_reruns_no_step(values, deploy) -> None:
    before, _ = deploy(values("dev"))
    after, _ = deploy(values("dev", adminCidrs=["192.0.2.0/24"]))
    assert _triggers(before) == _triggers(after)


def test_script_runs_as_root_or_through_sudo(values, deploy) -> None:
    engine, _ = deploy(values("staging"), stack="staging")
    creates = {c.name: c.inputs["create"] for c in engine.of_type("command:remote:Command")}
    assert creates["fra-base"].startswith("sudo -n bash -c ")  # the Debian AMI's user is admin
    assert creates["fsn-base"] == remote.RUN_SCRIPT


def test_put_file_writes_once_and_reports_changes(tmp_path) -> None:
    """Run a rendered step locally: the second run rewrites nothing."""
    target = tmp_path / "etc" / "demo.conf"
    body = "if changed " + str(target) + '; then echo "restart demo"; fi\n'
    script = remote._assemble(
        "demo",
        "local",
        [remote.RemoteFile(str(target), "a = 1\n", mode="0640", owner=f"{_uid()}:{_gid()}")],
        ["a = 1\n"],
        body,
        [],
    )
    assert parse_step(script).files[0][0] == str(target)
    first = subprocess.run(
        ["bash", "-c", remote.RUN_SCRIPT], input=script, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    assert "restart demo" in first.stdout and target.read_text() == "a = 1\n"
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    second = subprocess.run(
        ["bash", "-c", remote.RUN_SCRIPT], input=script, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr
    assert "restart demo" not in second.stdout and "wrote" not in second.stdout


@pytest.mark.parametrize("mode", [0o700, 0o750])
def test_writing_a_file_keeps_its_folders_mode(tmp_path, mode: int) -> None:
    """As /etc/wireguard (0700) when wg0.conf is written into it; a new folder is 0755."""
    kept, made = tmp_path / "wireguard", tmp_path / "new" / "folder"
    kept.mkdir(mode=mode)
    kept.chmod(mode)
    owner = f"{_uid()}:{_gid()}"
    files = [
        remote.RemoteFile(str(kept / "wg0.conf"), "[Interface]\n", mode="0600", owner=owner),
        remote.RemoteFile(str(made / "x.conf"), "x\n", owner=owner),
    ]
    script = remote._assemble("demo", "local", files, ["[Interface]\n", "x\n"], "", [])
    for _ in range(2):  # written, then unchanged
        done = subprocess.run(
            ["bash", "-c", remote.RUN_SCRIPT], input=script, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert kept.stat().st_mode & 0o777 == mode
        assert (kept / "wg0.conf").stat().st_mode & 0o777 == 0o600
        assert made.stat().st_mode & 0o777 == 0o755


def test_commands_inside_a_step_cannot_eat_the_script(tmp_path) -> None:
    body = "cat > /dev/null\necho still-running\n"  # a command reading stdin
    script = remote._assemble("demo", "local", [], [], body, [])
    done = subprocess.run(
        ["bash", "-c", remote.RUN_SCRIPT], input=script, capture_output=True, text=True
    )
    assert done.stdout.strip().endswith("still-running")


def test_parse_outputs_reads_key_value_lines() -> None:
    assert remote.parse_outputs("noise\nwgPublicKey=abc=\nx y=1\n") == {"wgPublicKey": "abc="}


def test_templates_refuse_undefined_values() -> None:
    with pytest.raises(jinja2.UndefinedError):
        remote.render("vpn/keys.sh.j2", {})


def _uid() -> int:
    import os

    return os.getuid()


def _gid() -> int:
    import os

    return os.getgid()


def test_a_replaced_server_reruns_its_steps(values, deploy) -> None:
    """Each step's triggers hold its server's id: a new server means every step runs again."""
    engine, _ = deploy(values("dev"))
    # The engine double derives hcloud resources' ids from their names.
    server_type = "hcloud:index/server:Server"
    server_ids = {s.name: hcloud_id(server_type, s.name) for s in engine.of_type(server_type)}
    for cmd in engine.of_type("command:remote:Command"):
        node = cmd.name.split("-")[0]
        assert cmd.inputs["triggers"][1] == server_ids[node], cmd.name
