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
