"""The Airflow tier's step scripts with decisions in them, run under stubbed commands: what
changed marks a restart, and the start step restarts only then, the worker first."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from components import airflow
from tests.conftest import stack_values
from tests.unit.stepharness import Answer, Node, Ran, rendered_step
from tests.unit.test_airflow import SERVICES
from tools.engine import Engine, Step, run_program

LOCK = f"{airflow.AIRFLOW_HOME}/requirements-3.3.2-py313.txt"
# Where this lock's venv is built, beside the running one.
TARGET = (f"{airflow.VENVS_DIR}/3.3.2-"
          f"{hashlib.sha256(airflow.lock_file('3.3.2').read_text().encode()).hexdigest()[:16]}")
HEALTHY = '{"metadatabase": {"status": "healthy"}, "scheduler": {"status": "healthy"}}'


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
    tmp_path: Path
) -> None:
    script = rendered_step("airflow-start").script
    units = " ".join(SERVICES)
    node = _installed(tmp_path)
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


# --- the restart chain: a changed file marks one restart, the start step does it ------------

CONFIG_STUBS = {
    "systemctl": Answer(),
    "nft": Answer(),  # the log servers' table is loaded
    "airflow": Answer("config get-value core executor", stdout="CeleryExecutor\n"),
}


def _installed(tmp_path: Path, venv: str = TARGET) -> Node:
    """A node after the install step (which makes the marker's directory), its units running
    from `venv`."""
    node = Node(tmp_path)
    node.dir(str(Path(airflow.RESTART_MARKER).parent))
    node.path(airflow.VENV).symlink_to(node.dir(venv))
    return node


def _config_files(step: Step) -> list[str]:
    return [path for path, _, _, _ in step.files]


def _but(step: Step, *changed: str) -> list[str]:
    """Every file of the step present as rendered except `changed` (rewritten this run)."""
    return [path for path in _config_files(step) if path not in changed]


@pytest.mark.parametrize(
    ("changed", "restart", "reload"),
    [
        ((), False, False),  # a re-run: nothing restarts
        ((airflow.AIRFLOW_CFG,), True, False),
        ((airflow.AIRFLOW_ENV,), True, False),
        ((airflow.GATED_START,), True, False),
        (("/etc/systemd/system/airflow-worker.service",), True, True),
        # The watchdog and the log firewall need no restart of Airflow.
        ((airflow.WATCHDOG_SCRIPT,), False, False),
        (("/etc/systemd/system/airflow-watchdog.timer",), False, True),
    ],
    ids=["nothing", "cfg", "env", "gate", "unit", "watchdog", "watchdog-timer"],
)
def test_config_step_marks_a_restart_only_for_what_the_units_run_with(
    tmp_path: Path, changed: tuple[str, ...], restart: bool, reload: bool
) -> None:
    step = rendered_step("airflow-config")
    node = _installed(tmp_path)
    ran = node.run(step.script, CONFIG_STUBS, present=_but(step, *changed))
    assert ran.returncode == 0, ran.stderr
    assert node.path(airflow.RESTART_MARKER).exists() is restart
    assert ("systemctl daemon-reload" in ran.of("systemctl")) is reload
    # Airflow's own parser read the config; nothing was restarted here.
    assert ran.of("airflow") == ["airflow config get-value core executor"]
    assert not [c for c in ran.of("systemctl") if " restart airflow-" in c and "firewall" not in c]


@pytest.fixture(scope="module")
def with_storage(ca_certificate: str) -> Engine:
    """The local stack with objectStorage and its CA: the task logs' files on every node."""
    values = stack_values("local")
    values["objectStorage"] = {"endpoint": "s3.example.net", "region": "us-east-1",
                               "bucket": "acme-logs", "caCertificate": ca_certificate}
    engine = Engine()
    run_program(values, engine, "local")
    return engine


@pytest.mark.parametrize("changed", [airflow.LOG_CONFIG, airflow.OBJECT_STORAGE_CA])
def test_a_changed_task_log_file_marks_a_restart(
    tmp_path: Path, with_storage: Engine, changed: str
) -> None:
    """The logging module and the endpoint's CA are read once, when a process starts."""
    step = rendered_step("airflow-config", engine=with_storage)
    assert changed in _config_files(step)
    node = _installed(tmp_path)
    ran = node.run(step.script, CONFIG_STUBS, present=_but(step, changed))
    assert ran.returncode == 0, ran.stderr
    assert node.path(airflow.RESTART_MARKER).exists()
    again = _installed(tmp_path / "again")
    assert again.run(step.script, CONFIG_STUBS, present=True).returncode == 0
    assert not again.path(airflow.RESTART_MARKER).exists()


def test_config_step_reloads_the_log_firewall_when_its_rules_changed_or_are_missing(
    tmp_path: Path
) -> None:
    step = rendered_step("airflow-config")
    restart = "systemctl restart airflow-log-firewall.service"
    rules_changed = _but(step, airflow.LOG_FIREWALL)
    ran = _installed(tmp_path / "a").run(step.script, CONFIG_STUBS, present=rules_changed)
    assert restart in ran.of("systemctl")
    stubs = {**CONFIG_STUBS, "nft": Answer(status=1)}  # the table is gone (a reboot, a flush)
    ran = _installed(tmp_path / "b").run(step.script, stubs, present=True)
    assert restart in ran.of("systemctl")
    ran = _installed(tmp_path / "c").run(step.script, CONFIG_STUBS, present=True)
    assert restart not in ran.of("systemctl")


def test_a_changed_config_restarts_the_units_once_and_a_re_run_restarts_nothing(
    tmp_path: Path
) -> None:
    config, start = rendered_step("airflow-config"), rendered_step("airflow-start")
    node = _installed(tmp_path)
    units = " ".join(SERVICES)
    assert node.run(config.script, CONFIG_STUBS, present=_but(config, airflow.AIRFLOW_CFG)
                    ).returncode == 0
    ran = node.run(start.script, _start_stubs())
    assert _actions(ran) == ["stop airflow-worker", f"stop {units}", f"start {units}"]
    # The same stack again: the config step finds its files as they are, the start step starts.
    assert node.run(config.script, CONFIG_STUBS, present=True).returncode == 0
    assert _actions(node.run(start.script, _start_stubs())) == [f"start {units}"]


def test_start_step_fails_when_a_unit_is_not_active(tmp_path: Path) -> None:
    stubs = {**_start_stubs(),
             "systemctl": [Answer("is-active --quiet airflow-triggerer", status=3), Answer()]}
    ran = _installed(tmp_path).run(rendered_step("airflow-start").script, stubs)
    assert ran.returncode == 1
    assert "airflow-triggerer is not active" in ran.stderr
    assert "systemctl status --no-pager airflow-triggerer" in ran.of("systemctl")


@pytest.mark.parametrize("exposed", ["0.0.0.0:8080", "[::]:5555", "127.0.0.1:8080"])
def test_start_step_refuses_the_ui_or_flower_beyond_the_mesh(
    tmp_path: Path, exposed: str
) -> None:
    listeners = f"LISTEN 0 128 10.42.0.1:8080 0.0.0.0:*\nLISTEN 0 128 {exposed} 0.0.0.0:*\n"
    ran = _installed(tmp_path).run(rendered_step("airflow-start").script, _start_stubs(listeners))
    assert ran.returncode == 1
    assert f"Airflow listens beyond the mesh: {exposed}" in ran.stderr


# --- install: the venv from the lock file, again only when the lock changed ------------------

PIP = f"{TARGET}/bin/pip"


def _install_stubs(pip: list[Answer]) -> dict:
    return {
        "dpkg-query": Answer(stdout="install ok installed"),
        "getent": Answer(),  # the account is there (made by the DAG sync step)
        "id": Answer(stdout="50000\n"),
        PIP: pip,
        f"{TARGET}/bin/python": Answer(),  # the venv exists from an earlier run
        f"{TARGET}/bin/airflow": Answer("version", stdout="3.3.2\n"),
    }


def test_install_reinstalls_the_venv_only_when_the_lock_changed(
    tmp_path: Path
) -> None:
    step = rendered_step("airflow-install")
    node = Node(tmp_path)
    # A download that fails is tried again, five seconds later.
    pip = [Answer("install *", status=1, times=1, stderr="connection reset"), Answer()]
    ran = node.run(step.script, _install_stubs(pip))
    assert ran.returncode == 0, ran.stderr
    install = f"{PIP} install -q --require-hashes --no-deps -r {LOCK}"
    assert ran.of(PIP, "sleep") == [install, "sleep 5", install, f"{PIP} check"]
    # A first install: nothing runs yet, the venv link points at it at once.
    assert node.path(airflow.VENV).readlink() == node.path(TARGET)
    assert not node.path(airflow.RESTART_MARKER).exists()
    # The same lock again: no pip, no restart.
    ran = node.run(step.script, _install_stubs([Answer()]), present=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.of(PIP) == [] and not node.path(airflow.RESTART_MARKER).exists()


def test_a_new_lock_is_built_beside_the_running_venv_which_stays(tmp_path: Path) -> None:
    node = _installed(tmp_path, venv=f"{airflow.VENVS_DIR}/3.3.1-0123456789abcdef")
    running = node.file(f"{airflow.VENVS_DIR}/3.3.1-0123456789abcdef/bin/airflow", "old")
    ran = node.run(rendered_step("airflow-install").script, _install_stubs([Answer()]))
    assert ran.returncode == 0, ran.stderr
    assert f"{PIP} check" in ran.of(PIP)
    # Not switched: the running units keep their venv until airflow-start stops them.
    assert node.path(airflow.VENV).readlink() == running.parent.parent
    assert running.read_text() == "old"
    assert not [c for c in ran.of("systemctl")]


@pytest.mark.parametrize("before", ["older-venv", "unversioned-directory"])
def test_start_switches_the_venv_while_the_units_are_stopped_and_keeps_one_back(
    tmp_path: Path, before: str
) -> None:
    previous = f"{airflow.VENVS_DIR}/3.3.1-0123456789abcdef"
    oldest = f"{airflow.VENVS_DIR}/3.3.0-fedcba9876543210"
    if before == "older-venv":
        node = _installed(tmp_path, venv=previous)
    else:  # what the code before versioned venvs left: a directory
        node = Node(tmp_path)
        node.dir(str(Path(airflow.RESTART_MARKER).parent))  # made by the install step
        node.file(f"{airflow.VENV}/bin/airflow", "unversioned")
    node.dir(TARGET), node.dir(oldest), node.dir(previous)
    # The link is switched between the stops and the start (the stub records it).
    seen = f'readlink "$ROOT{airflow.VENV}" >> "$ROOT/venv-at-start"'
    stubs = {**_start_stubs(), "systemctl": [Answer("start airflow-api-server *", run=seen),
                                             Answer()]}
    ran = node.run(rendered_step("airflow-start").script, stubs)
    assert ran.returncode == 0, ran.stderr
    units = " ".join(SERVICES)
    assert _actions(ran) == ["stop airflow-worker", f"stop {units}", f"start {units}"]
    assert node.path("/venv-at-start").read_text().strip() == str(node.path(TARGET))
    kept = {p.name for p in node.path(airflow.VENVS_DIR).iterdir()}
    assert kept == ({Path(TARGET).name, Path(previous).name} if before == "older-venv"
                    else {Path(TARGET).name})
    assert not node.path(airflow.RESTART_MARKER).exists()


def test_install_that_keeps_failing_ends_the_step_and_marks_nothing(
    tmp_path: Path
) -> None:
    node = Node(tmp_path)
    ran = node.run(rendered_step("airflow-install").script, _install_stubs([Answer(status=1)]))
    assert ran.returncode == 1
    assert len(ran.of(PIP)) == 3 and "giving up:" in ran.stderr
    assert not node.path(airflow.RESTART_MARKER).exists()
    assert not node.path(f"{TARGET}/.airflow-ha-lock.sha256").exists()


# --- the schema migration and the admin user --------------------------------------------------


def test_migration_is_retried_after_a_failover_then_the_admin_is_made(
    tmp_path: Path
) -> None:
    migrate = rendered_step("airflow-db-migrate")  # run once, from the first node
    stubs = {"airflow": [Answer("db migrate", status=1, times=1), Answer("db migrate"),
                         Answer("users create *", stdout="User admin created")]}
    ran = Node(tmp_path).run(migrate.script, stubs, stdin_of=["airflow"])
    assert ran.returncode == 0, ran.stderr
    calls = ran.of("airflow", "sleep")
    assert calls[:3] == ["airflow db migrate", "sleep 5", "airflow db migrate"]
    # The password is no argument (ps shows argv to every user): the command's two prompts
    # read it from stdin.
    assert calls[3] == ("airflow users create --username admin --role Admin --firstname Airflow "
                        "--lastname Admin --email admin@airflow-ha.invalid")
    password = Engine().secret_value("airflow-admin-password", "password", {"length": 24})
    (create,) = [c for c in ran.calls if c.name == "airflow" and c.args[:2] == ("users", "create")]
    assert create.stdin == f"{password}\n{password}"
    assert all(password not in " ".join(c.args) for c in ran.calls)
    assert "created admin user admin" in ran.stdout


def test_an_existing_admin_is_left_alone(tmp_path: Path) -> None:
    migrate = rendered_step("airflow-db-migrate")
    exists = "admin already exist in the db"  # FAB's words
    ran = Node(tmp_path).run(migrate.script, {"airflow": Answer("users create *", stdout=exists)})
    assert ran.returncode == 0, ran.stderr
    assert "admin user admin exists" in ran.stdout
