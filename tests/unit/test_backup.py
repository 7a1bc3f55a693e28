"""The backup tier (issue 14): pgBackRest's config and steps as the program renders them, the
archive settings in Patroni's dynamic config, and the scripts' decisions run under stubs
(tests/unit/stepharness.py), the TLS certificates checked with openssl. The real pgBackRest
reads the config on the local machines (tests/cluster/test_backup.py, the backup drills)."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import backup
from components.config import ConfigError, parse_config
from components.layout import TEXTFILE_DIR
from policy.airflow_ha_policies import CLUSTER_PORTS
from tests.conftest import (
    fake_host_keys,
    stack_values,
    with_host_keys,
    without_object_storage,
)
from tests.unit.stepharness import Answer, Node, rendered_step
from tools.engine import Engine, Step, run_program, unwrap_secrets

STORAGE = {"endpoint": "s3.eu-central-1.amazonaws.com", "region": "eu-central-1",
           "bucket": "airflow-ha-backups"}
KEYS = {"objectStorageAccessKey": "AKIAEXAMPLEKEY", "objectStorageSecretKey": "s3cr3t-key-text"}
STANZA = "airflow-ha-local"


def _without_storage(values: Any, **overrides: Any) -> dict[str, Any]:
    """The local stack as if it had no objectStorage (the committed one has the local cloud's)."""
    return {**without_object_storage(values("local")), **overrides}


def _with_storage(values: Any, **extra: Any) -> dict[str, Any]:
    return values("local", objectStorage={**STORAGE, **extra.pop("storage", {})}, **KEYS, **extra)


@pytest.fixture
def engine(values: Any) -> Engine:
    engine = Engine()
    run_program(_with_storage(values, backup={"retentionFull": 3, "archiveTimeout": 30}),
                engine, "local")
    return engine


def _step(engine: Engine, name: str, node: str = "node-a") -> Step:
    return rendered_step(name, node, engine)


def _file(step: Step, path: str) -> tuple[str, str, str]:
    (found,) = [(mode, owner, text) for p, mode, owner, text in step.files if p == path]
    return found


def test_every_node_gets_pgbackrest_then_waits_for_the_repository(engine: Engine) -> None:
    names = {(s.node, s.step) for s in engine.steps()}
    for node in ("node-a", "node-b", "node-c"):
        assert {(node, "backup-install"), (node, "backup-stanza")} <= names


def test_no_object_storage_no_backup_tier_and_no_archiving(values: Any) -> None:
    engine = Engine()
    run_program(_without_storage(values), engine, "local")
    assert not [s for s in engine.steps() if s.step.startswith("backup-")]
    patroni = yaml.safe_load(_file(_step(engine, "patroni"), "/etc/patroni/config.yml")[2])
    assert "archive_command" not in patroni["bootstrap"]["dcs"]["postgresql"]["parameters"]
    assert "recovery_conf" not in patroni["postgresql"]


def _conf(text: str) -> configparser.ConfigParser:
    """pgBackRest's ini; a repeated key (a hash option: tls-server-auth) is not read here."""
    conf = configparser.ConfigParser(interpolation=None, strict=False)
    conf.read_string(unwrap_secrets(text)[0])
    return conf


def _repeated(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unwrap_secrets(text)[0].splitlines()
            if line.startswith(f"{key}=")]


def test_the_config_holds_the_repository_and_stays_secret(engine: Engine) -> None:
    mode, owner, text = _file(_step(engine, "backup-install"), backup.CONFIG)
    assert (mode, owner) == ("0640", "root:postgres")  # archive-push runs as postgres
    conf = _conf(text)
    repo = conf["global"]
    assert repo["repo1-type"] == "s3"
    assert repo["repo1-s3-endpoint"] == STORAGE["endpoint"]
    assert repo["repo1-storage-port"] == "443"
    assert repo["repo1-s3-uri-style"] == "host"
    assert repo["repo1-s3-key-secret"] == KEYS["objectStorageSecretKey"]
    assert repo["repo1-path"] == "/local/pgbackrest"
    assert repo["repo1-cipher-type"] == "aes-256-cbc"
    (generated,) = [r for r in engine.resources if r.name == "pgbackrest-cipher-pass"]
    assert repo["repo1-cipher-pass"] == unwrap_secrets(generated.outputs["result"])[0]
    assert repo["repo1-retention-full"] == "3"
    assert "repo1-storage-ca-file" not in repo  # no caCertificate: the system's CAs
    assert conf[STANZA]["pg1-path"] == "/var/lib/postgresql/17/airflow-ha"
    # The keys and the passphrase are secrets: the step's script that carries them is one.
    (command,) = [r for r in engine.resources if r.name == "node-a-backup-install"]
    assert "stdin" in command.secret_inputs


def test_the_tls_server_listens_on_the_mesh_for_the_clusters_nodes_only(engine: Engine) -> None:
    text = _file(_step(engine, "backup-install", "node-b"), backup.CONFIG)[2]
    server = _conf(text)["global"]
    assert server["tls-server-address"] == "10.42.0.2"
    assert server["tls-server-port"] == str(backup.TLS_PORT)
    assert _repeated(text, "tls-server-auth") == [f"10.42.0.{i}={STANZA}" for i in (1, 2, 3)]
    assert backup.TLS_PORT in CLUSTER_PORTS  # the policy pack keeps it out of every firewall


def test_pg1_is_the_nodes_own_database_and_the_others_follow(engine: Engine) -> None:
    stanza = _conf(_file(_step(engine, "backup-install", "node-b"), backup.CONFIG)[2])[STANZA]
    assert "pg1-host" not in stanza
    assert [(stanza[f"pg{i}-host"], stanza[f"pg{i}-host-type"]) for i in (2, 3)] == [
        ("10.42.0.1", "tls"), ("10.42.0.3", "tls")]
    assert "pg4-host" not in stanza
    assert stanza["pg2-path"] == stanza["pg1-path"]
    assert stanza["pg3-host-cert-file"] == backup.TLS_FILES["cert"]


def _tls(engine: Engine, node: str) -> dict[str, tuple[str, str, str]]:
    step = _step(engine, "backup-install", node)
    return {kind: _file(step, path) for kind, path in backup.TLS_FILES.items()}


def test_every_node_certificate_verifies_against_the_clusters_ca(
    engine: Engine, tmp_path: Path
) -> None:
    for node, address in (("node-a", "10.42.0.1"), ("node-c", "10.42.0.3")):
        files = _tls(engine, node)
        assert files["key"][:2] == ("0600", "postgres:postgres")
        for kind in ("ca", "cert"):
            (tmp_path / kind).write_text(unwrap_secrets(files[kind][2])[0])
        ran = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "ca", tmp_path / "cert"],
                             capture_output=True, text=True)
        assert ran.returncode == 0, ran.stderr
        shown = subprocess.run(["openssl", "x509", "-in", tmp_path / "cert", "-noout", "-ext",
                                "subjectAltName", "-subject"], capture_output=True, text=True,
                               check=True).stdout
        assert f"IP Address:{address}\n" in shown and f"CN = {address}" in shown
    # The key is the certificate's: the public halves match.
    (tmp_path / "key").write_text(unwrap_secrets(files["key"][2])[0])
    public = [subprocess.run(args, capture_output=True, text=True, check=True).stdout
              for args in (["openssl", "pkey", "-in", tmp_path / "key", "-pubout"],
                           ["openssl", "x509", "-in", tmp_path / "cert", "-noout", "-pubkey"])]
    assert public[0] == public[1]


def test_the_certificates_are_the_same_on_every_run(values: Any, engine: Engine) -> None:
    """Derived, not generated: a second `pulumi up` writes nothing and restarts nothing."""
    again = Engine()
    run_program(_with_storage(values, backup={"retentionFull": 3, "archiveTimeout": 30}),
                again, "local")
    assert _tls(again, "node-b") == _tls(engine, "node-b")
    assert _tls(engine, "node-a")["ca"] == _tls(engine, "node-b")["ca"]
    assert _tls(engine, "node-a")["cert"] != _tls(engine, "node-b")["cert"]
    seeds = [r for r in engine.resources if r.name.endswith("pgbackrest-tls-key")]
    assert len(seeds) == 3 and all("base64" in r.outputs for r in seeds)


def test_a_private_ca_is_written_and_named(values: Any) -> None:
    ca = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n"
    engine = Engine()
    run_program(_with_storage(values, storage={"caCertificate": ca, "uriStyle": "path"}),
                engine, "local")
    step = _step(engine, "backup-install")
    assert _file(step, backup.CA_FILE)[2] == ca
    conf = _conf(_file(step, backup.CONFIG)[2])
    assert conf["global"]["repo1-storage-ca-file"] == backup.CA_FILE
    assert conf["global"]["repo1-s3-uri-style"] == "path"


def test_archiving_is_in_the_dynamic_config(engine: Engine) -> None:
    text = _file(_step(engine, "patroni"), "/etc/patroni/config.yml")[2]
    patroni = yaml.safe_load(unwrap_secrets(text)[0])
    parameters = patroni["bootstrap"]["dcs"]["postgresql"]["parameters"]
    assert parameters["archive_mode"] == "on"
    assert parameters["archive_command"] == f"pgbackrest --stanza={STANZA} archive-push %p"
    assert parameters["archive_timeout"] == 30
    assert "recovery_conf" not in patroni["postgresql"]  # replicas stream only
    # A running cluster gets them through airflow-db's edit-config (a restart rolls).
    db = _step(engine, "airflow-db").script
    assert "postgresql.parameters.archive_command=" in db


@pytest.mark.parametrize("kind", backup.BACKUP_TYPES)
def test_timers_are_calendar_expressions_systemd_accepts(engine: Engine, kind: str) -> None:
    path = f"{backup.UNIT_DIR}/{backup.UNIT}-{kind}.timer"
    _, _, timer = _file(_step(engine, "backup-install"), path)
    (calendar,) = [line.split("=", 1)[1] for line in timer.splitlines()
                   if line.startswith("OnCalendar=")]
    assert calendar.endswith(" UTC")
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze here")
    checked = subprocess.run([analyze, "calendar", calendar], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


# --- the backup script: acts on one node, chosen from Patroni's view, under the lock -------


def _backup_script(engine: Engine, node: str = "node-a") -> str:
    return _file(_step(engine, "backup-install", node), backup.BACKUP_SCRIPT)[2]


def _cluster(*members: tuple[str, str, str]) -> str:
    """Patroni's GET /cluster: (name, role, state) per member."""
    return json.dumps({"members": [{"name": n, "role": r, "state": s, "host": "10.42.0.9"}
                                   for n, r, s in members]})


# node-a primary, node-b synchronous standby, node-c the asynchronous replica.
HEALTHY = _cluster(("node-a", "leader", "running"), ("node-b", "sync_standby", "streaming"),
                   ("node-c", "replica", "streaming"))


def _run_backup(tmp_path: Any, engine: Engine, args: str, node: str = "node-c",
                cluster: str = HEALTHY, locked: bool = False) -> Any:
    stubs = {"curl": Answer(stdout=cluster), "etcdctl": Answer(), "runuser": Answer()}
    env = "export AIRFLOW_HA_BACKUP_LOCKED=1\n" if locked else ""
    return Node(tmp_path).run(f"{env}set -- {args}\n" + _backup_script(engine, node), stubs)


def _pgbackrest(kind: str, standby: str) -> list[str]:
    return [f"runuser -u postgres -- pgbackrest --stanza={STANZA} --type={kind} "
            f"--backup-standby={standby} backup"]


@pytest.mark.parametrize("node", ["node-a", "node-b"])
def test_only_the_async_replica_backs_up(tmp_path: Any, engine: Engine, node: str) -> None:
    ran = _run_backup(tmp_path, engine, "full", node=node)
    assert ran.returncode == 0, ran.stderr
    assert ran.of("etcdctl") == [] and ran.of("runuser") == []
    assert "taken on node-c, not on " + node in ran.stdout


def test_the_chosen_node_takes_the_cluster_wide_lock_first(tmp_path: Any, engine: Engine) -> None:
    ran = _run_backup(tmp_path, engine, "diff")
    assert ran.returncode == 0, ran.stderr
    (lock,) = ran.of("etcdctl")
    assert f"lock /airflow-ha/{STANZA}/backup-lock" in lock
    assert lock.endswith(" diff") and "--" not in lock.split(" lock ")[1]  # etcdctl would take it
    assert "http://10.42.0.1:2379,http://10.42.0.2:2379,http://10.42.0.3:2379" in lock
    assert ran.of("runuser") == []  # the backup runs under the lock, not before it
    assert ran.of("curl") == ["curl -sf --max-time 5 http://10.42.0.3:8008/cluster"]


def test_under_the_lock_the_replica_backs_up_from_its_own_database(
    tmp_path: Any, engine: Engine
) -> None:
    ran = _run_backup(tmp_path, engine, "full", locked=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.of("runuser") == _pgbackrest("full", "y")
    assert "from this standby's database (replica)" in ran.stdout


@pytest.mark.parametrize(("cluster", "chosen", "standby"), [
    # No asynchronous replica streams (it is down, or a 3-node cluster lost one): the
    # synchronous standby, still from its own database.
    (_cluster(("node-a", "leader", "running"), ("node-b", "sync_standby", "streaming"),
              ("node-c", "replica", "starting")), "node-b", "y"),
    # No replica at all: the primary, from its own database.
    (_cluster(("node-a", "leader", "running"), ("node-b", "replica", "stopped")), "node-a", "n"),
    # Two asynchronous replicas (five nodes): the first by name.
    (_cluster(("node-e", "replica", "streaming"), ("node-a", "leader", "running"),
              ("node-d", "replica", "streaming"), ("node-b", "sync_standby", "streaming")),
     "node-d", "y"),
])
def test_the_choice_falls_back_in_order(
    tmp_path: Any, five_nodes: Engine, cluster: str, chosen: str, standby: str
) -> None:
    engine = five_nodes
    taken = []
    for node in ("node-a", "node-b", "node-c", "node-d", "node-e"):
        ran = _run_backup(tmp_path / node, engine, "diff", node=node, cluster=cluster,
                          locked=True)
        assert ran.returncode == 0, ran.stderr
        if ran.of("runuser"):
            taken.append(node)
            assert ran.of("runuser") == _pgbackrest("diff", standby)
    assert taken == [chosen]


@pytest.fixture(scope="module")
def five_nodes() -> Engine:
    five = {**stack_values("local"), "objectStorage": STORAGE, **KEYS}
    five["nodes"] = [{"name": f"node-{c}", "meshIndex": i + 1, "cloud": "static",
                      "host": f"172.31.77.{11 + i}"} for i, c in enumerate("abcde")]
    engine = Engine()
    run_program(with_host_keys(five, fake_host_keys(five)), engine, "local")
    return engine


def test_under_the_lock_a_node_no_longer_chosen_backs_up_nothing(
    tmp_path: Any, engine: Engine
) -> None:
    switched = _cluster(("node-a", "replica", "streaming"), ("node-b", "leader", "running"),
                        ("node-c", "sync_standby", "streaming"))
    ran = _run_backup(tmp_path, engine, "full", cluster=switched, locked=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.of("runuser") == []
    assert "taken on node-a" in ran.stdout


def test_here_backs_up_on_the_primary_from_its_own_database(
    tmp_path: Any, engine: Engine
) -> None:
    """The stanza step's first full backup, before any replica streams."""
    lonely = _cluster(("node-a", "leader", "running"))
    ran = _run_backup(tmp_path / "1", engine, "full here", node="node-a", cluster=lonely)
    (lock,) = ran.of("etcdctl")
    assert lock.endswith(" full here")
    ran = _run_backup(tmp_path / "2", engine, "full here", node="node-a", cluster=lonely,
                      locked=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.of("runuser") == _pgbackrest("full", "n")
    assert "from the primary's database" in ran.stdout


def test_without_patroni_the_node_backs_up_nothing(tmp_path: Any, engine: Engine) -> None:
    stubs = {"curl": Answer(status=7), "etcdctl": Answer(), "runuser": Answer()}
    ran = Node(tmp_path).run("set -- full\n" + _backup_script(engine, "node-c"), stubs)
    assert ran.returncode == 0, ran.stderr
    assert ran.of("etcdctl") == [] and ran.of("runuser") == []
    assert "Patroni does not answer on node-c" in ran.stdout


@pytest.mark.parametrize("args", ["weekly", "full there", ""])
def test_an_unknown_type_or_place_is_refused(tmp_path: Any, engine: Engine, args: str) -> None:
    ran = _run_backup(tmp_path, engine, args)
    assert ran.returncode == 2
    assert "usage" in ran.stderr
    assert ran.of("curl") == []


# --- the stanza step -------------------------------------------------------------------------


def _info(code: int, times: int = 0) -> Answer:
    doc = f'[{{"name": "{STANZA}", "status": {{"code": {code}, "message": "m"}}}}]'
    return Answer("* info", stdout=doc, times=times)


def _stanza_node(tmp_path: Any) -> Node:
    node = Node(tmp_path)
    # The backup script the install step wrote, as a stub that leaves a trace.
    node.file(backup.BACKUP_SCRIPT, f'#!/bin/bash\necho "$@" >> "{tmp_path}/backups"\n', 0o755)
    return node


def test_the_primary_creates_the_stanza_and_a_first_full_backup(
    tmp_path: Any, engine: Engine
) -> None:
    stubs = {
        "curl": Answer(stdout="200"),
        # Missing, then no backup yet (after stanza-create), then ok.
        "runuser": [_info(1, times=1), _info(2, times=1), _info(0), Answer()],
    }
    ran = _stanza_node(tmp_path).run(_step(engine, "backup-stanza").script, stubs)
    assert ran.returncode == 0, ran.stderr
    calls = ran.of("runuser")
    assert calls.index(f"runuser -u postgres -- pgbackrest --stanza={STANZA} stanza-create") < (
        calls.index(f"runuser -u postgres -- pgbackrest --stanza={STANZA} check")
    )
    assert (tmp_path / "backups").read_text() == "full here\n"


def test_a_replica_waits_for_the_primary_and_creates_nothing(
    tmp_path: Any, engine: Engine
) -> None:
    stubs = {"curl": Answer(stdout="503"), "runuser": [_info(1, times=3), _info(0), Answer()]}
    ran = _stanza_node(tmp_path).run(_step(engine, "backup-stanza").script, stubs)
    assert ran.returncode == 0, ran.stderr
    assert not [c for c in ran.of("runuser") if "stanza-create" in c or c.endswith(" check")]
    assert not (tmp_path / "backups").exists()


MISMATCH = ("ERROR: [028]: backup and archive info files exist but do not match the database\n"
            "HINT: is this the correct stanza?")


# The repository of another cluster: met at stanza-create (info says 5), or, seen after every
# node was lost, at check (the stanza and its backups are in order: info says 0).
@pytest.mark.parametrize(("info_code", "failing", "creates"),
                         [(5, "stanza-create", 1), (0, "check", 0)])
def test_a_repository_of_another_cluster_fails_at_once_with_the_way_out(
    tmp_path: Any, engine: Engine, info_code: int, failing: str, creates: int
) -> None:
    stubs = {
        "curl": Answer(stdout="200"),
        "runuser": [_info(info_code), Answer(f"* {failing}", stderr=MISMATCH, status=28)],
    }
    ran = _stanza_node(tmp_path).run(_step(engine, "backup-stanza").script, stubs)
    assert ran.returncode == 1
    assert "do not match the database" in ran.stderr
    assert "restore it from the repository (python -m tools.restore --stack local" in ran.stderr
    assert len([c for c in ran.of("runuser") if "stanza-create" in c]) == creates  # no retry


# --- the config -----------------------------------------------------------------------------


def _parse(values: Any, **overrides: Any) -> Any:
    return parse_config(_without_storage(values, **overrides), stack="local")


def test_without_object_storage_there_are_no_backups(values: Any) -> None:
    assert _parse(values).object_storage is None


def test_object_storage_needs_its_keys(values: Any) -> None:
    with pytest.raises(ConfigError, match=r"objectStorageSecretKey: is missing.*--secret"):
        _parse(values, objectStorage=STORAGE, objectStorageAccessKey="AKIA")


def test_backup_settings_without_object_storage_are_refused(values: Any) -> None:
    with pytest.raises(ConfigError, match="backup: is set, but objectStorage is not"):
        _parse(values, backup={"retentionFull": 2})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("bucket", "Bad_Bucket", "objectStorage.bucket: 'Bad_Bucket' is not an S3 bucket name"),
     ("uriStyle", "virtual", "objectStorage.uriStyle: the text 'virtual' is not an S3 URI"),
     ("endpoint", "https://s3.example.com", "objectStorage.endpoint: .* is neither"),
     ("caCertificate", "not a cert", "objectStorage.caCertificate: is not a PEM certificate"),
     ("prefix", "x", "objectStorage.prefix: is not a key of objectStorage")],
)
def test_bad_object_storage_fields_name_the_key(
    values: Any, field: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(values, objectStorage={**STORAGE, field: value}, **KEYS)


def test_bad_backup_fields_name_the_key(values: Any) -> None:
    with pytest.raises(ConfigError, match=r"backup.fullSchedule: .* is not a plain OnCalendar"):
        _parse(values, objectStorage=STORAGE, backup={"fullSchedule": "$(reboot)"}, **KEYS)
    with pytest.raises(ConfigError, match=r"backup.archiveTimeout"):
        _parse(values, objectStorage=STORAGE, backup={"archiveTimeout": 1}, **KEYS)


def test_archive_settings_are_the_programs_own(values: Any) -> None:
    with pytest.raises(ConfigError, match=r"postgresParameters.archive_command: is set by"):
        _parse(values, postgresParameters={"archive_command": "cp"})


# --- the backups' metrics and alerts --------------------------------------------------------

RULE_TESTS = Path(__file__).parent / "data" / "backup_rules_test.yml"


def test_every_backup_alert_passes_its_promtool_tests(engine: Engine, tmp_path: Path) -> None:
    from tests.unit.test_monitoring_rules import _tool

    promtool = _tool("promtool")
    rules = _file(_step(engine, "backup-install"), backup.RULES_FILE)[2]
    (tmp_path / "airflow-ha-backup-rules.yml").write_text(rules)
    shutil.copy(RULE_TESTS, tmp_path / "tests.yml")
    result = subprocess.run([promtool, "test", "rules", str(tmp_path / "tests.yml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"] for g in yaml.safe_load(rules)["groups"] for r in g["rules"]}
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for c in t["alert_rule_test"]]
    assert alerts == {c["alertname"] for c in cases if c["exp_alerts"]}
    assert alerts == {c["alertname"] for c in cases if not c["exp_alerts"]}
    runbook = (Path(__file__).parents[2] / "docs" / "operations.md").read_text().lower()
    for alert in alerts:
        assert f"\n#### {alert.lower()}\n" in runbook, f"docs/operations.md has no #### {alert}"


INFO = json.dumps([{"name": STANZA, "status": {"code": 0, "message": "ok"}, "backup": [
    {"type": "full", "label": "F1", "timestamp": {"start": 100, "stop": 160}},
    {"type": "diff", "label": "D1", "timestamp": {"start": 200, "stop": 230}},
    {"type": "full", "label": "F2", "timestamp": {"start": 300, "stop": 390}},
]}])


def _metrics(tmp_path: Path, engine: Engine, stubs: dict) -> dict[str, str]:
    node = Node(tmp_path)
    node.dir(TEXTFILE_DIR)
    script = _file(_step(engine, "backup-install"), backup.METRICS_SCRIPT)[2]
    # Run as python3 reading a here-document, so that the harness roots its paths too.
    ran = node.run(f"python3 - <<'PYTHON'\n{script}\nPYTHON\n", stubs)
    assert ran.returncode == 0, ran.stderr
    text = node.path(backup.METRICS_FILE).read_text()
    return dict(line.rsplit(" ", 1) for line in text.splitlines())


def test_the_metrics_of_a_primary_with_backups(tmp_path: Path, engine: Engine) -> None:
    stubs = {"runuser": [Answer("* info", stdout=INFO),
                         Answer("* psql *", stdout="f 42 1 1700000100.5 1700000000\n")]}
    metrics = _metrics(tmp_path, engine, stubs)
    assert metrics == {
        "airflow_ha_backup_repository_up": "1",
        'airflow_ha_backup_last_end_timestamp_seconds{type="full"}': "390",
        'airflow_ha_backup_last_end_timestamp_seconds{type="diff"}': "230",
        "airflow_ha_wal_archived_total": "42",
        "airflow_ha_wal_archive_failed_total": "1",
        "airflow_ha_wal_archive_last_success_timestamp_seconds": "1700000100.5",
        "airflow_ha_wal_archive_last_failure_timestamp_seconds": "1700000000",
    }


def test_a_replica_that_cannot_read_the_repository(tmp_path: Path, engine: Engine) -> None:
    stubs = {"runuser": [Answer("* info", stderr="ERROR: [039]: HTTP request failed",
                                status=39),
                         Answer("* psql *", stdout="t 0 0 0 0\n")]}
    assert _metrics(tmp_path, engine, stubs) == {"airflow_ha_backup_repository_up": "0"}


def test_pgbackrest_is_installed_before_any_replica_needs_its_restore_command(
    engine: Engine, values: Any
) -> None:
    """archive_command runs from the primary's first start: pgBackRest comes with the
    database tier's packages, before Patroni starts."""
    assert "pgbackrest" in _step(engine, "database-packages").script.split("apt_install", 1)[1]
    plain = Engine()
    run_program(_without_storage(values), plain, "local")
    assert "pgbackrest" not in _step(plain, "database-packages").script


@pytest.mark.parametrize("prometheus", [False, True])
def test_install_reloads_prometheus_only_where_it_runs(
    tmp_path: Path, engine: Engine, prometheus: bool
) -> None:
    """A first deploy installs the monitoring tier after this step: no Prometheus to reload."""
    stubs = {
        "systemctl": [Answer("is-active -q prometheus.service", status=0 if prometheus else 3),
                      Answer()],
        "apt-get": Answer(), "dpkg-query": Answer(stdout="install ok installed"),
        "promtool": Answer(),
    }
    ran = Node(tmp_path).run(_step(engine, "backup-install").script, stubs)
    assert ran.returncode == 0, ran.stderr
    assert ("systemctl reload prometheus.service" in ran.of("systemctl")) is prometheus
