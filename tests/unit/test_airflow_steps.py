"""The Airflow tier's step scripts with decisions in them, run under stubbed commands: what
changed marks a restart, and the start step restarts only then, the worker first."""

from __future__ import annotations

from pathlib import Path

import pytest

from components import airflow
from tests.conftest import stack_values
from tests.unit.stepharness import Answer, Node, Ran
from tools.engine import Engine, Step, run_program

SERVICES = (
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-flower",
)
HEALTHY = '{"metadatabase": {"status": "healthy"}, "scheduler": {"status": "healthy"}}'


@pytest.fixture(scope="module")
def local() -> Engine:
    engine = Engine()
    run_program(stack_values("local"), engine, "local")
    return engine


def _step(engine: Engine, name: str, node: str = "node-a") -> Step:
    (step,) = [s for s in engine.steps() if s.step == name and s.node == node]
    return step


def _start_stubs(listeners: str = "") -> dict:
    return {
        "systemctl": Answer(),
        # The api-server and its health answer; Flower asks for its password (401).
        "curl": [Answer("*monitor/health*", stdout=HEALTHY), Answer("*http_code*", stdout="401"),
                 Answer()],
        "ss": Answer("-Hltn", stdout=listeners),
    }


def _actions(ran: Ran) -> list[str]:
    """What systemctl was asked to stop, start or restart."""
    return [c.removeprefix("systemctl ") for c in ran.of("systemctl")
            if c.split()[1] in ("stop", "start", "restart")]


def test_a_change_stops_every_unit_then_starts_them_and_nothing_else_restarts(
    local: Engine, tmp_path: Path
) -> None:
    script = _step(local, "airflow-start").script
    units = " ".join(SERVICES)
    node = Node(tmp_path)
    node.file(airflow.RESTART_MARKER)
    ran = node.run(script, _start_stubs())
    assert ran.returncode == 0, ran.stderr
    # The worker stopped alone first (its tasks end while the api-server answers), then every
    # unit, then one start; never `restart`, which stopped the api-server first.
    assert _actions(ran) == ["stop airflow-worker", f"stop {units}", f"start {units}"]
    assert not node.path(airflow.RESTART_MARKER).exists()
    # Nothing changed (a forced re-run): start only, which leaves running units alone.
    ran = node.run(script, _start_stubs())
    assert ran.returncode == 0, ran.stderr
    assert _actions(ran) == [f"start {units}"]
