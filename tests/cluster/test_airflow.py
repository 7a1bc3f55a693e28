"""Airflow on the three local machines: six units per node, healthy everywhere, three schedulers,
DAGs synced by csync2, a fan-out DAG run spread over all three workers, and a whole machine lost
mid-run without losing the run (drills/airflow.py prints the figures)."""

from __future__ import annotations

import json
import time

import pytest

from drills import airflow as drill
from drills import nodes, runbook
from tests.cluster.conftest import NODES

pytestmark = pytest.mark.cluster

TASKS = 30
SETTLE_S = 300


@pytest.fixture(scope="module", autouse=True)
def settled(cluster) -> None:
    """A deploy that just (re)started the units is given time to converge (all six units
    active, every health component healthy); the tests then check what must hold."""
    deadline = time.monotonic() + SETTLE_S
    waiting = list(NODES)
    while waiting and time.monotonic() < deadline:
        waiting = [node for node in waiting if not drill.node_rejoined(node)]
        if waiting:
            time.sleep(5)
    assert not waiting, f"Airflow not healthy after {SETTLE_S}s on {waiting}"

# Every key of airflow.cfg must be one Airflow (with its providers) knows: a typo is otherwise
# silently ignored.
KNOWN_KEYS = r"""
import configparser, sys
from airflow.configuration import conf
described = conf.configuration_description
ours = configparser.ConfigParser()
ours.read("/etc/airflow/airflow.cfg")
free_form = {"celery_broker_transport_options"}  # any kombu transport option goes there
unknown = [f"[{s}] {k}" for s in ours.sections() if s not in free_form for k in ours[s]
           if k not in described.get(s, {}).get("options", {})]
print("\n".join(unknown))
sys.exit(1 if unknown else 0)
"""


def test_six_units_active_and_enabled_on_every_node(cluster) -> None:
    units = " ".join(drill.SERVICES)
    for node in NODES:
        active = cluster(node, runbook.command("airflow-units-active")).stdout.split()
        assert active == ["active"] * 6
        assert cluster(node, f"systemctl is-enabled {units}").stdout.split() == ["enabled"] * 6


def test_api_server_healthy_on_every_node(cluster) -> None:
    for node in NODES:
        health = drill.Api(node).health()
        for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
            assert health[part]["status"] == "healthy", f"{node}: {part} {health[part]}"


def test_three_schedulers_alive(cluster) -> None:
    assert drill.schedulers_alive(NODES[0]) == 3


def test_airflow_reads_every_key_of_its_config(cluster) -> None:
    for node in NODES:
        result = nodes.ssh(
            node,
            "cd /opt/airflow && runuser -u airflow -- "
            "bash -c 'set -a; . /etc/airflow/airflow.env; exec python -'",
            stdin=KNOWN_KEYS,
            check=False,
            timeout=180,
        )
        assert result.returncode == 0, f"{node}: unknown keys:\n{result.stdout}{result.stderr}"
        executor = cluster(node, "airflow config get-value core executor", timeout=120).stdout
        assert executor.strip().splitlines()[-1] == "CeleryExecutor"


def test_celery_uses_a_quorum_queue_with_confirms(cluster) -> None:
    queues = cluster(
        NODES[0], "rabbitmqctl -q list_queues -p airflow name type --no-table-headers", timeout=120
    ).stdout
    assert "default\tquorum" in queues.splitlines()
    script = (
        "from airflow.providers.celery.executors.celery_executor_utils import app\n"
        "c = app.conf\n"
        "print(c.broker_transport_options['confirm_publish'], c.worker_prefetch_multiplier,"
        " c.task_acks_late, c.broker_failover_strategy, len(c.broker_url.split(';')))\n"
    )
    out = nodes.ssh(
        NODES[0],
        "cd /opt/airflow && runuser -u airflow -- "
        "bash -c 'set -a; . /etc/airflow/airflow.env; exec python -'",
        stdin=script,
        timeout=180,
    ).stdout
    assert out.strip().splitlines()[-1] == f"True 1 True round-robin {len(NODES)}"


def test_ui_and_flower_on_the_mesh_only_and_admin_logs_in_everywhere(cluster) -> None:
    for node in NODES:
        listening = cluster(node, "ss -Hltn").stdout.split("\n")
        addresses = {line.split()[3] for line in listening if line.strip()}
        mesh = cluster(node, f"getent hosts {node}").stdout.split()[0]
        for port in (8080, 5555):
            bound = {a for a in addresses if a.endswith(f":{port}")}
            assert bound == {f"{mesh}:{port}"}, f"{node}: {port} bound to {bound}"
        # Flower wants the admin's password.
        assert (
            cluster(node, f"curl -s -o /dev/null -w '%{{http_code}}' http://{mesh}:5555/").stdout
            == "401"
        )
        # One admin, in the shared database, works on every node.
        assert drill.Api(node).get("/api/v2/dags?limit=1")["total_entries"] >= 0
    # The log servers answer over the mesh, not on the machines' other addresses.
    other = cluster(
        NODES[1], f"curl -s -m 3 -o /dev/null -w '%{{http_code}}' http://{NODES[0]}:8793/"
    )
    assert other.stdout == "404"  # reached (no such log)
    outside = cluster(
        NODES[1],
        "curl -s -m 3 -o /dev/null -w '%{http_code}' http://172.31.77.11:8793/",
        check=False,
    )
    assert outside.stdout == "000"


@pytest.fixture(scope="module")
def fanout(cluster) -> dict:
    """The fan-out DAG written on one node, synced to the others, parsed."""
    started = time.monotonic()
    digest = drill.write_dag(NODES[1], TASKS)
    synced = drill.wait_synced(digest, [n for n in NODES if n != NODES[1]], timeout=150)
    parsed = drill.wait_parsed(drill.Api(NODES[0]), TASKS)
    figures = {
        "sync_seconds": round(synced, 1),
        "visible_seconds": round(time.monotonic() - started, 1),
    }
    print(f"DAG sync: {json.dumps(figures)}")
    return {**figures, "parsed_after_sync": parsed}


def test_a_dag_written_on_one_node_reaches_the_others_within_two_minutes(fanout) -> None:
    assert fanout["sync_seconds"] <= 120


def test_fanout_run_uses_the_workers_of_all_three_nodes(cluster, fanout) -> None:
    api = drill.Api(NODES[0])
    run_id = f"fanout-{int(time.time())}"
    started = time.time()
    api.trigger(run_id, 2)
    assert drill.wait_run(api, run_id, timeout=600) == "success"
    per_node = drill.hostnames(api, run_id)
    print(f"fan-out run: {TASKS} tasks in {time.time() - started:.1f}s, per node {dict(per_node)}")
    assert sum(per_node.values()) == TASKS
    assert set(per_node) == set(NODES)


# CI runs the machine-stop drill instead (tests/cluster/test_drills.py): the same loss.
@pytest.mark.full
def test_node_loss_drill(cluster, fanout) -> None:
    figures = drill.drill(NODES[0], NODES[2], NODES[1], TASKS, seconds=20)
    print(f"node-loss drill: {json.dumps(figures)}")
    assert figures["run_state"] == "success"
    assert figures["new_run_state"] == "success"
    assert NODES[2] not in figures["new_run_tasks_per_node"]
    assert figures["first_start_seconds"] is not None
    # Each task that was running on the lost machine ran again elsewhere and succeeded.
    for task, tries in figures["lost_task_tries"].items():
        assert tries[-1][2] == "success" and tries[-1][1] != NODES[2], f"{task}: {tries}"
    # Back by itself: units active, healthy, three schedulers (drill() waited for it).
    assert figures["rejoin_seconds"] > 0


# One node's api-server and worker restarted together, as the deploy's start step does (the
# worker stopped alone, then the rest, then a start of both): the worker is stopped first (its
# running tasks end while their api-server answers), every api-server worker process warms the
# Execution API before it accepts a connection, and the Celery worker starts only once the
# api-server answers (one warm api-server process is enough for that; under load the second may
# finish its warm-up after the worker started, so the journal is read once both have).
RESTART_ORDER = r"""
since=$(date +%s.%N)
systemctl stop airflow-worker
systemctl stop airflow-api-server airflow-worker
systemctl start airflow-api-server airflow-worker
log() {
  journalctl -o short-unix --since "@$since" -u airflow-api-server -u airflow-worker \
    | grep -E 'Stopping airflow|Stopped airflow|Started airflow|API warmed|startup complete'
}
for _ in $(seq 180); do
  [ "$(log | grep -c 'startup complete')" -ge 2 ] && break
  sleep 1
done
log
"""


def test_restart_stops_the_worker_first_and_serves_warm(cluster) -> None:
    node = NODES[1]
    lines = cluster(node, RESTART_ORDER, timeout=600).stdout.splitlines()

    def first(pattern: str) -> int:
        found = [i for i, line in enumerate(lines) if pattern in line]
        assert found, f"no {pattern!r} in:\n" + "\n".join(lines)
        return found[0]

    assert first("Stopped airflow-worker") < first("Stopping airflow-api-server")
    warmed = [i for i, line in enumerate(lines) if "Execution API warmed" in line]
    complete = [i for i, line in enumerate(lines) if "Application startup complete" in line]
    assert len(warmed) == len(complete) == 2, "\n".join(lines)  # [api] workers = 2
    # Each process warms before it says startup complete (and only then accepts connections).
    for done in complete:
        pid = lines[done].split("[", 1)[1].split("]", 1)[0]
        assert any(i < done and f"[{pid}]" in lines[i] for i in warmed), "\n".join(lines)
    assert all("HTTP 200" in lines[i] for i in warmed)
    assert first("Started airflow-worker") > min(complete)
    assert drill.node_rejoined(node) or _rejoins(node)


def _rejoins(node: str, timeout: float = SETTLE_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if drill.node_rejoined(node):
            return True
        time.sleep(5)
    return False


CHANGING_DAG = '''"""airflow-ha cluster test: a DAG file that changes (tests/cluster)."""
from datetime import datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG(dag_id="airflow_ha_changing", schedule=None, start_date=datetime(2024, 1, 1),
         description="VERSION", tags=["airflow-ha"]):
    EmptyOperator(task_id="nothing")
'''


def test_a_changed_dag_file_is_parsed_again_before_the_unchanged_interval(cluster) -> None:
    """Unchanged files are parsed again only every [dag_processor] min_file_process_interval
    (120 s); a file whose content changed must be picked up well before that."""
    api = drill.Api(NODES[0])
    path = f"{drill.DAGS_DIR}/airflow_ha_changing.py"

    def write(version: str) -> None:
        cluster(
            NODES[0],
            f"cat > {path}.tmp <<'EOF'\n{CHANGING_DAG.replace('VERSION', version)}EOF\n"
            f"chown airflow:airflow {path}.tmp && mv {path}.tmp {path}",
        )

    def description() -> str | None:
        try:
            return api.get("/api/v2/dags/airflow_ha_changing").get("description")
        except RuntimeError:
            return None

    def wait_for(version: str, timeout: float) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if description() == version:
                return time.monotonic() - started
            time.sleep(2)
        return None

    write("v1")
    assert wait_for("v1", 240) is not None
    time.sleep(5)
    write("v2")
    seen = wait_for("v2", 100)
    print(f"changed DAG visible after {seen} s")
    assert seen is not None, "a changed DAG file waited for the unchanged-file interval"
