"""The database tier's step scripts with decisions in them, run under stubbed commands: etcd
forms, joins or rejoins; the Airflow role and database are made by the primary, retried when
a command in the middle fails, never taken for done when they were not."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.database import ETCD_DATA_DIR, ETCD_PACKAGE_DATA_DIR, PATRONI_CONFIG
from tests.unit.stepharness import Answer, Node, Ran, rendered_step

JOINED = f"{ETCD_DATA_DIR}.joined"
REJOIN_ENV = f"{ETCD_DATA_DIR}.rejoin.env"


# --- etcd: new cluster, joining a running one, a member whose data was lost -----------------

LOCAL = "--endpoints=http://127.0.0.1:2379 *"
PEERS = "--endpoints=http://10.42.0.2:2379,http://10.42.0.3:2379 *"


def _member(mid: str, name: str, index: int, started: bool = True) -> str:
    client = f"http://10.42.0.{index}:2379" if started else ""
    state = "started" if started else "unstarted"
    shown = name if started else ""  # etcd names a member only once it has run
    return f"{mid}, {state}, {shown}, http://10.42.0.{index}:2380, {client}, false\n"


FORMED = _member("a1", "node-a", 1) + _member("b2", "node-b", 2) + _member("c3", "node-c", 3)
# Debian's package starts a member of its own: another name, localhost URLs.
PACKAGE = "8e9e05c5, started, default, http://localhost:2380, http://localhost:2379, false\n"
EXISTING = 'ETCD_INITIAL_CLUSTER_STATE="existing"\n'



def _etcd_stubs(local: list[Answer], peers: list[Answer]) -> dict:
    # `systemctl start` notes whether etcd was told to join an existing cluster at that moment.
    seen = (f'cat "$ROOT{REJOIN_ENV}" >> "$ROOT/started-with" 2>/dev/null;'
            ' echo start >> "$ROOT/started-with"')
    return {
        "systemctl": [Answer("start --no-block etcd", run=seen), Answer()],
        "etcdctl": [
            *[Answer(LOCAL + a.match, **_rest(a)) for a in local],
            *[Answer(PEERS + a.match, **_rest(a)) for a in peers],
            # The marker must not be there before the cluster is formed.
            Answer(LOCAL + "endpoint health --cluster",
                   run=f'if [ -e "$ROOT{JOINED}" ]; then echo early > "$ROOT/joined-early"; fi'),
            Answer(LOCAL + "endpoint status *", stdout="| table |\n"),
        ],
    }


def _rest(a: Answer) -> dict:
    return {"stdout": a.stdout, "status": a.status, "times": a.times, "stderr": a.stderr}


def _etcd(ran: Ran) -> list[str]:
    """etcdctl calls as "local: ARGS" or "peers: ARGS" (endpoints and timeouts left out)."""
    calls = []
    for call in ran.calls:
        if call.name == "etcdctl":
            where = "local" if "127.0.0.1" in call.args[0] else "peers"
            calls.append(f"{where}: {' '.join(call.args[3:])}")
    return calls


def _blank_node(tmp_path: Path) -> Node:
    """A node as the package leaves it, with a half-made data dir from an earlier attempt."""
    node = Node(tmp_path)
    node.file(f"{ETCD_PACKAGE_DATA_DIR}/member/snap/db", "package data")
    node.file(f"{ETCD_DATA_DIR}/member/wal/0.wal", "half made")
    return node


@pytest.mark.parametrize(
    "peers",
    [
        [Answer("member list", status=1, stderr="context deadline exceeded")],  # not up yet
        # Up and forming: this node listed by its peer URL, not started yet.
        [Answer("member list", stdout=_member("a1", "node-a", 1, started=False)
                + _member("b2", "node-b", 2) + _member("c3", "node-c", 3))],
    ],
    ids=["peers-down", "peers-forming"],
)
def test_etcd_new_cluster_wipes_the_package_data_and_starts_as_new(
    tmp_path: Path, peers: list[Answer]
) -> None:
    node = _blank_node(tmp_path)
    partial = FORMED.replace(_member("c3", "node-c", 3), _member("c3", "node-c", 3, False))
    stubs = _etcd_stubs(
        local=[Answer("member list", stdout=PACKAGE, times=1),
               Answer("member list", stdout=partial, times=2),
               Answer("member list", stdout=FORMED)],
        peers=peers,
    )
    ran = node.run(rendered_step("etcd").script, stubs)
    assert ran.returncode == 0, ran.stderr
    assert ran.of("systemctl") == [
        "systemctl daemon-reload", "systemctl enable etcd", "systemctl stop etcd",
        "systemctl start --no-block etcd",
    ]
    # No reconfiguration of a cluster: this node is one of the static members.
    assert not [c for c in _etcd(ran) if "member add" in c or "member remove" in c]
    assert not node.path(f"{ETCD_PACKAGE_DATA_DIR}").exists()
    assert list(node.path(ETCD_DATA_DIR).iterdir()) == []
    assert node.path("/started-with").read_text() == "start\n"  # as "new" (/etc/default/etcd)
    # Formed only once every member started (two polls saw one unstarted), then the marker.
    assert _etcd(ran).count("local: endpoint health --cluster") == 1
    assert ran.of("sleep") == ["sleep 1", "sleep 1"]
    assert node.path(JOINED).exists() and not node.path(REJOIN_ENV).exists()
    assert not node.path("/joined-early").exists()


def test_etcd_joins_a_running_cluster_that_does_not_list_it(tmp_path: Path) -> None:
    node = _blank_node(tmp_path)
    stubs = _etcd_stubs(
        local=[Answer("member list", status=1, times=1), Answer("member list", stdout=FORMED)],
        peers=[Answer("member list", stdout=FORMED.replace(_member("a1", "node-a", 1), "")),
               Answer("member add *", stdout="Member a9 added\n")],
    )
    ran = node.run(rendered_step("etcd").script, stubs)
    assert ran.returncode == 0, ran.stderr
    assert _etcd(ran)[:3] == [
        "local: member list", "peers: member list",
        "peers: member add node-a --peer-urls=http://10.42.0.1:2380",
    ]
    assert node.path("/started-with").read_text() == EXISTING + "start\n"
    assert node.path(JOINED).exists() and not node.path(REJOIN_ENV).exists()


def test_etcd_member_whose_data_dir_was_lost_is_removed_and_added_again(
    tmp_path: Path
) -> None:
    node = _blank_node(tmp_path)  # a new disk: no marker; the package's member runs
    stubs = _etcd_stubs(
        local=[Answer("member list", stdout=PACKAGE, times=1),
               Answer("member list", stdout=FORMED)],
        peers=[
            Answer("member list", stdout=FORMED),  # its peers still list it, started
            # etcd refuses while it counts the member as recently active: retried.
            Answer("member remove *", status=1, times=1, stderr="etcdserver: unhealthy cluster"),
            Answer("member remove *"),
            Answer("member add *"),
        ],
    )
    ran = node.run(rendered_step("etcd").script, stubs)
    assert ran.returncode == 0, ran.stderr
    assert _etcd(ran)[:5] == [
        "local: member list", "peers: member list", "peers: member remove a1",
        "peers: member remove a1", "peers: member add node-a --peer-urls=http://10.42.0.1:2380",
    ]
    assert "node-a was member a1 and lost its data" in ran.stdout
    assert node.path("/started-with").read_text() == EXISTING + "start\n"
    assert not node.path(ETCD_PACKAGE_DATA_DIR).exists()


ETCD_FILES = ["/etc/default/etcd", "/etc/default/etcd-bootstrap",
              "/etc/systemd/system/etcd.service.d/airflow-ha.conf"]
ETCD_MARK = "/var/lib/airflow-ha/restart/etcd"


@pytest.mark.parametrize(
    ("changed", "marked"),
    [(None, False), ("/etc/default/etcd", True), ("/etc/default/etcd-bootstrap", False),
     ("/etc/systemd/system/etcd.service.d/airflow-ha.conf", True)],
    ids=["unchanged", "runtime-setting", "bootstrap-only", "drop-in"],
)
def test_etcd_member_is_never_wiped_and_a_change_only_marks_a_restart(
    tmp_path: Path, changed: str | None, marked: bool
) -> None:
    node = Node(tmp_path)
    node.file(JOINED)
    data = node.file(f"{ETCD_DATA_DIR}/member/snap/db", "cluster data")
    stubs = _etcd_stubs(local=[Answer("member list", stdout=FORMED)], peers=[])
    present = [f for f in ETCD_FILES if f != changed]
    ran = node.run(rendered_step("etcd").script, stubs, present=present)
    assert ran.returncode == 0, ran.stderr
    reload = ["systemctl daemon-reload"] if changed and changed.endswith(".conf") else []
    # Never a restart here: the etcd-restart step does it, one member at a time.
    assert ran.of("systemctl") == [*reload, "systemctl enable etcd",
                                   "systemctl start --no-block etcd"]
    assert node.path(ETCD_MARK).exists() is marked
    assert data.read_text() == "cluster data"
    assert not [c for c in _etcd(ran) if c.startswith("peers:")]


def test_etcd_member_from_before_the_marker_keeps_its_data(tmp_path: Path) -> None:
    node = Node(tmp_path)  # no marker, but the running etcd is this node's member of the cluster
    data = node.file(f"{ETCD_DATA_DIR}/member/snap/db", "cluster data")
    stubs = _etcd_stubs(local=[Answer("member list", stdout=FORMED)], peers=[])
    ran = node.run(rendered_step("etcd").script, stubs, present=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.of("systemctl") == ["systemctl enable etcd", "systemctl start --no-block etcd"]
    assert data.read_text() == "cluster data" and node.path(JOINED).exists()


# --- airflow-db: the primary makes the role and database; a failure is retried --------------

PRIMARY = Answer("*/primary", stdout="200")
REPLICA = Answer("*/primary", stdout="503")
LOGIN = "* -h 127.0.0.1 -p 5000 *"
# The login works once the primary's psql made the database (a file on the node says so).
LOGIN_WORKS_ONCE_MADE = Answer(LOGIN, run='[ -e "$ROOT/db-made" ]')
MAKE = "* -d postgres"
MADE = Answer(MAKE, run='touch "$ROOT/db-made"')


def _db_steps(ran: Ran) -> list[str]:
    """What the step did, in order: patronictl, psql as postgres (make) or as airflow (login)."""
    names = {"patronictl": "patronictl", "sleep": "sleep"}
    out = []
    for call in ran.calls:
        if call.name == "psql":
            out.append("make" if call.args[-1] == "postgres" else "login")
        elif call.name in names:
            out.append(names[call.name])
    return out


@pytest.mark.parametrize("failing", ["psql", "patronictl"])
def test_airflow_db_retries_ensure_when_a_command_inside_fails(
    tmp_path: Path, failing: str
) -> None:
    # `failing` fails its first call and works from then on.
    fails_once = {
        "psql": Answer(MAKE, status=2, times=1, stderr="server closed the connection"),
        "patronictl": Answer(status=1, times=1, stderr="etcd: no leader"),
    }
    stubs = {"curl": PRIMARY, "patronictl": [Answer()], "psql": [MADE, LOGIN_WORKS_ONCE_MADE]}
    stubs[failing].insert(0, fails_once[failing])
    ran = Node(tmp_path).run(rendered_step("airflow-db").script, stubs)
    assert ran.returncode == 0, ran.stderr
    first_try = ["patronictl", "make"] if failing == "psql" else ["patronictl"]
    # The failed try stopped at the failing command, the next pass ran all of ensure again.
    assert _db_steps(ran) == [
        "login", *first_try, "sleep", "login", "patronictl", "make", "sleep", "login",
    ]
    ensured = "is primary: role airflow, database airflow and Patroni timings ensured"
    assert ran.stdout.count(ensured) == 1
    assert "ensure failed (exit status" in ran.stderr and "retrying" in ran.stderr
    assert "airflow can log in to airflow through 127.0.0.1:5000 on node-a" in ran.stdout


def test_airflow_db_that_never_succeeds_fails_the_step_saying_why(
    tmp_path: Path
) -> None:
    stubs = {
        "curl": PRIMARY,
        "patronictl": Answer(),
        "psql": [Answer(MAKE, status=2, stderr="permission denied"), Answer(LOGIN, status=2)],
    }
    # The step's deadline (600 s) shortened to 60 s: the same passes, a tenth as many.
    script = rendered_step("airflow-db").script
    assert script.count("+ 600 ))") == 1
    ran = Node(tmp_path).run(script.replace("+ 600 ))", "+ 60 ))"), stubs)
    assert ran.returncode != 0
    assert "is primary: role" not in ran.stdout
    # Tried on every pass (2 s apart) until the deadline, then said so; the login's own error
    # shows last.
    tries = _db_steps(ran).count("make")
    assert 29 <= tries <= 31
    assert f"could not be ensured on node-a ({tries} tries, last exit status 2)" in ran.stderr
    assert "the Airflow login through 127.0.0.1:5000 still fails" in ran.stderr


def test_airflow_db_on_a_replica_waits_for_the_login_and_changes_nothing(
    tmp_path: Path
) -> None:
    stubs = {"curl": REPLICA, "psql": [Answer(LOGIN, status=2, times=3), Answer(LOGIN)]}
    ran = Node(tmp_path).run(rendered_step("airflow-db", "node-b").script, stubs)
    assert ran.returncode == 0, ran.stderr
    assert _db_steps(ran) == ["login", "sleep", "login", "sleep", "login", "sleep", "login"]
    assert ran.of("patronictl") == []


def test_a_re_run_on_the_primary_applies_the_stack_timings_and_password(
    values, deploy, tmp_path: Path
) -> None:
    engine, _ = deploy(
        values("local", patroni={"ttl": 24, "loopWait": 6, "retryTimeout": 6}), stack="local"
    )
    stubs = {"curl": PRIMARY, "patronictl": Answer(), "psql": Answer()}
    primary = rendered_step("airflow-db", engine=engine)
    ran = Node(tmp_path).run(primary.script, stubs, stdin_of=["psql"])
    assert ran.returncode == 0, ran.stderr
    # The login already works (a re-run): the primary still applies what may have changed.
    assert _db_steps(ran) == ["login", "patronictl", "make"]
    (edit,) = ran.of("patronictl")
    assert edit.startswith(
        f"patronictl -c {PATRONI_CONFIG} edit-config --force --quiet -s ttl=24 -s loop_wait=6 "
        "-s retry_timeout=6 -s maximum_lag_on_failover=1048576 -s synchronous_mode=true "
        "-s failsafe_mode=true "
    )
    # And the stack's PostgreSQL parameters, so that a running cluster gets a changed one.
    assert "-s postgresql.parameters.tcp_keepalives_idle=5 " in edit
    assert '-s postgresql.parameters.idle_in_transaction_session_timeout="5min"' in edit
    # With object storage (the local stack has the local cloud's), WAL archiving as well.
    assert edit.endswith("-s postgresql.parameters.archive_timeout=60")
    assert ran.of("runuser")[0].startswith("runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1")
    (sql,) = [c.stdin for c in ran.calls if c.name == "psql" and c.args[-1] == "postgres"]
    password = engine.secret_value("airflow-db-password", "password", {"length": 32})
    assert "SET log_min_error_statement = panic;" in sql
    assert f"ALTER ROLE airflow WITH LOGIN PASSWORD '{password}';" in sql
    assert "CREATE DATABASE airflow OWNER airflow" in sql
    # A replica's re-run does nothing.
    stubs["curl"] = REPLICA
    replica = rendered_step("airflow-db", "node-b", engine=engine)
    ran = Node(tmp_path / "replica").run(replica.script, stubs)
    assert ran.returncode == 0 and _db_steps(ran) == ["login"], ran.stderr


def test_airflow_db_removes_a_parameter_dropped_from_the_stack_and_keeps_its_own(
    tmp_path: Path,
) -> None:
    # The node applied shared_buffers from postgresParameters before; the stack no longer sets
    # it. tcp_keepalives_idle is one of the program's own (POSTGRES_PARAMETERS): never removed.
    node = Node(tmp_path)
    applied = node.file(
        "/var/lib/airflow-ha/postgres-parameters", "shared_buffers\ntcp_keepalives_idle\n"
    )
    stubs = {"curl": PRIMARY, "patronictl": [Answer()], "psql": [MADE, LOGIN_WORKS_ONCE_MADE]}
    ran = node.run(rendered_step("airflow-db").script, stubs)
    assert ran.returncode == 0, ran.stderr
    (edit,) = [c.args for c in ran.calls if c.name == "patronictl"]
    assert "postgresql.parameters.shared_buffers=null" in edit
    assert not [a for a in edit if a.startswith("postgresql.parameters.tcp_keepalives_idle=n")]
    assert "postgresql.parameters.tcp_keepalives_idle=5" in edit
    # What the stack sets now is recorded (nothing: the local stack has no postgresParameters),
    # so the next run removes nothing.
    assert applied.read_text().split() == []
