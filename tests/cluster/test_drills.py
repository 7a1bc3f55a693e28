"""The resilience suite's quick form on the local machines (python -m drills --quick): each drill
once, with the steady workload (writer, publisher with confirms, a DAG run every few seconds).

A drill fails when anything acknowledged is lost (rows, messages, DAG runs), when a failed part
does not rejoin by itself, or when one of its own checks fails (no split brain, RabbitMQ's
minority paused, the synchronous standby promoted, systemd restarted what was killed, ...).
Timings are printed, never asserted. The full suite with the defaults-versus-tuned comparison
is `python -m drills` (docs/resilience.md). Runs last: it stops and partitions machines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from drills import common, load, report
from drills.cli import run_suite
from drills.suite import catalogue

pytestmark = pytest.mark.cluster

QUICK = [name for name, _, _ in catalogue(quick=True)]
OUT = Path(__file__).resolve().parents[2] / "out" / "drills"


@pytest.fixture(scope="module")
def suite(cluster) -> dict:
    # Kept on the machine that ran it (out/ is not committed): CI's figures, by time and host.
    doc = run_suite(quick=True, out_dir=OUT, command="pytest tests/cluster/test_drills.py")
    print(f"\nquick drills in {doc['minutes']} min")
    print(report.text_table(doc["table"]))
    print(report.load_markdown(doc["load"]))
    for record in doc["records"]:
        print(f"- {record['label']}: {report.summary(record)}")
    return doc


@pytest.mark.parametrize("name", QUICK)
def test_drill_loses_nothing_and_every_part_rejoins(suite, name) -> None:
    record = next(r for r in suite["records"] if r["drill"] == name)
    print(f"{record['label']}: {report.summary(record)}")
    assert "error" not in record, f"{name}: {record['error']}"
    lost = {k: v for k, v in record["lost"].items() if v != 0}
    assert not lost, f"{name}: acknowledged data lost: {lost} ({record['details']})"
    failed = [check for check, ok in record["checks"].items() if not ok]
    assert not failed, f"{name}: {failed} ({record['details']})"
    assert record["rejoin_s"] is not None, f"{name}: the failed part did not rejoin"


@pytest.mark.parametrize("condition", load.QUICK_CONDITIONS)
def test_a_burst_fails_no_task_and_every_run_succeeds(suite, condition) -> None:
    record = next(r for r in suite["load"]["records"] if r["condition"] == condition)
    print({k: v for k, v in record.items() if k != "failed_examples"})
    assert record["task_instances"] >= 100
    assert record["failed"] == 0, f"{condition}: {record['failed_examples']}"
    assert not record["runs_not_success"], record["runs_not_success"]
    assert record.get("rows_lost", 0) == 0


def test_the_cluster_is_left_as_it_was_found(suite, cluster) -> None:
    state = common.machine_state()
    assert all(s["running"] and not s["partitioned"] for s in state.values()), state
    assert not any(r.get("restored_after_failure") for r in suite["records"])
