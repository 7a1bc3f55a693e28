"""monitoring-packages under stubbed commands: a running daemon whose /etc/default flags changed
is restarted for them; a re-run with the same files restarts nothing."""

from __future__ import annotations

from pathlib import Path

from tests.unit.stepharness import Answer, Node, rendered_step


def _stubs() -> dict:
    return {
        "apt-get": Answer(),
        "dpkg-query": Answer(stdout="install ok installed"),
        "systemctl": Answer(),
    }


def _restarts(ran) -> list[str]:
    return [c.args[-1] for c in ran.calls if c.name == "systemctl" and "try-restart" in c.args]


def test_changed_flags_restart_their_daemon_and_a_rerun_restarts_nothing(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.file("/etc/default/prometheus-node-exporter", 'ARGS="--old-flags"\n')
    script = rendered_step("monitoring-packages").script
    first = node.run(script, _stubs())
    assert first.returncode == 0, first.stderr
    # Every default file is new here but the node exporter's, which changed: all restarted
    # (try-restart leaves a daemon that is not running alone).
    assert "prometheus-node-exporter" in _restarts(first)
    again = node.run(script, _stubs())
    assert again.returncode == 0, again.stderr
    assert _restarts(again) == []


def _monitoring_stubs() -> dict:
    return {
        "promtool": Answer(),
        "amtool": Answer(),
        "psql": Answer(stdout="t"),  # a replica: no role to make
        "systemctl": [Answer(match="is-active*", status=0), Answer()],
    }


def _reloads(ran) -> int:
    return sum(1 for c in ran.calls if c.name == "systemctl" and c.args == ("daemon-reload",))


def test_the_daemons_start_after_the_mesh_and_a_rerun_reloads_nothing(tmp_path: Path) -> None:
    """A boot started Prometheus before wg0 had its address and it stayed failed: each daemon
    gets a drop-in (after WireGuard, restarted on failure), and systemd reads it at once."""
    node = Node(tmp_path)
    script = rendered_step("monitoring").script
    first = node.run(script, _monitoring_stubs())
    assert first.returncode == 0, first.stderr
    assert _reloads(first) == 1
    drop_in = node.path("/etc/systemd/system/prometheus.service.d/airflow-ha-mesh.conf")
    lines = drop_in.read_text().splitlines()
    assert "After=wg-quick@wg0.service" in lines and "Restart=on-failure" in lines
    again = node.run(script, _monitoring_stubs())
    assert again.returncode == 0, again.stderr
    assert _reloads(again) == 0
