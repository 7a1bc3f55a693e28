"""The restart steps of every stateful tier, run under stubbed commands: without a mark they
restart nothing; with one they restart (HAProxy: reload), wait until the node is healthy and
remove the mark; a health check that keeps failing fails the step with a message and leaves
the mark. The config steps mark a restart only for a changed file that needs one."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from components import broker
from tests.unit.stepharness import Answer, Node, Ran, local_stack, rendered_step
from tools.engine import Engine, run_program

MARKS = "/var/lib/airflow-ha/restart"
RUNNING = "\n".join(f"rabbit@node-{n}" for n in "abc")
# A failing check that also moves the fake clock on, so that a bounded wait ends in a few polls.
LATE = 'echo $(( $(<"$STATE/clock") + 50 )) > "$STATE/clock"'


def _running(*nodes: str, run: str = "") -> Answer:
    return Answer("-q cluster_status --formatter json",
                  stdout=json.dumps({"running_nodes": list(nodes)}), run=run)


def _node(tmp_path: Path) -> Node:
    node = Node(tmp_path)
    node.dir("/var/lib/haproxy")  # the package's
    return node


@dataclass(frozen=True)
class Tier:
    """A restart step: its mark, what restarts it, its healthy and its failing stubs."""

    step: str
    unit: str
    action: str
    healthy: dict
    sick: dict
    before: list[str] = field(default_factory=list)  # calls that must come before the action


ETCD_STATUS = Answer("* endpoint status -w json", stdout='[{"Status": {"leader": 42}}]')
TIERS = [
    Tier("etcd-restart", "etcd", "systemctl restart etcd",
         healthy={"etcdctl": [ETCD_STATUS, Answer()]},
         sick={"etcdctl": [Answer("* endpoint health --cluster"),
                           Answer("* endpoint health", run=f"{LATE}; exit 1"), ETCD_STATUS]},
         before=["etcdctl --endpoints=http://127.0.0.1:2379 --dial-timeout=2s "
                 "--command-timeout=5s endpoint health --cluster"]),
    Tier("rabbitmq-restart", "rabbitmq-server", "systemctl restart rabbitmq-server",
         healthy={"rabbitmq-diagnostics": Answer(), "rabbitmqctl": _running(*RUNNING.split())},
         # Back, but node-c is missing from the cluster it sees.
         sick={"rabbitmq-diagnostics": Answer(),
               "rabbitmqctl": _running("rabbit@node-a", "rabbit@node-b", run=LATE)},
         before=["rabbitmq-diagnostics -q check_if_node_is_quorum_critical"]),
    Tier("haproxy-reload", "haproxy", "systemctl reload haproxy",
         healthy={"socat": [Answer(stdout="postgres-primary,BACKEND," + ",".join(
             ["0"] * 15) + ",UP,\n")], "haproxy": Answer()},
         sick={"socat": Answer(stdout="postgres-primary,BACKEND," + ",".join(
             ["0"] * 15) + ",DOWN,\n", run=LATE), "haproxy": Answer()},
         before=["haproxy -c -q -f /etc/haproxy/haproxy.cfg", "socat stdio "
                 "unix-connect:/run/haproxy/admin.sock"]),
]


def _stubs(tier: Tier, which: str) -> dict:
    return {"systemctl": Answer(), **(tier.healthy if which == "healthy" else tier.sick)}


@pytest.mark.parametrize("tier", TIERS, ids=[t.step for t in TIERS])
def test_without_a_mark_a_restart_step_restarts_nothing(tmp_path: Path, tier: Tier) -> None:
    ran = _node(tmp_path).run(rendered_step(tier.step).script, _stubs(tier, "sick"))
    assert ran.returncode == 0, ran.stderr
    assert ran.of("systemctl") == []
    assert not [str(c) for c in ran.calls if str(c) in tier.before]


@pytest.mark.parametrize("tier", TIERS, ids=[t.step for t in TIERS])
def test_a_marked_node_is_restarted_waited_for_and_unmarked(tmp_path: Path, tier: Tier) -> None:
    node = _node(tmp_path)
    mark = node.file(f"{MARKS}/{tier.unit}")
    ran = node.run(rendered_step(tier.step).script, _stubs(tier, "healthy"))
    assert ran.returncode == 0, ran.stderr
    calls = [str(c) for c in ran.calls]
    assert ran.of("systemctl") == [tier.action]
    action = calls.index(tier.action)
    for check in tier.before:  # e.g. no quorum queue depends on it, every etcd member healthy
        assert check in calls[:action], check
    assert calls[action + 1:], "no health check after the restart"
    assert not mark.exists()
    # A second run (no change): nothing.
    again = node.run(rendered_step(tier.step).script, _stubs(tier, "healthy"))
    assert again.returncode == 0 and again.of("systemctl") == []


@pytest.mark.parametrize("tier", TIERS, ids=[t.step for t in TIERS])
def test_a_node_that_stays_unhealthy_fails_the_step_and_keeps_its_mark(
    tmp_path: Path, tier: Tier
) -> None:
    node = _node(tmp_path)
    mark = node.file(f"{MARKS}/{tier.unit}")
    ran = node.run(rendered_step(tier.step).script, _stubs(tier, "sick"))
    assert ran.returncode != 0
    assert ran.of("systemctl") == [tier.action], ran
    assert "is not healthy after" in ran.stderr
    assert "the nodes after this one are not touched" in ran.stderr
    assert mark.exists()


def test_rabbitmq_waits_until_no_quorum_queue_depends_on_the_node_before_stopping(
    tmp_path: Path
) -> None:
    node = _node(tmp_path)
    node.file(f"{MARKS}/rabbitmq-server")
    critical = Answer("-q check_if_node_is_quorum_critical", status=69, times=3)
    stubs = {"systemctl": Answer(), "rabbitmqctl": _running(*RUNNING.split()),
             "rabbitmq-diagnostics": [critical, Answer()]}
    ran = node.run(rendered_step("rabbitmq-restart").script, stubs)
    assert ran.returncode == 0, ran.stderr
    calls = [str(c) for c in ran.calls if c.name in ("rabbitmq-diagnostics", "systemctl")]
    restart = calls.index("systemctl restart rabbitmq-server")
    assert calls[:restart] == ["rabbitmq-diagnostics -q check_if_node_is_quorum_critical"] * 4
    # Critical for good: the broker is never stopped.
    node.file(f"{MARKS}/rabbitmq-server")
    stubs["rabbitmq-diagnostics"] = Answer(run=f"{LATE}; exit 69")
    ran = node.run(rendered_step("rabbitmq-restart").script, stubs)
    assert ran.returncode != 0 and ran.of("systemctl") == []
    assert "the quorum queues without rabbit@node-a" in ran.stderr


def test_haproxy_reload_dumps_the_server_states_before_reloading(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.file(f"{MARKS}/haproxy")
    up = "postgres-primary,BACKEND," + ",".join(["0"] * 15) + ",UP,\n"
    stubs = {"systemctl": Answer(), "haproxy": Answer(),
             "socat": [Answer(stdout="1\n# be_id be_name\n3 postgres-primary 1 node-a ...\n",
                              times=1), Answer(stdout=up)]}
    ran = node.run(rendered_step("haproxy-reload").script, stubs, stdin_of=["socat"])
    assert ran.returncode == 0, ran.stderr
    first_socat = next(c for c in ran.calls if c.name == "socat")
    assert first_socat.stdin == "show servers state"
    assert node.path("/var/lib/haproxy/server-state").read_text().startswith("1\n# be_id")


# --- the config steps: what marks a restart ---------------------------------------------------


HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"


@pytest.mark.parametrize("changed", [False, True])
def test_haproxy_step_checks_a_changed_config_and_marks_a_reload_never_reloads(
    tmp_path: Path, changed: bool
) -> None:
    node = _node(tmp_path)
    stubs = {"systemctl": Answer(), "haproxy": Answer(), "bash": Answer()}
    ran = node.run(rendered_step("haproxy").script, stubs, present=not changed)
    assert ran.returncode == 0, ran.stderr
    assert ran.of("systemctl") == ["systemctl enable haproxy", "systemctl is-active -q haproxy"]
    assert (f"haproxy -c -q -f {HAPROXY_CFG}" in ran.of("haproxy")) is changed
    assert node.path(f"{MARKS}/haproxy").exists() is changed
    assert node.path("/var/lib/haproxy/server-state").read_text() == "1\n"


def test_haproxy_step_reloads_at_once_a_fresh_node_that_serves_no_one(tmp_path: Path) -> None:
    """The package starts HAProxy with its own config (no listener on the primary port): no
    session to keep, so the step reloads it itself rather than mark (the old behaviour left a
    fresh cluster's first deploy waiting for port 5000 until it failed)."""
    node = _node(tmp_path)
    not_yet = Answer(run="exit 1", times=1)  # the first probe: nothing listens on :5000
    stubs = {"systemctl": Answer(), "haproxy": Answer(), "bash": [not_yet, Answer()]}
    ran = node.run(rendered_step("haproxy").script, stubs)
    assert ran.returncode == 0, ran.stderr
    assert ran.of("systemctl") == ["systemctl enable haproxy", "systemctl is-active -q haproxy",
                                   "systemctl reload haproxy"]
    assert not node.path(f"{MARKS}/haproxy").exists()


def _member_broker(tmp_path: Path) -> Node:
    node = Node(tmp_path)
    node.file(broker.MARKER)
    return node


@pytest.mark.parametrize(
    ("changed", "marked"),
    [(None, False), (broker.CONF, True), (broker.ENV_CONF, True),
     (broker.FORMATION_CONF, False)],
    ids=["unchanged", "rabbitmq.conf", "rabbitmq-env.conf", "peer-list-only"],
)
def test_rabbitmq_install_marks_a_restart_only_for_what_a_running_broker_reads(
    tmp_path: Path, changed: str | None, marked: bool
) -> None:
    step = rendered_step("rabbitmq-install")
    node = _member_broker(tmp_path)
    present = [path for path, _, _, _ in step.files if path != changed]
    stubs = {"systemctl": Answer(), "dpkg-query": Answer(stdout="install ok installed"),
             "rabbitmq-diagnostics": Answer()}
    ran = node.run(step.script, stubs, present=present)
    assert ran.returncode == 0, ran.stderr
    assert not [c for c in ran.of("systemctl") if " restart " in f"{c} " or " stop " in c]
    assert node.path(f"{MARKS}/rabbitmq-server").exists() is marked


# --- PostgreSQL: replicas one at a time, then a switchover, then the old primary ---------------


def _patroni(role: str, pending: bool, state: str = "streaming") -> Answer:
    doc = {"role": role, "state": "running", "replication_state": state}
    if pending:
        doc["pending_restart"] = True
    return Answer("*/patroni", stdout=json.dumps(doc))


def _cluster(*members: tuple[str, str, str, bool], times: int = 0, run: str = "") -> Answer:
    docs = [{"name": n, "role": r, "state": s, **({"pending_restart": True} if p else {})}
            for n, r, s, p in members]
    return Answer("*/cluster", stdout=json.dumps({"members": docs}), times=times, run=run)


def _patronictl(ran: Ran) -> list[str]:
    return [" ".join(c.args[2:]) for c in ran.calls if c.name == "patronictl"]


@pytest.mark.parametrize(
    ("role", "pending", "restarted"),
    [("replica", False, False), ("primary", True, False), ("replica", True, True)],
    ids=["nothing-pending", "primary-left-for-the-switchover", "pending-replica"],
)
def test_postgres_restart_restarts_only_a_replica_pending_a_restart(
    tmp_path: Path, role: str, pending: bool, restarted: bool
) -> None:
    curl = [_patroni(role, pending),
            _cluster(("node-a", role, "streaming", False), ("node-b", "leader", "running", False))]
    ran = _node(tmp_path).run(rendered_step("postgres-restart").script, {"curl": curl,
                                                                     "patronictl": Answer()})
    assert ran.returncode == 0, ran.stderr
    expected = ["restart airflow-ha-local node-a --pending --force"] if restarted else []
    assert _patronictl(ran) == expected


def test_postgres_restart_fails_when_the_replica_does_not_stream_again(tmp_path: Path) -> None:
    curl = [_patroni("replica", True),
            _cluster(("node-a", "replica", "starting", True),
                     ("node-b", "leader", "running", False), run=LATE)]
    ran = _node(tmp_path).run(rendered_step("postgres-restart").script, {"curl": curl,
                                                                     "patronictl": Answer()})
    assert ran.returncode != 0
    assert "PostgreSQL on node-a (a restarted replica streaming again) is not healthy" in ran.stderr


def test_the_pending_primary_switches_over_to_the_sync_standby_then_restarts(
    tmp_path: Path
) -> None:
    before = _cluster(("node-a", "replica", "streaming", False),
                      ("node-b", "leader", "running", True),
                      ("node-c", "sync_standby", "streaming", False), times=1)
    after = _cluster(("node-a", "replica", "streaming", False),
                     ("node-b", "replica", "streaming", False),
                     ("node-c", "leader", "running", False))
    ran = _node(tmp_path).run(rendered_step("postgres-switchover").script,
                             {"curl": [before, after], "patronictl": Answer()})
    assert ran.returncode == 0, ran.stderr
    assert _patronictl(ran) == [
        "switchover airflow-ha-local --leader node-b --candidate node-c --force",
        "restart airflow-ha-local node-b --pending --force",
    ]


@pytest.mark.parametrize("sync", [("node-c", "sync_standby", "streaming", True),
                                  ("node-c", "sync_standby", "starting", False)],
                         ids=["standby-pending-too", "standby-not-streaming"])
def test_no_switchover_without_a_healthy_sync_standby(tmp_path: Path, sync: tuple) -> None:
    curl = _cluster(("node-a", "replica", "streaming", False),
                    ("node-b", "leader", "running", True), sync)
    ran = _node(tmp_path).run(rendered_step("postgres-switchover").script,
                             {"curl": curl, "patronictl": Answer()})
    assert ran.returncode != 0
    assert _patronictl(ran) == []
    assert "no synchronous standby streams without one" in ran.stderr


def test_nothing_pending_switches_nothing(tmp_path: Path) -> None:
    curl = _cluster(("node-a", "leader", "running", False),
                    ("node-b", "sync_standby", "streaming", False))
    ran = _node(tmp_path).run(rendered_step("postgres-switchover").script,
                             {"curl": curl, "patronictl": Answer()})
    assert ran.returncode == 0, ran.stderr
    assert _patronictl(ran) == []


def test_the_stacks_postgres_parameters_reach_the_dcs_and_re_run_the_restart_steps(
    values
) -> None:
    engine = Engine()
    run_program(values("local", postgresParameters={"shared_buffers": "512MB"}), engine, "local")
    db = rendered_step("airflow-db", engine=engine).script
    assert "postgresql.parameters.shared_buffers=\"512MB\"" in db
    for step in ("postgres-restart", "postgres-switchover"):
        assert (rendered_step(step, engine=engine).script
                != rendered_step(step, engine=local_stack()).script), step
