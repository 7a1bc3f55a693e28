"""The Airflow tier: six units per node, one airflow.cfg per node with the right values, the
same secrets everywhere (and secret), UIs on the mesh only, a pinned install."""

from __future__ import annotations

import ast
import asyncio
import base64
import configparser
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pulumi
import pytest

from components import airflow
from components.config import NAMESPACE, ConfigError
from components.nodes import ingress_rules
from drills.airflow import SERVICES  # the six units the drills and cluster tests check
from tests.conftest import without_object_storage
from tools.engine import Engine, config_for_engine


def _steps(engine, name):
    return {s.node: s for s in engine.steps() if s.step == name}


def _file(step, path) -> str:
    (content,) = [c for p, _, _, c in step.files if p == path]
    return content


def _mode_owner(step, path) -> tuple[str, str]:
    (found,) = [(m, o) for p, m, o, _ in step.files if p == path]
    return found


def _cfg(step) -> configparser.ConfigParser:
    # Airflow's parser is a ConfigParser with basic interpolation: reading every value through
    # one proves the file has no stray '%' either.
    parser = configparser.ConfigParser()
    parser.read_string(_file(step, airflow.AIRFLOW_CFG))
    for section in parser.sections():
        for key in parser[section]:
            parser.get(section, key)
    return parser


def _unit(step, name) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(_file(step, f"/etc/systemd/system/{name}.service"))
    return parser


@pytest.fixture
def local(values, deploy):
    engine, outputs = deploy(values("local"), stack="local")
    return engine, outputs


def test_every_node_gets_the_six_units_that_never_give_up(local) -> None:
    engine, outputs = local
    config = _steps(engine, "airflow-config")
    assert sorted(config) == sorted(outputs["nodes"])
    for node, step in config.items():
        for name in SERVICES:
            unit = _unit(step, name)
            service = unit["Service"]
            assert service["Restart"] == "always"
            assert int(service["RestartSec"]) >= 1
            if name in airflow.DB_GATED_UNITS:  # paced by their gate, not a growing delay
                assert "RestartSteps" not in service
                assert service["ExecStart"].startswith(f"{airflow.GATED_START} ")
            else:
                assert int(service["RestartMaxDelaySec"]) >= int(service["RestartSec"])
                assert service["ExecStart"].startswith(f"{airflow.VENV}/bin/airflow ")
            assert unit["Unit"]["StartLimitIntervalSec"] == "0"
            assert service["User"] == "airflow"
            assert service["EnvironmentFile"] == airflow.AIRFLOW_ENV
            assert unit["Install"]["WantedBy"] == "multi-user.target"
        worker = _unit(step, "airflow-worker")["Service"]
        assert worker["ExecStart"].endswith(f"celery worker --celery-hostname airflow@{node}")
        assert worker["KillMode"] == "mixed"
        assert _unit(step, "airflow-flower")["Service"]["ExecStart"].endswith("celery flower")
        assert _unit(step, "airflow-dag-processor")["Service"]["ExecStart"].endswith(
            "dag-processor"
        )


def test_airflow_cfg_per_node(local) -> None:
    engine, outputs = local
    nodes = outputs["nodes"]
    for node, step in _steps(engine, "airflow-config").items():
        cfg = _cfg(step)
        mesh = nodes[node]["meshAddress"]
        assert cfg["core"]["executor"] == "CeleryExecutor"
        assert cfg["core"]["dags_folder"] == "/opt/airflow/dags"
        assert cfg["core"]["load_examples"] == "False"
        assert cfg["core"]["auth_manager"].endswith("fab_auth_manager.FabAuthManager")
        # Workers, triggerer and DAG processor use this node's own api-server.
        assert cfg["core"]["execution_api_server_url"] == f"http://{mesh}:8080/execution/"
        conn = cfg["database"]["sql_alchemy_conn"]
        # Through the local HAProxy; a connect that hangs fails after 10 s instead.
        pattern = r"postgresql\+psycopg2://airflow:[^@]+@127\.0\.0\.1:5000/airflow\?connect_timeout=10"
        assert re.fullmatch(pattern, conn)
        assert cfg["celery"]["result_backend"] == f"db+{conn}"
        brokers = cfg["celery"]["broker_url"].split(";")
        # Every broker, this node's own first (a dead peer is never the first connect).
        hosts = [re.search(r"@([^:]+):5672/airflow$", b).group(1) for b in brokers]
        assert hosts == [node, *(n for n in nodes if n != node)]
        assert cfg["celery"]["worker_prefetch_multiplier"] == "1"
        assert cfg["celery"]["task_acks_late"] == "True"
        assert cfg["celery"]["worker_concurrency"].isdigit()
        extra = json.loads(cfg["celery"]["extra_celery_config"])
        # Quorum comes from the vhost's default queue type (broker tier), not from Celery's
        # option, which would switch on Celery's native delayed delivery.
        assert "task_default_queue_type" not in extra
        assert extra["broker_failover_strategy"] == "round-robin"
        assert cfg["celery_broker_transport_options"]["confirm_publish"] == "True"
        assert cfg["scheduler"]["use_row_level_locking"] == "True"
        assert cfg["api"]["host"] == mesh
        assert cfg["api"]["port"] == "8080"
        assert cfg["celery"]["flower_host"] == mesh
        assert cfg["celery"]["flower_port"] == "5555"
        assert _mode_owner(step, airflow.AIRFLOW_CFG) == ("0640", "root:airflow")


def test_shared_secrets_are_equal_on_every_node_and_well_formed(local) -> None:
    engine, _ = local
    cfgs = [_cfg(step) for step in _steps(engine, "airflow-config").values()]
    for section, key in (
        ("core", "fernet_key"),
        ("api", "secret_key"),
        ("api_auth", "jwt_secret"),
        ("database", "sql_alchemy_conn"),
        ("celery", "flower_basic_auth"),
    ):
        values = {cfg[section][key] for cfg in cfgs}
        assert len(values) == 1, f"[{section}] {key} differs between nodes"
        assert len(values.pop()) >= 32, f"[{section}] {key} is too short"
    # The broker list differs only in its order (each node's own broker first).
    lists = [sorted(cfg["celery"]["broker_url"].split(";")) for cfg in cfgs]
    assert all(urls == lists[0] for urls in lists)
    fernet = cfgs[0]["core"]["fernet_key"]
    assert len(base64.urlsafe_b64decode(fernet)) == 32
    assert re.fullmatch(r"[A-Za-z0-9_=-]+", fernet)
    # Generated once by pulumi_random, not per node.
    randoms = {r.name for r in engine.resources if r.type.startswith("random:")}
    assert {
        "airflow-fernet-key",
        "airflow-api-secret-key",
        "airflow-jwt-secret",
        "airflow-admin-password",
    } <= randoms


def _secret_flags(values: dict, stack: str) -> dict[str, bool]:
    """Build the real program under the engine double and ask Pulumi which Outputs are secret."""
    from components.cluster import AirflowHaCluster
    from components.config import load_config

    config, secret_keys = config_for_engine(values)
    pulumi.runtime.set_all_config(config, secret_keys)
    pulumi.runtime.set_mocks(Engine(), project=NAMESPACE, stack=stack, preview=False)
    flags: dict[str, bool] = {}

    async def collect(outputs: dict[str, pulumi.Output]) -> None:
        for key, output in outputs.items():
            flags[key] = await output.is_secret()

    def program():
        cluster = AirflowHaCluster(load_config())
        tier = cluster.airflow
        watched = {
            "admin_password": tier.admin_password,
            "fernet_key": tier.fernet_key,
            "jwt_secret": tier.jwt_secret,
            "csync2_key": cluster.dag_sync.key,
            "output_admin_password": pulumi.Output.from_input(
                cluster.outputs["airflowAdminPassword"]
            ),
            "output_airflow": pulumi.Output.from_input(cluster.outputs["airflow"]),
        }
        return pulumi.Output.from_input(asyncio.ensure_future(collect(watched)))

    pulumi.runtime.test(program)()
    return flags


def test_secrets_stay_secret(values) -> None:
    flags = _secret_flags(values("local"), "local")
    assert flags["admin_password"] and flags["fernet_key"] and flags["jwt_secret"]
    assert flags["csync2_key"]
    assert flags["output_admin_password"]
    # The rest of the Airflow outputs (URLs, tunnels, user name) stay readable.
    assert not flags["output_airflow"]


def test_outputs_ui_urls_tunnels_and_admin(local) -> None:
    _, outputs = local
    nodes = outputs["nodes"]
    out = outputs["airflow"]
    assert out["adminUser"] == "admin"
    assert outputs["airflowAdminPassword"]
    for name, node in nodes.items():
        assert out["uiUrls"][name] == f"http://{node['meshAddress']}:8080/"
        assert out["uiTunnels"][name].startswith(
            f"ssh -N -L 8080:{node['meshAddress']}:8080 -p 22 root@{node['publicAddress']}"
        )
    first = next(iter(nodes.values()))
    assert out["flowerTunnel"].startswith(f"ssh -N -L 5555:{first['meshAddress']}:5555 ")
    assert "15672" in outputs["brokerManagementTunnel"]


def test_flower_api_and_rabbitmq_ui_are_not_public(values, deploy) -> None:
    cfg_values = values("dev")
    engine, outputs = deploy(cfg_values)
    for node, step in _steps(engine, "airflow-config").items():
        cfg = _cfg(step)
        mesh = outputs["nodes"][node]["meshAddress"]
        assert cfg["api"]["host"] == mesh != "0.0.0.0"
        assert cfg["celery"]["flower_host"] == mesh
        assert not any(p.endswith("airflow-ui-tls.service") for p, *_ in step.files)
    # The firewall admits SSH and WireGuard only: no 8080, 5555 or 15672.
    from components.cluster import nodes_args
    from components.config import parse_config

    ports = {rule["port"] for rule in ingress_rules(nodes_args(parse_config(cfg_values)), [])}
    assert ports == {22, 51820}
    # The log servers bind every address (Airflow has no option): nftables admits lo and wg0.
    rules = _file(next(iter(_steps(engine, "airflow-config").values())), airflow.LOG_FIREWALL)
    assert 'tcp dport { 8793, 8794 } iifname != { "lo", "wg0" } drop' in rules


def test_public_ui_terminates_tls_on_443_in_front_of_the_mesh_api_server(values, deploy) -> None:
    engine, outputs = deploy(values("dev", publicUi=True))
    for node, step in _steps(engine, "airflow-config").items():
        unit = _unit(step, "airflow-ui-tls")
        mesh = outputs["nodes"][node]["meshAddress"]
        assert "OPENSSL-LISTEN:443," in unit["Service"]["ExecStart"]
        assert unit["Service"]["ExecStart"].endswith(f"TCP:{mesh}:8080")
        assert _cfg(step)["api"]["host"] == mesh
        assert "airflow-ui-tls" in _steps(engine, "airflow-start")[node].script
    for name, node in outputs["nodes"].items():
        assert outputs["airflow"]["uiUrls"][name] == f"https://{node['publicAddress']}/"


def test_unsupported_airflow_version_names_the_missing_lock_file(values, deploy) -> None:
    engine = Engine()
    with pytest.raises(ConfigError, match=r"requirements-3\.9\.9-py313\.txt is missing"):
        deploy(values("dev", airflowVersion="3.9.9"), engine=engine)
    # Before any server or step exists.
    assert not [r for r in engine.resources if not r.type.startswith("airflow-ha:")]


def test_install_is_fully_pinned_with_hashes(local) -> None:
    engine, _ = local
    lock_path = "/opt/airflow/requirements-3.3.2-py313.txt"
    # How the step installs it (--require-hashes, pip check) is in the render snapshots.
    for step in _steps(engine, "airflow-install").values():
        lock = _file(step, lock_path)
    # How pip installs it: test_install_reinstalls_the_venv_only_when_the_lock_changed.
    requirements = [line for line in lock.splitlines() if line and line[0].isalnum()]
    assert len(requirements) > 100
    for line in requirements:
        assert re.fullmatch(r"[a-z0-9._-]+==[^ ]+ \\", line), line
    pins = dict(line.split(" ")[0].split("==") for line in requirements)
    assert pins["apache-airflow"] == "3.3.2"
    assert pins["celery"] == "5.6.3"  # 5.7.0 breaks the celery provider
    for package in ("apache-airflow-providers-celery", "apache-airflow-providers-fab", "flower"):
        assert package in pins
    # The S3 task log handler (objectStorage) and the boto3 it talks through.
    for package in ("apache-airflow-providers-amazon", "boto3", "botocore"):
        assert package in pins
    assert lock.count("--hash=sha256:") >= len(requirements)


def test_migration_and_admin_run_once_from_the_first_node(local) -> None:
    engine, outputs = local
    migrate = [s for s in engine.steps() if s.step == "airflow-db-migrate"]
    assert [s.node for s in migrate] == [next(iter(outputs["nodes"]))]
    # What it runs: test_migration_is_retried_after_a_failover_then_the_admin_is_made.


def _shellcheck(path) -> None:
    result = subprocess.run(
        ["shellcheck", "-S", "warning", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, f"{path.name}:\n{result.stdout}"


def test_scripts_pass_bash_n_and_shellcheck(local, tmp_path) -> None:
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is missing: apt-get install shellcheck (tools/setup.sh does)")
    engine, _ = local
    for step in engine.steps():
        if step.node != "node-a" or not step.step.startswith("airflow"):
            continue
        path = tmp_path / f"{step.step}.sh"
        path.write_text(step.script)
        subprocess.run(["bash", "-n", str(path)], check=True)
        _shellcheck(path)
    install = _steps(engine, "airflow-install")["node-a"]
    wrapper = tmp_path / "airflow-cli.sh"
    wrapper.write_text(_file(install, airflow.CLI_WRAPPER))
    _shellcheck(wrapper)


def test_log_firewall_rules_parse_with_nft(local, tmp_path) -> None:
    if not shutil.which("nft"):
        pytest.fail("nft is missing: apt-get install nftables (tools/setup.sh does)")
    engine, _ = local
    path = tmp_path / "rules.nft"
    path.write_text(_file(_steps(engine, "airflow-config")["node-a"], airflow.LOG_FIREWALL))
    result = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True)
    if result.returncode != 0 and "Operation not permitted" in result.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN here")
    assert result.returncode == 0, result.stderr


def test_a_config_change_re_runs_the_start_step_and_nothing_else_restarts(values, deploy) -> None:
    def start_scripts(**overrides):
        engine, _ = deploy(values("local", **overrides), stack="local")
        return {node: step.script for node, step in _steps(engine, "airflow-start").items()}

    base = start_scripts()
    assert base == start_scripts(), "the start step must render the same twice"
    changed = start_scripts(celeryWorkerConcurrency=2)
    assert all(changed[node] != base[node] for node in base)


FAKE_PSYCOPG2 = '''
import json, os


class Error(Exception):
    pass


class _Cursor:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql, args):
        assert args == (os.environ["FAKE_HOST"],)

    def fetchall(self):
        return list(json.loads(os.environ["FAKE_AGES"]).items())


class _Conn(_Cursor):
    def cursor(self):
        return _Cursor()


def connect(url, **kwargs):
    if os.environ.get("FAKE_DB_DOWN"):
        raise Error("connection refused")
    assert url.startswith("postgresql://airflow:")
    return _Conn()
'''

FAKE_SYSTEMCTL = """#!/bin/sh
if [ "$1" = show ]; then
  echo ActiveState=active
  echo "ActiveEnterTimestampMonotonic=$FAKE_SINCE_US"
else
  echo "$*" >> "$FAKE_CALLS"
fi
"""


def test_watchdog_restarts_only_a_unit_whose_job_stopped_heart_beating(local, tmp_path) -> None:
    import socket
    import sys
    import time

    engine, _ = local
    step = _steps(engine, "airflow-config")["node-a"]
    cfg_path = tmp_path / "airflow.cfg"
    cfg_path.write_text(_file(step, airflow.AIRFLOW_CFG))
    script = _file(step, airflow.WATCHDOG_SCRIPT)
    script = script.replace(airflow.AIRFLOW_CFG, str(cfg_path))
    script = script.replace("/run/airflow-ha-watchdog.json", str(tmp_path / "state.json"))
    (tmp_path / "watchdog.py").write_text(script)
    (tmp_path / "psycopg2.py").write_text(FAKE_PSYCOPG2)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    calls = tmp_path / "calls"

    def run(ages: dict, up_seconds: float, db_down: bool = False) -> list[str]:
        since_us = int((time.monotonic() - up_seconds) * 1e6)
        env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "PYTHONPATH": str(tmp_path),
            "FAKE_HOST": socket.getfqdn(),
            "FAKE_AGES": json.dumps(ages),
            "FAKE_SINCE_US": str(since_us),
            "FAKE_CALLS": str(calls),
            **({"FAKE_DB_DOWN": "1"} if db_down else {}),
        }
        subprocess.run([sys.executable, str(tmp_path / "watchdog.py")], env=env, check=True)
        return calls.read_text().splitlines() if calls.exists() else []

    fresh = {"SchedulerJob": 3.0, "DagProcessorJob": 4.0, "TriggererJob": 2.0}
    stale = {**fresh, "SchedulerJob": 400.0}
    assert run(fresh, up_seconds=3600) == []
    assert run(stale, up_seconds=60) == []  # just started: within the grace period
    assert run(stale, up_seconds=3600, db_down=True) == []  # nothing decided without the DB
    assert run(stale, up_seconds=3600) == []  # first strike
    # Second strike: killed (a hung process ignores SIGTERM), Restart=always brings it back.
    assert run(stale, up_seconds=3600) == ["kill --signal=SIGKILL airflow-scheduler"]
    calls.unlink()
    assert run(fresh, up_seconds=3600) == []


# --- the api-server's warm-up and the worker's gate (issue: a burst after a start failed) ----


def _warmup_module(step):
    """The rendered plugin, loaded with a stand-in for airflow.plugins_manager."""
    import sys
    import types

    stub = types.ModuleType("airflow.plugins_manager")
    stub.AirflowPlugin = type("AirflowPlugin", (), {})
    saved = {name: sys.modules.get(name) for name in ("airflow", "airflow.plugins_manager")}
    sys.modules["airflow"] = types.ModuleType("airflow")
    sys.modules["airflow.plugins_manager"] = stub
    try:
        module = types.ModuleType("airflow_ha_warmup")
        exec(compile(_file(step, airflow.WARMUP_PLUGIN), "airflow_ha_warmup.py", "exec"),
             module.__dict__)
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
    return module


def test_warmup_plugin_serves_one_execution_request_before_startup_completes(local) -> None:
    engine, _ = local
    step = _steps(engine, "airflow-config")["node-a"]
    assert _mode_owner(step, airflow.WARMUP_PLUGIN) == ("0644", "root:airflow")
    module = _warmup_module(step)
    (entry,) = module.AirflowHaWarmupPlugin.fastapi_root_middlewares
    events: list[str] = []

    async def app(scope, receive, send):  # a stand-in ASGI app with a lifespan
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"
            events.append("startup ran")
            await send({"type": "lifespan.startup.complete"})
            return
        events.append(f"{scope['method']} {scope['path']} state={scope['state']}")
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    wrapped = entry["middleware"](app, *entry["args"], **entry["kwargs"])
    messages = iter([{"type": "lifespan.startup"}])

    async def receive():
        return next(messages)

    async def send(message):
        events.append(f"to uvicorn: {message['type']}")

    asyncio.run(wrapped({"type": "lifespan", "state": {"k": 1}, "app": app}, receive, send))
    assert events == [
        "startup ran",
        "GET /execution/health state={'k': 1}",
        "to uvicorn: lifespan.startup.complete",
    ]

    async def failing(scope, receive, send):  # a warm-up that fails never blocks serving
        if scope["type"] == "lifespan":
            await send({"type": "lifespan.startup.complete"})
            return
        raise RuntimeError("boom")

    events.clear()
    wrapped = entry["middleware"](failing)
    asyncio.run(wrapped({"type": "lifespan", "app": failing}, receive, send))
    assert events == ["to uvicorn: lifespan.startup.complete"]


def _run_gate(step, tmp_path, curl_succeeds_after: int, seconds: int):
    script = _file(step, airflow.WAIT_API_SCRIPT).replace(
        f"{airflow.WAIT_API_S} ))", f"{seconds} ))"
    )
    (tmp_path / "gate").write_text(script)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    # A fake curl: fails until it has been called `curl_succeeds_after` times.
    (bin_dir / "curl").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {tmp_path}/calls\n'
        f"n=$(wc -l < {tmp_path}/calls)\n"
        f'[ "$n" -gt {curl_succeeds_after} ]\n'
    )
    (bin_dir / "curl").chmod(0o755)
    (bin_dir / "sleep").write_text("#!/bin/sh\n/bin/sleep 0.01\n")
    (bin_dir / "sleep").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run(["sh", str(tmp_path / "gate")], env=env, capture_output=True,
                          text=True, timeout=60)


def test_worker_waits_for_its_api_server_then_starts(local, tmp_path) -> None:
    engine, _ = local
    step = _steps(engine, "airflow-config")["node-b"]
    unit = _unit(step, "airflow-worker")
    assert unit["Service"]["ExecStartPre"] == airflow.WAIT_API_SCRIPT
    assert _mode_owner(step, airflow.WAIT_API_SCRIPT)[0] == "0755"
    after = [line.split("=", 1)[1] for line in _file(
        step, "/etc/systemd/system/airflow-worker.service").splitlines()
        if line.startswith("After=")]
    assert "airflow-api-server.service" in " ".join(after)
    result = _run_gate(step, tmp_path, curl_succeeds_after=3, seconds=30)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 4
    # The node's own api-server, on its mesh address.
    assert all("http://10.42.0.2:8080/execution/health" in c for c in calls), calls


def test_worker_gate_gives_up_with_a_message_so_systemd_retries(local, tmp_path) -> None:
    engine, _ = local
    step = _steps(engine, "airflow-config")["node-a"]
    result = _run_gate(step, tmp_path, curl_succeeds_after=10**6, seconds=1)
    assert result.returncode == 1
    assert "did not answer in" in result.stderr


def test_task_runners_outlast_a_busy_or_restarting_api_server(local) -> None:
    engine, _ = local
    cfg = _cfg(_steps(engine, "airflow-config")["node-c"])
    timeout = cfg.getfloat("workers", "execution_api_timeout")
    retries = cfg.getint("workers", "execution_api_retries")
    wait_max = cfg.getfloat("workers", "execution_api_retry_wait_max")
    # Airflow's defaults give up after about 31 s; a failover's 5xx lasts up to ~25 s here and
    # an api-server restart under load longer: the budget (waits only) must exceed a minute.
    waits = sum(min(wait_max, 2**i) for i in range(retries - 1))
    assert waits > 60 and timeout >= 20


# What the launcher's warm_up calls (module: function), stood in too.
WARM_UP = {"airflow.cli.cli_parser": "get_parser", "airflow.models": "import_all_models",
           "sqlalchemy.orm": "configure_mappers"}


def _launcher(local, tmp_path: Path, main_body: str) -> tuple[Path, dict[str, str], Path]:
    """The rendered launcher, beside a stand-in Airflow (every module it imports, recording its
    import; a CLI whose main() runs `main_body`) and a fake pg_isready: no primary for its
    first 3 calls. Returns (launcher, env, record)."""
    engine, _ = local
    step = _steps(engine, "airflow-config")["node-a"]
    assert _mode_owner(step, airflow.GATED_START)[0] == "0755"
    launcher = tmp_path / "gated"
    launcher.write_text(_file(step, airflow.GATED_START))
    record = tmp_path / "record"
    modules = ["airflow.__main__", *airflow.GATED_MODULES["scheduler"], *WARM_UP]
    for module in modules:
        path = tmp_path / "site" / Path(*module.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.parents:
            if parent == tmp_path / "site":
                break
            (parent / "__init__.py").touch()
        body = f"open({str(record)!r}, 'a').write('import {module}\\n')\n"
        if module in WARM_UP:
            body += (f"def {WARM_UP[module]}():\n"
                     f"    open({str(record)!r}, 'a').write('warm {WARM_UP[module]}\\n')\n")
        if module == "airflow.__main__":
            body += (
                "import os, sys, time\n"
                f"RECORD = {str(record)!r}\n"
                "def main():\n"
                "    open(RECORD, 'a').write(f'run {os.getpid()} ' + ' '.join(sys.argv) + '\\n')\n"
                + "".join(f"    {line}\n" for line in main_body.splitlines())
            )
        path.with_suffix(".py").write_text(body)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pg_isready").write_text(
        f'#!/bin/sh\necho "pg_isready $*" >> {record}\n'
        f'[ "$(grep -c pg_isready {record})" -gt 3 ]\n'
    )
    (bin_dir / "pg_isready").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site")}
    return launcher, env, record


def test_scheduling_units_import_once_then_wait_for_a_primary_then_run(local, tmp_path) -> None:
    launcher, env, record = _launcher(local, tmp_path, "return 0")
    result = subprocess.run([sys.executable, str(launcher), "scheduler", "--verbose"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = record.read_text().splitlines()
    imports = [line for line in lines if line.startswith("import ")]
    warm = [line for line in lines if line.startswith("warm ")]
    checks = [line for line in lines if line.startswith("pg_isready")]
    runs = [line for line in lines if line.startswith("run ")]
    # Imports and the warm-up first, then the wait (four checks), then the command, in a child.
    assert lines[-len(checks) - len(runs):] == [*checks, *runs]
    assert sorted(imports) == sorted(f"import {m}" for m in
                                     ["airflow.__main__", *airflow.GATED_MODULES["scheduler"],
                                      *WARM_UP])
    assert warm == ["warm import_all_models", "warm configure_mappers", "warm get_parser"]
    assert len(checks) == 4 and all("-h 127.0.0.1 -p 5000" in c for c in checks)
    assert len(runs) == 1 and runs[0].endswith(" airflow scheduler --verbose")
    # With no primary at all it gives up (and systemd starts the unit again a second later).
    launcher.write_text(launcher.read_text().replace(f"WAIT_S = {airflow.WAIT_DB_S}",
                                                     "WAIT_S = 1"))
    (tmp_path / "bin" / "pg_isready").write_text("#!/bin/sh\nexit 2\n")
    result = subprocess.run([sys.executable, str(launcher), "scheduler"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no PostgreSQL primary" in result.stderr


def test_a_failed_run_runs_again_without_new_imports(local, tmp_path) -> None:
    """The database went away twice (the command exits 1); the third run ends cleanly."""
    body = "if open(RECORD).read().count('run ') < 3:\n    sys.exit(1)\nreturn 0"
    launcher, env, record = _launcher(local, tmp_path, body)
    result = subprocess.run([sys.executable, str(launcher), "scheduler"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = record.read_text().splitlines()
    runs = [line.split()[1] for line in lines if line.startswith("run ")]
    assert len(runs) == 3 and len(set(runs)) == 3  # three children
    imported = [line for line in lines if line.startswith(("import ", "warm "))]
    assert len(imported) == len(set(imported)) == len(airflow.GATED_MODULES["scheduler"]) + 7
    assert result.stderr.count("exited 1 after 0 s: running it again") == 2
    # Each run waited for a primary first: no run before the fourth check, one check per rerun.
    kinds = [line.split()[0] for line in lines if not line.startswith(("import ", "warm "))]
    assert kinds == ["pg_isready"] * 4 + ["run", "pg_isready", "run", "pg_isready", "run"]


def test_runs_that_keep_failing_at_once_end_the_unit(local, tmp_path) -> None:
    launcher, env, record = _launcher(local, tmp_path, "sys.exit(3)")
    result = subprocess.run([sys.executable, str(launcher), "scheduler"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert "failed 5 times within 30 s of its start" in result.stderr
    assert record.read_text().count("run ") == 5


def test_a_stop_ends_the_child_and_the_launcher(local, tmp_path) -> None:
    """systemd's SIGTERM reaches both (KillMode=control-group): the launcher waits for the
    child, then exits 0 instead of running it again."""
    launcher, env, record = _launcher(local, tmp_path, "time.sleep(60)\nreturn 0")
    proc = subprocess.Popen([sys.executable, str(launcher), "scheduler"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while "run " not in (record.read_text() if record.exists() else ""):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group, as systemd signals the unit
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert record.read_text().count("run ") == 1 and "running it again" not in stderr


def test_celery_result_store_outlasts_a_database_failover(local) -> None:
    engine, _ = local
    cfg = _cfg(_steps(engine, "airflow-config")["node-a"])
    extra = json.loads(cfg.get("celery", "extra_celery_config"))
    assert extra["result_backend_always_retry"] is True
    # Celery's backoff (celery.utils.time.get_exponential_backoff_interval, full jitter): a
    # random wait up to min(max, base * 2**n) ms between tries, half of it on average; the
    # expected budget must outlast a failover (~25 s here) by a wide margin.
    base = extra["result_backend_base_sleep_between_retries_ms"]
    cap = extra["result_backend_max_sleep_between_retries_ms"]
    tries = extra["result_backend_max_retries"]
    expected_s = sum(min(cap, base * 2**n) / 2 for n in range(tries)) / 1000
    assert 60 <= expected_s <= 300, expected_s


# --- task logs in the object storage (objectStorage) -----------------------------------------

STORAGE = {"endpoint": "fsn1.your-objectstorage.com", "region": "fsn1", "bucket": "acme-logs"}
# A key of every character the env file's quoting must survive.
AWKWARD_SECRET = "wJal/rX+Ut'n$FE\"MI\\K7`MD"


def _with_storage(values, **storage):
    return values("local", objectStorage={**STORAGE, **storage},
                  objectStorageAccessKey="AKIAIOSFODNN7EXAMPLE",
                  objectStorageSecretKey=AWKWARD_SECRET)


def _env_as_the_shell_reads_it(step, tmp_path) -> dict[str, str]:
    """The env file sourced by sh, as the CLI wrapper does: the variables it defines."""
    path = tmp_path / "airflow.env"
    path.write_text(_file(step, airflow.AIRFLOW_ENV))
    out = subprocess.run(
        ["sh", "-c", f'set -a; . "{path}"; set +a; env -0'],
        capture_output=True, text=True, check=True, env={},
    ).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def _systemd_environment_lines(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= form: KEY=value lines, a value in single quotes is literal
    up to the closing quote; checked strictly enough that the shell and systemd agree."""
    found = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), line
        if value.startswith("'"):
            assert value.endswith("'") and "'" not in value[1:-1], line
            value = value[1:-1]
        else:
            assert not re.search(r"[\s'\"\\$`]", value), line
        found[key] = value
    return found


def test_without_object_storage_task_logs_stay_on_the_worker(values, deploy) -> None:
    engine, _ = deploy(without_object_storage(values("local")), stack="local")
    for step in _steps(engine, "airflow-config").values():
        logging = _cfg(step)["logging"]
        assert "remote_logging" not in logging and "logging_config_class" not in logging
        assert "AIRFLOW_CONN_" not in _file(step, airflow.AIRFLOW_ENV)
        paths = [p for p, _, _, _ in step.files]
        assert airflow.LOG_CONFIG not in paths and airflow.OBJECT_STORAGE_CA not in paths


def test_with_object_storage_every_node_sends_task_logs_to_the_bucket(
    values, deploy, tmp_path
) -> None:
    engine, _ = deploy(_with_storage(values), stack="local")
    for node, step in _steps(engine, "airflow-config").items():
        logging = _cfg(step)["logging"]
        assert logging.getboolean("remote_logging") is True
        assert logging["remote_base_log_folder"] == "s3://acme-logs/local/task-logs"
        assert logging["remote_log_conn_id"] == airflow.REMOTE_LOG_CONN_ID
        # The worker keeps its file; its log server still serves a running task's log.
        assert logging.getboolean("delete_local_logs") is False
        assert logging["worker_log_server_port"] == str(airflow.WORKER_LOG_PORT)
        module, _, attribute = logging["logging_config_class"].rpartition(".")
        assert f"{airflow.AIRFLOW_HOME}/config/{module}.py" == airflow.LOG_CONFIG
        # The module is Python and gives Airflow what it looks for beside the dict.
        tree = ast.parse(_file(step, airflow.LOG_CONFIG))
        assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}
        assert {attribute, "REMOTE_TASK_LOG"} <= assigned
        # The connection: where Airflow looks for the conn id, readable by the airflow group.
        assert _mode_owner(step, airflow.AIRFLOW_ENV) == ("0640", "root:airflow")
        env = _env_as_the_shell_reads_it(step, tmp_path)
        systemd = _systemd_environment_lines(_file(step, airflow.AIRFLOW_ENV))
        name = "AIRFLOW_CONN_" + logging["remote_log_conn_id"].upper()
        assert env[name] == systemd[name]
        conn = json.loads(env[name])
        assert (conn["conn_type"], conn["login"]) == ("aws", "AKIAIOSFODNN7EXAMPLE")
        assert conn["password"] == AWKWARD_SECRET
        assert conn["extra"]["endpoint_url"] == "https://fsn1.your-objectstorage.com:443"
        assert conn["extra"]["region_name"] == "fsn1"
        assert env["AIRFLOW_HOME"] == airflow.AIRFLOW_HOME, node  # the rest is as before
    # The keys reach the nodes only inside the step's secret stdin.
    for command in engine.of_type("command:remote:Command"):
        assert AWKWARD_SECRET not in command.inputs["create"]
        if "airflow-config" in command.name:
            assert "stdin" in command.secret_inputs


def test_a_task_log_key_of_its_own_replaces_the_backups_key_in_the_connection(
    values, deploy, tmp_path
) -> None:
    """taskLogAccessKey/SecretKey: every task can read this connection, so it gets the second
    key where the stack has one; pgBackRest keeps objectStorageAccessKey's."""
    config = {**_with_storage(values), "taskLogAccessKey": "AKIATASKLOGSEXAMPLE",
              "taskLogSecretKey": "task/logs+secret"}
    engine, _ = deploy(config, stack="local")
    for step in _steps(engine, "airflow-config").values():
        env = _env_as_the_shell_reads_it(step, tmp_path)
        conn = json.loads(env[airflow.REMOTE_LOG_CONN_ENV])
        assert (conn["login"], conn["password"]) == ("AKIATASKLOGSEXAMPLE", "task/logs+secret")
        assert AWKWARD_SECRET not in _file(step, airflow.AIRFLOW_ENV)
    backups = _steps(engine, "backup-install")["node-a"]
    assert AWKWARD_SECRET in _file(backups, "/etc/pgbackrest/pgbackrest.conf")
    assert "task/logs+secret" not in _file(backups, "/etc/pgbackrest/pgbackrest.conf")


@pytest.mark.parametrize(("uri_style", "with_ca"), [("host", False), ("path", True)])
def test_the_connection_addresses_the_bucket_as_uri_style_says_and_trusts_the_ca(
    values, deploy, tmp_path, ca_certificate, uri_style, with_ca
) -> None:
    storage = {"uriStyle": uri_style, **({"caCertificate": ca_certificate} if with_ca else {})}
    engine, _ = deploy(_with_storage(values, **storage), stack="local")
    step = _steps(engine, "airflow-config")["node-a"]
    extra = json.loads(_env_as_the_shell_reads_it(step, tmp_path)[airflow.REMOTE_LOG_CONN_ENV])[
        "extra"
    ]
    config = extra["config_kwargs"]
    # botocore's `auto` is path style once endpoint_url is set: host style must say virtual.
    assert config["s3"] == {"addressing_style": "virtual" if uri_style == "host" else "path"}
    # Every S3 call bounded: an unreachable storage holds a task's end for seconds.
    assert config["connect_timeout"] * config["retries"]["total_max_attempts"] <= 30
    assert config["read_timeout"] <= 30
    paths = [p for p, _, _, _ in step.files]
    if not with_ca:
        assert "verify" not in extra and airflow.OBJECT_STORAGE_CA not in paths
        return
    assert extra["verify"] == airflow.OBJECT_STORAGE_CA
    assert _mode_owner(step, airflow.OBJECT_STORAGE_CA) == ("0644", "root:root")
    # What boto3 gets as its CA bundle loads as one (OpenSSL, through Python's ssl).
    bundle = tmp_path / "ca.pem"
    bundle.write_text(_file(step, airflow.OBJECT_STORAGE_CA))
    context = ssl.create_default_context(cafile=str(bundle))
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "airflow-ha test CA"),),)
    ]
