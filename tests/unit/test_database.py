"""The database tier: etcd, Patroni + PostgreSQL and HAProxy per node, checked by the real tools."""

from __future__ import annotations

import ipaddress
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pulumi
import pytest
import yaml

from components.database import HAPROXY_PRIMARY_PORT
from tools.engine import Engine, config_for_engine

DB_STEPS = ["database-packages", "etcd", "haproxy", "patroni", "airflow-db"]


def _steps(engine, name):
    return {s.node: s for s in engine.steps() if s.step == name}


def _file(step, path) -> str:
    (content,) = [c for p, _, _, c in step.files if p == path]
    return content


def _env(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value.strip('"') for key, value in pairs}


def _password(name: str) -> str:
    return Engine().secret_value(name, "password", {"length": 32})


@pytest.fixture
def local(values, deploy):
    engine, outputs = deploy(values("local"), stack="local")
    mesh = {name: n["meshAddress"] for name, n in outputs["nodes"].items()}
    return engine, outputs, mesh


def test_etcd_is_a_static_cluster_of_all_nodes_on_the_mesh(local) -> None:
    engine, _, mesh = local
    for node, step in _steps(engine, "etcd").items():
        env = _env(_file(step, "/etc/default/etcd"))
        me = mesh[node]
        assert env["ETCD_NAME"] == node
        assert env["ETCD_DATA_DIR"].startswith("/var/lib/etcd/")
        assert env["ETCD_LISTEN_PEER_URLS"] == f"http://{me}:2380"
        assert env["ETCD_LISTEN_CLIENT_URLS"].split(",") == [
            f"http://{me}:2379",
            "http://127.0.0.1:2379",
        ]
        assert env["ETCD_ADVERTISE_CLIENT_URLS"] == f"http://{me}:2379"
        # The bootstrap-only settings in their own file (their change restarts nothing); the
        # unit reads it after /etc/default/etcd.
        assert not any(k.startswith("ETCD_INITIAL_CLUSTER") for k in env)
        boot = _env(_file(step, "/etc/default/etcd-bootstrap"))
        assert boot["ETCD_INITIAL_CLUSTER"] == ",".join(
            f"{name}=http://{addr}:2380" for name, addr in mesh.items()
        )
        assert boot["ETCD_INITIAL_CLUSTER_STATE"] == "new"
        assert boot["ETCD_INITIAL_CLUSTER_TOKEN"] == "airflow-ha-local"
        dropin = _file(step, "/etc/systemd/system/etcd.service.d/airflow-ha.conf")
        files = [line.split("=", 1)[1] for line in dropin.splitlines()
                 if line.startswith("EnvironmentFile=")]
        assert files == ["-/etc/default/etcd-bootstrap", "-/var/lib/etcd/airflow-ha.rejoin.env"]


def _patroni(engine) -> dict[str, dict]:
    return {
        node: yaml.safe_load(_file(step, "/etc/patroni/config.yml"))
        for node, step in _steps(engine, "patroni").items()
    }


@pytest.mark.parametrize(
    "patroni",
    [
        {"ttl": 20, "loopWait": 5, "retryTimeout": 5, "synchronousMode": True},
        {
            "ttl": 30,
            "loopWait": 10,
            "retryTimeout": 10,
            "synchronousMode": False,
            "maximumLagOnFailover": 0,
            "failsafeMode": False,
        },
    ],
)
def test_patroni_config_per_node(values, deploy, patroni) -> None:
    engine, outputs = deploy(values("local", patroni=patroni), stack="local")
    mesh = {name: n["meshAddress"] for name, n in outputs["nodes"].items()}
    for node, conf in _patroni(engine).items():
        me = mesh[node]
        assert conf["name"] == node and conf["scope"] == "airflow-ha-local"
        assert conf["restapi"]["listen"] == conf["restapi"]["connect_address"] == f"{me}:8008"
        assert conf["restapi"]["authentication"] == {
            "username": "patroni",
            "password": _password("patroni-rest-password"),
        }
        assert conf["etcd3"]["hosts"] == [f"{addr}:2379" for addr in mesh.values()]
        dcs = conf["bootstrap"]["dcs"]
        assert dcs["ttl"] == patroni["ttl"]
        assert dcs["loop_wait"] == patroni["loopWait"]
        assert dcs["retry_timeout"] == patroni["retryTimeout"]
        assert dcs["synchronous_mode"] is patroni["synchronousMode"]
        assert dcs["maximum_lag_on_failover"] == patroni.get("maximumLagOnFailover", 1048576)
        assert dcs["failsafe_mode"] is patroni.get("failsafeMode", True)
        assert dcs["postgresql"]["use_pg_rewind"] is True
        assert dcs["postgresql"]["parameters"]["hot_standby"] == "on"  # a string, not True
        pg = conf["postgresql"]
        assert pg["listen"] == f"{me},127.0.0.1:5432"
        assert pg["connect_address"] == f"{me}:5432"
        assert pg["bin_dir"] == "/usr/lib/postgresql/17/bin"
        auth = pg["authentication"]
        assert auth["superuser"]["password"] == _password("postgres-superuser-password")
        assert auth["replication"]["password"] == _password("postgres-replication-password")
        assert auth["rewind"]["password"] == _password("postgres-rewind-password")
        mode = next(m for p, m, _, _ in _steps(engine, "patroni")[node].files if p.endswith(".yml"))
        assert mode == "0600"


def test_pg_hba_admits_only_the_mesh_by_password_and_postgres_on_the_socket(local) -> None:
    engine, _, _ = local
    for conf in _patroni(engine).values():
        hba = [line.split() for line in conf["postgresql"]["pg_hba"]]
        assert ["local", "all", "postgres", "peer"] in hba
        remote = [h for h in hba if h[0] != "local"]
        assert {(h[1], h[2]) for h in remote} == {
            ("replication", "replicator"),
            ("postgres", "rewinder"),
            ("airflow", "airflow"),
        }
        for line in remote:
            assert line[0] == "host" and line[4] == "scram-sha-256"
            # Only the mesh, and loopback for Patroni's own replication connection.
            loopback = line[3] in ("127.0.0.1/32", "::1/128")
            assert line[3] == "10.42.0.0/24" or (loopback and line[1] == "replication")
        local_lines = [h for h in hba if h not in remote]
        # The superuser, and the postgres-exporter's role, no password, in its own database only.
        assert ["local", "postgres", "prometheus", "peer"] in local_lines
        assert all(h[0] == "local" and h[3] == "peer" for h in local_lines)
        assert {h[2] for h in local_lines} == {"postgres", "prometheus"}


def _patroni_binary() -> str:
    found = shutil.which("patroni") or str(Path(sys.executable).with_name("patroni"))
    if not Path(found).exists():
        pytest.fail("patroni is missing: .venv/bin/pip install -r requirements-dev.txt")
    return found


def test_patroni_config_passes_patroni_validate_config(local, tmp_path) -> None:
    """Patroni's own validator, with what only exists on a node swapped for local stand-ins.

    --validate-config connects to every etcd host and looks for PostgreSQL's binaries: the etcd
    hosts become sockets listening here, bin_dir a directory of stub programs, the mesh address
    a loopback one (the listen ports are not checked: -i).
    """
    engine, _, mesh = local
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in (
        "postgres",
        "pg_ctl",
        "initdb",
        "pg_controldata",
        "pg_basebackup",
        "pg_isready",
        "pg_rewind",
    ):
        stub = bin_dir / name
        stub.write_text('#!/bin/sh\necho "postgres (PostgreSQL) 17.6"\n')
        stub.chmod(0o755)
    listeners = []
    try:
        for node, step in _steps(engine, "patroni").items():
            text = _file(step, "/etc/patroni/config.yml")
            for addr in mesh.values():
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                sock.listen()
                listeners.append(sock)
                text = text.replace(f"- {addr}:2379", f"- 127.0.0.1:{sock.getsockname()[1]}")
            text = text.replace(mesh[node], "127.0.0.2")
            text = text.replace("/usr/lib/postgresql/17/bin", str(bin_dir))
            text = text.replace("/var/lib/postgresql/17/airflow-ha", str(tmp_path / node))
            path = tmp_path / f"{node}.yml"
            path.write_text(text)
            result = subprocess.run(
                [_patroni_binary(), "--validate-config", "-i", str(path)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, f"{node}: {result.stdout}{result.stderr}"
            # The validator does reject what is wrong, so passing means something.
            path.write_text(text.replace("use_pg_rewind: true", "use_pg_rewind: maybe"))
            bad = subprocess.run(
                [_patroni_binary(), "--validate-config", "-i", str(path)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert bad.returncode != 0
    finally:
        for sock in listeners:
            sock.close()


def _sections(cfg: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in cfg.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            current = line.strip()
            sections[current] = []
        else:
            sections[current].append(line.strip())
    return sections


def test_haproxy_routes_to_the_primary_and_replicas_of_all_nodes(local) -> None:
    engine, _, mesh = local
    for node, step in _steps(engine, "haproxy").items():
        sections = _sections(_file(step, "/etc/haproxy/haproxy.cfg"))
        expected_servers = [
            f"server {name} {addr}:5432 check port 8008" for name, addr in mesh.items()
        ]
        for listen, port, path in (
            ("listen postgres-primary", 5000, "/primary"),
            ("listen postgres-replicas", 5001, "/replica"),
        ):
            lines = sections[listen]
            assert f"bind 127.0.0.1:{port}" in lines
            assert f"option httpchk OPTIONS {path}" in lines
            assert "http-check expect status 200" in lines
            assert [line for line in lines if line.startswith("server ")] == expected_servers
        default_server = next(
            line for line in sections["defaults"] if line.startswith("default-server")
        )
        assert "on-marked-down shutdown-sessions" in default_server
        # A connect to a dead primary is not retried (HAProxy 3.0 then hangs the client).
        assert "retries 0" in sections["defaults"]
        assert re.search(r"inter \d+m?s fall \d+ rise \d+", default_server)
        assert f"bind {mesh[node]}:7000" in sections["listen stats"]
        # Prometheus metrics from HAProxy's own exporter, on the mesh address only.
        metrics = sections["frontend prometheus"]
        assert f"bind {mesh[node]}:8405" in metrics
        assert "http-request use-service prometheus-exporter if { path /metrics }" in metrics


def test_haproxy_cfg_passes_haproxy_check(local, tmp_path) -> None:
    if not shutil.which("haproxy"):
        pytest.fail("haproxy is missing: apt-get install haproxy (the README's setup does)")
    engine, _, _ = local
    for node, step in _steps(engine, "haproxy").items():
        path = tmp_path / f"{node}.cfg"
        # The server-state file as the haproxy step leaves it before the first reload.
        state = tmp_path / "server-state"
        state.write_text("1\n")
        config = _file(step, "/etc/haproxy/haproxy.cfg")
        assert "server-state-file /var/lib/haproxy/server-state" in config
        path.write_text(config.replace("/var/lib/haproxy/server-state", str(state)))
        result = subprocess.run(
            ["haproxy", "-c", "-V", "-f", str(path)], capture_output=True, text=True
        )
        assert result.returncode == 0, f"{node}: {result.stdout}{result.stderr}"
        assert "[WARNING]" not in result.stdout + result.stderr


ADDRESS_PORT = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3}|\*|localhost):(\d{2,5})\b")


def test_every_listener_is_on_the_mesh_or_loopback(local) -> None:
    engine, _, mesh = local
    for node, me in mesh.items():
        allowed = {me, "127.0.0.1"}
        etcd = _env(_file(_steps(engine, "etcd")[node], "/etc/default/etcd"))
        listens = etcd["ETCD_LISTEN_CLIENT_URLS"] + "," + etcd["ETCD_LISTEN_PEER_URLS"]
        conf = _patroni(engine)[node]
        listens += f",{conf['restapi']['listen']},{conf['postgresql']['listen']}"
        haproxy = _file(_steps(engine, "haproxy")[node], "/etc/haproxy/haproxy.cfg")
        listens += "," + ",".join(re.findall(r"^\s*bind (\S+)", haproxy, re.M))
        hosts = {
            item.removeprefix("http://").rsplit(":", 1)[0] if ":" in item else item
            for item in listens.split(",")
        }
        assert hosts <= allowed, hosts - allowed
        everything = "\n".join(
            c for name in DB_STEPS for _, _, _, c in _steps(engine, name)[node].files
        )
        for host, _port in ADDRESS_PORT.findall(everything):
            assert host != "*" and host != "0.0.0.0"
            assert ipaddress.ip_address(host) in ipaddress.ip_network("10.42.0.0/24") or (
                host == "127.0.0.1"
            )


def test_steps_carrying_passwords_are_secret_and_the_others_hold_none(local) -> None:
    engine, _, _ = local
    commands = {r.name: r for r in engine.of_type("command:remote:Command")}
    airflow_pw = _password("airflow-db-password")
    for node in ("node-a", "node-b", "node-c"):
        for step in ("patroni", "airflow-db"):
            assert "stdin" in commands[f"{node}-{step}"].secret_inputs
        assert airflow_pw in commands[f"{node}-airflow-db"].inputs["stdin"]
        for step in ("database-packages", "etcd", "haproxy"):
            script = commands[f"{node}-{step}"].inputs["stdin"]
            assert "stdin" not in commands[f"{node}-{step}"].secret_inputs
            assert "test-" not in script  # no generated secret leaked into a plain step
    passwords = engine.of_type("random:index/randomPassword:RandomPassword")
    names = {r.name for r in passwords}
    assert {
        "postgres-superuser-password",
        "postgres-replication-password",
        "postgres-rewind-password",
        "patroni-rest-password",
        "airflow-db-password",
    } <= names
    for r in passwords:
        if r.name in names:
            assert r.inputs["special"] is False and r.inputs["length"] >= 24
    parent = engine.parents[("random:index/randomPassword:RandomPassword", "airflow-db-password")]
    assert parent == "airflow-ha:database:DatabaseTier::database"


def test_airflow_url_and_password_are_secret_outputs(values) -> None:
    """The URL Airflow gets goes through the local HAProxy and is a Pulumi secret."""
    from components.cluster import AirflowHaCluster
    from components.config import NAMESPACE, load_config

    config, secret_keys = config_for_engine(values("local"))
    pulumi.runtime.set_all_config(config, secret_keys)
    pulumi.runtime.set_mocks(Engine(), project=NAMESPACE, stack="local", preview=False)
    seen: dict = {}

    def program():
        db = AirflowHaCluster(load_config()).database

        async def inspect():
            seen["url_secret"] = await db.airflow_db_url.is_secret()
            seen["password_secret"] = await db.airflow_db_password.is_secret()
            seen["url"] = await db.airflow_db_url.future()
            return True

        return pulumi.Output.from_input(inspect())

    pulumi.runtime.test(program)()
    assert seen["url_secret"] and seen["password_secret"]
    assert seen["url"] == (
        f"postgresql+psycopg2://airflow:{_password('airflow-db-password')}"
        f"@127.0.0.1:{HAPROXY_PRIMARY_PORT}/airflow?connect_timeout=10"
    )


def test_stack_outputs_name_the_stats_tunnels(local) -> None:
    _, outputs, mesh = local
    for node, addr in mesh.items():
        assert f"-L 7000:{addr}:7000" in outputs["databaseStatsTunnel"][node]


def test_database_scripts_pass_bash_n_and_shellcheck(local, tmp_path) -> None:
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is missing: apt-get install shellcheck (the README's setup does)")
    engine, _, _ = local
    for name in DB_STEPS:
        step = _steps(engine, name)["node-a"]
        path = tmp_path / f"{name}.sh"
        path.write_text(step.script)
        syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{name}: {syntax.stderr}"
        result = subprocess.run(
            ["shellcheck", "-S", "warning", str(path)], capture_output=True, text=True
        )
        assert result.returncode == 0, f"{name}:\n{result.stdout}"
